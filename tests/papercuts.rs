//! Papercuts a new user hits on a first run: paths given to `init`, config errors without a snippet, a
//! device that nothing uses, degenerate data samples, and skipped checks that do not say what to add.
mod common;

use std::path::Path;

use common::*;
use serde_json::Value;
use tch::{Kind, Tensor};

/// An .npz with `inputs` (n × 32 float, seeded) and the given `targets`.
fn sample(dir: &Path, name: &str, n: i64, targets: &Tensor) -> String {
    tch::manual_seed(0);
    let inputs = Tensor::randn([n, 32], (Kind::Float, tch::Device::Cpu));
    let p = dir.join(name);
    Tensor::write_npz(&[("inputs", &inputs), ("targets", targets)], &p).unwrap();
    p.display().to_string()
}

// 1. `init` reads --model / --data like `check` does: against the working directory.
#[test]
fn init_resolves_its_paths_against_the_working_directory_and_check_finds_them() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("audit")).unwrap();
    std::fs::create_dir_all(dir.path().join("runs")).unwrap();
    std::fs::copy(
        fixture("models/mlp_default.pt"),
        dir.path().join("runs/model.pt"),
    )
    .unwrap();
    std::fs::copy(
        fixture("data/regression.npz"),
        dir.path().join("runs/sample.npz"),
    )
    .unwrap();
    let o = trainlint()
        .current_dir(dir.path())
        .args([
            "init",
            "audit",
            "--model",
            "runs/model.pt",
            "--data",
            "runs/sample.npz",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "stderr: {}", stderr(&o));
    let toml = std::fs::read_to_string(dir.path().join("audit/trainlint.toml")).unwrap();
    assert!(toml.contains("path = \"../runs/model.pt\""), "{toml}");
    assert!(toml.contains("path = \"../runs/sample.npz\""), "{toml}");
    // The keys and task were read from the sample the user named.
    assert!(toml.contains("task = \"regression\""), "{toml}");

    let o = trainlint()
        .current_dir(dir.path())
        .args([
            "check",
            "audit",
            "--select",
            "init-std",
            "--output-format",
            "json",
            "-q",
        ])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "stderr: {}", stderr(&o));
    let report: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(report["inputs"]["model"]
        .as_str()
        .unwrap()
        .ends_with("model.pt"));

    // An absolute path stays absolute; a missing data file is named as the user typed it.
    let abs = dir.path().join("runs/sample.npz").display().to_string();
    let o = trainlint()
        .current_dir(dir.path())
        .args(["init", ".", "--data", &abs])
        .output()
        .unwrap();
    assert!(o.status.success(), "stderr: {}", stderr(&o));
    let toml = std::fs::read_to_string(dir.path().join("trainlint.toml")).unwrap();
    assert!(toml.contains(&format!("path = {abs:?}")), "{toml}");
    let o = trainlint()
        .current_dir(dir.path())
        .args(["init", "audit", "--force", "--data", "runs/nope.npz"])
        .output()
        .unwrap();
    let err = assert_input_error(&o);
    assert!(
        err.contains("runs/nope.npz") && !err.contains("audit/runs"),
        "{err}"
    );
}

// 2. Kept: a bare `trainlint check` with nothing to check says how to start.
#[test]
fn nothing_to_check_points_at_init() {
    let dir = tempfile::tempdir().unwrap();
    let o = trainlint()
        .current_dir(dir.path())
        .arg("check")
        .output()
        .unwrap();
    let err = assert_input_error(&o);
    assert!(err.contains("nothing to check"), "{err}");
    assert!(err.contains("trainlint init --model"), "{err}");
}

// 3. Kept: a zip that is not TorchScript, and a 0-d safetensors array, are refused in words.
#[test]
fn a_zip_that_is_not_torchscript_and_a_scalar_safetensors_array_read_in_words() {
    let o = run(&["check", "--model", &fixture("data/regression.npz")]);
    let err = assert_input_error(&o);
    assert!(err.contains("is not a TorchScript model"), "{err}");
    assert!(err.contains("torch.jit.script(model).save"), "{err}");

    let dir = tempfile::tempdir().unwrap();
    let header = br#"{"inputs":{"dtype":"F32","shape":[],"data_offsets":[0,4]},"targets":{"dtype":"F32","shape":[],"data_offsets":[4,8]}}"#;
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header);
    bytes.extend_from_slice(&[0; 8]);
    let p = write(dir.path(), "scalar.safetensors", "");
    std::fs::write(&p, bytes).unwrap();
    let o = run(&["check", "--data", &p.display().to_string()]);
    let err = assert_input_error(&o);
    assert!(err.contains("is a scalar (0-d, shape [])"), "{err}");
}

