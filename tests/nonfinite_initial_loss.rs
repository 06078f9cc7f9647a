//! nonfinite and initial-loss (issue 10).
//!
//! nonfinite: NaN / Inf from the data to the gradients and in the loss log, each reported once, at its
//! root, on fixtures made by real PyTorch (fixtures/make_nonfinite.py); healthy fixtures stay clean.
//! The audits run in process through the library, and each finding is asserted typed: its kind,
//! severity, location and evidence, its message in a snapshot (`assert_check!`).
mod common;

use common::in_process::{audit_of, audit_setup, findings_of};
use common::typed::{fails, num, only, passed, run, skipped};
use common::*;
use serde_json::{json, Value};
use trainlint::audit::Audit;
use trainlint::run::Status;
use trainlint_checks::Finding;
use trainlint_checks::Severity::{Error, Warning};

fn nonfinite(args: &[String]) -> Audit {
    let mut all: Vec<&str> = vec!["--select", "nonfinite,init-std,gradient-flow"];
    all.extend(args.iter().map(String::as_str));
    audit_of(&all)
}

/// The only finding of the run (across nonfinite, init-std and gradient-flow): one root cause, one
/// finding.
fn only_finding(audit: &Audit) -> &Finding {
    let all = findings_of(audit);
    assert_eq!(all.len(), 1, "{all:#?}");
    all[0]
}

/// Evidence `key` of a finding.
fn ev<'a>(f: &'a Finding, key: &str) -> &'a Value {
    f.evidence
        .get(key)
        .unwrap_or_else(|| panic!("no {key} in the evidence of {f:#?}"))
}

#[test]
fn nan_inputs_are_reported_once_with_the_samples() {
    let a = nonfinite(&model_data("mlp_default", "regression_nan_inputs.npz"));
    assert!(fails(&a));
    assert_check!(a, "nonfinite");
    let f = only_finding(&a);
    assert_eq!(f.kind, "nonfinite/data");
    assert_eq!(ev(f, "key"), "inputs", "{f:#?}");
    assert_eq!(num(f, "samples"), 3.0);
    assert_eq!(ev(f, "values"), &json!({"nan": 4, "inf": 1}));
    assert_eq!(f.location.samples, Some((5, 6)));
}

#[test]
fn nan_targets_are_reported_and_the_gradients_of_the_finite_rows_are_clean() {
    let a = nonfinite(&model_data("mlp_default", "regression_nan_targets.npz"));
    let f = only_finding(&a);
    assert_eq!(ev(f, "key"), "targets", "{f:#?}");
    assert_eq!(num(f, "first_sample"), 12.0);
}

#[test]
fn nan_weights_are_nonfinite_parameters_not_an_init_std_finding() {
    let a = nonfinite(&model_data("mlp_nan", "regression.npz"));
    let f = only_finding(&a);
    assert_eq!(f.kind, "nonfinite/parameters");
    assert_eq!(ev(f, "parameters"), &json!(["fc2.weight"]));
    passed(&a, "init-std");
}

#[test]
fn nan_running_stats_are_reported_as_buffers_not_as_a_nan_output() {
    let a = nonfinite(&model_data("bn_nan_stats", "regression.npz"));
    let f = only_finding(&a);
    assert_eq!(f.kind, "nonfinite/buffers");
    assert_eq!(f.location.buffer.as_deref(), Some("bn.running_var"));
}

#[test]
fn the_first_op_that_makes_inf_is_named_with_its_module_and_line() {
    let a = nonfinite(&model_data("log_relu_head", "regression.npz"));
    assert_check!(a, "nonfinite");
    let f = only_finding(&a);
    assert_eq!(f.kind, "nonfinite/output");
    assert_eq!(ev(f, "op"), "aten::log");
    assert_eq!(ev(f, "module"), "head");
    assert_eq!(
        ev(f, "source"),
        "return torch.log(torch.relu(self.fc(x)))",
        "{f:#?}"
    );
    // About half the samples have a negative pre-activation; all of those give -inf.
    let n = num(f, "samples");
    assert!((16.0..=48.0).contains(&n), "{n}");
    assert_eq!(ev(f, "values").get("nan"), Some(&json!(0)), "{f:#?}");
}

