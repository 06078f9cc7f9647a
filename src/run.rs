//! Selects, orders, isolates and times the checks.
//!
//! With a time limit ([`Isolation`]), each check runs on a worker thread of its own, with its own copy
//! of the model and shallow copies of the data, and the runner stops waiting when the limit passes.
//! libtorch work cannot be cancelled, so a timed-out worker is left running: it only ever touches its
//! own copies, and the process ends with `_exit` once the report is written
//! ([`checks_left_running`]).
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tch::Tensor;
use trainlint_checks::ports::{Dataset, Model};
use trainlint_checks::train::side_by_side;
use trainlint_checks::{
    registry, CheckError, CheckFailed, CheckInfo, CheckOutput, Context, Curve, Finding, Group,
    Input, Level, Location, Rule, Severity, TrainingRun, ViolationMetadata,
};

use crate::config::{Ignore, Settings};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Passed,
    Findings,
    Skipped,
    Failed,
}

#[derive(Debug, Serialize)]
pub struct CheckRun {
    pub id: &'static str,
    pub group: Group,
    pub level: Level,
    pub status: Status,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// What a check that ran says beside its status (a part of its input it could not judge).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// When skipped for want of an input: which one.
    #[serde(skip)]
    pub missing: Option<Input>,
    pub duration_ms: f64,
    pub findings: Vec<Finding>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub curves: Vec<Curve>,
    /// The trainings of a check that trains a copy: steps, input shape, ms per step.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub training: Vec<TrainingRun>,
    /// Findings silenced by `[[ignore]]` entries.
    #[serde(skip_serializing_if = "is_zero")]
    pub ignored: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// A selected check and its level.
type Selected = (Box<dyn Rule>, Level);

/// The checks that `settings` selects, with their levels (those at `allow` are left out).
pub fn selected_checks(settings: &Settings) -> Vec<Selected> {
    registry::all()
        .into_iter()
        .filter(|c| settings.selected(c.info().id, c.info().group))
        .map(|c| {
            let level = settings.level(c.info().id, c.info().default_level);
            (c, level)
        })
        .filter(|(_, level)| *level != Level::Allow)
        .collect()
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic".to_string())
}

/// How checks run under a time limit: each on a worker thread, with a model of its own.
pub struct Isolation<'a> {
    pub timeout: Duration,
    /// libtorch's CPU threads; libtorch keeps the setting per thread, so each worker sets it again.
    pub threads: usize,
    /// An independent copy of the model for one check: a check left running after its timeout keeps
    /// using its copy and never touches the model the next checks use.
    pub model_copy: &'a dyn Fn() -> Result<Box<dyn Model + Send>, CheckError>,
}

/// How a check ended.
enum Ended {
    Returned(CheckOutput),
    Panicked(String),
    TimedOut(Duration),
}

impl Ended {
    /// How a check's run ended: what it returned, or the panic that stopped it.
    fn of(output: std::thread::Result<CheckOutput>) -> Ended {
        match output {
            Ok(output) => Ended::Returned(output),
            Err(payload) => Ended::Panicked(panic_message(payload.as_ref())),
        }
    }
}

/// Whether a check that timed out may still be running on its worker thread (inside libtorch). The
/// process must then end with `_exit` rather than run exit handlers and static destructors under it.
static LEFT_RUNNING: AtomicBool = AtomicBool::new(false);

pub fn checks_left_running() -> bool {
    LEFT_RUNNING.load(Ordering::SeqCst)
}

/// Run one check on this thread. Every check starts from the same seed, so its result does not
/// depend on which checks ran before.
fn run_here(check: &dyn Rule, ctx: &Context, settings: &Settings) -> Ended {
    let options = settings.options(check.info().id);
    tch::manual_seed(settings.setup.seed as i64);
    Ended::of(catch_unwind(AssertUnwindSafe(|| {
        check.run_with(ctx, &options)
    })))
}

/// What a worker sends back: progress of a check that trains, then its end.
enum Message {
    Progress(usize, usize, f64),
    Ended(Ended, Duration),
}

