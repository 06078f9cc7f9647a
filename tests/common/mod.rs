//! Helpers shared by the CLI integration tests: run the real binary on the committed fixtures.
#![allow(dead_code)]
pub mod archives;
pub mod in_process;
pub mod project;
pub mod typed;
use std::path::{Path, PathBuf};
use std::process::Output;

use assert_cmd::Command;
use serde_json::Value;

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn fixture(rel: &str) -> String {
    root().join("fixtures").join(rel).display().to_string()
}

pub fn trainlint() -> Command {
    let mut c = Command::cargo_bin("trainlint").expect("binary built");
    c.env_remove("NO_COLOR")
        .env("CI", "true")
        .current_dir(root());
    c
}

/// Runs `trainlint ARGS`. An audit (`check`) that does not choose its thread count runs on one
/// libtorch thread: the tests run side by side, two audits at a time on a 2-core machine, and two
/// audits of N threads each on N cores spin against each other (measured: `tests/pt2_twins.rs` took
/// 225 s at the default count, 46 s at one thread each). One thread also gives every machine the
/// same digits, whatever its core count. The thread plan and the checks trained side by side are
/// tested with the counts `tests/threads.rs` sets, and the default count with [`run_as_is`].
pub fn run(args: &[&str]) -> Output {
    if args.first() == Some(&"check") && !args.contains(&"--threads") {
        let mut pinned = vec!["check", "--threads", "1"];
        pinned.extend_from_slice(&args[1..]);
        return run_as_is(&pinned);
    }
    run_as_is(args)
}

/// Runs `trainlint ARGS` exactly as given: an audit then uses the machine's cores.
pub fn run_as_is(args: &[&str]) -> Output {
    trainlint().args(args).output().expect("trainlint runs")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `trainlint check --output-format json` with the given extra args; returns (exit code, report).
pub fn check_json(args: &[&str]) -> (i32, Value) {
    let mut all = vec!["check", "--output-format", "json", "--no-timings"];
    all.extend_from_slice(args);
    let o = run(&all);
    let code = o.status.code().expect("exit code");
    let report: Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}); stdout: {} stderr: {}",
            stdout(&o),
            stderr(&o)
        )
    });
    (code, report)
}

pub fn model_data(model: &str, data: &str) -> Vec<String> {
    vec![
        "--model".into(),
        fixture(&format!("models/{model}.pt")),
        "--data".into(),
        fixture(&format!("data/{data}")),
    ]
}

/// The report entry of one check.
pub fn check_entry<'a>(report: &'a Value, id: &str) -> &'a Value {
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == id)
        .unwrap_or_else(|| panic!("no check {id} in report"))
}

pub fn findings<'a>(report: &'a Value, id: &str) -> Vec<&'a Value> {
    check_entry(report, id)["findings"]
        .as_array()
        .unwrap()
        .iter()
        .collect()
}

/// Every finding of every check, in report order.
pub fn all_findings(report: &Value) -> Vec<&Value> {
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|c| c["findings"].as_array().unwrap())
        .collect()
}

/// Per check id: its status and its findings as `kind at location`, sorted (what two audits of the
/// same model must agree on).
pub fn verdicts(report: &Value) -> std::collections::BTreeMap<String, (String, Vec<String>)> {
    report["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .map(|c| {
            let mut findings: Vec<String> = c["findings"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|f| format!("{} at {}", f["kind"], f["location"]))
                .collect();
            findings.sort();
            let status = c["status"].as_str().expect("a status").to_string();
            (
                c["id"].as_str().expect("an id").to_string(),
                (status, findings),
            )
        })
        .collect()
}

/// The kind of every finding, in report order.
pub fn kinds_of(report: &Value) -> Vec<String> {
    all_findings(report)
        .iter()
        .map(|f| f["kind"].as_str().unwrap().to_string())
        .collect()
}

/// A bad-input run: exit 2, a one-line `error:` message, and no panic or backtrace.
pub fn assert_input_error(o: &Output) -> String {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(2), "stderr: {err}");
    assert!(err.starts_with("error: "), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err}");
    assert!(
        !err.contains("panicked") && !err.contains("backtrace"),
        "{err}"
    );
    err
}

pub fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// (id, status, reason) of every check in a JSON report, in report order.
pub fn statuses(report: &Value) -> Vec<(String, String, String)> {
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["id"].as_str().unwrap().to_string(),
                c["status"].as_str().unwrap().to_string(),
                c["reason"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

/// Array `name` of a committed .npz fixture (`rel` under fixtures/, e.g. `data/classes4.npz`).
pub fn fixture_array(rel: &str, name: &str) -> tch::Tensor {
    tch::Tensor::read_npz(fixture(rel))
        .unwrap()
        .into_iter()
        .find(|(n, _)| n == name)
        .map(|(_, t)| t)
        .unwrap_or_else(|| panic!("{rel} has no array {name}"))
}

/// A data sample written at run time: `inputs` and `targets` in DIR/FILE (.npz); its path.
pub fn write_sample(
    dir: &Path,
    file: &str,
    inputs: &tch::Tensor,
    targets: &tch::Tensor,
) -> PathBuf {
    let path = dir.join(file);
    tch::Tensor::write_npz(&[("inputs", inputs), ("targets", targets)], &path).unwrap();
    path
}
