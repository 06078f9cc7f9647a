//! init-std on real TorchScript fixtures: what must be flagged, and the controls that fool fixed bounds.
//! The audits run in process through the library; each finding is asserted typed (severity, location,
//! evidence), its message in a snapshot (`assert_check!`).
mod common;

use common::in_process::audit_of;
use common::typed::{fails, num, only, passed, run};
use common::*;
use trainlint::audit::Audit;
use trainlint_checks::Severity::Error;

fn init_std(model: &str, data: &str, extra: &[&str]) -> Audit {
    let md = model_data(model, data);
    let mut a: Vec<&str> = md.iter().map(String::as_str).collect();
    a.extend_from_slice(&["--select", "init-std"]);
    a.extend_from_slice(extra);
    audit_of(&a)
}

/// (parameter, std) of every init-std finding, each an error.
fn flagged(audit: &Audit) -> Vec<(String, f64)> {
    run(audit, "init-std")
        .findings
        .iter()
        .map(|f| {
            assert_eq!(f.severity, Error, "{f:#?}");
            let parameter = f.location.parameter.clone();
            (
                parameter.unwrap_or_else(|| panic!("no parameter: {f:#?}")),
                num(f, "std"),
            )
        })
        .collect()
}

#[test]
fn std_one_is_flagged_on_hidden_layers_with_the_expected_band() {
    let a = init_std("mlp_std1", "regression.npz", &[]);
    assert!(fails(&a));
    assert_check!(a, "init-std");
    let f = flagged(&a);
    let names: Vec<&str> = f.iter().map(|(n, _)| n.as_str()).collect();
    // head (fan_out 1) allows He fan_out √2 ≈ 1.41, so std 1 is inside its band.
    assert_eq!(names, ["fc1.weight", "fc2.weight"]);
    for (_, std) in &f {
        assert!((std - 1.0).abs() < 0.05, "std {std}");
    }
    let fc2 = &run(&a, "init-std").findings[1];
    // fan_in 64: band = [√(1/192)/3, √(2/64)·3] = [0.0241, 0.530].
    assert!((num(fc2, "band_low") - 0.024_06).abs() < 1e-4);
    assert!((num(fc2, "band_high") - 0.530_33).abs() < 1e-4);
}

#[test]
fn tiny_std_is_flagged_on_every_layer() {
    let a = init_std("mlp_std1e-5", "regression.npz", &[]);
    assert!(fails(&a));
    let f = flagged(&a);
    assert_eq!(f.len(), 3);
    assert!(f.iter().all(|(_, s)| *s < 2e-5 && *s > 5e-6));
    // The messages say the stds lie below the nearest init family.
    assert_check!(a, "init-std");
}

#[test]
fn all_zero_hidden_layer_is_a_symmetry_error_and_can_be_allowed() {
    let a = init_std("mlp_zero_hidden", "regression.npz", &[]);
    assert!(fails(&a));
    let f = only(&a, "init-std", Error);
    assert_eq!(f.location.parameter.as_deref(), Some("fc2.weight"));
    // The message starts "weight is all zeros".
    assert_check!(a, "init-std");
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(
        dir.path(),
        "trainlint.toml",
        "[checks.init-std]\nallow_constant = [\"fc2\"]\n",
    );
    let a = init_std(
        "mlp_zero_hidden",
        "regression.npz",
        &[&cfg.display().to_string()],
    );
    assert!(!fails(&a));
    assert!(run(&a, "init-std").findings.is_empty());
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
        let a = init_std(model, data, &[]);
        assert!(!fails(&a), "{model}");
        passed(&a, "init-std");
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
    let a = init_std("wide_linear", "wide.npz", &[&cfg]);
    assert!(fails(&a));
    let f = flagged(&a);
    assert_eq!(f[0].0, "fc.weight");
    assert!(
        (f[0].1 - 0.006_38).abs() < 3e-4,
        "Linear(8192, 10) default std ≈ 1/√(3·8192) = 0.00638, got {}",
        f[0].1
    );
    let a = init_std("conv1x1", "pointwise.npz", &[&cfg]);
    let f = flagged(&a);
    // U(±1) has std 0.577; with only 8 weights the sample std scatters, but stays above max = 0.2.
    assert!(
        f[0].1 > 0.2 && f[0].1 < 1.0,
        "Conv2d(1, 8, 1) default std, got {}",
        f[0].1
    );
}
