//! The audit as one function: [`audit`] loads the model, the data sample and the loss log that a
//! resolved configuration names, checks the sample, runs the selected checks and returns the report.
//! `trainlint check` and the tests call it; rendering the report and writing files are theirs.
use std::path::{Path, PathBuf};
use std::time::Duration;

use trainlint_checks::ports::Task;
use trainlint_checks::{registry, Context, Need};

use crate::config::Settings;
use crate::model::LoadedModel;
use crate::report::graph;
use crate::{baseline, data, model, progress, report, run, security, threads};

/// What an audit runs on: the resolved settings and the run's switches.
pub struct Request<'a> {
    pub settings: &'a Settings,
    /// Run a model whose graph has side effects (`--trust-model`).
    pub trust_model: bool,
    /// The per-check time limit (`--timeout`; 600 s in CI).
    pub timeout: Option<Duration>,
    /// Measure durations; without, every duration is 0 and reports compare byte for byte.
    pub timings: bool,
    /// Progress bars for the checks that train (shown on a terminal only, never in CI).
    pub progress: bool,
    /// Findings a baseline records: left out of the report, and its stale entries listed.
    pub baseline: Option<&'a baseline::Baseline>,
    /// Render today's findings as a new baseline (before `baseline` drops any).
    pub write_baseline: bool,
}

/// What an audit found, with the model and data it ran on (the HTML report draws the graph).
pub struct Audit {
    pub report: report::Report,
    /// The new baseline's text and its number of findings, when asked for.
    pub new_baseline: Option<(String, usize)>,
    pub model: Option<LoadedModel>,
    pub dataset: Option<trainlint_checks::ports::Dataset>,
    /// The libtorch threads the checks shared.
    pub threads: usize,
}

