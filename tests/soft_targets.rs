//! Class-probability (soft) targets with cross_entropy (issue 22, 4): one-hot, label-smoothed and
//! mixup rows, and dense per-pixel probabilities, audited end to end. The fixtures come from
//! fixtures/make_soft_targets.py (real PyTorch 2.13), which also asserts that PyTorch's own
//! cross_entropy reads them as probabilities.
mod common;

use common::in_process::{check_json, check_model_on};
use common::*;
use serde_json::Value;

/// The full audit (`--select ALL`) of a fixture model on a fixture sample, with extra flags.
fn audit(model: &str, data: &str, extra: &[&str]) -> (i32, Value) {
    let mut args: Vec<String> = model_data(model, data);
    args.extend(["--select".to_string(), "ALL".to_string()]);
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    check_json(&args)
}

/// The loss overfit-batch had to reach (its curve's target).
fn overfit_target(report: &Value) -> f64 {
    let curves = check_entry(report, "overfit-batch")["curves"]
        .as_array()
        .unwrap_or_else(|| panic!("no curves: {}", check_entry(report, "overfit-batch")));
    curves[0]["target"].as_f64().unwrap()
}

/// Nothing failed, nothing found, and the checks that compute the loss on the targets passed.
fn assert_healthy(report: &Value, what: &str) {
    for (id, status, reason) in statuses(report) {
        assert_ne!(status, "failed", "{what}: {id} failed: {reason}");
    }
    assert!(
        all_findings(report).is_empty(),
        "{what}: {:?}",
        kinds_of(report)
    );
    for id in [
        "overfit-batch",
        "initial-loss",
        "gradient-flow",
        "loss-oscillation",
        "output-range",
        "nonfinite",
    ] {
        assert_eq!(
            check_entry(report, id)["status"],
            "passed",
            "{what}: {id}: {}",
            check_entry(report, id)
        );
    }
}

const QUARTER_LN_4: f64 = 0.25 * std::f64::consts::LN_2 * 2.0;

#[test]
fn one_hot_label_smoothed_and_mixup_targets_pass_the_full_audit() {
    // (data, the floor of the overfit target: the targets' mean entropy over the 16 samples fitted)
    let smoothed_entropy = -(0.925f64 * 0.925f64.ln() + 3.0 * 0.025 * 0.025f64.ln());
    for (data, floor) in [
        ("soft4_onehot.npz", Some(0.0)),
        ("soft4_smoothed.npz", Some(smoothed_entropy)),
        ("soft4_mixup.npz", None),
    ] {
        // task = "auto" with no loss named: float probability rows are classification with
        // cross_entropy; and the same with the loss named, as the exporter writes it.
        for extra in [&[][..], &["--loss", "cross_entropy"][..]] {
            let what = format!("{data} {extra:?}");
            let (code, report) = audit("soft_classifier", data, extra);
            assert_eq!(code, 0, "{what}: {:?}", statuses(&report));
            assert_healthy(&report, &what);
            // Classification: identity-overfit does not apply.
            assert_eq!(
                check_entry(&report, "identity-overfit")["status"],
                "skipped"
            );
            let target = overfit_target(&report);
            match floor {
                Some(h) => assert!(
                    (target - (h + QUARTER_LN_4)).abs() < 1e-4,
                    "{what}: overfit target {target}, expected {h} + 0.25 ln 4"
                ),
                // Mixup rows have entropy: the floor sits above the one-hot 0.25 ln 4.
                None => assert!(target > QUARTER_LN_4 + 0.05, "{what}: {target}"),
            }
        }
    }
}

#[test]
fn dense_per_pixel_probabilities_shaped_like_the_inputs_are_classification() {
    // soft_seg.npz: inputs and targets are both [16, 3, 8, 8]; the targets are per-pixel class
    // probabilities (smoothed by 0.1), so the task is classification, not image-to-image.
    let (code, report) = audit("soft_segmenter", "soft_seg.npz", &[]);
    assert_eq!(code, 0, "{:?}", statuses(&report));
    assert_healthy(&report, "soft_seg");
    assert_eq!(
        check_entry(&report, "identity-overfit")["status"],
        "skipped"
    );
    let h = -(0.9333333f64 * 0.9333333f64.ln() + 2.0 * 0.0333333 * 0.0333333f64.ln());
    let target = overfit_target(&report);
    let quarter_ln_3 = 0.25 * 3f64.ln();
    assert!(
        (target - (h + quarter_ln_3)).abs() < 1e-4,
        "overfit target {target}, expected {h} + 0.25 ln 3"
    );
}

