//! stale-batchnorm: BatchNorm running statistics are updated, will update, and match the data.
use std::collections::HashMap;

use tch::{Kind, Tensor};

use crate::finding::{num, Finding, Location};
use crate::options::{OptionSpec, Options};
use crate::ports::{Mode, ModuleInfo, NamedTensor};
use crate::train::to_vec;
use crate::{
    Check, CheckError, CheckInfo, CheckOutput, CheckResult, Context, Curve, Docs, Group, Level,
};

pub struct StaleBatchnorm;

const ID: &str = "stale-batchnorm";
const EPS: f64 = 1e-5;

static INFO: CheckInfo = CheckInfo {
    id: ID,
    group: Group::Batchnorm,
    default_level: Level::Deny,
    summary: "BatchNorm running statistics are updated, will update, and match the data",
    docs: Docs {
        what: "For every BatchNorm layer (by module type, or by running_mean / running_var buffers): checks \
that its running statistics were updated if the model was trained, that train-mode passes update them, \
that they match the statistics the data sample produces, that train and eval outputs agree, and that \
the batch size is not 1.",
        why: "In eval mode BatchNorm normalises with its running statistics. Stats that were never updated \
(still 0 / 1) or that cannot update (momentum 0, a layer stuck in eval mode, batch_norm called with \
training=False) make the evaluated model differ from the trained one; stats computed on differently \
scaled data (0..255 pixels vs 0..1) shift every activation; with batch size 1 the batch statistics are \
degenerate and the output collapses to β.",
        how: "Never updated (error): num_batches_tracked = 0 and running_mean = 0, running_var = 1 exactly, \
while γ or β moved from 1 / 0 (a fresh model passes). Saved in eval mode inside a model saved in train \
mode (error). Will not update (error): on a copy, two train-mode passes from known stats (0/1, then 1/2) \
give each layer's effective momentum; 0 means the stats never move. Mismatch (error): from the same \
passes, the per-channel mean and variance the data produce, against the stored ones: a mean gap above \
`max_mean_gap` stored standard deviations or a variance ratio beyond `max_var_ratio`×, naming the worst \
channels. Train/eval gap (warning): ‖y_train − y_eval‖ / ‖y_eval‖ above `max_output_gap` on the same \
batch. Batch size 1 with BatchNorm (error).",
        example: "error[stale-batchnorm] features.1 (BatchNorm2d): running statistics do not match the data: \
channels 3, 7, 5 have data means 3.7, 1.81, 1.81 stored standard deviations from the running mean, and the \
data's variance is 1.61e-5× the stored one; were the statistics computed on differently scaled data?",
        fix: "Train with model.train() so BatchNorm updates its statistics (or recompute them with a few \
train-mode passes over the data under torch.no_grad()); keep momentum > 0; preprocess the data exactly as \
in training; use a batch size of at least 2 (better 16+) or GroupNorm / LayerNorm.",
    },
    options: &[
        OptionSpec::float("max_mean_gap", 3.0, "Largest per-channel mean gap, in stored standard deviations"),
        OptionSpec::float("max_var_ratio", 10.0, "Largest per-channel variance ratio (either way)"),
        OptionSpec::float("max_output_gap", 0.5, "Largest relative gap between train- and eval-mode outputs"),
        OptionSpec::int("batch", 64, "Samples in the probing passes"),
    ],
    trains: true,
};

struct Layer<'a> {
    info: &'a ModuleInfo,
    mean: String,
    var: String,
    tracked: String,
}

fn find<'a>(named: &'a [NamedTensor], name: &str) -> Option<&'a Tensor> {
    named.iter().find(|(n, _)| n == name).map(|(_, t)| t)
}

fn all_equal(t: &Tensor, value: f64) -> Result<bool, CheckError> {
    Ok(t.f_sub_scalar(value)?
        .f_abs()?
        .f_max()?
        .f_double_value(&[])?
        == 0.0)
}

/// A layer's (running_mean, running_var) after a probing pass; empty when it keeps none.
type LayerStats = (Vec<f64>, Vec<f64>);

/// Per-channel statistics the data produce, from the two probing passes.
struct Measured {
    momentum: f64,
    mean: Vec<f64>,
    var: Vec<f64>,
}

