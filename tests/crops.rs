//! Issue 11: the checks that train a fully convolutional image-to-image model do so on crops, with the
//! same verdicts, and every training check reports its steps and time per step.
mod common;

use common::in_process::check_json;
use common::*;
use serde_json::Value;

fn report(model: &str, data: &str, select: &str) -> Value {
    let mut args: Vec<String> = model_data(model, data);
    args.extend(["--select".into(), select.into()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, report) = check_json(&args);
    assert!(code == 0 || code == 1, "exit {code}");
    report
}

fn training<'a>(report: &'a Value, check: &str) -> &'a Vec<Value> {
    check_entry(report, check)["training"]
        .as_array()
        .unwrap_or_else(|| panic!("{check} reports no training: {report}"))
}

fn shape(run: &Value) -> Vec<i64> {
    run["input_shape"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect()
}

#[test]
fn a_unet_learns_the_identity_and_overfits_on_half_size_crops() {
    let r = report("unet", "unet64.npz", "identity-overfit,overfit-batch");
    for (check, name) in [
        ("identity-overfit", "identity"),
        ("overfit-batch", "overfit"),
    ] {
        let e = check_entry(&r, check);
        assert_eq!(e["status"], "passed", "{e}");
        let runs = training(&r, check);
        assert_eq!(runs.len(), 1, "{e}");
        let run = &runs[0];
        assert_eq!(run["name"], name);
        assert_eq!(shape(run), [8, 3, 32, 32], "{run}");
        let steps = run["steps"].as_u64().unwrap();
        assert!((1..500).contains(&steps), "stops early once reached: {run}");
        assert_eq!(run["forwards"].as_u64().unwrap(), steps + 1);
        assert_eq!(run["ms_per_step"], 0.0, "--no-timings zeroes the time");
        let curve = &e["curves"][0];
        assert!(
            curve["name"].as_str().unwrap().contains("on 32×32 crops"),
            "{curve}"
        );
        assert_eq!(curve["y"].as_array().unwrap().len() as u64, steps + 1);
    }
}

#[test]
fn a_bottleneck_fails_the_identity_on_crops_as_on_whole_images() {
    // ae_bottleneck squeezes 3 channels through 1: no crop can hide that (its 16×16 fixture, which is
    // never cropped, fails the same way in checks_mission.rs).
    let r = report("ae_bottleneck", "unet64.npz", "identity-overfit");
    let f = findings(&r, "identity-overfit");
    assert_eq!(f.len(), 1, "{r}");
    let message = f[0]["message"].as_str().unwrap();
    assert!(
        message.starts_with("the model cannot learn the identity on 8 samples (32×32 crops):"),
        "{message}"
    );
    assert!(
        message.contains("the narrowest layer down.2 has 1 channel"),
        "{message}"
    );
    assert!(f[0]["evidence"]["relative_mse_end"].as_f64().unwrap() > 0.3);
    let run = &training(&r, "identity-overfit")[0];
    assert_eq!(shape(run), [8, 3, 32, 32]);
    assert_eq!(run["steps"], 500);
}

#[test]
fn small_images_and_classifiers_train_at_full_size() {
    // 16×16 textures: half would be below the smallest crop side (32).
    let r = report("unet", "textures.npz", "identity-overfit");
    assert_eq!(shape(&training(&r, "identity-overfit")[0]), [8, 3, 16, 16]);
    // A classifier's output does not follow its input's spatial size.
    let r = report("cnn_bn", "images.npz", "overfit-batch");
    assert_eq!(shape(&training(&r, "overfit-batch")[0]), [16, 3, 16, 16]);
}

#[test]
fn the_learning_rate_probe_reports_its_steps_and_evaluations() {
    let r = report("unet", "unet64.npz", "loss-oscillation");
    let e = check_entry(&r, "loss-oscillation");
    assert_eq!(e["status"], "passed", "{e}");
    let runs = training(&r, "loss-oscillation");
    assert_eq!(runs.len(), 1, "a healthy probe is one run: {e}");
    assert_eq!(runs[0]["name"], "probe");
    // The batch: min(batch size, samples) = 8, on crops of the fully convolutional UNet.
    assert_eq!(shape(&runs[0]), [8, 3, 32, 32]);
    // 60 steps, or fewer when the loss settled into a clean descent (asked after every step from
    // step 20 on).
    let steps = runs[0]["steps"].as_u64().unwrap();
    assert!((20..=60).contains(&steps), "{e}");
    assert_eq!(
        runs[0]["forwards"],
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
