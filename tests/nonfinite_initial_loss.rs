//! nonfinite and initial-loss (issue 10).
//!
//! nonfinite: NaN / Inf from the data to the gradients and in the loss log, each reported once, at its
//! root, on fixtures made by real PyTorch (fixtures/make_nonfinite.py); healthy fixtures stay clean.
mod common;

use common::in_process::check_json;
use common::*;
use serde_json::Value;

fn nonfinite(args: &[String]) -> (i32, Value) {
    let mut all: Vec<&str> = vec!["--select", "nonfinite,init-std,gradient-flow"];
    all.extend(args.iter().map(String::as_str));
    check_json(&all)
}

/// The only finding of the run (across nonfinite, init-std and gradient-flow): one root cause, one
/// finding.
fn only_finding(report: &Value) -> &Value {
    let all = all_findings(report);
    assert_eq!(all.len(), 1, "{report}");
    all[0]
}

#[test]
fn nan_inputs_are_reported_once_with_the_samples() {
    let (code, r) = nonfinite(&model_data("mlp_default", "regression_nan_inputs.npz"));
    assert_eq!(code, 1);
    let f = only_finding(&r);
    assert_eq!(f["kind"], "nonfinite/data");
    let e = &f["evidence"];
    assert_eq!(
        (e["key"].as_str(), e["samples"].as_i64()),
        (Some("inputs"), Some(3))
    );
    assert_eq!(
        (e["values"]["nan"].as_i64(), e["values"]["inf"].as_i64()),
        (Some(4), Some(1))
    );
    assert_eq!(f["location"]["samples"], serde_json::json!([5, 6]));
}

#[test]
fn nan_targets_are_reported_and_the_gradients_of_the_finite_rows_are_clean() {
    let (_, r) = nonfinite(&model_data("mlp_default", "regression_nan_targets.npz"));
    let f = only_finding(&r);
    assert_eq!(f["evidence"]["key"], "targets");
    assert_eq!(f["evidence"]["first_sample"], 12);
}

#[test]
fn nan_weights_are_nonfinite_parameters_not_an_init_std_finding() {
    let (_, r) = nonfinite(&model_data("mlp_nan", "regression.npz"));
    let f = only_finding(&r);
    assert_eq!(f["kind"], "nonfinite/parameters");
    assert_eq!(
        f["evidence"]["parameters"],
        serde_json::json!(["fc2.weight"])
    );
    assert_eq!(check_entry(&r, "init-std")["status"], "passed");
}

#[test]
fn nan_running_stats_are_reported_as_buffers_not_as_a_nan_output() {
    let (_, r) = nonfinite(&model_data("bn_nan_stats", "regression.npz"));
    let f = only_finding(&r);
    assert_eq!(f["kind"], "nonfinite/buffers");
    assert_eq!(f["location"]["buffer"], "bn.running_var");
}

#[test]
fn the_first_op_that_makes_inf_is_named_with_its_module_and_line() {
    let (_, r) = nonfinite(&model_data("log_relu_head", "regression.npz"));
    let f = only_finding(&r);
    assert_eq!(f["kind"], "nonfinite/output");
    let e = &f["evidence"];
    assert_eq!(e["op"], "aten::log");
    assert_eq!(e["module"], "head");
    assert!(
        e["source"]
            .as_str()
            .unwrap()
            .contains("torch.log(torch.relu("),
        "{e}"
    );
    // About half the samples have a negative pre-activation; all of those give -inf.
    let n = e["samples"].as_i64().unwrap();
    assert!((16..=48).contains(&n), "{n}");
    assert_eq!(e["values"]["nan"], 0);
}

#[test]
fn nan_gradients_of_a_finite_forward_move_from_gradient_flow_to_nonfinite() {
    let (_, r) = nonfinite(&model_data("sqrt_where_head", "regression.npz"));
    let f = only_finding(&r);
    assert_eq!(f["kind"], "nonfinite/gradients");
    assert_eq!(
        f["evidence"]["non_finite"],
        serde_json::json!(["fc1.weight", "fc1.bias", "fc.weight", "fc.bias"])
    );
    assert_eq!(check_entry(&r, "gradient-flow")["status"], "passed");
}

#[test]
fn a_diverged_log_names_its_first_non_finite_step_in_csv_and_python_json() {
    for log in ["logs/loss_nan.csv", "logs/loss_nan.jsonl"] {
        let (code, r) = check_json(&["--select", "nonfinite", "--log", &fixture(log)]);
        assert_eq!(code, 1, "{log}");
        let f = findings(&r, "nonfinite");
        assert_eq!(f.len(), 1, "{log}: {r}");
        let e = &f[0]["evidence"];
        assert_eq!(e["first_step"], 4.0, "{log}");
        assert_eq!(e["rows"], 36, "{log}");
        assert!(e["last_finite"].as_f64().unwrap() > 1e10, "{log}: {e}");
    }
    // The finite healthy logs are clean.
    for log in [
        "logs/sgd_noisy_descent.csv",
        "logs/rising.csv",
        "logs/two_terms_30x.csv",
    ] {
        let (_, r) = check_json(&["--select", "nonfinite", "--log", &fixture(log)]);
        assert!(findings(&r, "nonfinite").is_empty(), "{log}");
    }
}

