//! stale-batchnorm: BatchNorm running statistics are updated, will update, and match the data.
use super::prelude::*;
use crate::ports::TrainableModel;
use crate::train::to_vec;
use std::collections::HashMap;
use tch::{Kind, Tensor};

pub struct StaleBatchnorm;

const EPS: f64 = 1e-5;

static INFO: CheckInfo = CheckInfo {
    id: "stale-batchnorm",
    group: Group::Batchnorm,
    default_level: Level::Deny,
    summary: "BatchNorm running statistics are updated, will update, and match the data",
    docs: Docs {
        what: "For every BatchNorm layer (by module type, or by running_mean / running_var buffers): checks \
that its running statistics were updated if the model was trained, that train-mode passes update them, \
that they match the statistics the data sample produces, that train and eval outputs agree, and that \
the batch size is not 1.",
        why: "In eval mode BatchNorm normalises with its running statistics: statistics that are stale, \
frozen or computed on other data make the evaluated model differ from the trained one.",
        details: include_str!("stale_batchnorm.md"),
    },
    kinds: &[
        &BatchSizeOne::KIND,
        &SavedInEvalMode::KIND,
        &NeverUpdated::KIND,
        &WillNotUpdate::KIND,
        &StatsMismatch::KIND,
        &TrainEvalGap::KIND,
        &EvalModeWorse::KIND,
    ],
    trains: true,
    setup: &["batch_size"],
    ..CheckInfo::PLAIN
};

/// Options of stale-batchnorm.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct StaleBatchnormOptions {
    /// Largest per-channel mean gap, in stored standard deviations.
    #[schemars(extend("exclusiveMinimum" = 0))]
    pub max_mean_gap: f64,
    /// Largest per-channel variance ratio (either way).
    #[schemars(range(min = 1))]
    pub max_var_ratio: f64,
    /// Largest relative gap between train- and eval-mode outputs.
    #[schemars(extend("exclusiveMinimum" = 0))]
    pub max_output_gap: f64,
    /// Samples in the probing passes.
    #[schemars(range(min = 2))]
    pub batch: usize,
}

impl Default for StaleBatchnormOptions {
    fn default() -> Self {
        StaleBatchnormOptions {
            max_mean_gap: 3.0,
            max_var_ratio: 10.0,
            max_output_gap: 0.5,
            batch: 64,
        }
    }
}

/// The batch size is 1 while the model has BatchNorm layers
///
/// # Why
/// With one sample per batch, the batch statistics of a BatchNorm layer are degenerate (variance 0 over a 1×1
/// map, or one sample's own statistics): the normalised output collapses to β and the running statistics
/// learn noise.
///
/// # How
/// Error when `setup.batch_size` = 1 and the model has at least one BatchNorm layer.
///
/// # Fix
/// Use a batch size of at least 2 (better 16+), or replace BatchNorm with GroupNorm / LayerNorm.
#[derive(Serialize, ViolationMetadata)]
#[kind(id = "stale-batchnorm/batch-size-one", grade = error)]
#[kind(example(args = "fixtures/configs/bn_batch_size_one.toml", severity = error, message = "batch_size = 1 with 2 BatchNorm layer(s): in training the batch statistics of one sample are degenerate and the normalised output collapses to β"))]
pub struct BatchSizeOne {
    pub batch_size: usize,
    #[serde(skip)]
    pub layers: usize,
}

impl Violation for BatchSizeOne {
    fn message(&self) -> String {
        format!(
            "batch_size = 1 with {} BatchNorm layer(s): in training the batch statistics of one sample are \
degenerate and the normalised output collapses to β",
            self.layers
        )
    }
    fn help(&self) -> String {
        "use a batch size of at least 2 (better 16+), or replace BatchNorm with GroupNorm / LayerNorm".into()
    }
}

/// A BatchNorm layer was saved in eval mode inside a model saved in train mode
///
/// # Why
/// A layer left in eval mode while the rest trains (frozen, or .eval() called on it) never updates its
/// statistics: at evaluation it normalises with numbers that do not describe the trained features.
///
/// # How
/// Error for each BatchNorm whose saved training flag is false while the root module's is true (read from the
/// TorchScript file before any mode change), unless the layer is frozen by design: its affine parameters
/// exist and none requires grad (linear probing, a frozen backbone), where statistics that stay put are the
/// point.
///
/// # Fix
/// Call model.train() on the whole model before training; freeze BatchNorm on purpose only for fine-tuning
/// with small batches.
#[derive(Serialize, ViolationMetadata)]
#[kind(id = "stale-batchnorm/saved-in-eval-mode", grade = error)]
#[kind(example(args = "--model fixtures/models/bn_submodule_eval.pt --data fixtures/data/images.npz", severity = error, message = "features.4 (BatchNorm2d) was saved in eval mode inside a model saved in train mode: if it stays in eval mode while training (frozen, or .eval() called on it), its statistics never update"))]
pub struct SavedInEvalMode {
    pub module_training: bool,
    pub root_training: bool,
    #[serde(skip)]
    pub layer: String,
}

