//! Output formats (snapshots of each on the demo, SARIF against the official schema) and the CI gate
//! controls: baselines, ignores, statistics, quiet progress, completions.
mod common;

use common::*;
use serde_json::Value;

/// The demo audit in a format, single-threaded (bit-stable numbers) and without timings.
fn demo(format: &str, extra: &[&str]) -> (i32, String) {
    let mut args = vec![
        "check",
        "examples/demo",
        "--threads",
        "1",
        "--no-timings",
        "--color",
        "never",
    ];
    args.extend_from_slice(&["--output-format", format]);
    args.extend_from_slice(extra);
    let o = run(&args);
    (o.status.code().unwrap(), stdout(&o))
}

/// Snapshots pin the structure and words of every format, not the digits that training on another CPU
/// can move (a relative MSE of 0.832 here is 0.833 on another x86 CPU): decimals and sparklines are
/// masked. Byte-identical reports are a same-machine property, tested in tests/cli.rs.
#[test]
fn every_format_matches_its_snapshot() {
    for format in ["text", "json", "sarif", "junit", "github", "gitlab"] {
        let (code, out) = demo(format, &[]);
        assert_eq!(code, 1, "{format}");
        insta::with_settings!({filters => vec![
            (r"\d+\.\d+(e-?\d+)?", "[num]"),
            (r"\d+e-?\d+", "[num]"),
            (r"[▁▂▃▄▅▆▇█]{2,}", "[curve]"),
        ]}, {
            insta::assert_snapshot!(format!("demo_{format}"), out);
        });
    }
}

/// Replace every `pattern` equal to `stray` by its escaped form; returns how many were replaced.
fn escape_patterns(v: &mut Value, stray: &str) -> usize {
    match v {
        Value::Object(map) => {
            let mut n = 0;
            for (k, child) in map.iter_mut() {
                if k == "pattern" && child == stray {
                    *child = Value::from(stray.replace("]?$", "\\]?$"));
                    n += 1;
                } else {
                    n += escape_patterns(child, stray);
                }
            }
            n
        }
        Value::Array(items) => items.iter_mut().map(|c| escape_patterns(c, stray)).sum(),
        _ => 0,
    }
}

#[test]
fn sarif_validates_against_the_official_schema_and_points_into_the_config() {
    let schema: Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("tests/schemas/sarif-2.1.0.json")).unwrap(),
    )
    .unwrap();
    // The published schema's `run.language` pattern ends in a stray `]` (ECMAScript reads it as a
    // literal); Rust's regex engines reject it when the meta-schema checks `format: regex`. Escape it,
    // which keeps its ECMAScript meaning, in memory only: the vendored file stays as published.
    let mut schema = schema;
    let stray = "^[a-zA-Z]{2}|^[a-zA-Z]{2}-[a-zA-Z]{2}]?$";
    assert_eq!(
        escape_patterns(&mut schema, stray),
        2,
        "run.language and toolComponent.language"
    );
    let validator = jsonschema::validator_for(&schema).expect("the schema compiles");
    let (_, out) = demo("sarif", &[]);
    let sarif: Value = serde_json::from_str(&out).unwrap();
    let errors: Vec<String> = validator
        .iter_errors(&sarif)
        .map(|e| format!("{e} at {}", e.instance_path()))
        .collect();
    assert!(errors.is_empty(), "{errors:#?}");
    let driver = &sarif["runs"][0]["tool"]["driver"];
    assert_eq!(driver["name"], "trainlint");
    assert!(driver["informationUri"]
        .as_str()
        .unwrap()
        .starts_with("https://"));
    let rules = driver["rules"].as_array().unwrap();
    // One rule per finding kind of the checks that ran.
    let kinds: usize = trainlint_checks::registry::all()
        .iter()
        .map(|c| c.info().kinds.len())
        .sum();
    assert_eq!(rules.len(), kinds);
    assert!(rules
        .iter()
        .all(|r| r["id"].as_str().unwrap().contains('/')));
    assert!(rules
        .iter()
        .all(|r| r["fullDescription"]["text"].as_str().unwrap().len() > 50));
    let results = sarif["runs"][0]["results"].as_array().unwrap();
    let scale = results
        .iter()
        .find(|r| r["ruleId"] == "loss-scale/unbalanced-terms")
        .unwrap();
    let loc = &scale["locations"][0]["physicalLocation"];
    assert_eq!(
        loc["artifactLocation"]["uri"],
        "examples/demo/trainlint.toml"
    );
    assert_eq!(
        loc["region"]["startLine"], 19,
        "the [checks.loss-scale] line"
    );
    let init = results
        .iter()
        .find(|r| r["ruleId"] == "init-std/std-out-of-band")
        .unwrap();
    assert_eq!(
        init["locations"][0]["physicalLocation"]["artifactLocation"]["uri"],
        "examples/demo/model.pt"
    );
    // Fingerprints are stable across runs and distinct across findings.
    let (_, again) = demo("sarif", &[]);
    assert_eq!(out, again);
    let prints: std::collections::HashSet<&str> = results
        .iter()
        .map(|r| {
            r["partialFingerprints"]["trainlintFinding/v1"]
                .as_str()
                .unwrap()
        })
        .collect();
    assert_eq!(prints.len(), results.len());
}