/// A check started on a worker thread of its own, with its own inputs.
struct Worker {
    handle: std::thread::JoinHandle<()>,
    rx: mpsc::Receiver<Message>,
    started: Instant,
}

/// Starts `check` on a worker thread with `model` (its own copy) and shallow copies of the rest of
/// `ctx`, at `threads` libtorch CPU threads (its [`side_by_side`] share when `shared`), drawing from
/// a random generator of its own when `own_generator` ([`side_by_side::drawing`]).
fn spawn(
    check: Box<dyn Rule>,
    ctx: &Context,
    settings: &Settings,
    model: Option<Box<dyn Model + Send>>,
    threads: usize,
    shared: bool,
    own_generator: bool,
) -> Result<Worker, CheckError> {
    // Shallow copies share the tensors' storage, which no check writes to.
    let data = ctx.data.map(|d| Dataset {
        path: d.path.clone(),
        input_key: d.input_key.clone(),
        target_key: d.target_key.clone(),
        inputs: d.inputs.shallow_clone(),
        targets: d.targets.shallow_clone(),
    });
    let log = ctx.log.cloned();
    let setup = ctx.setup.clone();
    let sample_skips = ctx.sample_skips.clone();
    let prediction = ctx
        .prediction
        .get()
        .map(|p| p.as_ref().map(Tensor::shallow_clone).map_err(Clone::clone));
    let options = settings.options(check.info().id);
    let (seed, threads) = (settings.setup.seed as i64, threads as i32);
    let (tx, rx) = mpsc::channel();
    let handle = std::thread::Builder::new()
        .name(format!("check {}", check.info().id))
        // The TorchScript interpreter recurses; give workers the main thread's usual stack and more.
        .stack_size(64 << 20)
        .spawn(move || {
            // Thread-local in libtorch: the OpenMP thread count and the warning handler.
            tch::set_num_threads(threads);
            if shared {
                side_by_side::take_share();
            }
            crate::model::silence_libtorch_warnings();
            if own_generator {
                side_by_side::own_generator(seed);
            } else {
                tch::manual_seed(seed);
            }
            let progress_tx = tx.clone();
            let progress = move |step: usize, total: usize, loss: f64| {
                let _ = progress_tx.send(Message::Progress(step, total, loss));
            };
            let mut ctx = Context::new(&setup);
            ctx.model = model.as_deref().map(|m| m as &dyn Model);
            ctx.data = data.as_ref();
            ctx.log = log.as_ref();
            ctx.sample_skips = sample_skips;
            if let Some(p) = prediction {
                let _ = ctx.prediction.set(p);
            }
            ctx.progress = &progress;
            let started = Instant::now();
            let output = catch_unwind(AssertUnwindSafe(|| check.run_with(&ctx, &options)));
            let took = started.elapsed();
            if shared {
                side_by_side::ended();
            }
            let _ = tx.send(Message::Ended(Ended::of(output), took));
        })
        .map_err(|e| CheckError::Other(format!("cannot start a thread for the check: {e}")))?;
    Ok(Worker {
        handle,
        rx,
        started: Instant::now(),
    })
}

/// Waits for `worker` until it ends or `timeout` after it started, passing its progress on when
/// `show` (a timed-out worker is left running: it owns everything it uses). Returns how it ended and
/// how long it ran.
fn wait(worker: Worker, ctx: &Context, timeout: Option<Duration>, show: bool) -> (Ended, Duration) {
    let deadline = timeout.map(|t| worker.started + t);
    loop {
        let message = match deadline {
            Some(d) => worker
                .rx
                .recv_timeout(d.saturating_duration_since(Instant::now())),
            None => worker
                .rx
                .recv()
                .map_err(|_| mpsc::RecvTimeoutError::Disconnected),
        };
        match message {
            Ok(Message::Progress(step, total, loss)) => {
                if show {
                    (ctx.progress)(step, total, loss)
                }
            }
            Ok(Message::Ended(ended, took)) => {
                let _ = worker.handle.join();
                return (ended, took);
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                // Not joined: it may never return. It owns everything it uses.
                LEFT_RUNNING.store(true, Ordering::SeqCst);
                let limit = timeout.unwrap_or_default();
                return (Ended::TimedOut(limit), limit);
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let _ = worker.handle.join();
                return (
                    Ended::Panicked("the check's thread ended without a result".into()),
                    worker.started.elapsed(),
                );
            }
        }
    }
}