impl Check for StaleBatchnorm {
    fn info(&self) -> &'static CheckInfo {
        &INFO
    }

    fn run(&self, ctx: &Context, options: &Options) -> CheckOutput {
        let Some(model) = ctx.model else {
            return Ok(CheckResult::skipped("no model"));
        };
        let buffers = model.buffers()?;
        let params = model.parameters()?;
        let modules = model.modules();
        let layers: Vec<Layer> = modules
            .iter()
            .filter_map(|m| {
                let prefix = if m.path.is_empty() {
                    String::new()
                } else {
                    format!("{}.", m.path)
                };
                let mean = format!("{prefix}running_mean");
                let var = format!("{prefix}running_var");
                let is_bn = m.kind.contains("BatchNorm")
                    || (find(&buffers, &mean).is_some() && find(&buffers, &var).is_some());
                is_bn.then(|| Layer {
                    info: m,
                    tracked: format!("{prefix}num_batches_tracked"),
                    mean,
                    var,
                })
            })
            .collect();
        if layers.is_empty() {
            return Ok(CheckResult::skipped("no BatchNorm layer"));
        }
        let mut findings = Vec::new();
        let name = |l: &Layer| {
            format!(
                "{} ({})",
                crate::finding::display_module(&l.info.path),
                l.info.kind
            )
        };

        if ctx.setup.batch_size == 1 {
            findings.push(
                Finding::error(
                    ID,
                    format!(
                        "batch_size = 1 with {} BatchNorm layer(s): in training the batch statistics of one sample are \
degenerate and the normalised output collapses to β",
                        layers.len()
                    ),
                )
                .at(Location::config("setup.batch_size"))
                .help("use a batch size of at least 2 (better 16+), or replace BatchNorm with GroupNorm / LayerNorm")
                .evidence("batch_size", 1),
            );
        }

        let root_training = modules.first().is_some_and(|m| m.training);
        let mut reported: Vec<&str> = Vec::new();
        for l in &layers {
            if root_training && !l.info.training {
                reported.push(&l.info.path);
                findings.push(
                    Finding::error(
                        ID,
                        format!(
                            "{} was saved in eval mode inside a model saved in train mode: if it stays in eval mode \
while training (frozen, or .eval() called on it), its statistics never update",
                            name(l)
                        ),
                    )
                    .at(Location::module(&l.info.path))
                    .help("call model.train() on the whole model before training; freeze BatchNorm on purpose only for fine-tuning with small batches")
                    .evidence("module_training", false)
                    .evidence("root_training", true),
                );
            }
        }

        // Never updated: the stats are still at their init although the affine parameters trained.
        let mut default_stats: Vec<&str> = Vec::new();
        for l in &layers {
            let (Some(mean), Some(var)) = (find(&buffers, &l.mean), find(&buffers, &l.var)) else {
                continue;
            };
            let tracked = find(&buffers, &l.tracked)
                .map(|t| t.int64_value(&[]))
                .unwrap_or(0);
            if tracked == 0 && all_equal(mean, 0.0)? && all_equal(var, 1.0)? {
                default_stats.push(&l.info.path);
                let prefix = if l.info.path.is_empty() {
                    String::new()
                } else {
                    format!("{}.", l.info.path)
                };
                let gamma_moved = match find(&params, &format!("{prefix}weight")) {
                    Some(w) => !all_equal(w, 1.0)?,
                    None => false,
                };
                let beta_moved = match find(&params, &format!("{prefix}bias")) {
                    Some(b) => !all_equal(b, 0.0)?,
                    None => false,
                };
                if gamma_moved || beta_moved {
                    findings.push(
                        Finding::error(
                            ID,
                            format!(
                                "{} was never updated: num_batches_tracked = 0 and the running statistics are still \
exactly 0 / 1, although its affine parameters were trained",
                                name(l)
                            ),
                        )
                        .at(Location {
                            buffer: Some(l.mean.clone()),
                            ..Location::module(&l.info.path)
                        })
                        .help("train with model.train() (not with BatchNorm in eval mode), or recompute the statistics with a few train-mode passes")
                        .evidence("num_batches_tracked", tracked),
                    );
                    reported.push(&l.info.path);
                }
            }
        }

        let Some(data) = ctx.data else {
            return Ok(CheckResult::with_findings(findings));
        };
        let n = data.len().min(options.usize("batch"));
        if n < 2 {
            return Ok(CheckResult::with_findings(findings));
        }
        let x = data
            .inputs
            .f_narrow(0, 0, n as i64)?
            .f_to_device(model.device())?;
        let (measured, train_output) = probe(ctx, &layers, &x, root_training)?;

        for l in &layers {
            let Some(m) = measured.get(l.info.path.as_str()) else {
                continue;
            };
            if reported.contains(&l.info.path.as_str()) {
                continue;
            }
            if m.momentum.abs() < 1e-6 {
                reported.push(&l.info.path);
                findings.push(
                    Finding::error(
                        ID,
                        format!(
                            "{} will not update: train-mode passes leave its running statistics unchanged (effective \
momentum 0: momentum=0, or batch_norm called with training=False, as in a model traced in eval mode)",
                            name(l)
                        ),
                    )
                    .at(Location {
                        buffer: Some(l.mean.clone()),
                        ..Location::module(&l.info.path)
                    })
                    .help("give the layer a momentum > 0 (PyTorch's default is 0.1) and call it in training mode; export with torch.jit.script, or trace in train mode")
                    .evidence("effective_momentum", m.momentum),
                );
            }
        }

        // Mismatch with the data, for layers whose stored stats are real (updated, not at their init).
        let mut curves = Vec::new();
        for l in &layers {
            let (Some(m), Some(mean), Some(var)) = (
                measured.get(l.info.path.as_str()),
                find(&buffers, &l.mean),
                find(&buffers, &l.var),
            ) else {
                continue;
            };
            if reported.contains(&l.info.path.as_str())
                || default_stats.contains(&l.info.path.as_str())
                || m.momentum < 0.01
            {
                continue;
            }
            let (stored_mean, stored_var) = (to_vec(mean)?, to_vec(var)?);
            let gaps: Vec<f64> = (0..stored_mean.len())
                .map(|c| (m.mean[c] - stored_mean[c]).abs() / (stored_var[c] + EPS).sqrt())
                .collect();
            let ratios: Vec<f64> = (0..stored_var.len())
                .map(|c| (m.var[c] + EPS) / (stored_var[c] + EPS))
                .collect();
            let mut curve = Curve::new(
                format!("{} mean gap per channel (stored std)", name(l)),
                gaps.clone(),
            );
            curve.target = Some(options.f64("max_mean_gap"));
            curve.labels = (0..gaps.len()).map(|c| format!("channel {c}")).collect();
            curves.push(curve);
            let worst_gap = gaps.iter().cloned().fold(0.0, f64::max);
            let worst_ratio = ratios.iter().map(|r| r.ln().abs()).fold(0.0, f64::max);
            if worst_gap <= options.f64("max_mean_gap")
                && worst_ratio <= options.f64("max_var_ratio").ln()
            {
                continue;
            }
            let mut order: Vec<usize> = (0..gaps.len()).collect();
            order.sort_by(|a, b| gaps[*b].total_cmp(&gaps[*a]));
            let top: Vec<usize> = order.into_iter().take(3).collect();
            let extreme_ratio = ratios
                .iter()
                .cloned()
                .max_by(|a, b| a.ln().abs().total_cmp(&b.ln().abs()))
                .unwrap_or(1.0);
            reported.push(&l.info.path);
            findings.push(
                Finding::error(
                    ID,
                    format!(
                        "{}: running statistics do not match the data: channels {} have data means {} stored standard \
deviations from the running mean, and the data's variance is {}× the stored one; were the statistics computed on \
differently scaled data?",
                        name(l),
                        top.iter().map(|c| c.to_string()).collect::<Vec<_>>().join(", "),
                        top.iter().map(|c| num(gaps[*c])).collect::<Vec<_>>().join(", "),
                        num(extreme_ratio)
                    ),
                )
                .at(Location {
                    buffer: Some(l.mean.clone()),
                    data_key: Some(data.input_key.clone()),
                    samples: Some((0, n)),
                    ..Location::module(&l.info.path)
                })
                .help("preprocess the data exactly as in training (e.g. the same /255 scaling), or recompute the statistics on correctly scaled data")
                .evidence("worst_channels", top.iter().map(|c| *c as u64).collect::<Vec<_>>())
                .evidence("worst_mean_gap", worst_gap)
                .evidence("extreme_var_ratio", extreme_ratio)
                .evidence("data_mean", top.iter().map(|c| m.mean[*c]).collect::<Vec<_>>())
                .evidence("stored_mean", top.iter().map(|c| stored_mean[*c]).collect::<Vec<_>>()),
            );
        }

        // Train/eval gap: only meaningful once the stats have been trained and nothing above explains it.
        let trained_stats = default_stats.len() < layers.len();
        if findings.is_empty() && trained_stats {
            let eval = ctx
                .prediction()?
                .f_narrow(0, 0, n as i64)?
                .f_to_kind(Kind::Double)?;
            let train = train_output
                .f_to_kind(Kind::Double)?
                .f_to_device(eval.device())?;
            let gap = (&train - &eval).f_norm()?.f_double_value(&[])?
                / (eval.f_norm()?.f_double_value(&[])? + 1e-12);
            if gap > options.f64("max_output_gap") {
                findings.push(
                    Finding::warning(
                        ID,
                        format!(
                            "train- and eval-mode outputs differ by {}% on the same batch: the running statistics do \
not represent this data",
                            num(gap * 100.0)
                        ),
                    )
                    .at(Location::data(&data.input_key, Some((0, n))))
                    .help("recompute the BatchNorm statistics on data preprocessed as in training, or check for a distribution shift")
                    .evidence("output_gap", gap),
                );
            }
        }
        let mut result = CheckResult::with_findings(findings);
        result.curves = curves;
        Ok(result)
    }
}