impl Violation for SavedInEvalMode {
    fn message(&self) -> String {
        format!(
            "{} was saved in eval mode inside a model saved in train mode: if it stays in eval mode while \
training (frozen, or .eval() called on it), its statistics never update",
            self.layer
        )
    }
    fn help(&self) -> String {
        "call model.train() on the whole model before training; freeze BatchNorm on purpose only for \
fine-tuning with small batches"
            .into()
    }
}

/// A trained BatchNorm layer's running statistics were never updated
///
/// # Why
/// Statistics still at 0 / 1 after training mean the layer trained in eval mode (or its stats were reset): in
/// evaluation it normalises with numbers that have nothing to do with the data.
///
/// # How
/// Error when num_batches_tracked = 0 and running_mean = 0, running_var = 1 exactly, while γ or β moved from
/// 1 / 0 (a fresh, untrained model passes). A γ that is exactly 0 in every channel (with β at 0) is an init,
/// not training: torchvision's zero_init_residual zeroes the last BatchNorm γ of each residual branch so
/// every block starts as the identity.
///
/// # Fix
/// Train with model.train() (not with BatchNorm in eval mode), or recompute the statistics with a few
/// train-mode passes over the data under torch.no_grad().
#[derive(Serialize, ViolationMetadata)]
#[kind(id = "stale-batchnorm/never-updated", grade = error)]
#[kind(example(args = "--model fixtures/models/bn_never_updated.pt --data fixtures/data/images.npz", severity = error, message = "features.1 (BatchNorm2d) was never updated: num_batches_tracked = 0 and the running statistics are still exactly 0 / 1, although its affine parameters were trained"))]
pub struct NeverUpdated {
    pub num_batches_tracked: i64,
    #[serde(skip)]
    pub layer: String,
}

impl Violation for NeverUpdated {
    fn message(&self) -> String {
        format!(
            "{} was never updated: num_batches_tracked = 0 and the running statistics are still exactly 0 / 1, \
although its affine parameters were trained",
            self.layer
        )
    }
    fn help(&self) -> String {
        "train with model.train() (not with BatchNorm in eval mode), or recompute the statistics with a few \
train-mode passes"
            .into()
    }
}

/// A BatchNorm layer's running statistics cannot update in training
///
/// # Why
/// With momentum 0, or batch_norm called with training=False (as in a model traced in eval mode), the
/// statistics stay at whatever they were: training cannot fix them.
///
/// # How
/// On a copy, two train-mode passes from known statistics (0/1, then 1/2) give each layer's effective
/// momentum m (new = (1 − m)·old + m·batch); error when |m| < 1e-6, unless the layer is frozen by design
/// (saved in eval mode with affine parameters none of which requires grad).
///
/// # Fix
/// Give the layer a momentum > 0 (PyTorch's default is 0.1) and call it in training mode; export with
/// torch.jit.script, or trace in train mode.
#[derive(Serialize, ViolationMetadata)]
#[kind(id = "stale-batchnorm/will-not-update", grade = error)]
#[kind(example(args = "--model fixtures/models/bn_momentum0.pt --data fixtures/data/images.npz", severity = error, message = "features.1 (BatchNorm2d) will not update: train-mode passes leave its running statistics unchanged (effective momentum 0: momentum=0, or batch_norm called with training=False, as in a model traced in eval mode)"))]
pub struct WillNotUpdate {
    pub effective_momentum: f64,
    #[serde(skip)]
    pub layer: String,
}

impl Violation for WillNotUpdate {
    fn message(&self) -> String {
        format!(
            "{} will not update: train-mode passes leave its running statistics unchanged (effective momentum \
0: momentum=0, or batch_norm called with training=False, as in a model traced in eval mode)",
            self.layer
        )
    }
    fn help(&self) -> String {
        "give the layer a momentum > 0 (PyTorch's default is 0.1) and call it in training mode; export with \
torch.jit.script, or trace in train mode"
            .into()
    }
}

