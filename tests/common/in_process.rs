//! Audits run in this process through the library (`trainlint::audit::audit`), for tests that
//! assert typed findings (kind, severity, location, evidence) instead of a spawned binary's JSON.
use std::sync::Mutex;

use trainlint::audit::{audit, Audit, Request};
use trainlint::config::{resolve, Overrides};
use trainlint_checks::Finding;

use super::root;

/// libtorch's thread count and its global random generator belong to the process: one audit at a
/// time, so that the tests of one binary may run side by side.
static LIBTORCH: Mutex<()> = Mutex::new(());

/// The settings `trainlint check ARGS` would resolve, from the repository root, for the flags the
/// documented examples use (`--model`, `--data`, `--log`, `--loss`, `--task`, `--select`) and a
/// config path.
pub fn overrides(args: &[&str]) -> Overrides {
    let mut o = Overrides::default();
    let mut it = args.iter();
    let path = |p: &str| Some(root().join(p));
    while let Some(a) = it.next() {
        let mut value = || it.next().expect("a flag's value").to_string();
        match *a {
            "--model" => o.model = path(&value()),
            "--data" => o.data = path(&value()),
            "--log" => o.log = path(&value()),
            "--loss" => o.loss = Some(value()),
            "--task" => o.task = Some(value()),
            "--select" => o.select = Some(value().split(',').map(String::from).collect()),
            flag if flag.starts_with('-') => panic!("in_process: no flag {flag} here"),
            config => o.path = Some(root().join(config)),
        }
    }
    o
}

/// The audit `trainlint check ARGS --threads 1 --no-timings` runs, in process.
pub fn audit_of(args: &[&str]) -> Audit {
    let mut o = overrides(args);
    o.threads = Some(1);
    let settings = resolve(&o).unwrap_or_else(|e| panic!("{args:?}: {e}"));
    let _one = LIBTORCH.lock().unwrap_or_else(|e| e.into_inner());
    audit(&Request {
        settings: &settings,
        trust_model: false,
        timeout: None,
        timings: false,
        progress: false,
        baseline: None,
        write_baseline: false,
    })
    .unwrap_or_else(|e| panic!("{args:?}: {e}"))
}

/// Every finding of the audit, in report order.
pub fn findings_of(a: &Audit) -> Vec<&Finding> {
    a.report.checks.iter().flat_map(|c| &c.findings).collect()
}
