//! Hostile and odd inputs, made here: unreadable or odd model paths, zips that are not TorchScript,
//! empty configs, class indices outside the logits, short logs, and a check that never ends.
mod common;

use std::io::Write;
use std::path::{Path, PathBuf};

use common::*;

fn check_model(model: &Path) -> std::process::Output {
    run(&[
        "check",
        "--model",
        &model.display().to_string(),
        "--data",
        &fixture("data/regression.npz"),
    ])
}

/// A zip archive with these (name, contents) entries, stored uncompressed.
fn zip_with(dir: &Path, name: &str, entries: &[(&str, &str)]) -> PathBuf {
    let path = dir.join(name);
    let mut zip = zip::ZipWriter::new(std::fs::File::create(&path).unwrap());
    let options =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for (entry, text) in entries {
        zip.start_file(*entry, options).unwrap();
        zip.write_all(text.as_bytes()).unwrap();
    }
    zip.finish().unwrap();
    path
}

#[test]
fn a_folder_or_a_symlink_loop_as_the_model_is_not_called_missing() {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("model.pt");
    std::fs::create_dir(&folder).unwrap();
    let err = assert_input_error(&check_model(&folder));
    assert!(
        err.contains("is a folder, not a TorchScript model file"),
        "{err}"
    );

    let looped = dir.path().join("loop.pt");
    std::os::unix::fs::symlink(&looped, &looped).unwrap();
    let err = assert_input_error(&check_model(&looped));
    assert!(!err.contains("does not exist"), "{err}");
    assert!(
        err.contains("cannot read model file") && err.contains("symbolic links"),
        "{err}"
    );
}

#[test]
fn an_unreadable_model_says_permission_denied() {
    // The tests run as root, which reads any file; in a user namespace of its own, root is an
    // unprivileged owner and a mode-000 file is refused (EACCES) while libtorch still loads.
    let probe = std::process::Command::new("unshare")
        .args(["--user", "true"])
        .status();
    if !probe.is_ok_and(|s| s.success()) {
        eprintln!("skipped: `unshare --user` is not available here");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let locked = dir.path().join("locked.pt");
    std::fs::copy(fixture("models/mlp_default.pt"), &locked).unwrap();
    std::fs::set_permissions(&locked, std::os::unix::fs::PermissionsExt::from_mode(0o000)).unwrap();
    let o = std::process::Command::new("unshare")
        .arg("--user")
        .arg(assert_cmd::cargo::cargo_bin("trainlint"))
        .args(["check", "--model"])
        .arg(&locked)
        .args(["--data", &fixture("data/regression.npz")])
        .env("CI", "true")
        .current_dir(root())
        .output()
        .unwrap();
    let err = assert_input_error(&o);
    assert!(err.contains("cannot read model file"), "{err}");
    assert!(err.contains("permission denied"), "{err}");
    assert!(!err.contains("zip archive"), "{err}");
}

#[test]
fn a_zip_that_is_not_torchscript_says_so_in_words() {
    let dir = tempfile::tempdir().unwrap();
    let nested = zip_with(dir.path(), "nested.pt", &[("folder/notes.txt", "hello")]);
    let err = assert_input_error(&check_model(&nested));
    assert!(!err.contains("state_dict"), "{err}");
    assert!(
        err.contains("a zip archive without code/ or constants.pkl"),
        "{err}"
    );

    let flat = zip_with(dir.path(), "flat.pt", &[("notes.txt", "hello")]);
    let err = assert_input_error(&check_model(&flat));
    assert!(!err.contains("enforce fail"), "{err}");
    assert!(!err.contains(".cc:"), "{err}");
    assert!(
        err.contains("a zip archive without code/ or constants.pkl"),
        "{err}"
    );

    // A checkpoint written by torch.save is still recognised as one.
    let checkpoint = zip_with(
        dir.path(),
        "checkpoint.pt",
        &[("sd/data.pkl", "."), ("sd/byteorder", "little")],
    );
    let err = assert_input_error(&check_model(&checkpoint));
    assert!(err.contains("torch.save checkpoint or state_dict"), "{err}");
}

#[test]
fn an_empty_config_file_loads_as_defaults_and_then_there_is_nothing_to_check() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(dir.path(), "trainlint.toml", "");
    // Passed explicitly, and found by the upward search.
    for args in [vec!["check", cfg.to_str().unwrap()], vec!["check"]] {
        let o = trainlint()
            .current_dir(dir.path())
            .args(&args)
            .output()
            .unwrap();
        let err = assert_input_error(&o);
        assert!(!err.contains("no trainlint.toml"), "{err}");
        assert!(
            err.contains("nothing to check: ")
                && err.contains("trainlint.toml sets no model, data or log path"),
            "{err}"
        );
        assert!(err.contains("set [model] path"), "{err}");
    }
}