/// A BatchNorm layer's stored statistics do not match the statistics the data produce
///
/// # Why
/// Statistics computed on differently scaled data (0..255 pixels vs 0..1, another normalisation) shift and
/// rescale every activation in evaluation: the model scores far worse than it trained.
///
/// # How
/// From the same two probing passes as will-not-update, on the first `batch` samples: the per-channel mean
/// and variance the data produce, against the stored ones. Error when a channel's mean gap exceeds
/// `max_mean_gap` stored standard deviations or its variance ratio lies beyond `max_var_ratio`× either way;
/// the three worst channels are named. Layers at their init statistics are not judged. Layers still warming
/// up (their init (0 / 1) weighs more than 5% after T updates: (1 − m)^T > 0.05) are judged only when most
/// channels' stored variance lies beyond `max_var_ratio`× of every blend of the init's variance (1) and the
/// data's: no warm-up gives that, a different scale does; eval-mode-worse judges what their statistics do.
///
/// # Fix
/// Preprocess the data exactly as in training (e.g. the same /255 scaling), or recompute the statistics on
/// correctly scaled data.
#[derive(Serialize, ViolationMetadata)]
#[kind(id = "stale-batchnorm/stats-mismatch", grade = error)]
#[kind(example(args = "--model fixtures/models/bn_stats_255.pt --data fixtures/data/images01.npz", severity = error, message = "features.1 (BatchNorm2d): running statistics do not match the data: channels 3, 7, 5 have data means 3.7, 1.81, 1.81 stored standard deviations from the running mean, and the data's variance is 1.61e-5× the stored one; were the statistics computed on differently scaled data?"))]
pub struct StatsMismatch {
    pub worst_channels: Vec<usize>,
    #[serde(skip)]
    pub worst_gaps: Vec<f64>,
    pub worst_mean_gap: f64,
    pub extreme_var_ratio: f64,
    pub data_mean: Vec<f64>,
    pub stored_mean: Vec<f64>,
    #[serde(skip)]
    pub layer: String,
}

impl Violation for StatsMismatch {
    fn message(&self) -> String {
        let list = |v: Vec<String>| v.join(", ");
        format!(
            "{}: running statistics do not match the data: channels {} have data means {} stored standard \
deviations from the running mean, and the data's variance is {}× the stored one; were the statistics \
computed on differently scaled data?",
            self.layer,
            list(self.worst_channels.iter().map(|c| c.to_string()).collect()),
            list(self.worst_gaps.iter().map(|g| num(*g)).collect()),
            num(self.extreme_var_ratio)
        )
    }
    fn help(&self) -> String {
        "preprocess the data exactly as in training (e.g. the same /255 scaling), or recompute the \
statistics on correctly scaled data"
            .into()
    }
}

/// Train- and eval-mode outputs differ a lot on the same batch
///
/// # Why
/// When the running statistics describe the data, a BatchNorm network gives nearly the same output in train
/// and eval mode; a large gap means evaluation runs a different model from the one trained.
///
/// # How
/// gap = ‖y_train − y_eval‖ / ‖y_eval‖ on the probing batch, against the noise of batch statistics
/// themselves: the same samples' train-mode outputs in the whole batch and in its halves (noise = their
/// relative difference). Warning when gap > `max_output_gap` and gap > 4 × noise. Judged only when the stored
/// statistics were trained and no other kind explains it, and not while any layer's statistics are still
/// warming up: after T updates of momentum m their init (0 / 1) still weighs (1 − m)^T; above 5% they
/// describe the start values and the weights of many steps ago (torchvision's MNASNet, m = 0.0003, or
/// MobileNetV3, m = 0.01, after a short run): eval-mode-worse judges those by the loss and accuracy each mode
/// gives.
///
/// # Fix
/// Recompute the BatchNorm statistics on data preprocessed as in training, or check for a distribution shift.
#[derive(Serialize, ViolationMetadata)]
#[kind(id = "stale-batchnorm/train-eval-gap", grade = warning)]
#[kind(example(args = "--model fixtures/models/bn_mlp_trained.pt --data fixtures/data/regression_half_scale.npz", severity = warning, message = "train- and eval-mode outputs differ by 86.2% on the same batch, 9.18× the 9.38% that batch statistics alone explain: the running statistics do not represent this data"))]
pub struct TrainEvalGap {
    pub output_gap: f64,
    /// The gap that batch statistics alone make: the same samples' train-mode outputs in two batches.
    pub batch_noise: f64,
}