#[test]
fn an_exported_regression_task_with_cross_entropy_on_soft_targets_trains_as_classification() {
    // What the exporter wrote before: `task = "regression"` beside `loss = "cross_entropy"`.
    let (_, report) = audit(
        "soft_classifier",
        "soft4_smoothed.npz",
        &["--task", "regression", "--loss", "cross_entropy"],
    );
    for (id, status, reason) in statuses(&report) {
        assert_ne!(status, "failed", "{id}: {reason}");
    }
    for id in [
        "overfit-batch",
        "initial-loss",
        "gradient-flow",
        "loss-oscillation",
    ] {
        assert_eq!(check_entry(&report, id)["status"], "passed", "{id}");
    }
}

#[test]
fn a_softmax_head_trained_on_soft_targets_is_still_flagged() {
    let (code, report) = audit(
        "soft_softmax_head",
        "soft4_smoothed.npz",
        &["--loss", "cross_entropy"],
    );
    assert_eq!(code, 1);
    for (id, status, reason) in statuses(&report) {
        assert_ne!(status, "failed", "{id}: {reason}");
    }
    let kinds = kinds_of(&report);
    assert!(
        kinds.contains(&"double-activation/squashed-twice".to_string()),
        "{kinds:?}"
    );
    // Softmax outputs as logits cap the fit: the best a probability vector in [0, 1]^4 reaches on a
    // 0.925 / 0.025 row is ln(e + 3) - 0.925 ≈ 0.819, above the entropy 0.349 + 0.25 ln 4.
    let f = findings(&report, "overfit-batch");
    assert_eq!(f.len(), 1, "{:?}", check_entry(&report, "overfit-batch"));
    assert_eq!(f[0]["kind"], "overfit-batch/cannot-overfit");
    let end = f[0]["evidence"]["loss_end"].as_f64().unwrap();
    let needed = f[0]["evidence"]["loss_needed"].as_f64().unwrap();
    assert!(end > 0.81 && end > needed, "{end} vs {needed}");
    let message = f[0]["message"].as_str().unwrap();
    assert!(
        message.contains("the targets' mean entropy 0.349"),
        "{message}"
    );
}

#[test]
fn logits_multiplied_by_zero_cannot_overfit_one_hot_targets() {
    let (_, report) = audit("classifier_zero_logits", "soft4_onehot.npz", &[]);
    let f = findings(&report, "overfit-batch");
    assert_eq!(f.len(), 1, "{:?}", check_entry(&report, "overfit-batch"));
    let message = f[0]["message"].as_str().unwrap();
    assert!(
        message.contains("no gradient reaches the parameters"),
        "{message}"
    );
    // A constant output scores ln 4 on balanced one-hot targets.
    let start = f[0]["evidence"]["loss_start"].as_f64().unwrap();
    assert!((start - 4f64.ln()).abs() < 1e-4, "{start}");
}

#[test]
fn sorted_one_hot_targets_without_shuffling_are_label_runs() {
    let dir = tempfile::tempdir().unwrap();
    let sequential = |shuffle: bool| {
        let cfg = write(
            dir.path(),
            "trainlint.toml",
            &format!("[setup]\nshuffle = {shuffle}\n"),
        );
        check_json(&[
            cfg.to_str().unwrap(),
            "--model",
            &fixture("models/soft_classifier.pt"),
            "--data",
            &fixture("data/soft4_sorted.npz"),
            "--select",
            "sequential-data",
        ])
    };
    let (_, shuffled) = sequential(true);
    assert_eq!(
        check_entry(&shuffled, "sequential-data")["status"],
        "passed"
    );
    let (code, sorted) = sequential(false);
    assert_eq!(code, 1);
    let f = findings(&sorted, "sequential-data");
    assert_eq!(f.len(), 1);
    // 4 classes in order: 4 label runs, judged on each sample's top class.
    assert_eq!(f[0]["evidence"]["label_runs"], 4, "{}", f[0]);
}