#[test]
fn nan_gradients_of_a_finite_forward_move_from_gradient_flow_to_nonfinite() {
    let a = nonfinite(&model_data("sqrt_where_head", "regression.npz"));
    let f = only_finding(&a);
    assert_eq!(f.kind, "nonfinite/gradients");
    assert_eq!(
        ev(f, "non_finite"),
        &json!(["fc1.weight", "fc1.bias", "fc.weight", "fc.bias"])
    );
    passed(&a, "gradient-flow");
}

#[test]
fn a_diverged_log_names_its_first_non_finite_step_in_csv_and_python_json() {
    for log in ["logs/loss_nan.csv", "logs/loss_nan.jsonl"] {
        let a = audit_of(&["--select", "nonfinite", "--log", &fixture(log)]);
        assert!(fails(&a), "{log}");
        let f = only(&a, "nonfinite", Error);
        assert_eq!(num(f, "first_step"), 4.0, "{log}");
        assert_eq!(num(f, "rows"), 36.0, "{log}");
        assert!(num(f, "last_finite") > 1e10, "{log}: {f:#?}");
        assert_check!(log.replace("logs/", ""), a, "nonfinite");
    }
    // The finite healthy logs are clean.
    for log in [
        "logs/sgd_noisy_descent.csv",
        "logs/rising.csv",
        "logs/two_terms_30x.csv",
    ] {
        let a = audit_of(&["--select", "nonfinite", "--log", &fixture(log)]);
        assert!(run(&a, "nonfinite").findings.is_empty(), "{log}");
    }
}

/// Runs `select` on a fixture pair with `loss` in [setup]; no check may fail internally.
fn run_on(select: &str, model: &str, data: &str, loss: &str) -> Audit {
    let setup = format!("loss = \"{loss}\"");
    audit_setup(select, Some(model), Some(data), None, &setup)
}

#[test]
fn every_healthy_fixture_is_clean_for_nonfinite() {
    for (model, data, loss) in HEALTHY {
        let a = run_on("nonfinite", model, data, loss);
        assert!(!fails(&a), "{model} / {data}: {:#?}", findings_of(&a));
        passed(&a, "nonfinite");
    }
}

/// Healthy fixtures (model, data, loss): default inits, torchvision's own inits, trained models.
pub const HEALTHY: &[(&str, &str, &str)] = &[
    ("mlp_default", "regression.npz", "mse"),
    ("wide_linear", "wide.npz", "cross_entropy"),
    ("conv1x1", "pointwise.npz", "mse"),
    ("embedding", "tokens.npz", "cross_entropy"),
    ("classifier", "classes4.npz", "cross_entropy"),
    ("mlp_multilabel", "multilabel5.npz", "bce_with_logits"),
    ("cnn_bn", "images.npz", "cross_entropy"),
    ("cnn_bn_traced", "images.npz", "cross_entropy"),
    ("bn_fresh", "images.npz", "cross_entropy"),
    ("bn_trained", "images.npz", "cross_entropy"),
    ("cnn_bn_trained", "images.npz", "cross_entropy"),
    ("conv_stack", "textures.npz", "mse"),
    ("unet", "unet64.npz", "mse"),
    ("tv_resnet_zero_init", "images32.npz", "cross_entropy"),
    ("tv_mobilenet_v3_small", "images32.npz", "cross_entropy"),
    ("tv_vit_tiny", "images32.npz", "cross_entropy"),
    ("tv_googlenet_pattern", "images32.npz", "cross_entropy"),
];

// ---------------------------------------------------------------- initial-loss

fn initial_loss(model: &str, data: &str, loss: &str) -> Audit {
    run_on("initial-loss", model, data, loss)
}