impl Violation for TrainEvalGap {
    fn message(&self) -> String {
        format!(
            "train- and eval-mode outputs differ by {}% on the same batch, {}× the {}% that batch statistics \
alone explain: the running statistics do not represent this data",
            num(self.output_gap * 100.0),
            num(self.output_gap / self.batch_noise.max(1e-12)),
            num(self.batch_noise * 100.0)
        )
    }
    fn help(&self) -> String {
        "recompute the BatchNorm statistics on data preprocessed as in training, or check for a distribution \
shift"
            .into()
    }
}

/// In eval mode the model predicts far worse than in train mode: its running statistics are stale
///
/// # Why
/// Evaluation and inference run BatchNorm on its running statistics. After a short run with a small momentum
/// (torchvision's MobileNetV3 and EfficientNet use 0.01, MNASNet 0.0003) they still hold much of their start
/// values, and the model that trains well predicts at chance in eval mode: every validation number and the
/// deployed model are wrong, while the training loss looks healthy.
///
/// # How
/// Judged when the stored statistics were trained (batches tracked, not at their init) and some layers' init
/// still weighs more than 5% ((1 − m)^T after T updates of momentum m), where stats-mismatch and
/// train-eval-gap do not judge the statistics themselves: the consequence is judged instead. The configured
/// loss of the eval-mode output on the probing batch against the train-mode output's (batch statistics) on
/// the same samples. Error when eval mode is worse by at least 0.5 nats and 30% (cross-entropy / nll, and its
/// accuracy at least 25 points lower), or at least 2× and by 10% of the targets' variance (other losses). A
/// fresh model, whose statistics are at their init, is not judged.
///
/// # Fix
/// Train longer before evaluating, raise the BatchNorm momentum, or recompute the statistics
/// (torch.optim.swa_utils.update_bn, or a few forward passes in train mode with momentum=None) before
/// evaluating or exporting.
#[skip_serializing_none]
#[derive(Serialize, ViolationMetadata)]
#[kind(id = "stale-batchnorm/eval-mode-worse", grade = error)]
#[kind(example(args = "--model fixtures/models/tv/mobilenet_v3_trained.pt --data fixtures/data/shapes16.npz", severity = error, message = "in eval mode the model predicts far worse than in train mode on the same 64 samples: cross_entropy 2.4 vs 1.47, accuracy 6.25% vs 45.3%; its running statistics still carry up to 13.4% of their init in 19 layers"))]
pub struct EvalModeWorse {
    pub samples: usize,
    pub eval_loss: f64,
    pub train_mode_loss: f64,
    /// Classification: the share of samples each mode gets right.
    pub eval_accuracy: Option<f64>,
    pub train_mode_accuracy: Option<f64>,
    /// The layers whose running statistics still carry this much of their init (0 / 1), largest first.
    pub init_weight: f64,
    pub layers_warming: usize,
    #[serde(skip)]
    pub loss: &'static str,
}

impl Violation for EvalModeWorse {
    fn message(&self) -> String {
        let acc = match (self.eval_accuracy, self.train_mode_accuracy) {
            (Some(e), Some(t)) => format!(", accuracy {}% vs {}%", num(e * 100.0), num(t * 100.0)),
            _ => String::new(),
        };
        format!(
            "in eval mode the model predicts far worse than in train mode on the same {} samples: {} {} vs {}{acc}; \
its running statistics still carry up to {}% of their init in {} layers",
            self.samples,
            self.loss,
            num(self.eval_loss),
            num(self.train_mode_loss),
            num(self.init_weight * 100.0),
            self.layers_warming
        )
    }
    fn help(&self) -> String {
        "train longer before evaluating, raise the BatchNorm momentum, or recompute the statistics \
(torch.optim.swa_utils.update_bn) before evaluating or exporting"
            .into()
    }
}

struct Layer<'a> {
    info: &'a ModuleInfo,
    mean: String,
    var: String,
    tracked: String,
    weight: String,
    bias: String,
}

impl Layer<'_> {
    fn name(&self) -> String {
        format!(
            "{} ({})",
            crate::finding::display_module(&self.info.path),
            self.info.kind
        )
    }
    fn path(&self) -> &str {
        &self.info.path
    }
    fn at_buffer(&self) -> Location {
        Location {
            buffer: Some(self.mean.clone()),
            ..Location::module(&self.info.path)
        }
    }
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