/// Runs `select` on a fixture pair with `loss` in [setup].
fn run_on(select: &str, model: &str, data: &str, loss: &str) -> (i32, Value) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(
        dir.path(),
        "trainlint.toml",
        &format!("[setup]\nloss = \"{loss}\"\n"),
    );
    let mut args = vec![cfg.display().to_string(), "--select".into(), select.into()];
    args.extend(model_data(model, data));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    check_json(&args)
}

#[test]
fn every_healthy_fixture_is_clean_for_nonfinite() {
    for (model, data, loss) in HEALTHY {
        let (code, r) = run_on("nonfinite", model, data, loss);
        assert_eq!(code, 0, "{model} / {data}: {r}");
        assert_eq!(check_entry(&r, "nonfinite")["status"], "passed", "{model}");
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

fn initial_loss(model: &str, data: &str, loss: &str) -> Value {
    let (code, r) = run_on("initial-loss", model, data, loss);
    assert!(code == 0 || code == 1, "{model}: exit {code}");
    check_entry(&r, "initial-loss").clone()
}

#[test]
fn sharpened_logits_start_confidently_wrong() {
    let e = initial_loss("classifier_hot_head", "classes4.npz", "cross_entropy");
    let f = &e["findings"][0];
    assert_eq!(f["kind"], "initial-loss/high-initial-loss", "{e}");
    let v = &f["evidence"];
    assert!((v["expected"].as_f64().unwrap() - 4f64.ln()).abs() < 1e-9);
    let loss = v["loss"].as_f64().unwrap();
    assert!(loss > 2.5 * 4f64.ln() && loss < 8.0, "{loss}");
    assert!(v["output_scale"].as_f64().unwrap() > 2.0, "{v}");
    assert_eq!(f["location"]["module"], "mlp.head");
    // The same MLP without the temperature: clean.
    let e = initial_loss("classifier", "classes4.npz", "cross_entropy");
    assert_eq!(e["status"], "passed", "{e}");
}

#[test]
fn a_large_last_layer_is_judged_against_the_targets_mean_square() {
    let e = initial_loss("regression_hot_head", "regression.npz", "mse");
    let v = &e["findings"][0]["evidence"];
    let (loss, expected) = (v["loss"].as_f64().unwrap(), v["expected"].as_f64().unwrap());
    assert!(
        (expected - 0.95).abs() < 0.05,
        "mean² + variance of the targets: {expected}"
    );
    assert!(loss > 6.25 * expected, "{loss}");
    assert!(v["output_scale"].as_f64().unwrap() > 2.0 * v["target_scale"].as_f64().unwrap());
}

#[test]
fn a_bias_far_from_the_prior_is_reported_with_the_prior_loss() {
    let e = initial_loss("multilabel_bias_hot", "multilabel5.npz", "bce_with_logits");
    let f = &e["findings"][0];
    let v = &f["evidence"];
    assert!((v["expected"].as_f64().unwrap() - 2f64.ln()).abs() < 1e-9);
    assert!(
        (v["output_mean"].as_f64().unwrap() - 8.0).abs() < 0.5,
        "{v}"
    );
    // 40% positives: a bias at log(0.4 / 0.6) gives the binary entropy H(0.4) ≈ 0.673.
    assert!(
        (v["prior_loss"].as_f64().unwrap() - 0.673).abs() < 0.05,
        "{v}"
    );
    assert!(
        f["help"].as_str().unwrap().contains("log(p / (1 - p))"),
        "{f}"
    );
}

#[test]
fn trained_checkpoints_are_skipped_unless_declared_untrained() {
    let e = initial_loss("cnn_bn_trained", "images.npz", "cross_entropy");
    assert_eq!(e["status"], "skipped");
    let reason = e["reason"].as_str().unwrap();
    assert!(reason.contains("tracked 200 batches"), "{reason}");
}

#[test]
fn every_healthy_fixture_is_clean_for_initial_loss() {
    for (model, data, loss) in HEALTHY {
        let e = initial_loss(model, data, loss);
        assert!(
            e["status"] == "passed" || e["status"] == "skipped",
            "{model} / {data}: {e}"
        );
        assert!(e["findings"].as_array().unwrap().is_empty(), "{model}: {e}");
    }
}

// ---------------------------------------------------------------- input-normalization

fn input_normalization(model: &str, data: &str, loss: &str) -> Value {
    let (code, r) = run_on("input-normalization", model, data, loss);
    assert!(code == 0 || code == 1, "{model}: exit {code}");
    check_entry(&r, "input-normalization").clone()
}

#[test]
fn physical_units_reach_a_first_layer_that_does_not_rescale_them() {
    let e = input_normalization("mlp_default", "regression_raw_units.npz", "mse");
    let f = &e["findings"][0];
    assert_eq!(f["kind"], "input-normalization/raw-input-scale", "{e}");
    let v = &f["evidence"];
    assert_eq!(
        (v["layer"].as_str(), v["largest_feature"].as_i64()),
        (Some("fc1"), Some(3))
    );
    assert!(v["first_layer_rms"].as_f64().unwrap() > 1e3, "{v}");
    assert!(v["standardised_rms"].as_f64().unwrap() < 2.0, "{v}");
    // initial-loss leaves the input scale to input-normalization: one root cause, one finding.
    let e = initial_loss("mlp_default", "regression_raw_units.npz", "mse");
    assert_eq!(e["status"], "skipped", "{e}");
    assert!(
        e["reason"]
            .as_str()
            .unwrap()
            .contains("input-normalization"),
        "{e}"
    );
    // BatchNorm on the raw features first: clean.
    let e = input_normalization("mlp_bn_first", "regression_raw_units.npz", "mse");
    assert_eq!(e["status"], "passed", "{e}");
}

#[test]
fn raw_pixels_are_flagged_unless_the_model_divides_by_255() {
    let e = input_normalization("cnn_bn", "images_255.npz", "cross_entropy");
    let v = &e["findings"][0]["evidence"];
    assert_eq!(
        (v["layer"].as_str(), v["op"].as_str()),
        (Some("conv1"), Some("aten::conv2d")),
        "{e}"
    );
    assert!(v["first_layer_rms"].as_f64().unwrap() > 20.0, "{v}");
    let e = input_normalization("cnn_div255", "images_255.npz", "cross_entropy");
    assert_eq!(e["status"], "passed", "{e}");
    // Integer token ids are no magnitude.
    let e = input_normalization("embedding", "tokens.npz", "cross_entropy");
    assert_eq!(e["status"], "skipped", "{e}");
}

#[test]
fn features_orders_of_magnitude_apart_are_flagged_unless_the_model_standardises_them() {
    // regression.npz's standardised columns times 10^linspace(-3, 0.5): stds 1e-3 .. 3.6, none large.
    let e = input_normalization("mlp_default", "regression_mixed_scales.npz", "mse");
    let f = e["findings"].as_array().unwrap();
    assert_eq!(f.len(), 1, "{e}");
    assert_eq!(
        f[0]["kind"], "input-normalization/feature-scale-spread",
        "{e}"
    );
    let v = &f[0]["evidence"];
    assert_eq!(
        (v["small_feature"].as_i64(), v["large_feature"].as_i64()),
        (Some(0), Some(31)),
        "{v}"
    );
    let ratio = v["scale_ratio"].as_f64().unwrap();
    assert!((2000.0..5000.0).contains(&ratio), "{v}");
    // A model that does not rescale: the contributions spread as much as the scales.
    let contribution = v["contribution_ratio"].as_f64().unwrap();
    assert!(
        contribution > 0.3 * ratio && contribution < 3.0 * ratio,
        "{v}"
    );
    assert!(
        (12..=16).contains(&v["features_below"].as_i64().unwrap()),
        "{v}"
    );
    // Models that standardise the features themselves (BatchNorm first, (x - mean) / std inside): clean.
    for model in ["mlp_bn_first", "mlp_standardise"] {
        let e = input_normalization(model, "regression_mixed_scales.npz", "mse");
        assert_eq!(e["status"], "passed", "{model}: {e}");
    }
    // Healthy tabular data whose features vary 10×: clean.
    let e = input_normalization("mlp_default", "regression_10x_scales.npz", "mse");
    assert_eq!(e["status"], "passed", "{e}");
    // Raw physical units give one finding (raw-input-scale), not a second one for the same cause.
    let e = input_normalization("mlp_default", "regression_raw_units.npz", "mse");
    assert_eq!(e["findings"].as_array().unwrap().len(), 1, "{e}");
}

#[test]
fn every_healthy_fixture_is_clean_for_input_normalization() {
    for (model, data, loss) in HEALTHY {
        let e = input_normalization(model, data, loss);
        assert!(e["findings"].as_array().unwrap().is_empty(), "{model}: {e}");
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
    let (_, r) = check_json(&args);
    // Trained on this data: its loss is far below ln 10, judged and clean.
    assert_eq!(check_entry(&r, "initial-loss")["status"], "passed", "{r}");
}