// 4. An [[ignore]] that lacks a key shows its header with a caret, like every other config error.
#[test]
fn an_ignore_without_reason_or_check_points_at_its_header_with_a_caret() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "[model]\npath = \"m.pt\"\n\n[[ignore]]\ncheck = \"init-std\"\n",
            "trainlint.toml:4:1: [[ignore]] needs `reason",
            "4 | [[ignore]]\n  | ^^^^^^^^^^",
        ),
        (
            "[[ignore]]\nreason = \"zero-init head\"\n",
            "trainlint.toml:1:1: [[ignore]] needs `check`",
            "1 | [[ignore]]\n  | ^^^^^^^^^^",
        ),
        (
            "ignore = [{ check = \"init-std\" }]\n",
            "trainlint.toml:1:11: [[ignore]] needs `reason",
            "1 | ignore = [{ check = \"init-std\" }]\n  |           ^^^^^^^^^^^^^^^^^^^^^^",
        ),
    ];
    for (text, message, snippet) in cases {
        let p = write(dir.path(), "trainlint.toml", text);
        let o = run(&["check", &p.display().to_string()]);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{err}");
        assert!(err.contains(message), "{err}");
        assert!(err.contains(snippet), "{err}");
    }
}

// 5. A device with no model to run on is called unused, and the report does not claim it.
#[test]
fn a_device_without_a_model_is_reported_unused_and_not_claimed() {
    let data = fixture("data/regression.npz");
    let o = run(&["check", "--data", &data, "--device", "cuda", "--no-timings"]);
    let (out, err) = (stdout(&o), stderr(&o));
    assert_eq!(o.status.code(), Some(0), "{err}");
    assert!(
        err.contains("warning: device cuda is unused"),
        "stderr: {err}"
    );
    let header = out.lines().next().unwrap();
    assert!(!header.contains("device"), "{header}");
    let (_, report) = check_json(&["--data", &data, "--device", "cuda"]);
    assert!(
        report["inputs"].get("device").is_none(),
        "{}",
        report["inputs"]
    );
    // A typo is still an error, model or not.
    let err = assert_input_error(&run(&["check", "--data", &data, "--device", "cdua"]));
    assert!(err.contains("invalid device \"cdua\""), "{err}");
    // With a model, the device is named as before.
    let (_, report) = check_json(&[
        "--model",
        &fixture("models/mlp_default.pt"),
        "--data",
        &data,
        "--select",
        "init-std",
    ]);
    assert_eq!(report["inputs"]["device"], "cpu");
}

// 6a. A sample of one with a BatchNorm model: one data warning; the training checks skip, none fails.
/// The report's warnings about the data sample (the setup values a config leaves unset are another).
fn data_warnings(report: &Value) -> Vec<&Value> {
    report["warnings"]
        .as_array()
        .map(|w| w.iter().filter(|w| w["input"] == "data").collect())
        .unwrap_or_default()
}

