//! Audits run in this process through the library (`trainlint::audit::audit`), for tests that
//! assert typed findings (kind, severity, location, evidence) instead of a spawned binary's JSON.
use std::sync::Mutex;

use serde_json::Value;
use trainlint::audit::{audit, Audit, Request};
use trainlint::config::{resolve, Overrides, Settings};
use trainlint_checks::Finding;

use super::root;

/// libtorch's thread count and its global random generator belong to the process: one audit at a
/// time, so that the tests of one binary may run side by side.
static LIBTORCH: Mutex<()> = Mutex::new(());

/// The settings `trainlint check ARGS` would resolve, from the repository root, for the flags the
/// documented examples and the verdict tests use (`--model`, `--data`, `--log`, `--loss`, `--task`,
/// `--select`, `--ignore`, `--seed`, `--threads`, `--check-budget`) and a config path.
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
            "--ignore" => o.ignore = Some(value().split(',').map(String::from).collect()),
            "--seed" => o.seed = Some(value().parse().expect("a seed")),
            "--threads" => o.threads = Some(value().parse().expect("a thread count")),
            "--check-budget" => o.check_budget = Some(value().parse().expect("seconds")),
            flag if flag.starts_with('-') => panic!("in_process: no flag {flag} here"),
            config => o.path = Some(root().join(config)),
        }
    }
    o
}

/// The audit `trainlint check ARGS --no-timings` runs, in process, on one thread unless ARGS say.
pub fn audit_of(args: &[&str]) -> Audit {
    audit_with(args).1
}

/// The settings and the audit of `trainlint check ARGS --no-timings`, in process, on one thread
/// unless ARGS say.
fn audit_with(args: &[&str]) -> (Settings, Audit) {
    let mut o = overrides(args);
    o.threads = o.threads.or(Some(1));
    let settings = resolve(&o).unwrap_or_else(|e| panic!("{args:?}: {e}"));
    let _one = LIBTORCH.lock().unwrap_or_else(|e| e.into_inner());
    let audit = audit(&Request {
        settings: &settings,
        trust_model: false,
        timeout: None,
        timings: false,
        progress: false,
        baseline: None,
        write_baseline: false,
    })
    .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    (settings, audit)
}

/// What `trainlint check --output-format json --no-timings ARGS` answers, in process (on one thread
/// unless ARGS say): its exit code (0, or 1 when a finding reaches `fail-on`) and its JSON report, the
/// same bytes the binary writes (`report::json::render`). For tests of verdicts on many models,
/// without a process (and libtorch's start-up, 0.4 s of CPU) per audit; a run the binary would refuse
/// (exit 2) panics.
pub fn check_json(args: &[&str]) -> (i32, Value) {
    let (settings, audit) = audit_with(args);
    let report = &audit.report;
    let json = trainlint::report::json::render(report);
    let code = i32::from(report.fails(settings.run.fail_on.into()));
    (code, serde_json::from_str(&json).expect("the JSON report"))
}

/// Every finding of the audit, in report order.
pub fn findings_of(a: &Audit) -> Vec<&Finding> {
    a.report.findings().collect()
}

/// The audit of `check --select SELECT` on a fixture setup: model `models/MODEL.pt`, data
/// `data/DATA`, log `logs/LOG` (each where given) and a config whose `[setup]` table holds the TOML
/// lines SETUP (a `[checks.ID]` table may follow them). No check may fail internally.
pub fn audit_setup(
    select: &str,
    model: Option<&str>,
    data: Option<&str>,
    log: Option<&str>,
    setup: &str,
) -> Audit {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let cfg = super::write(dir.path(), "trainlint.toml", &format!("[setup]\n{setup}\n"));
    let mut args: Vec<String> = vec![cfg.display().to_string(), "--select".into(), select.into()];
    let inputs = [
        ("--model", "models", model.map(|m| format!("{m}.pt"))),
        ("--data", "data", data.map(String::from)),
        ("--log", "logs", log.map(String::from)),
    ];
    for (flag, folder, file) in inputs {
        if let Some(file) = file {
            args.extend([
                flag.to_string(),
                super::fixture(&format!("{folder}/{file}")),
            ]);
        }
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let audit = audit_of(&args);
    super::typed::assert_none_failed(&audit, &format!("{args:?}"));
    audit
}

/// [`audit_of`] `check --select SELECT` of fixture model `models/MODEL.pt` on the data file `data`.
pub fn audit_model_on(model: &str, data: &std::path::Path, select: &str) -> Audit {
    let model = super::fixture(&format!("models/{model}.pt"));
    audit_of(&[
        "--model",
        &model,
        "--data",
        data.to_str().expect("a UTF-8 path"),
        "--select",
        select,
    ])
}
