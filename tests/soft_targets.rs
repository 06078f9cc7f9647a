//! Class-probability (soft) targets with cross_entropy (issue 22, 4): one-hot, label-smoothed and
//! mixup rows, and dense per-pixel probabilities, audited end to end. The fixtures come from
//! fixtures/make_soft_targets.py (real PyTorch 2.13), which also asserts that PyTorch's own
//! cross_entropy reads them as probabilities. The audits run in process through the library and are
//! asserted typed (`tests/common/typed.rs`); `trainlint init` runs the binary.
mod common;

use common::in_process::{audit_model_on, audit_of};
use common::typed::{self, assert_none_failed, fails, kinds, num, only, passed, show, skipped};
use common::*;
use trainlint::audit::Audit;
use trainlint_checks::Severity::{Error, Warning};

/// The full audit (`--select ALL`) of a fixture model on a fixture sample, with extra flags.
fn audit(model: &str, data: &str, extra: &[&str]) -> Audit {
    let mut args: Vec<String> = model_data(model, data);
    args.extend(["--select".to_string(), "ALL".to_string()]);
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    audit_of(&args)
}

/// Every check's run as its snapshot shows it, for a failed assert's message.
fn shown(audit: &Audit) -> String {
    audit.report.checks.iter().map(show).collect()
}

/// The loss overfit-batch had to reach (its curve's target).
fn overfit_target(audit: &Audit) -> f64 {
    let r = typed::run(audit, "overfit-batch");
    let curve = r
        .curves
        .first()
        .unwrap_or_else(|| panic!("no curves: {}", show(r)));
    curve
        .target
        .unwrap_or_else(|| panic!("no target: {}", show(r)))
}

/// Nothing failed, nothing found, and the checks that compute the loss on the targets passed.
fn assert_healthy(audit: &Audit, what: &str) {
    assert_none_failed(audit, what);
    assert!(kinds(audit).is_empty(), "{what}: {:?}", kinds(audit));
    for id in [
        "overfit-batch",
        "initial-loss",
        "gradient-flow",
        "loss-oscillation",
        "output-range",
        "nonfinite",
    ] {
        passed(audit, id);
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
            let a = audit("soft_classifier", data, extra);
            assert!(!fails(&a), "{what}: {}", shown(&a));
            assert_healthy(&a, &what);
            // Classification: identity-overfit does not apply.
            skipped(&a, "identity-overfit");
            let target = overfit_target(&a);
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
    let a = audit("soft_segmenter", "soft_seg.npz", &[]);
    assert!(!fails(&a), "{}", shown(&a));
    assert_healthy(&a, "soft_seg");
    skipped(&a, "identity-overfit");
    let h = -(0.9333333f64 * 0.9333333f64.ln() + 2.0 * 0.0333333 * 0.0333333f64.ln());
    let target = overfit_target(&a);
    let quarter_ln_3 = 0.25 * 3f64.ln();
    assert!(
        (target - (h + quarter_ln_3)).abs() < 1e-4,
        "overfit target {target}, expected {h} + 0.25 ln 3"
    );
}

#[test]
fn an_exported_regression_task_with_cross_entropy_on_soft_targets_trains_as_classification() {
    // What the exporter wrote before: `task = "regression"` beside `loss = "cross_entropy"`.
    let a = audit(
        "soft_classifier",
        "soft4_smoothed.npz",
        &["--task", "regression", "--loss", "cross_entropy"],
    );
    assert_none_failed(&a, "regression task");
    for id in [
        "overfit-batch",
        "initial-loss",
        "gradient-flow",
        "loss-oscillation",
    ] {
        passed(&a, id);
    }
}

#[test]
fn a_softmax_head_trained_on_soft_targets_is_still_flagged() {
    let a = audit(
        "soft_softmax_head",
        "soft4_smoothed.npz",
        &["--loss", "cross_entropy"],
    );
    assert!(fails(&a), "{}", shown(&a));
    assert_none_failed(&a, "softmax head");
    let kinds = kinds(&a);
    assert!(
        kinds.contains(&"double-activation/squashed-twice"),
        "{kinds:?}"
    );
    // Softmax outputs as logits cap the fit: the best a probability vector in [0, 1]^4 reaches on a
    // 0.925 / 0.025 row is ln(e + 3) - 0.925 ≈ 0.819, above the entropy 0.349 + 0.25 ln 4.
    assert_check!(a, "overfit-batch");
    let f = only(&a, "overfit-batch", Error);
    assert_eq!(f.kind, "overfit-batch/cannot-overfit");
    let (end, needed) = (num(f, "loss_end"), num(f, "loss_needed"));
    assert!(end > 0.81 && end > needed, "{end} vs {needed}");
    // The snapshot redacts the entropy the message names.
    assert!(
        f.message.contains("the targets' mean entropy 0.349"),
        "{f:#?}"
    );
}

#[test]
fn logits_multiplied_by_zero_cannot_overfit_one_hot_targets() {
    let a = audit("classifier_zero_logits", "soft4_onehot.npz", &[]);
    // The message names the cause: no gradient reaches the parameters.
    assert_check!(a, "overfit-batch");
    let f = only(&a, "overfit-batch", Error);
    // A constant output scores ln 4 on balanced one-hot targets.
    let start = num(f, "loss_start");
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
        audit_of(&[
            cfg.to_str().unwrap(),
            "--model",
            &fixture("models/soft_classifier.pt"),
            "--data",
            &fixture("data/soft4_sorted.npz"),
            "--select",
            "sequential-data",
        ])
    };
    passed(&sequential(true), "sequential-data");
    let sorted = sequential(false);
    assert!(fails(&sorted), "{}", shown(&sorted));
    let f = only(&sorted, "sequential-data", Error);
    // 4 classes in order: 4 label runs, judged on each sample's top class.
    assert_eq!(num(f, "label_runs"), 4.0, "{f:#?}");
}