/// Run one check on a worker thread with its own inputs; stop waiting after `isolation.timeout`.
fn run_isolated(
    check: Box<dyn Rule>,
    ctx: &Context,
    settings: &Settings,
    isolation: &Isolation,
) -> Ended {
    let model = match ctx.model {
        Some(_) => match (isolation.model_copy)() {
            Ok(copy) => Some(copy),
            Err(e) => return Ended::Returned(Err(e)),
        },
        None => None,
    };
    match spawn(check, ctx, settings, model, isolation.threads, false, false) {
        Ok(worker) => wait(worker, ctx, Some(isolation.timeout), true).0,
        Err(e) => Ended::Returned(Err(e)),
    }
}

/// The report entry of one check from how it ended: an error, a panic or a timeout becomes a
/// `check-failed` finding.
fn record(
    info: &'static CheckInfo,
    level: Level,
    ended: Ended,
    duration_ms: f64,
    settings: &Settings,
    used: &mut [bool],
) -> CheckRun {
    let mut run = CheckRun {
        id: info.id,
        group: info.group,
        level,
        status: Status::Passed,
        reason: None,
        note: None,
        duration_ms,
        findings: Vec::new(),
        curves: Vec::new(),
        training: Vec::new(),
        ignored: 0,
        missing: None,
    };
    let failure = match ended {
        Ended::Returned(Ok(result)) => {
            run.curves = result.curves;
            run.training = result.training;
            if let Some(reason) = result.skipped {
                run.status = Status::Skipped;
                run.reason = Some(reason);
                run.missing = result.missing;
            } else {
                run.note = result.note;
                run.findings = result.findings;
                run.findings
                    .retain(|f| settings.kind_selected(f.kind, info.id, info.group));
                for f in &mut run.findings {
                    if level == Level::Warn {
                        f.severity = Severity::Warning;
                    }
                }
                if !run.findings.is_empty() {
                    run.status = Status::Findings;
                }
            }
            None
        }
        Ended::Returned(Err(e)) => Some((
            // libtorch's errors (tch passes them on verbatim) lose their C++ stack here.
            match e {
                CheckError::Model(m) => {
                    format!("the model failed: {}", crate::model::user_message(&m))
                }
                other => crate::model::user_message(&other.to_string()),
            },
            None,
        )),
        Ended::Panicked(message) => Some((format!("internal error: {message}"), None)),
        Ended::TimedOut(limit) => Some((
            format!(
                "timed out after {} s",
                trainlint_checks::finding::num(limit.as_secs_f64())
            ),
            Some(limit.as_secs_f64()),
        )),
    };
    if let Some((cause, timeout_s)) = failure {
        run.status = Status::Failed;
        run.reason = Some(cause.clone());
        let failed = CheckFailed {
            check: info.id.to_string(),
            cause,
            timeout_s,
        };
        let mut f = Finding::new(&failed, Location::default());
        f.check = info.id.to_string();
        if settings.kind_selected(CheckFailed::KIND.id, info.id, info.group) {
            run.findings = vec![f];
        }
    }
    apply_ignores(&mut run, settings, used);
    run
}

/// Run one check in isolation: an error or a panic becomes a `check-failed` finding.
fn run_one(
    check: &dyn Rule,
    level: Level,
    ctx: &Context,
    settings: &Settings,
    used: &mut [bool],
) -> CheckRun {
    let start = Instant::now();
    let ended = run_here(check, ctx, settings);
    let duration_ms = start.elapsed().as_secs_f64() * 1000.0;
    record(check.info(), level, ended, duration_ms, settings, used)
}

