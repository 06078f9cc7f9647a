//! The thread policy (issue 21): libtorch's OpenMP threads spin briefly, then sleep, unless the user
//! chose, in effect from start-up (libgomp reads its environment before `main`); the thread count and
//! its reason, and whether the checks that train ran side by side, are in the JSON report.
mod common;

use common::*;

/// libgomp prints the settings it read at start-up with OMP_DISPLAY_ENV=VERBOSE (the wait policy and
/// the spin count it derived: `OMP_WAIT_POLICY = 'PASSIVE'` is also what it prints when the policy is
/// unset, and only the spin count tells the two apart).
fn openmp_settings(env: &[(&str, &str)]) -> String {
    let mut cmd = trainlint();
    cmd.env_remove("OMP_WAIT_POLICY")
        .env_remove("GOMP_SPINCOUNT")
        .env_remove("TRAINLINT_OPENMP_WAIT")
        .env("OMP_DISPLAY_ENV", "VERBOSE");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let o = cmd.arg("--version").output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(stdout(&o), "trainlint 0.1.0\n");
    stderr(&o)
}

#[test]
fn openmp_spins_briefly_then_sleeps_from_start_up_unless_the_user_chose() {
    // trainlint's settings, in effect in libgomp (set before it started: the process runs itself
    // again with them in its environment).
    let settings = openmp_settings(&[]);
    assert!(
        settings.contains("OMP_WAIT_POLICY = 'ACTIVE'"),
        "{settings}"
    );
    assert!(settings.contains("GOMP_SPINCOUNT = '30000'"), "{settings}");
    // The user's choice of either wins, untouched.
    let settings = openmp_settings(&[("OMP_WAIT_POLICY", "passive")]);
    assert!(
        settings.contains("OMP_WAIT_POLICY = 'PASSIVE'"),
        "{settings}"
    );
    assert!(settings.contains("GOMP_SPINCOUNT = '0'"), "{settings}");
    let settings = openmp_settings(&[("GOMP_SPINCOUNT", "5")]);
    assert!(settings.contains("GOMP_SPINCOUNT = '5'"), "{settings}");
    assert!(
        !settings.contains("OMP_WAIT_POLICY = 'ACTIVE'"),
        "{settings}"
    );
}

/// The JSON report's `threads` block of an init-std run on the demo with `extra` arguments.
fn threads_block(extra: &[&str]) -> serde_json::Value {
    let mut args = vec![
        "check",
        "examples/demo",
        "--select",
        "init-std",
        "--output-format",
        "json",
    ];
    args.extend_from_slice(extra);
    let o = run_as_is(&args);
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    report["threads"].clone()
}

#[test]
fn the_report_says_how_many_threads_ran_and_why() {
    let threads = threads_block(&["--threads", "3"]);
    assert_eq!(threads["count"], 3, "{threads}");
    assert_eq!(
        threads["reason"],
        "set by --threads or `threads` in the config"
    );
    assert_eq!(
        threads["openmp_wait_policy"],
        "active, 30000 spins then sleep (set by trainlint)"
    );
    let threads = threads_block(&[]);
    let (count, reason) = (
        threads["count"].as_u64().unwrap(),
        threads["reason"].as_str().unwrap(),
    );
    let cpus = std::thread::available_parallelism().unwrap().get() as u64;
    assert!((1..=cpus).contains(&count), "{count} of {cpus}");
    assert!(reason.contains("in the affinity mask"), "{reason}");
    // Machine-dependent, so absent with --no-timings, like every timing.
    assert!(threads_block(&["--no-timings"]).is_null());
}

/// Following the machine's load would make the thread count, and so the last digits libtorch
/// computes, depend on the moment: a `--no-timings` report stays byte for byte the same beside
/// CPU-bound work and without it.
#[test]
fn a_reproducible_report_does_not_follow_the_load() {
    let args = [
        "check",
        "--model",
        &fixture("models/cnn_bn.pt"),
        "--data",
        &fixture("data/images.npz"),
        "--select",
        "overfit-batch,loss-oscillation,gradient-flow",
        "--output-format",
        "json",
        "--no-timings",
    ];
    let quiet = run_as_is(&args);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let cpus = std::thread::available_parallelism().unwrap().get();
    let hogs: Vec<_> = (0..2 * cpus)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut x = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
                }
            })
        })
        .collect();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let busy = run_as_is(&args);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for h in hogs {
        h.join().unwrap();
    }
    assert_eq!(stdout(&quiet), stdout(&busy));
}

/// The JSON report of `args` (a `check` run).
fn report_of(args: &[&str]) -> serde_json::Value {
    let o = run(args);
    assert!(
        matches!(o.status.code(), Some(0 | 1)),
        "{args:?}: {}",
        stderr(&o)
    );
    serde_json::from_slice(&o.stdout).unwrap()
}

/// Each check's id, status and finding kinds, in the report's order.
fn verdicts(report: &serde_json::Value) -> Vec<(String, String, Vec<String>)> {
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let kinds = c["findings"]
                .as_array()
                .unwrap()
                .iter()
                .map(|f| f["kind"].as_str().unwrap().to_string())
                .collect();
            (
                c["id"].as_str().unwrap().to_string(),
                c["status"].as_str().unwrap().to_string(),
                kinds,
            )
        })
        .collect()
}