#[test]
fn classification_on_float_targets_that_are_not_probabilities_is_skipped_in_words() {
    // targets_01: uniform values in [0, 1] whose rows do not sum to 1; targets_normal: N(0, 9).
    for (data, name, problem) in [
        (
            "targets_01.npz",
            "rows_not_summing_to_one",
            "the 4 probabilities of sample 0 sum to",
        ),
        ("targets_normal.npz", "values_outside_0_1", "outside [0, 1]"),
    ] {
        for flags in [
            &["--task", "classification"][..],
            &["--loss", "cross_entropy"][..],
        ] {
            let what = format!("{data} {flags:?}");
            let a = audit("head_linear", data, flags);
            // libtorch's own error never reaches the report.
            let text = trainlint::report::json::render(&a.report);
            assert!(
                !text.contains("Expected floating point type") && !text.contains("libtorch"),
                "{text}"
            );
            assert_none_failed(&a, &what);
            // The checks that compute the loss skip, all with the one reason, in words on one line
            // (the snapshot), the same for the task named and for the loss named. The snapshot
            // redacts the numbers in words: the sample and the bounds it names are asserted here.
            let reason = skipped(&a, "output-range");
            assert!(
                reason.contains(problem) && reason.contains("must lie in [0, 1] and sum to 1 ± "),
                "{what}: {reason}"
            );
            for id in [
                "overfit-batch",
                "initial-loss",
                "gradient-flow",
                "loss-oscillation",
            ] {
                assert_eq!(skipped(&a, id), reason, "{what}: {id}");
            }
            assert_check!(name, a, "output-range");
        }
    }
}

#[test]
fn a_hot_head_is_still_a_high_initial_loss_on_soft_targets() {
    // classifier_hot_head.pt divides its logits by 0.05: confidently wrong from step 0.
    let mut args = model_data("classifier_hot_head", "soft4_smoothed.npz");
    args.extend(["--select".to_string(), "initial-loss".to_string()]);
    let a = audit_of(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let f = only(&a, "initial-loss", Warning);
    assert_eq!(f.kind, "initial-loss/high-initial-loss");
    // Smoothed rows sum to 1: uniform logits still score ln 4.
    assert!((num(f, "expected") - 4f64.ln()).abs() < 1e-9, "{f:#?}");
    assert!(num(f, "loss") > 2.5 * 4f64.ln(), "{f:#?}");
    // A bias at the log prior scores the entropy of the mean target: below ln 4 (the classes are not
    // exactly balanced), above the smoothed rows' own entropy 0.349.
    let prior = num(f, "prior_loss");
    assert!(prior < 4f64.ln() && prior > 1.3, "{f:#?}");
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
    let a = audit_model_on(
        "head_linear",
        &data,
        "output-range,overfit-batch,initial-loss",
    );
    assert!(fails(&a), "{}", shown(&a));
    assert_check!(a, "output-range");
    let f = only(&a, "output-range", Error);
    assert_eq!(f.kind, "output-range/too-few-logits");
    // The snapshot redacts the numbers in words: the counts the message names are asserted here.
    assert_eq!(
        f.message,
        "the model outputs 4 logits but the targets hold class probabilities over 10 classes: 6 \
classes can never be predicted"
    );
    // The checks that compute the loss skip, with the one reason, naming both shapes.
    assert_check!("too_few_logits_skip", a, "initial-loss");
    let reason = skipped(&a, "initial-loss");
    assert_eq!(skipped(&a, "overfit-batch"), reason);
    assert!(
        reason.contains("each sample's targets have shape [10] and the model's output [4]"),
        "{reason}"
    );
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
        let a = audit("soft_log_softmax", data, &["--loss", "nll"]);
        assert!(!fails(&a), "{data}: {}", shown(&a));
        assert_healthy(&a, data);
        // log_softmax feeds nll: no double activation.
        passed(&a, "double-activation");
        let target = overfit_target(&a);
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
    let a = audit_model_on("soft_classifier", &path, "overfit-batch");
    let data_warnings: Vec<&str> = a
        .report
        .warnings
        .iter()
        .filter(|w| w.input == "data")
        .map(|w| w.message.as_str())
        .collect();
    assert_eq!(
        data_warnings,
        ["the targets `targets` hold a single class (2) in all 64 samples: a constant prediction \
fits them, so overfit-batch is skipped; save a sample with several classes (in loader order)"],
        "{:?}",
        a.report.warnings
    );
    skipped(&a, "overfit-batch");
}
