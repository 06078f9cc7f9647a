//! The CLI end to end: exit codes, output formats, configuration, bad inputs, subcommands.
mod common;

use common::*;
use sha2::{Digest, Sha256};

fn args<'a>(v: &'a [String], extra: &[&'a str]) -> Vec<&'a str> {
    let mut out: Vec<&str> = v.iter().map(String::as_str).collect();
    out.extend_from_slice(extra);
    out
}

#[test]
fn exit_code_0_when_clean_1_on_findings_and_exit_zero_overrides() {
    let clean = model_data("mlp_default", "regression.npz");
    assert_eq!(
        run(&[&["check"], &args(&clean, &[])[..]].concat())
            .status
            .code(),
        Some(0)
    );
    let bad = model_data("mlp_std1", "regression.npz");
    assert_eq!(
        run(&[&["check"], &args(&bad, &[])[..]].concat())
            .status
            .code(),
        Some(1)
    );
    assert_eq!(
        run(&[&["check"], &args(&bad, &["--exit-zero"])[..]].concat())
            .status
            .code(),
        Some(0)
    );
}

#[test]
fn fail_on_warning_counts_warnings_and_levels_cap_severity() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(
        dir.path(),
        "trainlint.toml",
        &format!(
            "[model]\npath = {:?}\n[data]\npath = {:?}\n[checks.init-std]\nlevel = \"warn\"\n",
            fixture("models/mlp_std1.pt"),
            fixture("data/regression.npz")
        ),
    );
    let cfg = cfg.display().to_string();
    let (code, report) = check_json(&[&cfg]);
    assert_eq!(code, 0, "warnings do not fail by default");
    assert!(findings(&report, "init-std")
        .iter()
        .all(|f| f["severity"] == "warning"));
    // Two init-std findings capped at warnings, and initial-loss's: std-1 weights start the loss at
    // ~2e4× the targets' mean square.
    assert_eq!(report["summary"]["warnings"], 3);
    let (code, _) = check_json(&[&cfg, "--fail-on", "warning"]);
    assert_eq!(code, 1);
}

#[test]
fn text_report_groups_findings_with_location_help_and_summary() {
    let o = run(&[
        &["check", "--color", "never"],
        &args(&model_data("mlp_std1", "regression.npz"), &[])[..],
    ]
    .concat());
    let out = stdout(&o);
    assert!(out.contains("error[init-std/std-out-of-band] std 1.02 is outside the expected band 0.034..0.75 for fan_in 32, fan_out 64"), "{out}");
    assert!(out.contains("  --> parameter fc1.weight\n"), "{out}");
    assert!(out.contains("  = help: drop the custom init"), "{out}");
    assert!(out.contains("Found 2 errors, 1 warning in"), "{out}");
    assert!(
        !out.contains('\u{1b}'),
        "--color never must not emit escapes"
    );
    let o = run(&[
        &["check", "--color", "always"],
        &args(&model_data("mlp_std1", "regression.npz"), &[])[..],
    ]
    .concat());
    assert!(stdout(&o).contains("\u{1b}["), "--color always colors");
}

#[test]
fn no_color_env_disables_color_in_auto_mode() {
    let o = trainlint()
        .env("NO_COLOR", "1")
        .args(
            [
                &["check"],
                &args(&model_data("mlp_std1", "regression.npz"), &[])[..],
            ]
            .concat(),
        )
        .output()
        .unwrap();
    assert!(!stdout(&o).contains('\u{1b}'));
}

#[test]
fn json_report_has_version_statuses_durations_and_evidence() {
    let o = run(&[
        &["check", "--output-format", "json"],
        &args(&model_data("mlp_std1", "regression.npz"), &[])[..],
    ]
    .concat());
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(report["version"], 1);
    assert_eq!(report["tool"]["name"], "trainlint");
    let c = check_entry(&report, "init-std");
    assert_eq!(c["status"], "findings");
    assert!(c["duration_ms"].as_f64().unwrap() >= 0.0);
    let f = &c["findings"][0];
    assert_eq!(f["check"], "init-std");
    assert_eq!(f["severity"], "error");
    assert_eq!(f["location"]["parameter"], "fc1.weight");
    assert!((f["evidence"]["std"].as_f64().unwrap() - 1.0).abs() < 0.1);
    assert!(f["help"].as_str().unwrap().contains("kaiming"));
}