/// On a small model that draws no random numbers, the checks that train run side by side on copies
/// of it, sharing the threads: the report says so, keeps the registry's order and reaches the
/// verdicts of one check at a time (the demo's two failed fits, its other findings, the passes).
#[test]
fn the_checks_that_train_run_side_by_side_when_the_model_draws_nothing() {
    let args = |threads: &'static str| {
        vec![
            "check",
            "examples/demo",
            "--output-format",
            "json",
            "--threads",
            threads,
        ]
    };
    let together = report_of(&args("2"));
    assert_eq!(
        together["threads"]["side_by_side"],
        "identity-overfit, overfit-batch, loss-oscillation, stale-batchnorm trained side by side \
         on copies of the model, sharing the 2 threads"
    );
    let alone = report_of(&args("1"));
    assert_eq!(
        alone["threads"]["side_by_side"],
        "one thread: the checks that train run one at a time"
    );
    assert_eq!(verdicts(&together), verdicts(&alone));
    let failed: Vec<String> = verdicts(&together)
        .into_iter()
        .flat_map(|(_, _, kinds)| kinds)
        .filter(|k| k.starts_with("identity-overfit") || k.starts_with("overfit-batch"))
        .collect();
    assert_eq!(
        failed,
        [
            "identity-overfit/cannot-learn-identity",
            "overfit-batch/cannot-overfit"
        ]
    );
    // The demo's fits are settled without training; a CNN with BatchNorm trains side by side (the
    // fit, the lr probe, the BatchNorm passes) and reaches the verdicts of one check at a time.
    let cnn = |threads: &'static str| {
        report_of(&[
            "check",
            "--model",
            &fixture("models/cnn_bn.pt"),
            "--data",
            &fixture("data/images.npz"),
            "--select",
            "overfit-batch,loss-oscillation,stale-batchnorm",
            "--output-format",
            "json",
            "--threads",
            threads,
        ])
    };
    let (together, alone) = (cnn("2"), cnn("1"));
    assert_eq!(
        together["threads"]["side_by_side"],
        "overfit-batch, loss-oscillation, stale-batchnorm trained side by side on copies of the \
         model, sharing the 2 threads"
    );
    assert_eq!(verdicts(&together), verdicts(&alone));
    for id in ["overfit-batch", "loss-oscillation"] {
        let c = together["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["id"] == id)
            .unwrap();
        assert!(c["training"][0]["steps"].as_u64().unwrap() > 0, "{id}: {c}");
    }
}

/// libtorch has one global random generator: checks training side by side on a model with dropout
/// would interleave their draws by chance. On such a model each check draws from a generator of its
/// own, and the report names the ops: the side-by-side checks' report is then byte for byte the one
/// they give one at a time (each at one thread, so that thread counts move no digit). torchvision's
/// ViT has dropout too, at rate 0: it draws nothing, and its forwards overlap.
#[test]
fn a_model_that_draws_random_numbers_trains_each_check_on_its_own_generator() {
    let squeezenet = |extra: &[&str]| {
        let mut args = vec![
            "check".to_string(),
            "--model".into(),
            fixture("models/tv/squeezenet.pt"),
            "--data".into(),
            fixture("data/shapes16.npz"),
            "--select".into(),
            "overfit-batch,loss-oscillation".into(),
            "--output-format".into(),
            "json".into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let o = run_as_is(&args.iter().map(String::as_str).collect::<Vec<_>>());
        assert!(matches!(o.status.code(), Some(0 | 1)), "{}", stderr(&o));
        o.stdout
    };
    let report: serde_json::Value =
        serde_json::from_slice(&squeezenet(&["--threads", "2"])).unwrap();
    assert_eq!(
        report["threads"]["side_by_side"],
        "overfit-batch, loss-oscillation trained side by side on copies of the model, sharing the 2 \
         threads; the training forward draws random numbers (aten::dropout, aten::dropout_), so each \
         check drew from a generator of its own, and the forwards ran one at a time"
    );
    // Each of the two side by side has one of the two threads when the share is fixed.
    let together = squeezenet(&["--threads", "2", "--no-timings"]);
    let alone = squeezenet(&["--threads", "1", "--no-timings"]);
    let (together, alone) = (
        String::from_utf8_lossy(&together).into_owned(),
        String::from_utf8_lossy(&alone).into_owned(),
    );
    let first_difference = together
        .lines()
        .zip(alone.lines())
        .enumerate()
        .find(|(_, (a, b))| a != b);
    assert!(
        together == alone,
        "side by side and alone differ, first at line {first_difference:?}"
    );
    let trained: serde_json::Value = serde_json::from_str(&together).unwrap();
    for c in trained["checks"].as_array().unwrap() {
        assert!(c["training"][0]["steps"].as_u64().unwrap() > 0, "{c}");
    }
    let vit = report_of(&[
        "check",
        "--model",
        &fixture("models/tv/vit.pt"),
        "--data",
        &fixture("data/shapes16.npz"),
        "--select",
        "overfit-batch,loss-oscillation",
        "--threads",
        "2",
        "--output-format",
        "json",
    ]);
    assert_eq!(
        vit["threads"]["side_by_side"],
        "overfit-batch, loss-oscillation trained side by side on copies of the model, sharing the 2 \
         threads"
    );
}