/// Why nothing was judged (the CLI's exit 2).
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error(transparent)]
    Model(#[from] security::UntrustedModel),
    #[error(transparent)]
    Data(#[from] data::DataError),
    /// The model rejected the data: `reason` is the forward's error, in libtorch's words.
    #[error("the model {model} rejected data `{key}` of shape {shape:?} from {data}: {reason}")]
    Rejected {
        model: String,
        key: String,
        shape: Vec<i64>,
        data: String,
        reason: String,
    },
    /// The model answered without a sample axis.
    #[error("the model {model}'s output is a scalar (0-d) for data `{key}` of shape {shape:?}; trainlint needs one output per sample along dim 0")]
    ScalarOutput {
        model: String,
        key: String,
        shape: Vec<i64>,
    },
}

/// Runs the audit `req` describes.
pub fn audit(req: &Request) -> Result<Audit, AuditError> {
    let settings = req.settings;
    let timeout = req.timeout;
    let thread_plan = threads::plan(settings.model.threads, req.timings);
    let threads = thread_plan.threads;
    // libgomp throttles its threads' spinning (to 1,000 spins, then sleep) while the process's OpenMP
    // threads outnumber the CPUs: checks that train on worker threads ran 20% slower per step while
    // this thread's team of `threads` idled beside theirs. This thread keeps one thread (no team) until
    // it is known whether checks run on workers (a time limit, or side by side).
    tch::set_num_threads(1);
    model::silence_libtorch_warnings();
    let model = match &settings.model.path {
        Some(p) => Some(security::load_model(
            p,
            &settings.model.device,
            &settings.model.output.to_string(),
            req.trust_model,
        )?),
        None => None,
    };
    let dataset = load_configured_data(settings)?;
    let log = match &settings.log.path {
        Some(p) => Some(data::load_log(
            p,
            settings.log.loss.as_deref(),
            &settings.log.terms,
        )?),
        None => None,
    };
    let may_train_together = run::selected_checks(settings)
        .iter()
        .filter(|(c, _)| run::trains_side_by_side(c.info()))
        .count();
    let side_by_side = if threads < 2 {
        Err(model::OneAtATime::OneThread)
    } else if may_train_together < 2 {
        Err(model::OneAtATime::FewerThanTwoSelected)
    } else {
        match &model {
            Some(m) => m.side_by_side(dataset.as_ref().map(|d| &d.inputs)),
            None => Err(model::OneAtATime::NoModel),
        }
    };
    if timeout.is_none() && side_by_side.is_err() {
        tch::set_num_threads(threads as i32);
    }
    let mut ctx = Context::new(&settings.setup);
    ctx.model = model.as_ref().map(|m| m as &dyn trainlint_checks::Model);
    ctx.data = dataset.as_ref();
    ctx.log = log.as_ref();
    let mut data_warnings = dataset
        .as_ref()
        .map(|d| sample_warnings(d, ctx.model, &settings.setup))
        .unwrap_or_default();
    for w in &data_warnings {
        ctx.sample_skips
            .extend(w.skips.iter().map(|id| (*id, w.skip_reason.clone())));
    }
    // The shared forward pass doubles as the input check: a model that rejects the data, or answers
    // with no sample axis, is an input error (exit 2), not a verdict.
    if let (Some(m), Some(d)) = (&model, &dataset) {
        let model_path = settings
            .model
            .path
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        let rejected = |e: &str| AuditError::Rejected {
            model: model_path.clone(),
            key: d.input_key.clone(),
            shape: d.inputs.size(),
            data: d.path.to_string(),
            reason: e.trim_start_matches("model: ").to_string(),
        };
        match ctx.prediction() {
            // No eval-mode forward (a .pt2 program exported in train mode only): the checks that need
            // the prediction skip with the reason; the data still has to fit the model, which a
            // train-mode forward of a copy on two samples says.
            Err(trainlint_checks::CheckError::Skip(_)) => {
                let fits = || -> Result<(), trainlint_checks::CheckError> {
                    let two = d.inputs.f_narrow(0, 0, d.len().min(2) as i64)?;
                    let _guard = tch::no_grad_guard();
                    let mut copy = trainlint_checks::Model::trainable_copy(m)?;
                    let _ = copy.forward(&two, trainlint_checks::ports::Mode::Train)?;
                    Ok(())
                };
                if let Err(e) = fits() {
                    return Err(rejected(&e.to_string()));
                }
            }
            Err(e) => return Err(rejected(&e.to_string())),
            Ok(p) if p.dim() == 0 => {
                return Err(AuditError::ScalarOutput {
                    model: model_path,
                    key: d.input_key.clone(),
                    shape: d.inputs.size(),
                });
            }
            Ok(p) => {
                let p = p.shallow_clone();
                if let Some(w) = class_index_warning(d, &p, &settings.setup) {
                    ctx.sample_skips
                        .extend(w.skips.iter().map(|id| (*id, w.skip_reason.clone())));
                    data_warnings.push(w);
                }
            }
        }
    }
    let progress = progress::Progress::new(req.progress);
    let on_step = |step: usize, total: usize, loss: f64| progress.step(step, total, loss);
    ctx.progress = &on_step;
    let model_copy =
        || -> Result<Box<dyn trainlint_checks::Model + Send>, trainlint_checks::CheckError> {
            let original = model
                .as_ref()
                .ok_or_else(|| trainlint_checks::CheckError::Other("no model to copy".into()))?;
            Ok(Box::new(original.independent_copy()?))
        };
    let isolation = timeout.map(|timeout| run::Isolation {
        timeout,
        threads,
        model_copy: &model_copy,
    });
    // The checks that train run side by side when there are threads to share and the model allows it.
    let together = side_by_side.as_ref().ok().map(|draws| run::SideBySide {
        threads,
        rebalance: req.timings,
        model_copy: &model_copy,
        own_generators: draws.is_some(),
    });
    let mut outcome = run::run_all(
        &ctx,
        settings,
        isolation.as_ref(),
        together.as_ref(),
        &|id, trains| progress.start(id, trains),
    );
    progress.finish();
    let new_baseline = req.write_baseline.then(|| baseline::render(&outcome.runs));
    let baseline_outcome = req.baseline.map(|b| baseline::apply(b, &mut outcome.runs));
    let inputs = report::Inputs {
        config: settings.config_path.as_deref().map(display_path),
        model: settings.model.path.as_deref().map(display_path),
        data: settings.data.path.as_deref().map(display_path),
        log: settings.log.path.as_deref().map(display_path),
        // Without a model nothing runs on a device: the report names none rather than claim one.
        device: settings
            .model
            .path
            .as_ref()
            .map(|_| settings.model.device.clone()),
        raw: [
            ("config", &settings.config_path),
            ("model", &settings.model.path),
            ("data", &settings.data.path),
            ("log", &settings.log.path),
        ]
        .into_iter()
        .filter_map(|(label, p)| p.as_deref().map(|p| (label, relative_path(p))))
        .collect(),
    };
    let trained_together = std::mem::take(&mut outcome.together);
    let wall_ms = outcome.wall_ms;
    let mut report = report::Report::new(
        inputs,
        settings.setup.seed,
        outcome.runs,
        outcome.unused_ignores,
        settings.key_lines.clone(),
        req.timings,
    );
    report.baseline = baseline_outcome;
    if req.timings {
        report.summary.duration_ms = wall_ms;
        report.threads = Some(report::Threads {
            count: threads,
            reason: thread_plan.reason,
            openmp_wait_policy: threads::openmp_wait_policy(),
            side_by_side: match &side_by_side {
                Ok(draws) => format!(
                    "{} trained side by side on copies of the model, sharing the {threads} \
                     threads{}",
                    trained_together.join(", "),
                    draws.as_ref().map_or(String::new(), |ops| format!(
                        "; the training forward draws random numbers ({ops}), so each check drew \
                         from a generator of its own, and the forwards ran one at a time"
                    ))
                ),
                Err(why) => why.to_string(),
            },
        });
    }
    report.warnings = data_warnings
        .into_iter()
        .map(|w| report::Warning {
            input: "data",
            message: w.message,
        })
        .collect();
    if let Some(w) = assumed_warning(settings, &report) {
        report.warnings.push(w);
    }
    Ok(Audit {
        report,
        new_baseline,
        model,
        dataset,
        threads,
    })
}

/// The checks whose findings the model graph marks (`unused`, `shared-batchnorm`).
pub const GRAPH_CHECKS: [&str; 2] = ["unused-parameters", "shared-batchnorm"];

/// The marks of the graph checks' findings on `model`, as `trainlint check --select
/// unused-parameters,shared-batchnorm` with `settings` finds them (their options, levels and
/// `[[ignore]]` entries apply): `trainlint graph` paints findings, it does not judge the graph itself.
pub fn graph_marks(model: &LoadedModel, settings: &Settings) -> graph::Marks {
    let mut settings = settings.clone();
    settings.run.select = GRAPH_CHECKS.map(String::from).to_vec();
    let mut ctx = Context::new(&settings.setup);
    ctx.model = Some(model);
    let outcome = run::run_all(&ctx, &settings, None, None, &|_, _| {});
    graph::Marks::of(outcome.runs.iter().flat_map(|r| &r.findings))
}

/// The HTML report's model graph, painted with the report's findings and drawn under the checks'
/// time limit.
pub fn report_graph(a: &Audit, timeout: Option<Duration>) -> Option<graph::ReportGraph> {
    let m = a.model.as_ref()?;
    let marks = graph::Marks::of(a.report.findings());
    let paints = graph::paints_of(&a.report);
    graph::draw_for_report(m, a.dataset.as_ref(), marks, paints, timeout, a.threads)
}

/// A path as the user would type it: relative to the working directory when it lies below it.
fn display_path(p: &Path) -> String {
    relative_path(p).display().to_string()
}

/// [`display_path`] as a path, every byte kept.
fn relative_path(p: &Path) -> PathBuf {
    let cwd = std::env::current_dir().ok();
    let cwd = cwd.as_deref().and_then(|c| c.canonicalize().ok());
    match cwd.as_deref().and_then(|c| p.strip_prefix(c).ok()) {
        Some(rel) => rel.to_path_buf(),
        None => p.to_path_buf(),
    }
}

/// When a check ran (or skipped for an assumed value) whose verdict rests on `[setup]` values the config
/// left unset (`CheckInfo::setup`): which, and what was assumed in their place, once, above the findings.
fn assumed_warning(settings: &Settings, report: &report::Report) -> Option<report::Warning> {
    let s = &settings.setup;
    // Without a model nothing trains, and nothing is assumed aloud.
    settings.model.path.as_ref()?;
    // The setup values that a check whose verdict rests on them used: it ran, or skipped for what it
    // assumed (not one skipped for want of a model or data).
    let used: Vec<&str> = report
        .checks
        .iter()
        .filter(|c| {
            c.missing.is_none()
                && (c.status != run::Status::Skipped
                    || c.reason
                        .as_deref()
                        .is_some_and(|r| r.contains("(assumed: ")))
        })
        .filter_map(|c| registry::find(c.id))
        .flat_map(|check| check.info().setup.iter().copied())
        .collect();
    let assumed: Vec<&str> = s
        .assumed
        .iter()
        .copied()
        .filter(|k| used.contains(k))
        .collect();
    if assumed.is_empty() {
        return None;
    }
    let value = |k: &str| match k {
        "optimizer" => s.optimizer.as_str().to_string(),
        "lr" => trainlint_checks::finding::num(s.lr),
        "batch_size" => s.batch_size.to_string(),
        _ => trainlint_checks::finding::num(s.momentum),
    };
    let list: Vec<String> = assumed
        .iter()
        .map(|k| format!("{k} = {}", value(k)))
        .collect();
    Some(report::Warning {
        input: "config",
        message: format!(
            "[setup] does not set {}: the checks that use them assumed {}; set the training run's values",
            assumed.join(", "),
            list.join(", ")
        ),
    })
}

/// Class indices past the model's logits (labels numbered 1..K, say): output-range reports them as a
/// finding, once; the checks that compute the loss skip, naming them, instead of each failing on the
/// loss (issue 23).
fn class_index_warning(
    data: &trainlint_checks::Dataset,
    prediction: &tch::Tensor,
    setup: &trainlint_checks::Setup,
) -> Option<SampleWarning> {
    if !setup.resolved_loss(Some(data)).is_classification()
        || !data.targets_are_classes()
        || prediction.dim() < 2
    {
        return None;
    }
    let k = prediction.size()[1];
    let t = data.targets.f_to_kind(tch::Kind::Int64).ok()?;
    // -100 is PyTorch's ignore_index: not a class.
    let valid = t.f_masked_select(&t.f_ne(-100).ok()?).ok()?;
    if valid.numel() == 0 {
        return None;
    }
    let max = valid.f_max().ok()?.f_int64_value(&[]).ok()?;
    let min = valid.f_min().ok()?.f_int64_value(&[]).ok()?;
    if max < k {
        return None;
    }
    let hint = if min >= 1 && max == k {
        " (labels numbered 1..K: subtract 1 from them)"
    } else {
        ""
    };
    Some(SampleWarning {
        message: format!(
            "the targets `{}` hold class indices up to {max} but the model outputs {k} logits{hint}: output-range reports it, and the checks that compute the loss skip",
            data.target_key
        ),
        skips: needing(Need::Loss, None),
        skip_reason: format!(
            "the targets hold class index {max}, past the {k} logits{hint}: the loss cannot be computed (output-range reports it)"
        ),
    })
}

/// Something about the data sample that makes some checks meaningless or impossible: reported once
/// (the report's `warnings`), and those checks skip with `skip_reason` instead of failing or passing
/// trivially.
struct SampleWarning {
    message: String,
    skips: Vec<&'static str>,
    skip_reason: String,
}

/// The checks that need `need` of the sample (`CheckInfo::needs`), in the report's order; with a
/// task, those that apply to it.
fn needing(need: Need, task: Option<Task>) -> Vec<&'static str> {
    registry::all()
        .iter()
        .map(|c| c.info())
        .filter(|i| i.needs.contains(&need) && task.is_none_or(|t| i.applies_to(t)))
        .map(|i| i.id)
        .collect()
}