#[test]
fn sharpened_logits_start_confidently_wrong() {
    let a = initial_loss("classifier_hot_head", "classes4.npz", "cross_entropy");
    assert_check!(a, "initial-loss");
    let f = only(&a, "initial-loss", Warning);
    assert_eq!(f.kind, "initial-loss/high-initial-loss", "{f:#?}");
    assert!((num(f, "expected") - 4f64.ln()).abs() < 1e-9);
    let loss = num(f, "loss");
    assert!(loss > 2.5 * 4f64.ln() && loss < 8.0, "{loss}");
    assert!(num(f, "output_scale") > 2.0, "{f:#?}");
    assert_eq!(f.location.module.as_deref(), Some("mlp.head"));
    // The same MLP without the temperature: clean.
    let a = initial_loss("classifier", "classes4.npz", "cross_entropy");
    passed(&a, "initial-loss");
}

#[test]
fn a_large_last_layer_is_judged_against_the_targets_mean_square() {
    let a = initial_loss("regression_hot_head", "regression.npz", "mse");
    assert_check!(a, "initial-loss");
    let f = only(&a, "initial-loss", Warning);
    let (loss, expected) = (num(f, "loss"), num(f, "expected"));
    assert!(
        (expected - 0.95).abs() < 0.05,
        "mean² + variance of the targets: {expected}"
    );
    assert!(loss > 6.25 * expected, "{loss}");
    assert!(num(f, "output_scale") > 2.0 * num(f, "target_scale"));
}

#[test]
fn a_bias_far_from_the_prior_is_reported_with_the_prior_loss() {
    let a = initial_loss("multilabel_bias_hot", "multilabel5.npz", "bce_with_logits");
    // The help says how to set the bias: log(p / (1 - p)).
    assert_check!(a, "initial-loss");
    let f = only(&a, "initial-loss", Warning);
    assert!((num(f, "expected") - 2f64.ln()).abs() < 1e-9);
    assert!((num(f, "output_mean") - 8.0).abs() < 0.5, "{f:#?}");
    // 40% positives: a bias at log(0.4 / 0.6) gives the binary entropy H(0.4) ≈ 0.673.
    assert!((num(f, "prior_loss") - 0.673).abs() < 0.05, "{f:#?}");
}

#[test]
fn trained_checkpoints_are_skipped_unless_declared_untrained() {
    let a = initial_loss("cnn_bn_trained", "images.npz", "cross_entropy");
    // The reason names the 200 batches the checkpoint's BatchNorm tracked.
    let reason = skipped(&a, "initial-loss");
    assert!(reason.contains("tracked 200 batches"), "{reason}");
    assert_check!(a, "initial-loss");
}

#[test]
fn every_healthy_fixture_is_clean_for_initial_loss() {
    for (model, data, loss) in HEALTHY {
        let a = initial_loss(model, data, loss);
        let r = run(&a, "initial-loss");
        assert!(
            matches!(r.status, Status::Passed | Status::Skipped),
            "{model} / {data}: {}",
            common::typed::show(r)
        );
        assert!(r.findings.is_empty(), "{model}: {}", common::typed::show(r));
    }
}

// ---------------------------------------------------------------- input-normalization

fn input_normalization(model: &str, data: &str, loss: &str) -> Audit {
    run_on("input-normalization", model, data, loss)
}

#[test]
fn physical_units_reach_a_first_layer_that_does_not_rescale_them() {
    let a = input_normalization("mlp_default", "regression_raw_units.npz", "mse");
    assert_check!(a, "input-normalization");
    let f = only(&a, "input-normalization", Warning);
    assert_eq!(f.kind, "input-normalization/raw-input-scale", "{f:#?}");
    assert_eq!(ev(f, "layer"), "fc1");
    assert_eq!(num(f, "largest_feature"), 3.0);
    assert!(num(f, "first_layer_rms") > 1e3, "{f:#?}");
    assert!(num(f, "standardised_rms") < 2.0, "{f:#?}");
    // initial-loss leaves the input scale to input-normalization: one root cause, one finding (its
    // reason names input-normalization).
    let a = initial_loss("mlp_default", "regression_raw_units.npz", "mse");
    skipped(&a, "initial-loss");
    assert_check!("initial_loss_skipped", a, "initial-loss");
    // BatchNorm on the raw features first: clean.
    let a = input_normalization("mlp_bn_first", "regression_raw_units.npz", "mse");
    passed(&a, "input-normalization");
}