#[test]
fn junit_has_one_testcase_per_check_with_failures_skips_and_times() {
    let (_, out) = demo("junit", &[]);
    assert_eq!(
        out.matches("<testcase ").count(),
        trainlint_checks::registry::all().len()
    );
    assert_eq!(out.matches("<failure ").count(), 6);
    assert!(out.contains(
        "<testcase classname=\"trainlint.loss\" name=\"double-activation\" time=\"0.000\"/>"
    ));
    assert!(out.contains("time=\""));
}

#[test]
fn github_annotations_point_at_files_and_escape_newlines() {
    let (_, out) = demo("github", &[]);
    let errors: Vec<&str> = out.lines().filter(|l| l.starts_with("::error ")).collect();
    assert_eq!(errors.len(), 6);
    assert!(out.contains(
        "::error file=examples/demo/trainlint.toml,line=19,title=trainlint loss-scale/unbalanced-terms::"
    ));
    assert!(errors
        .iter()
        .all(|l| !l.contains('\n') && l.contains("%0A")));
}

#[test]
fn gitlab_code_quality_has_the_required_fields() {
    let (_, out) = demo("gitlab", &[]);
    let issues: Vec<Value> = serde_json::from_str(&out).unwrap();
    assert_eq!(issues.len(), 6);
    for i in &issues {
        for key in ["description", "check_name", "fingerprint", "severity"] {
            assert!(i[key].is_string(), "{key} in {i}");
        }
        assert!(i["location"]["path"].is_string());
        assert!(i["location"]["lines"]["begin"].as_u64().unwrap() >= 1);
        assert_eq!(i["severity"], "major");
    }
}