/// Every BatchNorm layer: by module type, or by running_mean / running_var buffers.
/// A layer frozen by design: its affine parameters exist and none of them trains (`requires_grad =
/// False`, as in linear probing or fine-tuning a head on a frozen backbone). Its statistics are meant
/// to stay what they are, so eval mode is no mistake there.
fn frozen(layer: &Layer, params: &[NamedTensor]) -> bool {
    let own: Vec<&Tensor> = ["weight", "bias"]
        .iter()
        .filter_map(|p| {
            let name = format!("{}.{p}", layer.path());
            params.iter().find(|(n, _)| *n == name).map(|(_, t)| t)
        })
        .collect();
    !own.is_empty() && own.iter().all(|t| !t.requires_grad())
}

fn batchnorm_layers<'a>(modules: &'a [ModuleInfo], buffers: &[NamedTensor]) -> Vec<Layer<'a>> {
    modules
        .iter()
        .filter_map(|m| {
            let prefix = if m.path.is_empty() {
                String::new()
            } else {
                format!("{}.", m.path)
            };
            let mean = format!("{prefix}running_mean");
            let var = format!("{prefix}running_var");
            let is_bn = m.norm().is_some_and(|n| n.holds_running_statistics())
                || (find(buffers, &mean).is_some() && find(buffers, &var).is_some());
            is_bn.then(|| Layer {
                info: m,
                tracked: format!("{prefix}num_batches_tracked"),
                weight: format!("{prefix}weight"),
                bias: format!("{prefix}bias"),
                mean,
                var,
            })
        })
        .collect()
}

/// Whether a layer's stats are still exactly at their init (0 / 1, never tracked); and if so, whether
/// its affine parameters moved (then it was trained without updating them).
fn at_init_stats(
    l: &Layer,
    buffers: &[NamedTensor],
    params: &[NamedTensor],
) -> Result<Option<(i64, bool)>, CheckError> {
    let (Some(mean), Some(var)) = (find(buffers, &l.mean), find(buffers, &l.var)) else {
        return Ok(None);
    };
    let tracked = batches_tracked(l, buffers).unwrap_or(0);
    if tracked != 0 || !all_equal(mean, 0.0)? || !all_equal(var, 1.0)? {
        return Ok(None);
    }
    // γ = 0 is an init, not training: torchvision's zero_init_residual (and Goyal et al.'s recipe)
    // zeroes the last BatchNorm γ of every residual branch so that each block starts as the identity.
    let gamma_moved = match find(params, &l.weight) {
        Some(w) => !all_equal(w, 1.0)? && !all_equal(w, 0.0)?,
        None => false,
    };
    let beta_moved = match find(params, &l.bias) {
        Some(b) => !all_equal(b, 0.0)?,
        None => false,
    };
    Ok(Some((tracked, gamma_moved || beta_moved)))
}

/// A mismatch between a layer's stored statistics and the ones the data produce, if beyond the limits.
fn stats_mismatch(
    l: &Layer,
    m: &Measured,
    stored_mean: &[f64],
    stored_var: &[f64],
    options: &StaleBatchnormOptions,
    curves: &mut Vec<Curve>,
) -> Option<StatsMismatch> {
    let gaps: Vec<f64> = (0..stored_mean.len())
        .map(|c| (m.mean[c] - stored_mean[c]).abs() / (stored_var[c] + EPS).sqrt())
        .collect();
    let ratios: Vec<f64> = (0..stored_var.len())
        .map(|c| (m.var[c] + EPS) / (stored_var[c] + EPS))
        .collect();
    let mut curve = Curve::new(
        format!("{} mean gap per channel (stored std)", l.name()),
        gaps.clone(),
    );
    curve.target = Some(options.max_mean_gap);
    curve.labels = (0..gaps.len()).map(|c| format!("channel {c}")).collect();
    curves.push(curve);
    let worst_gap = gaps.iter().cloned().fold(0.0, f64::max);
    let worst_ratio = ratios.iter().map(|r| r.ln().abs()).fold(0.0, f64::max);
    if worst_gap <= options.max_mean_gap && worst_ratio <= options.max_var_ratio.ln() {
        return None;
    }
    let mut order: Vec<usize> = (0..gaps.len()).collect();
    order.sort_by(|a, b| gaps[*b].total_cmp(&gaps[*a]));
    let top: Vec<usize> = order.into_iter().take(3).collect();
    let extreme_ratio = ratios
        .iter()
        .cloned()
        .max_by(|a, b| a.ln().abs().total_cmp(&b.ln().abs()))
        .unwrap_or(1.0);
    Some(StatsMismatch {
        worst_gaps: top.iter().map(|c| gaps[*c]).collect(),
        worst_mean_gap: worst_gap,
        extreme_var_ratio: extreme_ratio,
        data_mean: top.iter().map(|c| m.mean[*c]).collect(),
        stored_mean: top.iter().map(|c| stored_mean[*c]).collect(),
        worst_channels: top,
        layer: l.name(),
    })
}

