//! lr-sharpness: an SGD lr far above 2/λ is flagged with λ, the bound and the largest stable lr; the
//! same setup at a safe lr, Adam, and normalised networks are not. Audited in process, asserted typed.
mod common;

use common::in_process::{audit_of, audit_setup};
use common::typed::{num, only, passed, run, skipped};
use common::*;
use trainlint::audit::Audit;
use trainlint_checks::Severity;

fn run_config(config: &str) -> Audit {
    let cfg = fixture(config);
    audit_of(&[cfg.as_str(), "--select", "lr-sharpness"])
}

fn run_setup(model: &str, data: &str, setup: &str) -> Audit {
    run_setup_on(model, data, setup, None)
}

fn run_setup_on(model: &str, data: &str, setup: &str, log: Option<&str>) -> Audit {
    audit_setup("lr-sharpness", Some(model), Some(data), log, setup)
}

fn close(x: f64, want: f64, rel: f64) -> bool {
    (x - want).abs() <= rel * want.abs()
}

/// The findings of lr-sharpness.
fn findings(a: &Audit) -> &[trainlint_checks::Finding] {
    &run(a, "lr-sharpness").findings
}

#[test]
fn an_sgd_lr_far_above_the_bound_is_flagged_with_lambda_and_the_stable_lr() {
    // fixtures/make_lr_sharpness.py: λ = 5.64 by PyTorch's own double backward; SGD at lr 2 diverges.
    let a = run_config("configs/sgd_lr_above_sharpness.toml");
    assert_check!(a, "lr-sharpness");
    let f = only(&a, "lr-sharpness", Severity::Warning);
    assert_eq!(f.kind, "lr-sharpness/lr-above-stability-bound");
    let lambda = num(f, "sharpness");
    assert!(close(lambda, 5.64, 0.05), "{f:#?}");
    assert!(close(num(f, "bound"), 1.0, 1e-9), "{f:#?}");
    let stable = num(f, "max_stable_lr");
    assert!(close(stable, 2.0 / lambda, 1e-9), "{f:#?}");
    assert!(num(f, "iterations") <= 20.0, "{f:#?}");
    let lower = format!("lower lr to {}", trainlint_checks::finding::num(stable));
    assert!(f.help.contains(&lower), "{}", f.help);
    // Far above the bound nothing needs confirming.
    assert!(!f.evidence.contains_key("confirmed_by"), "{f:#?}");
}

#[test]
fn the_same_setup_at_a_safe_lr_passes() {
    // lr 0.1 < 2/λ ≈ 0.35: PyTorch's SGD descends there.
    passed(
        &run_config("configs/sgd_lr_below_sharpness.toml"),
        "lr-sharpness",
    );
    // lr 0.6 is above the bound but within the factor 2, and SGD on the batch settles (the one-sided
    // early warning): no finding.
    let a = run_setup(
        "mlp_default",
        "regression.npz",
        "optimizer = \"sgd\"\nlr = 0.6\nmomentum = 0.0",
    );
    passed(&a, "lr-sharpness");
    // Momentum 0.9 moves the bound to 2·1.9/λ ≈ 0.67: lr 1 is only 1.5× it, but it does not
    // self-stabilise (issue 23, 6): SGD on the batch makes no progress, and loss-oscillation's probe
    // diverges to inf within 13 steps at this lr. Within the factor, that evidence is what flags it.
    let a = run_setup(
        "mlp_default",
        "regression.npz",
        "optimizer = \"sgd\"\nlr = 1.0\nmomentum = 0.9",
    );
    let f = only(&a, "lr-sharpness", Severity::Warning);
    assert!(f.evidence["confirmed_by"].is_string(), "{f:#?}");
    let a = run_setup(
        "mlp_default",
        "regression.npz",
        "optimizer = \"sgd\"\nlr = 1.6\nmomentum = 0.9",
    );
    assert_eq!(
        findings(&a).len(),
        1,
        "{}",
        common::typed::show(run(&a, "lr-sharpness"))
    );
}

#[test]
fn adam_and_normalised_networks_are_skipped_with_the_reason() {
    // The reason says why: the preconditioned bound does not separate good from bad lr before
    // training settles (scripts/adam_sharpness.py), and which check covers Adam instead.
    let a = run_setup(
        "mlp_default",
        "regression.npz",
        "optimizer = \"adam\"\nlr = 1.0",
    );
    skipped(&a, "lr-sharpness");
    assert_check!("adam", a, "lr-sharpness");
    // torchvision's ResNet at its usual SGD 0.1 / momentum 0.9, and GoogLeNet's pattern (λ ≈ 245 at
    // init, yet it trains well at lr 0.1): BatchNorm makes the bound meaningless, so no finding.
    for model in ["tv_resnet_zero_init", "tv_googlenet_pattern"] {
        let a = run_setup(
            model,
            "images32.npz",
            "optimizer = \"sgd\"\nlr = 0.1\nmomentum = 0.9",
        );
        skipped(&a, "lr-sharpness");
        assert_check!(model, a, "lr-sharpness");
    }
}