/// The degenerate samples a new user saves by accident: one sample, or a single class. Found once,
/// before the checks run. Skips are only added with a model, so that a missing model stays the reason
/// its checks are skipped.
fn sample_warnings(
    data: &trainlint_checks::Dataset,
    model: Option<&dyn trainlint_checks::Model>,
    setup: &trainlint_checks::Setup,
) -> Vec<SampleWarning> {
    let n = data.len();
    let task = setup.resolved_task(Some(data));
    let has_batchnorm = model.is_some_and(|m| {
        m.modules()
            .iter()
            .any(|m| m.norm().is_some_and(|n| n.uses_batch_statistics()))
    });
    if n == 1 {
        let (message, skips) = if has_batchnorm {
            let ids = needing(Need::TrainModeBatch, Some(task));
            (
                format!(
                    "the data sample `{}` holds 1 sample: the model's BatchNorm layers cannot compute batch statistics from one sample in training mode, so {} are skipped and stale-batchnorm compares no statistics; save at least 2 samples (256 is typical)",
                    data.path,
                    ids.join(", ")
                ),
                ids,
            )
        } else {
            (
                format!(
                    "the data sample `{}` holds 1 sample: fitting one sample proves little about the model, and sequential-data needs at least 8; save more samples (256 is typical)",
                    data.path
                ),
                Vec::new(),
            )
        };
        return vec![SampleWarning {
            message,
            skips,
            skip_reason: "needs at least 2 samples: the model's BatchNorm layers cannot compute batch statistics from 1 sample in training mode".into(),
        }];
    }
    let mut warnings = Vec::new();
    let probabilities = data.targets_are_probabilities();
    if n > 1 && (data.targets_are_classes() || probabilities) && task == Task::Classification {
        let bounds = || -> Result<(i64, i64), tch::TchError> {
            // Class probabilities: each sample's top class.
            let classes = if probabilities {
                data.targets.f_argmax(1, false)?
            } else {
                data.targets.f_to_kind(tch::Kind::Int64)?
            };
            Ok((
                classes.f_min()?.f_int64_value(&[])?,
                classes.f_max()?.f_int64_value(&[])?,
            ))
        };
        if let Some((class, _)) = bounds().ok().filter(|(lo, hi)| lo == hi) {
            warnings.push(SampleWarning {
                message: format!(
                    "the targets `{}` hold a single class ({class}) in all {n} samples: a constant prediction fits them, so overfit-batch is skipped; save a sample with several classes (in loader order)",
                    data.target_key
                ),
                skips: if model.is_some() { vec!["overfit-batch"] } else { Vec::new() },
                skip_reason: format!(
                    "the targets hold a single class ({class}): a constant prediction fits them, so overfitting them would pass without showing that the model learns"
                ),
            });
        }
    }
    warnings
}