#[test]
fn classification_on_float_targets_that_are_not_probabilities_is_skipped_in_words() {
    // targets_01: uniform values in [0, 1] whose rows do not sum to 1; targets_normal: N(0, 9).
    for (data, problem) in [
        ("targets_01.npz", "probabilities of sample 0 sum to"),
        ("targets_normal.npz", "outside [0, 1]"),
    ] {
        for flags in [
            &["--task", "classification"][..],
            &["--loss", "cross_entropy"][..],
        ] {
            let (code, report) = audit("head_linear", data, flags);
            assert!(code == 0 || code == 1, "{data} {flags:?}: exit {code}");
            let text = report.to_string();
            assert!(
                !text.contains("Expected floating point type") && !text.contains("libtorch"),
                "{text}"
            );
            for (id, status, reason) in statuses(&report) {
                assert_ne!(status, "failed", "{data} {flags:?}: {id}: {reason}");
            }
            for id in [
                "overfit-batch",
                "initial-loss",
                "gradient-flow",
                "loss-oscillation",
                "output-range",
            ] {
                let entry = check_entry(&report, id);
                let reason = entry["reason"].as_str().unwrap_or_default();
                assert_eq!(
                    entry["status"], "skipped",
                    "{data} {flags:?}: {id}: {entry}"
                );
                assert!(
                    reason.contains("so cross_entropy / nll read them as class probabilities, but")
                        && reason.contains(problem)
                        && !reason.contains('\n'),
                    "{data} {flags:?}: {id}: {reason}"
                );
            }
        }
    }
}