#[test]
fn a_sample_of_one_is_a_data_warning_and_batchnorm_checks_skip_instead_of_failing() {
    let dir = tempfile::tempdir().unwrap();
    let one = sample(
        dir.path(),
        "one.npz",
        1,
        &Tensor::zeros([1, 1], (Kind::Float, tch::Device::Cpu)),
    );
    let model = fixture("models/bn_mlp_trained.pt");
    let (code, report) = check_json(&["--model", &model, "--data", &one, "-q"]);
    let runs = statuses(&report);
    assert!(runs.iter().all(|(_, s, _)| s != "failed"), "{runs:?}");
    for id in ["overfit-batch", "gradient-flow", "loss-oscillation"] {
        let (_, status, reason) = runs.iter().find(|r| r.0 == id).unwrap();
        assert_eq!(status, "skipped", "{id}");
        assert!(
            reason.contains("needs at least 2 samples"),
            "{id}: {reason}"
        );
    }
    assert_eq!(code, 0, "{runs:?}");
    let warnings = data_warnings(&report);
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0]["message"]
            .as_str()
            .unwrap()
            .contains("holds 1 sample"),
        "{warnings:?}"
    );
    // The text report says it once, under the header line.
    let o = run(&[
        "check",
        "--model",
        &model,
        "--data",
        &one,
        "-q",
        "--no-timings",
    ]);
    let out = stdout(&o);
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[1].starts_with("warning: data: the data sample"),
        "{out}"
    );
    assert_eq!(out.matches("holds 1 sample").count(), 1, "{out}");
    // GitHub annotates the run with it.
    let o = run(&[
        "check",
        "--model",
        &model,
        "--data",
        &one,
        "-q",
        "--output-format",
        "github",
    ]);
    assert!(
        stdout(&o).starts_with("::warning title=trainlint data::the data sample"),
        "{}",
        stdout(&o)
    );
}

// 6b. A single class: overfit-batch would pass trivially, so it skips and says why.
#[test]
fn a_single_class_is_a_data_warning_and_overfit_batch_skips() {
    let dir = tempfile::tempdir().unwrap();
    let targets = Tensor::full([64], 3, (Kind::Int64, tch::Device::Cpu));
    let data = sample(dir.path(), "one_class.npz", 64, &targets);
    let (_, report) = check_json(&[
        "--model",
        &fixture("models/classifier.pt"),
        "--data",
        &data,
        "--select",
        "overfit-batch",
        "-q",
    ]);
    let entry = check_entry(&report, "overfit-batch");
    assert_eq!(entry["status"], "skipped", "{entry}");
    assert!(
        entry["reason"]
            .as_str()
            .unwrap()
            .contains("single class (3)"),
        "{entry}"
    );
    let message = data_warnings(&report)[0]["message"].as_str().unwrap();
    assert!(
        message.contains("single class (3) in all 64 samples"),
        "{message}"
    );

    // A sample with several classes has no warnings and trains as before.
    let (_, report) = check_json(&[
        "--model",
        &fixture("models/classifier.pt"),
        "--data",
        &fixture("data/classes4.npz"),
        "--select",
        "overfit-batch",
        "-q",
    ]);
    assert!(data_warnings(&report).is_empty(), "{}", report["warnings"]);
    assert_ne!(check_entry(&report, "overfit-batch")["status"], "skipped");
}

// 7. The text report says what to add to run the checks that were skipped for a missing input.
#[test]
fn skipped_checks_are_grouped_by_the_input_that_would_run_them() {
    let o = run(&[
        "check",
        "--data",
        &fixture("data/regression.npz"),
        "--no-timings",
    ]);
    let out = stdout(&o);
    let section = out
        .split("To run the skipped checks:\n")
        .nth(1)
        .unwrap_or_else(|| panic!("no section in:\n{out}"));
    let lines: Vec<&str> = section.lines().take_while(|l| !l.is_empty()).collect();
    assert_eq!(
        lines,
        [
            "  add a model: set [model] path (or pass --model) → init-std, identity-overfit, overfit-batch, output-range, double-activation, stale-batchnorm, gradient-flow, unused-parameters, shared-batchnorm, batch-independence, lr-sharpness, initial-loss, input-normalization",
            "  add a loss log: set [log] path (or pass --log) → loss-scale, loss-oscillation",
        ],
        "{out}"
    );
    // A setup value counts as an input too.
    let o = run(&[
        "check",
        "--model",
        &fixture("models/mlp_default.pt"),
        "--select",
        "double-activation",
        "--no-timings",
    ]);
    assert!(
        stdout(&o).contains("To run the skipped checks:\n  add the loss: set `loss = \"…\"` in [setup] (or pass --loss) → double-activation\n"),
        "{}",
        stdout(&o)
    );
    // Nothing skipped for a missing input: no section.
    let o = run(&[
        "check",
        "--model",
        &fixture("models/mlp_default.pt"),
        "--select",
        "init-std",
        "--no-timings",
    ]);
    assert!(
        !stdout(&o).contains("To run the skipped checks"),
        "{}",
        stdout(&o)
    );
}