#[test]
fn output_file_gets_the_format_and_the_terminal_the_summary() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("trainlint.sarif");
    let (code, stdout_text) = demo("sarif", &["-o", out.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(stdout_text.is_empty());
    let sarif: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!(sarif["version"], "2.1.0");
}

#[test]
fn ci_runs_print_no_progress_noise() {
    // common::trainlint sets CI=true and stderr is a pipe: a training audit writes nothing to stderr.
    let o = run(&[
        "check",
        "examples/demo",
        "--threads",
        "1",
        "--select",
        "identity-overfit,overfit-batch",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(stderr(&o), "", "no progress output in CI");
}

#[test]
fn statistics_count_findings_per_check() {
    let o = run(&[
        "check",
        "examples/demo",
        "--threads",
        "1",
        "--statistics",
        "--color",
        "never",
    ]);
    let err = stderr(&o);
    assert!(
        err.contains("    1  init-std             1 error(s), 0 warning(s)"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 6, "{err}");
}

#[test]
fn a_baseline_hides_known_findings_reports_new_ones_and_stale_entries() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("baseline.json");
    let b = base.to_str().unwrap();
    let (code, _) = demo("json", &["--write-baseline", b]);
    assert_eq!(code, 1);
    let recorded: Value = serde_json::from_str(&std::fs::read_to_string(&base).unwrap()).unwrap();
    assert_eq!(recorded["entries"].as_array().unwrap().len(), 6);
    // The same audit against its own baseline: nothing new, exit 0.
    let (code, out) = demo("json", &["--baseline", b]);
    assert_eq!(code, 0);
    let report: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["summary"]["errors"], 0);
    assert_eq!(report["baseline"]["hidden"], 6);
    assert!(report["baseline"]["stale"].as_array().unwrap().is_empty());
    // A different setup: its findings are new, and the demo's entries are stale.
    let o = run(&[
        "check",
        "--model",
        "fixtures/models/mlp_zero_hidden.pt",
        "--data",
        "fixtures/data/regression.npz",
        "--select",
        "init-std",
        "--baseline",
        b,
        "--color",
        "never",
    ]);
    assert_eq!(o.status.code(), Some(1));
    let out = stdout(&o);
    assert!(
        out.contains("error[init-std/constant-weights] weight is all zeros"),
        "{out}"
    );
    assert!(
        out.contains(
            "warning: baseline entry init-std/std-out-of-band at parameter mid.weight (×1) no longer occurs"
        ),
        "{out}"
    );
    let bad = write(dir.path(), "bad.json", "{\"entries\": 3}");
    let o = run(&[
        "check",
        "examples/demo",
        "--baseline",
        bad.to_str().unwrap(),
    ]);
    assert!(assert_input_error(&o).contains("is not a trainlint baseline"));
}

#[test]
fn ignores_silence_matching_findings_and_unused_ones_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    for f in ["model.pt", "data.npz", "loss.csv"] {
        std::fs::copy(root().join("examples/demo").join(f), dir.path().join(f)).unwrap();
    }
    let cfg = std::fs::read_to_string(root().join("examples/demo/trainlint.toml")).unwrap()
        + "\n[[ignore]]\ncheck = \"init-std\"\nlocation = \"mid.weight\"\nreason = \"custom init under study\"\n\
           \n[[ignore]]\ncheck = \"stale-batchnorm\"\nreason = \"kept from an older model\"\n";
    write(dir.path(), "trainlint.toml", &cfg);
    let o = trainlint()
        .current_dir(dir.path())
        .args([
            "check",
            "--threads",
            "1",
            "--output-format",
            "json",
            "--select",
            "init-std,stale-batchnorm",
        ])
        .output()
        .unwrap();
    let report: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(o.status.code(), Some(0), "the only error was ignored");
    assert_eq!(check_entry(&report, "init-std")["ignored"], 1);
    assert_eq!(check_entry(&report, "init-std")["status"], "passed");
    let unused = report["unused_ignores"].as_array().unwrap();
    assert_eq!(unused.len(), 1);
    assert_eq!(unused[0]["check"], "stale-batchnorm");
    assert_eq!(unused[0]["reason"], "kept from an older model");
}

#[test]
fn completions_are_generated_for_common_shells() {
    for shell in ["bash", "zsh", "fish"] {
        let o = run(&["completions", shell]);
        assert_eq!(o.status.code(), Some(0));
        assert!(stdout(&o).contains("trainlint"), "{shell}");
    }
}

/// Reports plot at most 2,000 points per curve (LTTB) while the statistics use every row: a 20,000-row
/// zig-zag log is still judged a zig-zag, and its JSON stays small.
#[test]
fn long_logs_are_judged_on_every_row_and_plotted_from_two_thousand_points() {
    let dir = tempfile::tempdir().unwrap();
    let mut csv = String::from("step,loss\n");
    for i in 0..20_000 {
        let swing = if i % 2 == 0 { 1.6 } else { 0.6 };
        csv.push_str(&format!(
            "{i},{}\n",
            swing * (1.0 + 0.2 * (i as f64 / 3000.0).sin())
        ));
    }
    let log = write(dir.path(), "loss.csv", &csv);
    let (_, report) = check_json(&[
        "--log",
        &log.display().to_string(),
        "--select",
        "loss-oscillation",
    ]);
    let entry = check_entry(&report, "loss-oscillation");
    assert_eq!(
        entry["findings"][0]["kind"], "loss-oscillation/log-oscillates",
        "{entry}"
    );
    assert_eq!(
        entry["findings"][0]["location"]["log_steps"],
        serde_json::json!([0.0, 19999.0])
    );
    let curve = &entry["curves"][0];
    assert_eq!(curve["y"].as_array().unwrap().len(), 2000);
    assert_eq!(curve["x"][0], 0.0);
    assert_eq!(curve["x"][1999], 19999.0);
    assert!(serde_json::to_string(&report).unwrap().len() < 200_000);
}