/// Whether a layer's stored variances lie outside what any blend of its init (1) and of the data's
/// variance gives, by more than `max_var_ratio` in most channels: warm-up cannot explain them, a
/// different scale can (`update_bn` fed raw 0..255 pixels while training saw [0, 1]).
fn outside_every_blend(m: &Measured, stored_var: &[f64], options: &StaleBatchnormOptions) -> bool {
    let mut outside: Vec<f64> = stored_var
        .iter()
        .zip(&m.var)
        .map(|(&s, &d)| {
            let (lo, hi) = (d.min(1.0), d.max(1.0));
            ((s + EPS) / (hi + EPS)).max((lo + EPS) / (s + EPS))
        })
        .collect();
    if outside.is_empty() {
        return false;
    }
    outside.sort_by(f64::total_cmp);
    outside[outside.len() / 2] > options.max_var_ratio
}

/// ‖a − b‖ / ‖b‖, with `b` the reference.
fn relative_gap(a: &Tensor, b: &Tensor) -> Result<f64, CheckError> {
    let a = a.f_to_kind(Kind::Double)?;
    let b = b.f_to_kind(Kind::Double)?.f_to_device(a.device())?;
    Ok((&a - &b).f_norm()?.f_double_value(&[])? / (b.f_norm()?.f_double_value(&[])? + 1e-12))
}

/// Above this weight of their init (0 / 1), a layer's running statistics are still warming up: they
/// describe the start values and the weights of many steps ago more than the model as it is.
const WARMING_UP: f64 = 0.05;
/// The train/eval gap must exceed this multiple of the gap that batch statistics alone make.
const NOISE_FACTOR: f64 = 4.0;

/// A layer's num_batches_tracked, when it keeps one.
fn batches_tracked(l: &Layer, buffers: &[NamedTensor]) -> Option<i64> {
    find(buffers, &l.tracked)?.f_int64_value(&[]).ok()
}

/// Whether a layer's running statistics are still warming up: after T updates with momentum m their
/// init (0 / 1) still weighs (1 − m)^T, above [`WARMING_UP`]. A layer that does not count its updates
/// is taken as stored, unless its momentum is too small (< 0.01) to have forgotten its init.
fn still_warming_up(l: &Layer, buffers: &[NamedTensor], momentum: f64) -> bool {
    match batches_tracked(l, buffers).filter(|t| *t > 0) {
        Some(t) => init_weight(momentum, t) > WARMING_UP,
        None => momentum < 0.01,
    }
}

/// How much of their init (0 / 1) running statistics still carry after `t` updates of momentum `m`.
fn init_weight(momentum: f64, t: i64) -> f64 {
    (1.0 - momentum).clamp(0.0, 1.0).powf(t as f64)
}

/// Issue 23: where the statistics are still warming up, judge what they do. The configured loss (and,
/// for class targets, the accuracy) of the eval-mode output against the train-mode output's on the same
/// samples; None when eval mode is not clearly worse, or the loss cannot be computed on these outputs.
fn eval_mode_worse(
    ctx: &Context,
    data: &Dataset,
    train_output: &Tensor,
    n: usize,
    (init, layers_warming): (f64, usize),
) -> Result<Option<EvalModeWorse>, CheckError> {
    let kind = ctx.setup.resolved_loss(Some(data));
    let eval = ctx.prediction()?.f_narrow(0, 0, n as i64)?;
    let y = data
        .targets
        .f_narrow(0, 0, n as i64)?
        .f_to_device(eval.device())?;
    let value = |p: &Tensor| -> Option<f64> {
        let _guard = tch::no_grad_guard();
        crate::train::loss(kind, &p.to_kind(tch::Kind::Float), &y)
            .ok()?
            .f_double_value(&[])
            .ok()
            .filter(|v| v.is_finite())
    };
    let (Some(eval_loss), Some(train_loss)) = (value(&eval), value(train_output)) else {
        return Ok(None);
    };
    let classes = kind.is_classification() && data.targets_are_classes() && eval.dim() >= 2;
    // The argmax's accuracy, as overfit-batch counts it.
    let (eval_acc, train_acc) = if classes {
        let accuracy = |p: &Tensor| super::overfit_batch::accuracy(p, &y, kind, false);
        (Some(accuracy(&eval)), Some(accuracy(train_output)))
    } else {
        (None, None)
    };
    let worse = match (eval_acc, train_acc) {
        (Some(e), Some(t)) => {
            eval_loss >= train_loss + 0.5 && eval_loss >= 1.3 * train_loss && t - e >= 0.25
        }
        _ if classes => false,
        _ => {
            let variance = y
                .f_to_kind(tch::Kind::Double)
                .ok()
                .and_then(|t| t.f_var(false).ok())
                .and_then(|v| v.f_double_value(&[]).ok())
                .unwrap_or(0.0);
            kind == LossKind::Mse
                && variance > 0.0
                && eval_loss >= 2.0 * train_loss
                && eval_loss - train_loss >= 0.1 * variance
        }
    };
    Ok(worse.then(|| EvalModeWorse {
        samples: n,
        eval_loss,
        train_mode_loss: train_loss,
        eval_accuracy: eval_acc,
        train_mode_accuracy: train_acc,
        init_weight: init,
        layers_warming,
        loss: kind.as_str(),
    }))
}

