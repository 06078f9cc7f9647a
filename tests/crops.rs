//! Issue 11: the checks that train a fully convolutional image-to-image model do so on crops, with the
//! same verdicts, and every training check reports its steps and time per step. The audits run in
//! process through the library and are asserted typed (`tests/common/typed.rs`); the report with
//! timings comes from the binary.
mod common;

use common::in_process::audit_of;
use common::typed::{self, only, passed, show};
use common::*;
use serde_json::Value;
use trainlint::audit::Audit;
use trainlint_checks::Severity::Error;
use trainlint_checks::TrainingRun;

/// The audit of `check --select SELECT` of fixture model MODEL on DATA (an input the binary would
/// refuse, its exit 2, panics).
fn report(model: &str, data: &str, select: &str) -> Audit {
    let mut args: Vec<String> = model_data(model, data);
    args.extend(["--select".into(), select.into()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    audit_of(&args)
}

/// The trainings check `check` reports: at least one.
fn trainings<'a>(audit: &'a Audit, check: &str) -> &'a [TrainingRun] {
    let r = typed::run(audit, check);
    assert!(
        !r.training.is_empty(),
        "{check} reports no training: {}",
        show(r)
    );
    &r.training
}

/// The training runs of a check in a JSON report (of the binary).
fn training<'a>(report: &'a Value, check: &str) -> &'a Vec<Value> {
    check_entry(report, check)["training"]
        .as_array()
        .unwrap_or_else(|| panic!("{check} reports no training: {report}"))
}

#[test]
fn a_unet_learns_the_identity_and_overfits_on_half_size_crops() {
    let r = report("unet", "unet64.npz", "identity-overfit,overfit-batch");
    for (check, name) in [
        ("identity-overfit", "identity"),
        ("overfit-batch", "overfit"),
    ] {
        passed(&r, check);
        let runs = trainings(&r, check);
        assert_eq!(runs.len(), 1, "{runs:?}");
        let run = &runs[0];
        assert_eq!(run.name, name);
        assert_eq!(run.input_shape, [8, 3, 32, 32], "{run:?}");
        let steps = run.steps;
        assert!(
            (1..500).contains(&steps),
            "stops early once reached: {run:?}"
        );
        assert_eq!(run.forwards, steps + 1);
        assert_eq!(run.ms_per_step, 0.0, "--no-timings zeroes the time");
        let curve = &typed::run(&r, check).curves[0];
        assert!(curve.name.contains("on 32×32 crops"), "{}", curve.name);
        assert_eq!(curve.y.len(), steps + 1);
    }
}

#[test]
fn a_bottleneck_fails_the_identity_on_crops_as_on_whole_images() {
    // ae_bottleneck squeezes 3 channels through 1: no crop can hide that (its 16×16 fixture, which is
    // never cropped, fails the same way in checks_mission.rs).
    let r = report("ae_bottleneck", "unet64.npz", "identity-overfit");
    assert_check!(r, "identity-overfit");
    // The snapshot redacts the numbers of a check that trains: the sample count, the crop's side and
    // the bottleneck's channels are asserted here.
    let f = only(&r, "identity-overfit", Error);
    assert!(
        f.message
            .starts_with("the model cannot learn the identity on 8 samples (32×32 crops):"),
        "{f:#?}"
    );
    assert!(
        f.message
            .contains("the narrowest layer down.2 has 1 channel"),
        "{f:#?}"
    );
    assert!(typed::num(f, "relative_mse_end") > 0.3, "{f:#?}");
    let run = &trainings(&r, "identity-overfit")[0];
    assert_eq!(run.input_shape, [8, 3, 32, 32]);
    assert_eq!(run.steps, 500);
}

#[test]
fn small_images_and_classifiers_train_at_full_size() {
    // 16×16 textures: half would be below the smallest crop side (32).
    let r = report("unet", "textures.npz", "identity-overfit");
    assert_eq!(
        trainings(&r, "identity-overfit")[0].input_shape,
        [8, 3, 16, 16]
    );
    // A classifier's output does not follow its input's spatial size.
    let r = report("cnn_bn", "images.npz", "overfit-batch");
    assert_eq!(
        trainings(&r, "overfit-batch")[0].input_shape,
        [16, 3, 16, 16]
    );
}

#[test]
fn the_learning_rate_probe_reports_its_steps_and_evaluations() {
    let r = report("unet", "unet64.npz", "loss-oscillation");
    passed(&r, "loss-oscillation");
    let runs = trainings(&r, "loss-oscillation");
    assert_eq!(runs.len(), 1, "a healthy probe is one run: {runs:?}");
    assert_eq!(runs[0].name, "probe");
    // The batch: min(batch size, samples) = 8, on crops of the fully convolutional UNet.
    assert_eq!(runs[0].input_shape, [8, 3, 32, 32]);
    // 60 steps, or fewer when the loss settled into a clean descent (asked after every step from
    // step 20 on).
    let steps = runs[0].steps;
    assert!((20..=60).contains(&steps), "{runs:?}");
    assert_eq!(
        runs[0].forwards,
        2 * steps + 1,
        "each step and an evaluation before the first and after each"
    );
}

#[test]
fn with_timings_the_report_has_the_time_per_step() {
    let mut args = vec!["check".to_string(), "--output-format".into(), "json".into()];
    args.extend(model_data("mlp_default", "regression.npz"));
    args.extend(["--select".into(), "overfit-batch".into()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = run(&args);
    let r: Value = serde_json::from_slice(&o.stdout).expect("JSON");
    let run = &training(&r, "overfit-batch")[0];
    let ms = run["ms_per_step"].as_f64().unwrap();
    let steps = run["steps"].as_f64().unwrap();
    let duration = check_entry(&r, "overfit-batch")["duration_ms"]
        .as_f64()
        .unwrap();
    assert!(ms > 0.0, "{run}");
    assert!(
        steps * ms <= duration,
        "the steps fit inside the check's duration: {run} vs {duration} ms"
    );
}
