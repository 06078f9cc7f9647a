//! Selects, orders, isolates and times the checks.
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Instant;

use serde::Serialize;
use trainlint_checks::{
    registry, CheckError, CheckFailed, Context, Curve, Finding, Group, Level, Location, Rule,
    Severity, Violation,
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
    pub duration_ms: f64,
    pub findings: Vec<Finding>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub curves: Vec<Curve>,
    /// Findings silenced by `[[ignore]]` entries.
    #[serde(skip_serializing_if = "is_zero")]
    pub ignored: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// The checks that `settings` selects, with their levels (those at `allow` are left out).
pub fn selected_checks(settings: &Settings) -> Vec<(Box<dyn Rule>, Level)> {
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

/// Run one check in isolation: an error or a panic becomes a `check-failed` finding.
pub fn run_one(
    check: &dyn Rule,
    level: Level,
    ctx: &Context,
    settings: &Settings,
    used: &mut [bool],
) -> CheckRun {
    let info = check.info();
    let options = settings.options(info.id);
    // Every check starts from the same seed, so its result does not depend on which checks ran before.
    tch::manual_seed(settings.setup.seed as i64);
    let start = Instant::now();
    let outcome = catch_unwind(AssertUnwindSafe(|| check.run_with(ctx, &options)));
    let duration_ms = start.elapsed().as_secs_f64() * 1000.0;
    let mut run = CheckRun {
        id: info.id,
        group: info.group,
        level,
        status: Status::Passed,
        reason: None,
        duration_ms,
        findings: Vec::new(),
        curves: Vec::new(),
        ignored: 0,
    };
    let failure = match outcome {
        Ok(Ok(result)) => {
            run.curves = result.curves;
            if let Some(reason) = result.skipped {
                run.status = Status::Skipped;
                run.reason = Some(reason);
            } else {
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
        Ok(Err(e)) => Some(match e {
            CheckError::Model(m) => format!("the model failed: {m}"),
            other => other.to_string(),
        }),
        Err(payload) => Some(format!(
            "internal error: {}",
            panic_message(payload.as_ref())
        )),
    };
    if let Some(cause) = failure {
        run.status = Status::Failed;
        run.reason = Some(cause.clone());
        let failed = CheckFailed {
            check: info.id.to_string(),
            cause,
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
pub fn ignore_matches(ignore: &crate::config::Ignore, check: &str, f: &Finding) -> bool {
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

/// Every selected check's run, and the `[[ignore]]` entries that matched nothing.
pub struct Outcome {
    pub runs: Vec<CheckRun>,
    pub unused_ignores: Vec<Ignore>,
}

/// Run every selected check; `on_start` is told which check begins (for progress display).
pub fn run_all(
    ctx: &Context,
    settings: &Settings,
    on_start: &dyn Fn(&'static str, bool),
) -> Outcome {
    // Silence the default panic printer while checks run: a panic is reported as check-failed.
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let mut used = vec![false; settings.ignores.len()];
    let runs = selected_checks(settings)
        .into_iter()
        .map(|(check, level)| {
            on_start(check.info().id, check.info().trains);
            run_one(check.as_ref(), level, ctx, settings, &mut used)
        })
        .collect();
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
        unused_ignores,
    }
}