#[test]
fn the_same_inputs_give_the_same_json_report_byte_for_byte() {
    let a = model_data("cnn_bn_trained", "images.npz");
    let run_once = |seed: &str| {
        run(&[
            &[
                "check",
                "--output-format",
                "json",
                "--no-timings",
                "--seed",
                seed,
            ],
            &args(&a, &[])[..],
        ]
        .concat())
        .stdout
    };
    assert_eq!(run_once("7"), run_once("7"));
}

#[test]
fn output_file_receives_the_report_and_the_terminal_the_summary() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("report.json");
    let out_s = out.display().to_string();
    let o = run(&[
        &["check", "--output-format", "json", "-o", &out_s],
        &args(&model_data("mlp_std1", "regression.npz"), &[])[..],
    ]
    .concat());
    assert_eq!(o.status.code(), Some(1));
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!(report["summary"]["errors"], 2);
    assert!(stderr(&o).contains("Found 2 errors"));
}

#[test]
fn safetensors_data_gives_the_same_report_as_npz() {
    let (_, a) = check_json(&args(&model_data("mlp_std1", "regression.npz"), &[]));
    let (_, b) = check_json(&args(
        &model_data("mlp_std1", "regression.safetensors"),
        &[],
    ));
    assert_eq!(a["checks"], b["checks"]);
}

#[test]
fn select_and_ignore_by_id_and_group() {
    let md = model_data("mlp_std1", "regression.npz");
    let (code, report) = check_json(&args(&md, &["--ignore", "model"]));
    assert_eq!(code, 0);
    assert!(report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .all(|c| c["id"] != "init-std"));
    let (_, report) = check_json(&args(&md, &["--select", "init-std"]));
    assert_eq!(report["checks"].as_array().unwrap().len(), 1);
    let o = run(&[&["check", "--select", "init-sdt"], &args(&md, &[])[..]].concat());
    let err = assert_input_error(&o);
    assert!(err.contains("did you mean `init-std`?"), "{err}");
}

#[test]
fn config_errors_point_at_file_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(
        dir.path(),
        "trainlint.toml",
        "[model]\npath = \"m.pt\"\n\n[setup]\nlearning_rate = 0.1\n",
    );
    let o = run(&["check", &cfg.display().to_string()]);
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    let first = err.lines().next().unwrap();
    assert!(first.starts_with("error: "), "{err}");
    assert!(first.ends_with("trainlint.toml:5:1: unknown key `learning_rate` in [setup] (expected one of: task, loss, optimizer, lr, momentum, weight_decay, batch_size, shuffle, temporal)"), "{first}");
    assert!(err.contains("5 | learning_rate = 0.1"), "{err}");

    write(dir.path(), "trainlint.toml", "[setup]\nbatch_sise = 4\n");
    let err = stderr(&run(&["check", &cfg.display().to_string()]));
    assert!(
        err.contains(
            "trainlint.toml:2:1: unknown key `batch_sise` in [setup]; did you mean `batch_size`?"
        ),
        "{err}"
    );

    write(dir.path(), "trainlint.toml", "[setup]\nlr = -1\n");
    let err = stderr(&run(&["check", &cfg.display().to_string()]));
    assert!(
        err.contains("trainlint.toml:2:6: setup.lr: must be greater than 0, found -1"),
        "{err}"
    );

    write(
        dir.path(),
        "trainlint.toml",
        "[setup]\ntask = \"classifcation\"\n",
    );
    let err = stderr(&run(&["check", &cfg.display().to_string()]));
    assert!(err.contains("did you mean \"classification\"?"), "{err}");

    write(dir.path(), "trainlint.toml", "[setup\nlr = 1\n");
    let o = run(&["check", &cfg.display().to_string()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("trainlint.toml:1:"), "{}", stderr(&o));
}