/// What the probing passes leave: the statistics the data produce, the train-mode output, and the copy.
struct Probe<'a> {
    measured: HashMap<&'a str, Measured>,
    train_output: Tensor,
    copy: Box<dyn TrainableModel>,
    mode: Mode,
}

impl Probe<'_> {
    /// How much batch statistics alone move the train-mode output: the same samples in the whole
    /// batch and in each half.
    fn batch_noise(&mut self, x: &Tensor, seed: u64) -> Result<f64, CheckError> {
        let _guard = tch::no_grad_guard();
        let n = x.size()[0];
        let h = n / 2;
        let mut gaps = Vec::new();
        for (start, len) in [(0, h), (h, n - h)] {
            crate::train::side_by_side::manual_seed(seed as i64);
            let part = self.copy.forward(&x.f_narrow(0, start, len)?, self.mode)?;
            gaps.push(relative_gap(
                &part,
                &self.train_output.f_narrow(0, start, len)?,
            )?);
        }
        Ok(crate::stats::mean(&gaps))
    }
}

impl Check for StaleBatchnorm {
    type Options = StaleBatchnormOptions;

    const INFO: &'static CheckInfo = &INFO;

    fn run(&self, ctx: &Context, options: &StaleBatchnormOptions) -> CheckOutput {
        let model = ctx.model()?;
        let buffers = model.buffers()?;
        let params = model.parameters()?;
        let modules = model.modules();
        let layers = batchnorm_layers(modules, &buffers);
        if layers.is_empty() {
            return Err(CheckError::skip("no BatchNorm layer"));
        }
        let mut findings = Vec::new();
        if ctx.setup.batch_size == 1 {
            let v = BatchSizeOne {
                batch_size: 1,
                layers: layers.len(),
            };
            findings.push(Finding::new(&v, Location::config("setup.batch_size")));
        }
        // Each layer is reported once, by the first kind that explains it.
        let mut reported: Vec<&str> = Vec::new();
        let root_training = modules.first().is_some_and(|m| m.training);
        let in_eval = layers
            .iter()
            .filter(|l| root_training && !l.info.training && !frozen(l, &params));
        for l in in_eval {
            let v = SavedInEvalMode {
                module_training: false,
                root_training: true,
                layer: l.name(),
            };
            findings.push(Finding::new(&v, Location::module(l.path())));
            reported.push(l.path());
        }
        let mut default_stats: Vec<&str> = Vec::new();
        for l in &layers {
            let Some((tracked, trained)) = at_init_stats(l, &buffers, &params)? else {
                continue;
            };
            default_stats.push(l.path());
            if trained && !reported.contains(&l.path()) {
                let v = NeverUpdated {
                    num_batches_tracked: tracked,
                    layer: l.name(),
                };
                findings.push(Finding::new(&v, l.at_buffer()));
                reported.push(l.path());
            }
        }
        let Some(data) = ctx.data else {
            return Ok(CheckResult::with_findings(findings));
        };
        let n = data.len().min(options.batch);
        if n < 2 {
            return Ok(CheckResult::with_findings(findings));
        }
        let x = data
            .inputs
            .f_narrow(0, 0, n as i64)?
            .f_to_device(model.device())?;
        let mut probe = probe(ctx, &layers, &x, root_training)?;
        let measured = &probe.measured;
        for l in &layers {
            let Some(m) = measured.get(l.path()) else {
                continue;
            };
            let frozen_by_design = !l.info.training && frozen(l, &params);
            if !reported.contains(&l.path()) && m.momentum.abs() < 1e-6 && !frozen_by_design {
                let v = WillNotUpdate {
                    effective_momentum: m.momentum,
                    layer: l.name(),
                };
                findings.push(Finding::new(&v, l.at_buffer()));
                reported.push(l.path());
            }
        }
        // Layers with trained statistics that still carry much of their init: not judged yet.
        let warming: Vec<&str> = layers
            .iter()
            .filter(|l| !default_stats.contains(&l.path()))
            .filter(|l| {
                measured
                    .get(l.path())
                    .is_some_and(|m| still_warming_up(l, &buffers, m.momentum))
            })
            .map(|l| l.path())
            .collect();
        // Mismatch with the data, for layers whose stored stats are real (updated, not at their init).
        let mut curves = Vec::new();
        for l in &layers {
            let (Some(m), Some(mean), Some(var)) = (
                measured.get(l.path()),
                find(&buffers, &l.mean),
                find(&buffers, &l.var),
            ) else {
                continue;
            };
            if reported.contains(&l.path()) || default_stats.contains(&l.path()) {
                continue;
            }
            let (stored_mean, stored_var) = (to_vec(mean)?, to_vec(var)?);
            // A layer still warming up holds a blend of its init and of the data: judged only on a
            // variance that no such blend gives (statistics recomputed on data of another scale).
            if warming.contains(&l.path()) && !outside_every_blend(m, &stored_var, options) {
                continue;
            }
            if let Some(v) = stats_mismatch(l, m, &stored_mean, &stored_var, options, &mut curves) {
                findings.push(Finding::new(&v, mismatch_location(l, data, n)));
                reported.push(l.path());
            }
        }
        // Statistics still warming up are not judged themselves: what they do is. Eval mode far worse
        // than train mode on the same samples is stale statistics, whatever the momentum.
        if findings.is_empty()
            && default_stats.len() < layers.len()
            && !warming.is_empty()
            && n >= 4
        {
            let init = layers
                .iter()
                .filter(|l| warming.contains(&l.path()))
                .filter_map(|l| {
                    let m = measured.get(l.path())?.momentum;
                    batches_tracked(l, &buffers).map(|t| init_weight(m, t))
                })
                .fold(0.0, f64::max);
            if let Some(v) =
                eval_mode_worse(ctx, data, &probe.train_output, n, (init, warming.len()))?
            {
                findings.push(Finding::new(
                    &v,
                    Location::data(&data.input_key, Some((0, n))),
                ));
            }
        }
        // Train/eval gap: only meaningful once the stats have been trained and nothing above explains
        // it, and only beyond what batch statistics alone make (halves need 2 samples each).
        if findings.is_empty() && default_stats.len() < layers.len() && warming.is_empty() && n >= 4
        {
            let eval = ctx.prediction()?.f_narrow(0, 0, n as i64)?;
            let gap = relative_gap(&probe.train_output, &eval)?;
            if gap > options.max_output_gap {
                let noise = probe.batch_noise(&x, ctx.setup.seed)?;
                if gap > NOISE_FACTOR * noise {
                    let at = Location::data(&data.input_key, Some((0, n)));
                    let v = TrainEvalGap {
                        output_gap: gap,
                        batch_noise: noise,
                    };
                    findings.push(Finding::new(&v, at));
                }
            }
        }
        let mut result = CheckResult::with_findings(findings);
        result.curves = curves;
        Ok(result)
    }
}

fn mismatch_location(l: &Layer, data: &Dataset, n: usize) -> Location {
    Location {
        data_key: Some(data.input_key.clone()),
        samples: Some((0, n)),
        ..l.at_buffer()
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
) -> Result<Probe<'a>, CheckError> {
    let model = ctx.model.expect("probe runs with a model");
    let mut copy = model.trainable_copy()?;
    let buffers = copy.buffers()?;
    let mode = if root_training {
        Mode::AsSaved
    } else {
        Mode::Train
    };
    let budget = crate::train::Budget::start(ctx.setup.check_budget);
    let started = std::time::Instant::now();
    let mut passes = 0;
    let mut run_pass = |start: f64| -> Result<(Vec<LayerStats>, Tensor), CheckError> {
        // Both passes are needed to measure the momentum.
        budget.allow("the BatchNorm statistics passes", passes, 2, started)?;
        passes += 1;
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
        crate::train::side_by_side::manual_seed(ctx.setup.seed as i64);
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
    Ok(Probe {
        measured,
        train_output: out,
        copy,
        mode,
    })
}