#[test]
fn healthy_sgd_setups_without_normalisation_pass() {
    for (model, data, setup) in [
        ("classifier", "classes4.npz", "lr = 0.1\nmomentum = 0.9"),
        ("embedding", "tokens.npz", "lr = 0.1\nmomentum = 0.9"),
        ("bi_gru", "sequences.npz", "lr = 0.1\nmomentum = 0.9"),
        ("mlp_default", "regression.npz", "lr = 0.01\nmomentum = 0.9"),
    ] {
        let a = run_setup(model, data, &format!("optimizer = \"sgd\"\n{setup}"));
        passed(&a, "lr-sharpness");
    }
}

#[test]
fn an_op_without_double_backward_skips_instead_of_failing() {
    // MobileNetV3's hardsigmoid and ViT's CPU flash attention have no double backward in libtorch 2.13;
    // MobileNet also has BatchNorm, so try the ViT (LayerNorm only).
    let a = run_setup(
        "tv_vit_tiny",
        "images32.npz",
        "optimizer = \"sgd\"\nlr = 0.1",
    );
    skipped(&a, "lr-sharpness");
    assert_check!(a, "lr-sharpness");
}

#[test]
fn a_model_above_max_parameter_mib_is_skipped_with_the_memory_reason() {
    // The products hold ~6x the parameters: above the option the check skips and says why (a 200 MB
    // model would peak at 1.35 GB; tests/memory.rs measures it). The flagged setup, with a tiny limit:
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(fixture("configs/sgd_lr_above_sharpness.toml"))
        .unwrap()
        .replace("../", &format!("{}/", fixture("")))
        + "[checks.lr-sharpness]\nmax_parameter_mib = 0.001\n";
    let cfg = write(dir.path(), "trainlint.toml", &text);
    let cfg = cfg.display().to_string();
    let a = audit_of(&[cfg.as_str(), "--select", "lr-sharpness"]);
    let reason = skipped(&a, "lr-sharpness");
    assert!(
        reason.contains("above `max_parameter_mib` = 0.001")
            && reason.contains("6× the parameters in memory"),
        "{reason}"
    );
    assert_check!(a, "lr-sharpness");
    assert_eq!(a.report.summary.errors + a.report.summary.warnings, 0);
}

/// Issue 23, 6: between the bound and 2× it, the run's evidence decides whether the lr self-stabilises.
#[test]
fn near_the_bound_the_runs_own_evidence_decides() {
    let setup = |s: &str, log: Option<&str>| run_setup_on("mlp_default", "regression.npz", s, log);
    // λ = 5.64: with momentum 0.9 the largest stable lr is 3.8 / 5.64 = 0.674; at lr 1.2 (1.78×) SGD on
    // the same batch blows up within a few steps (the probe spikes 20×): flagged, saying so.
    let a = setup(
        "optimizer = \"sgd\"\nlr = 1.2\nmomentum = 0.9\nbatch_size = 32",
        None,
    );
    assert_check!("sgd_steps", a, "lr-sharpness");
    let f = only(&a, "lr-sharpness", Severity::Warning);
    let ratio = num(f, "lr") / num(f, "max_stable_lr");
    assert!(ratio > 1.0 && ratio < 2.0, "{f:#?}");
    let why = f.evidence["confirmed_by"].as_str().unwrap();
    assert!(f.message.ends_with(&format!("({why})")), "{f:#?}");
    // Without momentum at lr 0.6 (1.69×) SGD on the batch settles at the edge of stability: silent...
    let plain = "optimizer = \"sgd\"\nlr = 0.6\nmomentum = 0.0\nbatch_size = 32";
    assert!(findings(&setup(plain, None)).is_empty());
    assert!(findings(&setup(plain, Some("sgd_noisy_descent.csv"))).is_empty());
    // ...unless the run's log rises: then the same lr is flagged, with the log as the evidence.
    let a = setup(plain, Some("rising.csv"));
    assert_check!("rising_log", a, "lr-sharpness");
    let f = only(&a, "lr-sharpness", Severity::Warning);
    let why = f.evidence["confirmed_by"].as_str().unwrap();
    assert!(why.starts_with("the loss log rises from"), "{why}");
}
