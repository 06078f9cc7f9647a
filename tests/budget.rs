//! Issue 21: the checks that train work within a time budget (`run.check_budget`, `--check-budget`), and
//! a verdict the budget leaves undecided is a skip that says how far the check got, never a pass; the lr
//! probe stops at a sustained divergence and its control runs as many steps; a loss log that descends
//! cleanly stands for the probe; a log too short to judge beside the probe is said to be unjudged.
mod common;

use common::*;
use serde_json::Value;

const TRAINING_CHECKS: [&str; 3] = ["identity-overfit", "overfit-batch", "loss-oscillation"];

fn unet(extra: &[&str]) -> (i32, Value) {
    let mut args: Vec<String> = model_data("unet", "unet64.npz");
    args.extend(["--select".into(), TRAINING_CHECKS.join(",")]);
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    check_json(&args)
}

#[test]
fn a_spent_budget_makes_every_training_check_undecided_not_passed() {
    // A millisecond: no check that trains the UNet can reach its verdict (hundreds of steps).
    let (code, r) = unet(&["--check-budget", "0.001"]);
    assert_eq!(code, 0, "an undecided check is no finding: {r}");
    for check in TRAINING_CHECKS {
        let e = check_entry(&r, check);
        assert_eq!(e["status"], "skipped", "{check}: {e}");
        let reason = e["reason"].as_str().unwrap();
        assert!(reason.starts_with("undecided: "), "{check}: {reason}");
        assert!(
            reason.contains("ran ") && reason.contains(" steps"),
            "{reason}"
        );
        assert!(reason.contains("run.check_budget"), "{reason}");
    }
    // The same run without a limit reaches its verdicts.
    let (_, r) = unet(&["--check-budget", "0"]);
    for check in TRAINING_CHECKS {
        assert_eq!(check_entry(&r, check)["status"], "passed", "{check}");
    }
}

#[test]
fn the_budget_comes_from_the_config_and_is_validated() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(
        dir.path(),
        "trainlint.toml",
        "[run]\ncheck_budget = 0.001\n",
    );
    let mut args: Vec<String> = vec![cfg.display().to_string()];
    args.extend(model_data("unet", "unet64.npz"));
    args.extend(["--select".into(), "identity-overfit".into()]);
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    let (_, r) = check_json(&a);
    let e = check_entry(&r, "identity-overfit");
    assert_eq!(e["status"], "skipped", "{e}");
    // --check-budget overrides the file.
    let mut b = a.clone();
    b.extend(["--check-budget", "0"]);
    let (_, r) = check_json(&b);
    assert_eq!(check_entry(&r, "identity-overfit")["status"], "passed");

    for bad in ["-1", "nan", "1e30", "soon"] {
        let o = run(&[
            "check",
            "--check-budget",
            bad,
            "--model",
            &fixture("models/unet.pt"),
        ]);
        let msg = assert_input_error(&o);
        assert!(
            msg.contains("check budget") || msg.contains("--check-budget"),
            "{bad}: {msg}"
        );
    }
    let bad = write(dir.path(), "trainlint.toml", "[run]\ncheck_budget = -5\n");
    let o = run(&["check", bad.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    let msg = stderr(&o);
    assert!(
        msg.contains("run.check_budget: must be at least 0, found -5"),
        "{msg}"
    );
}

fn probe_curves(r: &Value) -> Vec<(String, usize)> {
    check_entry(r, "loss-oscillation")["curves"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| {
            c["name"]
                .as_str()
                .unwrap()
                .starts_with("learning-rate probe")
        })
        .map(|c| {
            (
                c["name"].as_str().unwrap().to_string(),
                c["y"].as_array().unwrap().len(),
            )
        })
        .collect()
}

#[test]
fn a_probe_that_stays_far_above_its_start_stops_and_its_control_runs_as_many_steps() {
    // Adam at lr 1 on the MLP: the evaluation loss jumps four orders of magnitude and stays there.
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(
        dir.path(),
        "trainlint.toml",
        "[setup]\ntask = \"regression\"\noptimizer = \"adam\"\nlr = 1.0\nbatch_size = 16\n",
    );
    let mut args: Vec<String> = vec![cfg.display().to_string()];
    args.extend(model_data("mlp_default", "regression.npz"));
    args.extend(["--select".into(), "loss-oscillation".into()]);
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, r) = check_json(&a);
    assert_eq!(code, 1, "{r}");
    let kinds = kinds_of(&r);
    assert_eq!(kinds, ["loss-oscillation/probe-diverges"], "{r}");
    let curves = probe_curves(&r);
    let main = curves
        .iter()
        .find(|(n, _)| n.contains("(diverged: above 10× its start for 10 steps, stopped at step"))
        .unwrap_or_else(|| panic!("the main run stopped as diverged: {curves:?}"));
    assert!(main.1 - 1 < 60, "{main:?}");
    // The warm-up run (Adam) and the control: the control is compared at the main run's last step.
    let control = curves
        .iter()
        .find(|(n, _)| n.ends_with("(control)"))
        .expect("the control ran");
    assert_eq!(control.1, main.1, "{curves:?}");
    let f = &findings(&r, "loss-oscillation")[0];
    let steps = f["evidence"]["probe_steps"].as_u64().unwrap() as usize;
    assert_eq!(steps, main.1 - 1, "{f}");
    assert!(
        f["message"]
            .as_str()
            .unwrap()
            .contains(&format!("in {steps} steps")),
        "{f}"
    );
}

#[test]
fn a_short_log_beside_the_probe_is_said_to_be_unjudged() {
    // Issue 22, 9: 24 rows < min_points = 30; the probe's verdict stands, and the note says so.
    let dir = tempfile::tempdir().unwrap();
    let rows: String = (0..24)
        .map(|i| format!("{i},{}\n", 2.0 * 0.97f64.powi(i)))
        .collect();
    let log = write(dir.path(), "short.csv", &format!("step,loss\n{rows}"));
    let cfg = write(
        dir.path(),
        "trainlint.toml",
        "[setup]\ntask = \"regression\"\noptimizer = \"adam\"\nlr = 1e-3\nbatch_size = 16\n",
    );
    let mut args: Vec<String> = vec![cfg.display().to_string()];
    args.extend(model_data("mlp_default", "regression.npz"));
    args.extend(["--select".into(), "loss-oscillation".into()]);
    args.extend(["--log".into(), log.display().to_string()]);
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    let (_, r) = check_json(&a);
    let e = check_entry(&r, "loss-oscillation");
    assert_eq!(e["status"], "passed", "{e}");
    assert_eq!(
        e["note"],
        "the loss log was not judged: 24 finite rows, needs min_points = 30; the learning-rate probe ran"
    );
    assert_eq!(probe_curves(&r).len(), 1, "the probe ran: {e}");
    // The text report says it beside the status.
    let mut text_args = vec!["check"];
    text_args.extend(a.iter().copied());
    text_args.extend(["--color", "never", "--no-timings"]);
    let o = run(&text_args);
    let out = stdout(&o);
    assert!(
        out.contains(
            "  passed · the loss log was not judged: 24 finite rows, needs min_points = 30"
        ),
        "{out}"
    );
}