/// Drop findings matched by `[[ignore]]` entries (by check, and by location text when given).
fn apply_ignores(run: &mut CheckRun, settings: &Settings, used: &mut [bool]) {
    let before = run.findings.len();
    run.findings.retain(|f| {
        let hit = settings
            .ignores
            .iter()
            .position(|i| ignore_matches(i, run.id, f));
        if let Some(i) = hit {
            used[i] = true;
        }
        hit.is_none()
    });
    run.ignored = before - run.findings.len();
    if run.status == Status::Findings && run.findings.is_empty() {
        run.status = Status::Passed;
    }
}

/// An `[[ignore]]` entry names the finding's check or its kind, and its location when it gives one.
fn ignore_matches(ignore: &crate::config::Ignore, check: &str, f: &Finding) -> bool {
    (ignore.check == check || ignore.check == f.kind)
        && match &ignore.location {
            None => true,
            Some(loc) => {
                let l = &f.location;
                [
                    &l.parameter,
                    &l.module,
                    &l.buffer,
                    &l.data_key,
                    &l.log_column,
                    &l.config_key,
                ]
                .iter()
                .any(|v| v.as_deref() == Some(loc.as_str()))
                    || f.location.to_string() == *loc
            }
        }
}

/// How the checks that train run side by side (see [`run_all`]).
pub struct SideBySide<'a> {
    /// libtorch CPU threads in all.
    pub threads: usize,
    /// Whether a check that ends hands its threads to those still running. Off for reports without
    /// timings: a check's thread count, and with it the last digits libtorch computes, must not depend
    /// on when another check ended.
    pub rebalance: bool,
    /// An independent copy of the model for each check.
    pub model_copy: &'a dyn Fn() -> Result<Box<dyn Model + Send>, CheckError>,
    /// Whether the model's training forward draws random numbers: each check then draws from a
    /// generator of its own, and the forwards run one at a time ([`side_by_side::drawing`]).
    pub own_generators: bool,
}

/// The checks that may train side by side: those that train a copy and draw no random numbers
/// themselves ([`CheckInfo::draws_random`]).
pub fn trains_side_by_side(info: &CheckInfo) -> bool {
    info.trains && !info.draws_random
}

/// Every selected check's run, and the `[[ignore]]` entries that matched nothing.
pub struct Outcome {
    pub runs: Vec<CheckRun>,
    /// The checks that trained side by side, in the report's order (none when they ran one at a time).
    pub together: Vec<&'static str>,
    /// Wall milliseconds from the first check's start to the last one's end (less than the sum of
    /// the checks' durations when some ran side by side).
    pub wall_ms: f64,
    pub unused_ignores: Vec<Ignore>,
}

