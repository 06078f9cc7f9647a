//! init-std on real TorchScript fixtures: what must be flagged, and the controls that fool fixed bounds.
mod common;

use common::in_process::check_json;
use common::*;

fn init_std(model: &str, data: &str, extra: &[&str]) -> (i32, serde_json::Value) {
    let md = model_data(model, data);
    let mut a: Vec<&str> = md.iter().map(String::as_str).collect();
    a.extend_from_slice(&["--select", "init-std"]);
    a.extend_from_slice(extra);
    check_json(&a)
}

fn flagged(report: &serde_json::Value) -> Vec<(String, f64)> {
    findings(report, "init-std")
        .iter()
        .map(|f| {
            assert_eq!(f["severity"], "error");
            (
                f["location"]["parameter"].as_str().unwrap().to_string(),
                f["evidence"]["std"].as_f64().unwrap(),
            )
        })
        .collect()
}

#[test]
fn std_one_is_flagged_on_hidden_layers_with_the_expected_band() {
    let (code, report) = init_std("mlp_std1", "regression.npz", &[]);
    assert_eq!(code, 1);
    let f = flagged(&report);
    let names: Vec<&str> = f.iter().map(|(n, _)| n.as_str()).collect();
    // head (fan_out 1) allows He fan_out √2 ≈ 1.41, so std 1 is inside its band.
    assert_eq!(names, ["fc1.weight", "fc2.weight"]);
    for (_, std) in &f {
        assert!((std - 1.0).abs() < 0.05, "std {std}");
    }
    let fc2 = &findings(&report, "init-std")[1];
    // fan_in 64: band = [√(1/192)/3, √(2/64)·3] = [0.0241, 0.530].
    assert!((fc2["evidence"]["band_low"].as_f64().unwrap() - 0.024_06).abs() < 1e-4);
    assert!((fc2["evidence"]["band_high"].as_f64().unwrap() - 0.530_33).abs() < 1e-4);
}

#[test]
fn tiny_std_is_flagged_on_every_layer() {
    let (code, report) = init_std("mlp_std1e-5", "regression.npz", &[]);
    assert_eq!(code, 1);
    let f = flagged(&report);
    assert_eq!(f.len(), 3);
    assert!(f.iter().all(|(_, s)| *s < 2e-5 && *s > 5e-6));
    assert!(findings(&report, "init-std")[0]["message"]
        .as_str()
        .unwrap()
        .contains("below the nearest init family"));
}

#[test]
fn all_zero_hidden_layer_is_a_symmetry_error_and_can_be_allowed() {
    let (code, report) = init_std("mlp_zero_hidden", "regression.npz", &[]);
    assert_eq!(code, 1);
    let f = findings(&report, "init-std");
    assert_eq!(f.len(), 1);
    assert_eq!(f[0]["location"]["parameter"], "fc2.weight");
    assert!(f[0]["message"]
        .as_str()
        .unwrap()
        .starts_with("weight is all zeros"));
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(
        dir.path(),
        "trainlint.toml",
        "[checks.init-std]\nallow_constant = [\"fc2\"]\n",
    );
    let (code, report) = init_std(
        "mlp_zero_hidden",
        "regression.npz",
        &[&cfg.display().to_string()],
    );
    assert_eq!(code, 0);
    assert!(findings(&report, "init-std").is_empty());
}

#[test]
fn pytorch_defaults_that_fool_fixed_bounds_pass() {
    for (model, data) in [
        ("mlp_default", "regression.npz"),
        ("wide_linear", "wide.npz"),
        ("conv1x1", "pointwise.npz"),
        ("embedding", "tokens.npz"),
        ("cnn_bn", "images.npz"),
        ("cnn_bn_trained", "images.npz"),
    ] {
        let (code, report) = init_std(model, data, &[]);
        assert_eq!(code, 0, "{model}: {report}");
        assert_eq!(
            check_entry(&report, "init-std")["status"],
            "passed",
            "{model}"
        );
    }
}

#[test]
fn fixed_bounds_mode_misjudges_the_wide_and_narrow_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(
        dir.path(),
        "trainlint.toml",
        "[checks.init-std]\nmode = \"fixed\"\n",
    );
    let cfg = cfg.display().to_string();
    let (code, report) = init_std("wide_linear", "wide.npz", &[&cfg]);
    assert_eq!(code, 1);
    let f = flagged(&report);
    assert_eq!(f[0].0, "fc.weight");
    assert!(
        (f[0].1 - 0.006_38).abs() < 3e-4,
        "Linear(8192, 10) default std ≈ 1/√(3·8192) = 0.00638, got {}",
        f[0].1
    );
    let (_, report) = init_std("conv1x1", "pointwise.npz", &[&cfg]);
    let f = flagged(&report);
    // U(±1) has std 0.577; with only 8 weights the sample std scatters, but stays above max = 0.2.
    assert!(
        f[0].1 > 0.2 && f[0].1 < 1.0,
        "Conv2d(1, 8, 1) default std, got {}",
        f[0].1
    );
}