#[test]
fn config_is_found_upwards_with_paths_relative_to_it_and_cli_overrides_it() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(fixture("models/mlp_std1.pt"), dir.path().join("model.pt")).unwrap();
    std::fs::copy(
        fixture("models/mlp_default.pt"),
        dir.path().join("clean.pt"),
    )
    .unwrap();
    std::fs::copy(fixture("data/regression.npz"), dir.path().join("data.npz")).unwrap();
    write(
        dir.path(),
        "pyproject.toml",
        "[project]\nname = \"x\"\n\n[tool.trainlint.model]\npath = \"model.pt\"\n[tool.trainlint.data]\npath = \"data.npz\"\n",
    );
    let sub = dir.path().join("src/deep");
    std::fs::create_dir_all(&sub).unwrap();
    let o = trainlint()
        .current_dir(&sub)
        .args(["check", "--output-format", "json"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    // A trainlint.toml wins over pyproject.toml in the same folder; CLI flags win over both.
    write(
        dir.path(),
        "trainlint.toml",
        "[model]\npath = \"clean.pt\"\n[data]\npath = \"data.npz\"\n",
    );
    let o = trainlint()
        .current_dir(&sub)
        .args(["check"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let model = dir.path().join("model.pt").display().to_string();
    let o = trainlint()
        .current_dir(&sub)
        .args(["check", "--model", &model])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
}

#[test]
fn nothing_to_check_is_an_input_error() {
    let dir = tempfile::tempdir().unwrap();
    let o = trainlint()
        .current_dir(dir.path())
        .args(["check"])
        .output()
        .unwrap();
    let err = assert_input_error(&o);
    assert!(err.contains("nothing to check"), "{err}");
}

#[test]
fn bad_models_give_one_line_errors_with_exit_2() {
    let o = run(&[
        &["check"],
        &args(&model_data("does_not_exist", "regression.npz"), &[])[..],
    ]
    .concat());
    assert!(assert_input_error(&o).contains("does_not_exist.pt does not exist"));

    let o = run(&[
        &["check"],
        &args(&model_data("state_dict", "regression.npz"), &[])[..],
    ]
    .concat());
    let err = assert_input_error(&o);
    assert!(err.contains("is not a TorchScript model"), "{err}");
    assert!(
        err.contains("torch.jit.script") && err.contains("torch.jit.trace"),
        "{err}"
    );

    let o = run(&[
        &["check"],
        &args(&model_data("truncated", "regression.npz"), &[])[..],
    ]
    .concat());
    let err = assert_input_error(&o);
    assert!(err.contains("damaged or incomplete"), "{err}");

    let o = run(&[
        &["check", "--device", "cuda:7"],
        &args(&model_data("mlp_default", "regression.npz"), &[])[..],
    ]
    .concat());
    assert!(assert_input_error(&o).contains("CUDA is not available"));
}

#[test]
fn data_the_model_rejects_names_the_shape_and_the_complaint() {
    let o = run(&[
        &["check"],
        &args(&model_data("mlp_default", "images.npz"), &[])[..],
    ]
    .concat());
    let err = assert_input_error(&o);
    assert!(
        err.contains("rejected data `inputs` of shape [64, 3, 16, 16]"),
        "{err}"
    );
    assert!(
        err.contains("mat1 and mat2 shapes cannot be multiplied"),
        "{err}"
    );
}

#[test]
fn bad_data_gives_one_line_errors_with_exit_2() {
    let o = run(&[
        &["check"],
        &args(&model_data("mlp_default", "regression.npz"), &[])[..],
        &["--data", &fixture("data/nope.npz")],
    ]
    .concat());
    // --data twice is a usage error (exit 2) from clap.
    assert_eq!(o.status.code(), Some(2));

    let dir = tempfile::tempdir().unwrap();
    let cfg = write(
        dir.path(),
        "trainlint.toml",
        &format!(
            "[model]\npath = {:?}\n[data]\npath = {:?}\ninputs = \"x\"\n",
            fixture("models/mlp_default.pt"),
            fixture("data/regression.npz")
        ),
    );
    let o = run(&["check", &cfg.display().to_string()]);
    let err = assert_input_error(&o);
    assert!(
        err.contains("has no array `x` (it has: `inputs` [64, 32], `targets` [64, 1])"),
        "{err}"
    );

    let o = run(&[
        &["check"],
        &args(&model_data("mlp_default", "bad_dtype.npz"), &[])[..],
    ]
    .concat());
    assert!(assert_input_error(&o).contains("unsupported dtype <c8"));
    let o = run(&[
        &["check"],
        &args(&model_data("mlp_default", "count_mismatch.npz"), &[])[..],
    ]
    .concat());
    assert!(assert_input_error(&o).contains("`inputs` has 6 samples but `targets` has 5"));
    let o = run(&[
        &["check"],
        &args(&model_data("mlp_default", "empty.npz"), &[])[..],
    ]
    .concat());
    assert!(assert_input_error(&o).contains("array `inputs` in"));
    let o = run(&[
        &["check"],
        &args(&model_data("mlp_default", "missing.npz"), &[])[..],
    ]
    .concat());
    assert!(assert_input_error(&o).contains("missing.npz does not exist"));
    let not_data = fixture("make_fixtures.py");
    let o = run(&[
        "check",
        "--model",
        &fixture("models/mlp_default.pt"),
        "--data",
        &not_data,
    ]);
    assert!(assert_input_error(&o).contains("unsupported data format"));
}

#[test]
fn loss_logs_load_from_csv_and_jsonl_and_malformed_lines_are_errors() {
    for log in ["logs/sgd_noisy_descent.csv", "logs/sgd_noisy_descent.jsonl"] {
        let o = run(&["check", "--log", &fixture(log)]);
        assert!(
            matches!(o.status.code(), Some(0) | Some(1)),
            "{log}: {}",
            stderr(&o)
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let bad = write(dir.path(), "log.csv", "step,loss\n0,1.0\n1,oops\n");
    let o = run(&["check", "--log", &bad.display().to_string()]);
    let err = assert_input_error(&o);
    assert!(
        err.contains("log.csv:3: column `loss`: \"oops\" is not a number"),
        "{err}"
    );
}

fn sha256(path: &std::path::Path) -> Vec<u8> {
    Sha256::digest(std::fs::read(path).unwrap()).to_vec()
}

#[test]
fn input_files_are_unchanged_after_a_run() {
    let files = [
        common::root().join("fixtures/models/cnn_bn_trained.pt"),
        common::root().join("fixtures/data/images.npz"),
        common::root().join("fixtures/logs/sgd_noisy_descent.csv"),
    ];
    let before: Vec<_> = files.iter().map(|f| sha256(f)).collect();
    let o = run(&[
        "check",
        "--model",
        &files[0].display().to_string(),
        "--data",
        &files[1].display().to_string(),
        "--log",
        &files[2].display().to_string(),
    ]);
    assert!(o.status.code().is_some());
    let after: Vec<_> = files.iter().map(|f| sha256(f)).collect();
    assert_eq!(before, after);
}

#[test]
fn rules_lists_every_check_and_explain_prints_its_docs() {
    let out = stdout(&run(&["rules"]));
    assert!(
        out.lines()
            .any(|l| l.starts_with("init-std") && l.contains("model") && l.contains("deny")),
        "{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.trim_start().starts_with("init-std/std-out-of-band") && l.contains("error")),
        "rules lists each check's kinds: {out}"
    );
    let out = stdout(&run(&["explain", "init-std"]));
    for section in [
        "## What it does",
        "## Why it matters",
        "## Finding kinds",
        "## Options",
    ] {
        assert!(out.contains(section), "missing {section}");
    }
    assert!(out.contains("band_factor = 3.0"), "{out}");
    assert!(
        out.contains("mode = \"fan-in\"  # `fan-in` judges"),
        "{out}"
    );
    let out = stdout(&run(&["explain", "init-std/std-out-of-band"]));
    for section in [
        "## Why it matters",
        "## How it decides",
        "## Example",
        "## How to fix",
    ] {
        assert!(out.contains(section), "missing {section}");
    }
    let o = run(&["explain", "init-sdt"]);
    let err = assert_input_error(&o);
    assert!(err.contains("did you mean init-std"), "{err}");
}

#[test]
fn init_writes_a_commented_config_with_detected_keys_and_task() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(fixture("data/images.npz"), dir.path().join("images.npz")).unwrap();
    let d = dir.path().display().to_string();
    // --model / --data are relative to the working directory, as for `check`.
    let o = trainlint()
        .current_dir(dir.path())
        .args(["init", ".", "--model", "model.pt", "--data", "images.npz"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let text = std::fs::read_to_string(dir.path().join("trainlint.toml")).unwrap();
    assert!(text.contains("path = \"model.pt\""));
    assert!(text.contains("inputs = \"inputs\""));
    assert!(text.contains("task = \"classification\""), "{text}");
    assert!(
        text.contains("[checks.init-std]\nlevel = \"deny\""),
        "{text}"
    );
    // The written file is itself a valid config.
    let mut settings_check = trainlint();
    let o = settings_check
        .args([
            "check",
            &dir.path().join("trainlint.toml").display().to_string(),
        ])
        .output()
        .unwrap();
    assert!(
        stderr(&o).contains("model.pt does not exist"),
        "{}",
        stderr(&o)
    );
    // No silent overwrite.
    let o = run(&["init", &d]);
    assert!(assert_input_error(&o).contains("pass --force"));
}

#[test]
fn schema_is_json_and_covers_sections_and_checks() {
    let schema: serde_json::Value = serde_json::from_slice(&run(&["schema"]).stdout).unwrap();
    assert_eq!(
        schema["properties"]["setup"]["properties"]["lr"]["type"],
        "number"
    );
    assert_eq!(
        schema["properties"]["checks"]["properties"]["init-std"]["properties"]["band_factor"]
            ["default"],
        3.0
    );
}

#[test]
fn a_check_that_fails_internally_is_reported_and_the_others_still_run() {
    // nll needs class-index targets; the regression targets fail the class-index validation inside
    // the checks that train, while the read-only checks still judge the model.
    let md = model_data("mlp_default", "regression.npz");
    let (code, report) = check_json(&args(&md, &["--loss", "nll", "--task", "regression"]));
    assert_eq!(code, 1);
    let failed = check_entry(&report, "overfit-batch");
    assert_eq!(failed["status"], "failed");
    assert!(
        failed["reason"]
            .as_str()
            .unwrap()
            .contains("(the Float targets cast to integers); class indices must be in 0..0"),
        "{failed}"
    );
    let f = &failed["findings"][0];
    assert_eq!(f["check"], "overfit-batch");
    assert_eq!(f["kind"], "check-failed");
    assert_eq!(f["severity"], "error");
    assert!(f["message"]
        .as_str()
        .unwrap()
        .starts_with("check overfit-batch failed: "));
    assert_eq!(check_entry(&report, "init-std")["status"], "passed");
    assert_eq!(
        report["summary"]["failed"].as_u64().unwrap(),
        4,
        "overfit-batch, the lr probe, gradient-flow and initial-loss compute the loss"
    );
}

#[test]
fn npy_files_and_folders_give_the_same_report_as_npz() {
    let (_, npz) = check_json(&args(&model_data("mlp_std1", "regression.npz"), &[]));
    for data in ["data/regression_npy/inputs.npy", "data/regression_npy"] {
        let (code, report) = check_json(&[
            "--model",
            &fixture("models/mlp_std1.pt"),
            "--data",
            &fixture(data),
        ]);
        assert_eq!(code, 1, "{data}");
        assert_eq!(report["checks"], npz["checks"], "{data}");
    }
}

#[test]
fn a_text_report_written_to_a_file_leaves_its_summary_on_the_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("report.txt");
    let md = model_data("mlp_std1", "regression.npz");
    let o = run(&[
        &["check", "--color", "never", "-o", out.to_str().unwrap()],
        &args(&md, &[])[..],
    ]
    .concat());
    assert_eq!(o.status.code(), Some(1));
    assert!(stdout(&o).is_empty());
    assert!(std::fs::read_to_string(&out)
        .unwrap()
        .contains("error[init-std/"));
    assert!(
        stderr(&o).starts_with(&format!(
            "Found 2 errors, 1 warning in {} checks",
            trainlint_checks::registry::all().len()
        )),
        "{}",
        stderr(&o)
    );
}

#[test]
fn usage_errors_are_one_line_with_exit_2_and_help_still_prints() {
    for args in [
        &["check", "--threads", "-1", "--log", "x.csv"][..],
        &["chek"][..],
        &["check", "--output-format", "yaml"][..],
    ] {
        let err = assert_input_error(&run(args));
        assert!(!err.contains("For more information"), "{err}");
    }
    let o = run(&["check", "--help"]);
    assert_eq!(o.status.code(), Some(0));
    assert!(stdout(&o).contains("Usage: trainlint check"));
}