/// Run every selected check, each under `isolation`'s time limit when given; `on_start` is told which
/// check begins (for progress display).
///
/// With `side_by_side`, the checks that may ([`trains_side_by_side`], two or more selected) first train
/// at the same time, each on a worker thread with its own copy of the model, sharing the CPU threads
/// (a small model gains little from libtorch's intra-op threads, and its checks then take about as long
/// together as the longest alone). Each check seeds the generator as when run alone; the checks draw
/// no random numbers outside the model's forward, and the model's forward either draws none or draws
/// from each check's own generator (`own_generators`), so no check's draws move another's. The report
/// keeps the registry's order.
pub fn run_all(
    ctx: &Context,
    settings: &Settings,
    isolation: Option<&Isolation>,
    side_by_side: Option<&SideBySide>,
    on_start: &dyn Fn(&'static str, bool),
) -> Outcome {
    // Silence the default panic printer while checks run: a panic is reported as check-failed.
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let began = Instant::now();
    if (isolation.is_some() || side_by_side.is_some()) && ctx.model.is_some() && ctx.data.is_some()
    {
        // Workers get the shared prediction ready-made: it is computed here, once, on this thread.
        let _ = ctx.prediction();
    }
    let mut used = vec![false; settings.ignores.len()];
    let selected = selected_checks(settings);
    let together = selected
        .iter()
        .filter(|(c, _)| trains_side_by_side(c.info()))
        .count();
    let mut runs: Vec<Option<CheckRun>> = Vec::new();
    let mut trained_together = Vec::new();
    let rest = match side_by_side {
        Some(plan) if together >= 2 && ctx.model.is_some() => {
            let (group, others): (Vec<_>, Vec<_>) = selected
                .into_iter()
                .enumerate()
                .partition(|(_, (c, _))| trains_side_by_side(c.info()));
            runs.resize_with(group.len() + others.len(), || None);
            trained_together = group.iter().map(|(_, (c, _))| c.info().id).collect();
            let timeout = isolation.map(|i| i.timeout);
            for (i, run) in run_together(group, ctx, settings, plan, timeout, on_start, &mut used) {
                runs[i] = Some(run);
            }
            if isolation.is_none() {
                // The workers and their OpenMP teams are gone: this thread runs the rest (see
                // `check` in main.rs for why it kept one thread until now).
                tch::set_num_threads(plan.threads as i32);
            }
            others
        }
        _ => {
            runs.resize_with(selected.len(), || None);
            selected.into_iter().enumerate().collect()
        }
    };
    for (i, (check, level)) in rest {
        on_start(check.info().id, check.info().trains);
        // What the previous check freed goes back to the system before this one allocates.
        crate::model::release_free_memory();
        runs[i] = Some(match isolation {
            None => run_one(check.as_ref(), level, ctx, settings, &mut used),
            Some(isolation) => {
                let info = check.info();
                let start = Instant::now();
                let ended = run_isolated(check, ctx, settings, isolation);
                let duration_ms = start.elapsed().as_secs_f64() * 1000.0;
                record(info, level, ended, duration_ms, settings, &mut used)
            }
        });
    }
    let runs: Vec<CheckRun> = runs.into_iter().flatten().collect();
    std::panic::set_hook(previous);
    let unused_ignores = settings
        .ignores
        .iter()
        .zip(&used)
        .filter(|(_, u)| !**u)
        .map(|(i, _)| i.clone())
        .collect();
    Outcome {
        runs,
        together: trained_together,
        wall_ms: began.elapsed().as_secs_f64() * 1000.0,
        unused_ignores,
    }
}

/// The checks of `group` (index in the report, check, level) started at once, each on a worker thread
/// with its own copy of the model; each is waited for until it ends or `timeout` after it started.
fn run_together(
    group: Vec<(usize, Selected)>,
    ctx: &Context,
    settings: &Settings,
    plan: &SideBySide,
    timeout: Option<Duration>,
    on_start: &dyn Fn(&'static str, bool),
    used: &mut [bool],
) -> Vec<(usize, CheckRun)> {
    crate::model::release_free_memory();
    let each = (plan.threads / group.len()).max(1);
    if plan.rebalance {
        side_by_side::begin(plan.threads, group.len());
    }
    let mut started = Vec::new();
    for (i, (check, level)) in group {
        let info = check.info();
        let worker = (plan.model_copy)().and_then(|m| {
            spawn(
                check,
                ctx,
                settings,
                Some(m),
                each,
                plan.rebalance,
                plan.own_generators,
            )
        });
        if worker.is_err() && plan.rebalance {
            side_by_side::ended();
        }
        started.push((i, info, level, worker));
    }
    let mut out = Vec::new();
    for (i, info, level, worker) in started {
        // The progress bar follows the first check, then each next one still running.
        on_start(info.id, info.trains);
        let (ended, took) = match worker {
            Ok(worker) => wait(worker, ctx, timeout, true),
            Err(e) => (Ended::Returned(Err(e)), Duration::ZERO),
        };
        out.push((
            i,
            record(
                info,
                level,
                ended,
                took.as_secs_f64() * 1000.0,
                settings,
                used,
            ),
        ));
    }
    side_by_side::finish();
    out
}