/// The data sample `[data]` (or `--data`) names, if any, read within its configured keys and limit.
pub fn load_configured_data(
    settings: &Settings,
) -> Result<Option<trainlint_checks::ports::Dataset>, data::DataError> {
    settings
        .data
        .path
        .as_ref()
        .map(|p| {
            data::load_dataset(
                p,
                &settings.data.inputs,
                &settings.data.targets,
                settings.data.max_samples,
            )
        })
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The sample warnings skip the checks whose `CheckInfo` declares the need: the same checks the
    /// hand-kept lists named before, in the report's order.
    #[test]
    fn the_sample_warnings_skip_the_checks_that_declare_the_need() {
        assert_eq!(
            needing(Need::TrainModeBatch, Some(Task::ImageToImage)),
            [
                "identity-overfit",
                "overfit-batch",
                "loss-oscillation",
                "gradient-flow"
            ]
        );
        assert_eq!(
            needing(Need::TrainModeBatch, Some(Task::Classification)),
            ["overfit-batch", "loss-oscillation", "gradient-flow"]
        );
        assert_eq!(
            needing(Need::Loss, None),
            [
                "overfit-batch",
                "loss-oscillation",
                "gradient-flow",
                "lr-sharpness",
                "initial-loss"
            ]
        );
    }
}