#[test]
fn raw_pixels_are_flagged_unless_the_model_divides_by_255() {
    let a = input_normalization("cnn_bn", "images_255.npz", "cross_entropy");
    assert_check!(a, "input-normalization");
    let f = only(&a, "input-normalization", Warning);
    assert_eq!(
        (ev(f, "layer"), ev(f, "op")),
        (&json!("conv1"), &json!("aten::conv2d")),
        "{f:#?}"
    );
    assert!(num(f, "first_layer_rms") > 20.0, "{f:#?}");
    let a = input_normalization("cnn_div255", "images_255.npz", "cross_entropy");
    passed(&a, "input-normalization");
    // Integer token ids are no magnitude.
    let a = input_normalization("embedding", "tokens.npz", "cross_entropy");
    skipped(&a, "input-normalization");
}

#[test]
fn features_orders_of_magnitude_apart_are_flagged_unless_the_model_standardises_them() {
    // regression.npz's standardised columns times 10^linspace(-3, 0.5): stds 1e-3 .. 3.6, none large.
    let a = input_normalization("mlp_default", "regression_mixed_scales.npz", "mse");
    assert_check!(a, "input-normalization");
    let f = only(&a, "input-normalization", Warning);
    assert_eq!(f.kind, "input-normalization/feature-scale-spread", "{f:#?}");
    assert_eq!(
        (num(f, "small_feature"), num(f, "large_feature")),
        (0.0, 31.0),
        "{f:#?}"
    );
    let ratio = num(f, "scale_ratio");
    assert!((2000.0..5000.0).contains(&ratio), "{f:#?}");
    // A model that does not rescale: the contributions spread as much as the scales.
    let contribution = num(f, "contribution_ratio");
    assert!(
        contribution > 0.3 * ratio && contribution < 3.0 * ratio,
        "{f:#?}"
    );
    assert!((12.0..=16.0).contains(&num(f, "features_below")), "{f:#?}");
    // Models that standardise the features themselves (BatchNorm first, (x - mean) / std inside): clean.
    for model in ["mlp_bn_first", "mlp_standardise"] {
        let a = input_normalization(model, "regression_mixed_scales.npz", "mse");
        passed(&a, "input-normalization");
    }
    // Healthy tabular data whose features vary 10×: clean.
    let a = input_normalization("mlp_default", "regression_10x_scales.npz", "mse");
    passed(&a, "input-normalization");
    // Raw physical units give one finding (raw-input-scale), not a second one for the same cause.
    let a = input_normalization("mlp_default", "regression_raw_units.npz", "mse");
    let f = &run(&a, "input-normalization").findings;
    assert_eq!(f.len(), 1, "{f:#?}");
}

#[test]
fn every_healthy_fixture_is_clean_for_input_normalization() {
    for (model, data, loss) in HEALTHY {
        let a = input_normalization(model, data, loss);
        let r = run(&a, "input-normalization");
        assert!(r.findings.is_empty(), "{model}: {}", common::typed::show(r));
    }
}

#[test]
fn a_checkpoint_declared_untrained_is_judged() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(
        dir.path(),
        "trainlint.toml",
        "[setup]\nloss = \"cross_entropy\"\n[checks.initial-loss]\nmodel_state = \"untrained\"\n",
    );
    let mut args = vec![
        cfg.display().to_string(),
        "--select".into(),
        "initial-loss".into(),
    ];
    args.extend(model_data("cnn_bn_trained", "images.npz"));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let a = audit_of(&args);
    // Trained on this data: its loss is far below ln 10, judged and clean.
    passed(&a, "initial-loss");
}
