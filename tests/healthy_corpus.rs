//! False alarms: healthy setups made by real PyTorch / torchvision that trainlint must not flag.
//!
//! The torchvision models are fresh, with their constructors' own inits untouched
//! (`false_alarm_fixtures` in fixtures/make_fixtures.py): zero_init_residual ResNet, MobileNetV3-small,
//! a ViT with its zero-initialised head, and GoogLeNet's std-0.01-conv-then-BatchNorm pattern.
mod common;

use common::*;
use serde_json::Value;

/// The torchvision corpus: (fixture, has BatchNorm).
const TORCHVISION: [(&str, bool); 4] = [
    ("tv_resnet_zero_init", true),
    ("tv_mobilenet_v3_small", true),
    ("tv_vit_tiny", false),
    ("tv_googlenet_pattern", true),
];

fn run_checks(model: &str, data: &str, select: &str, setup: &str) -> Value {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(dir.path(), "trainlint.toml", &format!("[setup]\n{setup}\n"));
    let cfg = cfg.display().to_string();
    let mut args: Vec<String> = vec![cfg, "--select".into(), select.into()];
    args.extend(model_data(model, data));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, report) = check_json(&args);
    assert!(code == 0 || code == 1, "{model}: exit {code}");
    report
}

fn assert_status(report: &Value, model: &str, check: &str, status: &str) {
    let e = check_entry(report, check);
    assert_eq!(e["status"], status, "{model} / {check}: {e}");
}

#[test]
fn fresh_torchvision_models_pass_init_std_stale_batchnorm_and_gradient_flow() {
    for (model, batchnorm) in TORCHVISION {
        let r = run_checks(
            model,
            "images32.npz",
            "init-std,stale-batchnorm,gradient-flow",
            "",
        );
        assert_status(&r, model, "init-std", "passed");
        assert_status(&r, model, "gradient-flow", "passed");
        let bn = if batchnorm { "passed" } else { "skipped" };
        assert_status(&r, model, "stale-batchnorm", bn);
    }
}

#[test]
fn zero_init_residual_gamma_is_an_init_not_training() {
    // Every block's bn2.weight is exactly 0, the stats 0 / 1, never tracked: a fresh model.
    let r = run_checks("tv_resnet_zero_init", "images32.npz", "stale-batchnorm", "");
    assert!(findings(&r, "stale-batchnorm").is_empty());
}

#[test]
fn zero_gated_residual_branches_get_a_gradient_after_one_step() {
    // On the first backward pass conv1 / bn1 / conv2 of every block get exactly zero gradient (γ = 0
    // multiplies their output); after one SGD step they do not. The same for ViT's zero head.
    for model in ["tv_resnet_zero_init", "tv_vit_tiny"] {
        let r = run_checks(model, "images32.npz", "gradient-flow", "");
        assert!(findings(&r, "gradient-flow").is_empty(), "{model}");
    }
    // Logits multiplied by 0 stay at zero gradient after the step: still flagged.
    let r = run_checks(
        "classifier_zero_logits",
        "classes4.npz",
        "gradient-flow",
        "",
    );
    let f = findings(&r, "gradient-flow");
    assert_eq!(f.len(), 1);
    assert_eq!(
        f[0]["evidence"]["zero_gradient"],
        serde_json::json!(["fc1.weight", "fc2.weight"])
    );
}

#[test]
fn torchvision_init_conventions_are_not_std_errors() {
    // MobileNetV3's classifier Linear(288, 512) ~ N(0, 0.01); GoogLeNet's trunc_normal(0.01) convs feeding
    // BatchNorm; ViT's all-zero head. Each used to be an init-std error.
    for model in [
        "tv_mobilenet_v3_small",
        "tv_googlenet_pattern",
        "tv_vit_tiny",
    ] {
        let r = run_checks(model, "images32.npz", "init-std", "");
        assert!(findings(&r, "init-std").is_empty(), "{model}");
    }
    // An all-zero hidden layer is still a symmetry error, and tiny stds are still flagged.
    let r = run_checks("mlp_zero_hidden", "regression.npz", "init-std", "");
    let f = findings(&r, "init-std");
    assert_eq!(f.len(), 1);
    assert_eq!(f[0]["kind"], "init-std/constant-weights");
    let r = run_checks("mlp_std1e-5", "regression.npz", "init-std", "");
    assert_eq!(findings(&r, "init-std").len(), 3);
}

#[test]
fn multi_label_batches_are_judged_per_label() {
    // 5 independent 0/1 labels per sample, bce_with_logits: the loss falls > 99%; an argmax "accuracy"
    // against a [16, 5] target matrix read 0%.
    let r = run_checks(
        "mlp_multilabel",
        "multilabel5.npz",
        "overfit-batch",
        "task = \"classification\"\nloss = \"bce_with_logits\"",
    );
    assert_status(&r, "mlp_multilabel", "overfit-batch", "passed");
}