/// Two train-mode passes on a copy, from known statistics, give every BatchNorm layer's effective
/// momentum m and the statistics the batch produces: with start values s, the update is
/// new = (1 − m)·s + m·batch, so pass A (mean 0, var 1) and pass B (mean 1, var 2) differ by 1 − m.
fn probe<'a>(
    ctx: &Context,
    layers: &'a [Layer],
    x: &Tensor,
    root_training: bool,
) -> Result<(HashMap<&'a str, Measured>, Tensor), CheckError> {
    let model = ctx.model.expect("probe runs with a model");
    let mut copy = model.trainable_copy()?;
    let buffers = copy.buffers()?;
    let mode = if root_training {
        Mode::AsSaved
    } else {
        Mode::Train
    };
    let mut run_pass = |start: f64| -> Result<(Vec<LayerStats>, Tensor), CheckError> {
        let _guard = tch::no_grad_guard();
        for l in layers {
            if let (Some(mean), Some(var)) = (find(&buffers, &l.mean), find(&buffers, &l.var)) {
                let _ = mean.shallow_clone().f_fill_(start)?;
                let _ = var.shallow_clone().f_fill_(start + 1.0)?;
            }
            if let Some(t) = find(&buffers, &l.tracked) {
                let _ = t.shallow_clone().f_fill_(0)?;
            }
        }
        tch::manual_seed(ctx.setup.seed as i64);
        let out = copy.forward(x, mode)?;
        let mut stats = Vec::new();
        for l in layers {
            match (find(&buffers, &l.mean), find(&buffers, &l.var)) {
                (Some(mean), Some(var)) => stats.push((to_vec(mean)?, to_vec(var)?)),
                _ => stats.push((Vec::new(), Vec::new())),
            }
        }
        Ok((stats, out))
    };
    let (a, out) = run_pass(0.0)?;
    let (b, _) = run_pass(1.0)?;
    let mut measured = HashMap::new();
    for (i, l) in layers.iter().enumerate() {
        let ((mean_a, var_a), (mean_b, _)) = (&a[i], &b[i]);
        if mean_a.is_empty() {
            continue;
        }
        let one_minus_m = crate::stats::mean(
            &mean_b
                .iter()
                .zip(mean_a)
                .map(|(b, a)| b - a)
                .collect::<Vec<_>>(),
        );
        let m = 1.0 - one_minus_m;
        let (mean, var) = if m.abs() > 1e-6 {
            (
                mean_a.iter().map(|v| v / m).collect(),
                var_a.iter().map(|v| (v - one_minus_m) / m).collect(),
            )
        } else {
            (mean_a.clone(), var_a.clone())
        };
        measured.insert(
            l.info.path.as_str(),
            Measured {
                momentum: m,
                mean,
                var,
            },
        );
    }
    Ok((measured, out))
}