#[test]
fn a_pyproject_that_mentions_tool_trainlint_in_a_comment_does_not_stop_the_search() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "trainlint.toml",
        &format!(
            "[model]\npath = {:?}\n[data]\npath = {:?}\n",
            fixture("models/mlp_default.pt"),
            fixture("data/regression.npz")
        ),
    );
    let pkg = dir.path().join("pkg");
    std::fs::create_dir(&pkg).unwrap();
    write(
        &pkg,
        "pyproject.toml",
        "[project]\nname = \"pkg\"\n# trainlint reads [tool.trainlint] from the repository root\n",
    );
    let (code, report) = check_json(&[pkg.to_str().unwrap(), "--select", "init-std"]);
    assert_eq!(code, 0, "{report}");
    assert!(
        report["inputs"]["config"]
            .as_str()
            .is_some_and(|c| c.ends_with("trainlint.toml")),
        "{}",
        report["inputs"]
    );
}

/// A safetensors sample for the 32-input classifier: 8 samples, these int64 class targets.
fn class_sample(dir: &Path, targets: &[i64]) -> PathBuf {
    let n = targets.len();
    let inputs: Vec<u8> = (0..n * 32)
        .flat_map(|i| ((i % 7) as f32 * 0.1 - 0.3).to_le_bytes())
        .collect();
    let header = format!(
        r#"{{"inputs":{{"dtype":"F32","shape":[{n},32],"data_offsets":[0,{a}]}},"targets":{{"dtype":"I64","shape":[{n}],"data_offsets":[{a},{b}]}}}}"#,
        a = inputs.len(),
        b = inputs.len() + 8 * n
    );
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend(header.as_bytes());
    bytes.extend(inputs);
    bytes.extend(targets.iter().flat_map(|t| t.to_le_bytes()));
    let path = dir.join("classes.safetensors");
    std::fs::write(&path, bytes).unwrap();
    path
}

#[test]
fn class_indices_outside_the_logits_fail_in_words_without_a_cpp_stack() {
    let dir = tempfile::tempdir().unwrap();
    for (targets, bad) in [
        ([0, 1, 2, -1, 0, 1, 2, 3], "class index -1 at sample 3"),
        ([0, 1, 2, 3, 0, 4, 2, 3], "class index 4 at sample 5"),
    ] {
        let data = class_sample(dir.path(), &targets);
        let (code, report) = check_json(&[
            "--model",
            &fixture("models/classifier.pt"),
            "--data",
            data.to_str().unwrap(),
            "--select",
            "overfit-batch,loss-oscillation,gradient-flow",
        ]);
        for id in ["overfit-batch", "loss-oscillation", "gradient-flow"] {
            let entry = check_entry(&report, id);
            let reason = entry["reason"].as_str().unwrap_or_default();
            if bad.contains("-1") {
                // A negative index is no class at all: each check that computes the loss says so.
                assert_eq!(code, 1);
                assert_eq!(entry["status"], "failed", "{id}: {entry}");
                assert_eq!(
                    reason,
                    format!("targets hold {bad}; class indices must be in 0..3 for K = 4 logits"),
                    "{id}"
                );
            } else {
                // Issue 23, 10: an index past the logits is output-range's finding, reported once
                // (selected or not, a data warning says it); the checks that compute the loss skip.
                assert_eq!(entry["status"], "skipped", "{id}: {entry}");
                assert_eq!(
                    reason,
                    "the targets hold class index 4, past the 4 logits: the loss cannot be computed (output-range reports it)",
                    "{id}"
                );
                let warnings = report["warnings"].to_string();
                assert!(
                    warnings.contains("hold class indices up to 4 but the model outputs 4 logits"),
                    "{warnings}"
                );
            }
        }
        let text = report.to_string();
        assert!(
            !text.contains("Exception raised from") && !text.contains("frame #"),
            "{text}"
        );
    }
}