#[test]
fn a_hot_head_is_still_a_high_initial_loss_on_soft_targets() {
    // classifier_hot_head.pt divides its logits by 0.05: confidently wrong from step 0.
    let mut args = model_data("classifier_hot_head", "soft4_smoothed.npz");
    args.extend(["--select".to_string(), "initial-loss".to_string()]);
    let (_, report) = check_json(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let f = findings(&report, "initial-loss");
    assert_eq!(f.len(), 1, "{}", check_entry(&report, "initial-loss"));
    let e = &f[0]["evidence"];
    // Smoothed rows sum to 1: uniform logits still score ln 4.
    assert!(
        (e["expected"].as_f64().unwrap() - 4f64.ln()).abs() < 1e-9,
        "{e}"
    );
    assert!(e["loss"].as_f64().unwrap() > 2.5 * 4f64.ln(), "{e}");
    // A bias at the log prior scores the entropy of the mean target: below ln 4 (the classes are not
    // exactly balanced), above the smoothed rows' own entropy 0.349.
    let prior = e["prior_loss"].as_f64().unwrap();
    assert!(prior < 4f64.ln() && prior > 1.3, "{e}");
}

/// A safetensors sample of float32 `inputs` [n, d] and one-hot float32 `targets` [n, k].
fn one_hot_sample(dir: &std::path::Path, n: usize, d: usize, k: usize) -> std::path::PathBuf {
    let inputs: Vec<u8> = (0..n * d)
        .flat_map(|i| ((i % 7) as f32 * 0.1 - 0.3).to_le_bytes())
        .collect();
    let targets: Vec<u8> = (0..n * k)
        .flat_map(|i| (if i % k == (i / k) % k { 1f32 } else { 0f32 }).to_le_bytes())
        .collect();
    let header = format!(
        r#"{{"inputs":{{"dtype":"F32","shape":[{n},{d}],"data_offsets":[0,{a}]}},"targets":{{"dtype":"F32","shape":[{n},{k}],"data_offsets":[{a},{b}]}}}}"#,
        a = inputs.len(),
        b = inputs.len() + targets.len()
    );
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend(header.as_bytes());
    bytes.extend(inputs);
    bytes.extend(targets);
    let path = dir.join("one_hot.safetensors");
    std::fs::write(&path, bytes).unwrap();
    path
}

#[test]
fn probabilities_over_more_classes_than_logits_are_too_few_logits() {
    // head_linear.pt: 16 inputs, 4 logits; the targets are one-hot over 10 classes.
    let dir = tempfile::tempdir().unwrap();
    let data = one_hot_sample(dir.path(), 12, 16, 10);
    let (code, report) = check_json(&[
        "--model",
        &fixture("models/head_linear.pt"),
        "--data",
        data.to_str().unwrap(),
        "--select",
        "output-range,overfit-batch,initial-loss",
    ]);
    assert_eq!(code, 1);
    let f = findings(&report, "output-range");
    assert_eq!(f.len(), 1, "{}", check_entry(&report, "output-range"));
    assert_eq!(f[0]["kind"], "output-range/too-few-logits");
    assert_eq!(
        f[0]["message"],
        "the model outputs 4 logits but the targets hold class probabilities over 10 classes: 6 classes can never be predicted"
    );
    for id in ["overfit-batch", "initial-loss"] {
        let entry = check_entry(&report, id);
        assert_eq!(entry["status"], "skipped", "{id}: {entry}");
        assert!(
            entry["reason"]
                .as_str()
                .unwrap()
                .contains("each sample's targets have shape [10] and the model's output [4]"),
            "{id}: {entry}"
        );
    }
}

#[test]
fn nll_on_log_softmax_outputs_trains_on_probabilities_too() {
    // nll_loss takes class indices only; with probabilities trainlint computes −Σ t · log p, the
    // cross_entropy of the same logits, with the same floor.
    let smoothed_entropy = -(0.925f64 * 0.925f64.ln() + 3.0 * 0.025 * 0.025f64.ln());
    for (data, floor) in [
        ("soft4_onehot.npz", 0.0),
        ("soft4_smoothed.npz", smoothed_entropy),
    ] {
        let (code, report) = audit("soft_log_softmax", data, &["--loss", "nll"]);
        assert_eq!(code, 0, "{data}: {:?}", statuses(&report));
        assert_healthy(&report, data);
        // log_softmax feeds nll: no double activation.
        assert_eq!(
            check_entry(&report, "double-activation")["status"],
            "passed"
        );
        let target = overfit_target(&report);
        assert!(
            (target - (floor + QUARTER_LN_4)).abs() < 1e-4,
            "{data}: {target}"
        );
    }
}

/// `trainlint init` reads probability rows as `task = "auto"` does: classification, not regression.
#[test]
fn init_writes_classification_for_probability_rows() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data.npz");
    std::fs::copy(fixture("data/soft4_smoothed.npz"), &data).unwrap();
    let o = run(&[
        "init",
        dir.path().to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = std::fs::read_to_string(dir.path().join("trainlint.toml")).unwrap();
    assert!(text.contains("task = \"classification\""), "{text}");
}

/// One-hot rows that all name the same class are a single class, as integer targets would be: a data
/// warning, and overfit-batch skips instead of passing trivially.
#[test]
fn one_hot_rows_of_a_single_class_are_a_data_warning() {
    let dir = tempfile::tempdir().unwrap();
    let mut targets = vec![0f32; 64 * 4];
    for row in targets.chunks_mut(4) {
        row[2] = 1.0;
    }
    let inputs: Vec<f32> = (0..64 * 32)
        .map(|i| ((i * 7919) % 97) as f32 / 97.0)
        .collect();
    let x = tch::Tensor::from_slice(&inputs).reshape([64, 32]);
    let y = tch::Tensor::from_slice(&targets).reshape([64, 4]);
    let path = write_sample(dir.path(), "one.npz", &x, &y);
    let (_, report) = check_model_on("soft_classifier", &path, "overfit-batch");
    let warnings = report["warnings"].as_array().expect("warnings");
    assert!(
        warnings.iter().any(|w| w["input"] == "data"
            && w["message"]
                .as_str()
                .unwrap()
                .contains("hold a single class (2)")),
        "{warnings:?}"
    );
    assert_eq!(check_entry(&report, "overfit-batch")["status"], "skipped");
}