#[test]
fn a_model_with_a_scalar_output_is_an_input_error_in_words() {
    let o = run(&[
        &["check"],
        &model_data("scalar_output", "regression.npz")
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()[..],
    ]
    .concat());
    let err = assert_input_error(&o);
    assert!(
        err.contains("output is a scalar (0-d)")
            && err.contains("trainlint needs one output per sample along dim 0"),
        "{err}"
    );
}

fn short_log(dir: &Path, rows: usize) -> PathBuf {
    let mut text = String::from("step,loss\n");
    for i in 0..rows {
        text.push_str(&format!("{i},{}\n", 1.0 / (1.0 + i as f64)));
    }
    write(dir, "short.csv", &text)
}

#[test]
fn a_log_shorter_than_min_points_is_skipped_or_labelled_not_passed() {
    let dir = tempfile::tempdir().unwrap();
    let log = short_log(dir.path(), 12);
    let log = log.to_str().unwrap();
    let (_, report) = check_json(&["--log", log, "--select", "loss-oscillation"]);
    let entry = check_entry(&report, "loss-oscillation");
    assert_eq!(entry["status"], "skipped", "{entry}");
    assert_eq!(
        entry["reason"],
        "the loss log has 12 finite rows; loss-oscillation needs at least min_points = 30"
    );

    // With the probe, its verdict stands and the log's curve says it was not judged.
    let mut args: Vec<String> = model_data("mlp_default", "regression.npz");
    args.extend([
        "--log".into(),
        log.into(),
        "--select".into(),
        "loss-oscillation".into(),
    ]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (_, report) = check_json(&args);
    let entry = check_entry(&report, "loss-oscillation");
    assert_eq!(entry["status"], "passed", "{entry}");
    let curves = entry["curves"].as_array().unwrap();
    assert!(
        curves.iter().any(|c| c["name"]
            .as_str()
            .unwrap()
            .contains("not judged: the loss log has 12 finite rows")),
        "{entry}"
    );
    assert!(curves.iter().any(|c| c["name"]
        .as_str()
        .unwrap()
        .starts_with("learning-rate probe")));
}

#[test]
fn a_check_past_its_timeout_is_reported_and_the_others_still_run() {
    let started = std::time::Instant::now();
    let mut args: Vec<String> = model_data("spins_when_training", "regression.npz");
    args.extend(
        [
            "--select",
            "init-std,overfit-batch,output-range",
            "--timeout",
            "2",
        ]
        .map(String::from),
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, report) = check_json(&args);
    let elapsed = started.elapsed();
    assert_eq!(code, 1, "{report}");
    let spun = check_entry(&report, "overfit-batch");
    assert_eq!(spun["status"], "failed");
    assert_eq!(spun["reason"], "timed out after 2 s");
    let finding = &spun["findings"][0];
    assert_eq!(finding["kind"], "check-failed");
    assert_eq!(
        finding["message"],
        "check overfit-batch timed out after 2 s"
    );
    assert_eq!(finding["evidence"]["timeout_s"], 2.0);
    // The checks before and after it ran, on a model the spinning thread never touches.
    for id in ["init-std", "output-range"] {
        assert_eq!(check_entry(&report, id)["status"], "passed", "{id}");
    }
    // The stuck thread is neither joined nor waited for at exit.
    assert!(elapsed.as_secs() < 30, "took {elapsed:?}");
}

#[test]
fn timeouts_leave_reports_byte_for_byte_the_same() {
    let mut base: Vec<String> = model_data("cnn_bn", "images.npz");
    base.extend(["-q".into()]);
    let reports: Vec<String> = ["0", "600"]
        .iter()
        .map(|t| {
            let mut args: Vec<&str> = base.iter().map(String::as_str).collect();
            args.extend(["--timeout", t]);
            check_json(&args).1.to_string()
        })
        .collect();
    assert_eq!(reports[0], reports[1]);
}
