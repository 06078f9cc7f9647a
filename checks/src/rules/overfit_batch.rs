//! overfit-batch: the model can overfit one small batch of the real targets.
use super::prelude::*;
use crate::train;
use tch::{Kind, Tensor};

pub struct OverfitBatch;

static INFO: CheckInfo = CheckInfo {
    id: "overfit-batch",
    group: Group::Fit,
    default_level: Level::Deny,
    summary: "The model can overfit one small batch of the real targets",
    docs: Docs {
        what: "Trains an in-memory copy of the model on `samples` samples of the real data and targets with \
the configured loss and Adam, and reports whether it can memorise them. With class-probability targets \
(one-hot, label-smoothed or mixup rows, cross_entropy's soft targets) the loss cannot fall below the \
targets' mean entropy: the fit is judged on the excess over it, and a sample is right when the predicted \
class holds the target's largest probability (within 0.1, for mixed rows with two top classes).",
        why: "Overfitting a single batch is the first sanity check of every training setup (Karpathy's \
recipe): a model that cannot memorise 16 samples has a bug between the output and the loss, or far too \
little capacity, and more data or more steps will not fix it.",
        details: include_str!("overfit_batch.md"),
    },
    kinds: &[&CannotOverfit::KIND],
    trains: true,
    needs: &[Need::TrainModeBatch, Need::Loss],
    ..CheckInfo::PLAIN
};

/// Options of overfit-batch.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct OverfitBatchOptions {
    /// Samples in the batch.
    #[schemars(range(min = 1))]
    pub samples: usize,
    /// Most Adam steps.
    #[schemars(range(min = 1))]
    pub steps: usize,
    /// Adam learning rate.
    #[schemars(extend("exclusiveMinimum" = 0))]
    pub lr: f64,
    /// Regression: the loss to reach, as a share of the best constant prediction's (mse: Var(targets)).
    #[schemars(extend("exclusiveMinimum" = 0), range(max = 1))]
    pub loss_ratio: f64,
    /// Classification: the loss to reach (every sample right), as a share of ln K (ln 2 per label).
    #[schemars(extend("exclusiveMinimum" = 0), range(max = 1))]
    pub class_loss_share: f64,
    /// Dense class targets (segmentation, one class per position): the share of positions that must be
    /// right. Logits predicted at a reduced resolution and upsampled cannot follow every boundary pixel.
    #[schemars(range(min = 0, max = 1))]
    pub dense_accuracy: f64,
}

impl Default for OverfitBatchOptions {
    fn default() -> Self {
        OverfitBatchOptions {
            samples: 16,
            steps: 500,
            lr: 1e-3,
            loss_ratio: 0.05,
            class_loss_share: 0.25,
            dense_accuracy: 0.95,
        }
    }
}

/// The model cannot memorise one small batch of its real targets
///
/// # Why
/// A model that cannot memorise 16 samples has a bug between the output and the loss (detached logits, logits
/// multiplied by 0, wrong target format) or far too little capacity; training longer on more data will not
/// fix either.
///
/// # How
/// Adam (lr `lr`) for up to `steps` steps on the first `samples` samples, stopping early once the fit is
/// reached, judged in absolute, scale-free terms (never as a share of the start, which a trained checkpoint
/// near its floor cannot meet): for classification, every sample right and the loss ≤ `class_loss_share` × ln
/// K (the loss of a uniform guess over K classes; ln 2 per label for bce / bce_with_logits, above the
/// targets' own entropy); for regression, the loss ≤ `loss_ratio` × the loss of the best constant prediction
/// (Var(targets) for mse: relative MSE ≤ 0.05). Dense class targets (a class per pixel, segmentation) need
/// `dense_accuracy` (95%) of the positions right, not every one: logits predicted at a reduced resolution and
/// upsampled (DeepLab) cannot follow every boundary pixel. Failing: the curve's start and end, the accuracy,
/// and the cause when the gradients tell it (no gradient reaches the parameters). For regression with a
/// bounded output activation (sigmoid, tanh, relu …) and mse / l1 / smooth_l1, no weights bring the loss
/// below the targets' mean distance to the range under that loss: when that floor is above the loss to reach,
/// the verdict is certain and the copy is not trained (`loss_floor`, `steps` 0). With cross_entropy, a sample
/// whose target logit sits exactly on a floor that several classes share (a ReLU or clamp before the logits
/// holds it at 0, as in SqueezeNet's head) gets no gradient that can raise it and is dead for this fit; up to
/// a quarter of the batch dead is that head's known behaviour (shared weights revive such samples in
/// training), and the fit is judged on the live samples; more than a quarter is reported as the cause. The
/// accuracy is the argmax's for class indices; for bce / bce_with_logits with targets shaped like the output
/// (multi-label 0/1 matrices, or one binary output) it is per label: a logit > 0 (a probability > 0.5 for
/// bce) predicts 1, against a target ≥ 0.5.
///
/// # Fix
/// Make the loss depend on the parameters (no .detach() or multiplication by 0 on the output), check the
/// target format against the loss, and give the model enough capacity.
#[derive(Serialize, ViolationMetadata)]
#[kind(id = "overfit-batch/cannot-overfit", grade = error)]
#[kind(example(args = "--model fixtures/models/classifier_zero_logits.pt --data fixtures/data/classes4.npz", severity = error, message = "the model cannot overfit 16 samples: the cross_entropy loss went from 1.39 to 1.39 in 0 steps (needs ≤ 0.347: 0.25 × ln 4, the loss of a uniform guess over 4 classes, with every sample right); batch accuracy 18.8%. Likely cause: no gradient reaches the parameters: all 4 parameters got a zero gradient (the output path is detached, multiplied by 0, or constant)"))]
pub struct CannotOverfit {
    #[serde(skip)]
    pub samples: usize,
    #[serde(skip)]
    pub loss: &'static str,
    /// The fit's start and end (absent when it was not trained: see `loss_floor`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loss_start: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loss_end: Option<f64>,
    /// The loss below which no weights can go, when the output activation's range cannot hold the
    /// targets: above `loss_needed`, the copy is not trained (`steps` 0).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loss_floor: Option<f64>,
    /// The loss the fit had to reach.
    pub loss_needed: f64,
    /// What `loss_needed` is measured against.
    #[serde(skip)]
    pub reference: Reference,
    pub steps: usize,
    /// Batch accuracy; `None` for tasks other than classification.
    #[serde(serialize_with = "accuracy_or_one")]
    pub accuracy: Option<f64>,
    /// The accuracy is per label (multi-label targets with bce / bce_with_logits).
    #[serde(skip)]
    pub per_label: bool,
    pub cause: String,
}

fn accuracy_or_one<S: serde::Serializer>(a: &Option<f64>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(a.unwrap_or(1.0))
}

impl Violation for CannotOverfit {
    fn message(&self) -> String {
        let accuracy = self
            .accuracy
            .map(|a| {
                let what = if self.per_label { "per-label " } else { "" };
                format!("; {what}batch accuracy {}%", num(a * 100.0))
            })
            .unwrap_or_default();
        if let Some(floor) = self.loss_floor {
            return format!(
                "the model cannot overfit {} samples: no weights bring the {} loss below {} (needs ≤ {}: {}), \
so it was not trained. Cause: {}",
                self.samples,
                self.loss,
                num(floor),
                num(self.loss_needed),
                self.reference.describe(),
                self.cause
            );
        }
        format!(
            "the model cannot overfit {} samples: the {} loss went from {} to {} in {} steps (needs ≤ {}: {}){accuracy}. \
Likely cause: {}",
            self.samples,
            self.loss,
            num(self.loss_start.unwrap_or(f64::NAN)),
            num(self.loss_end.unwrap_or(f64::NAN)),
            self.steps,
            num(self.loss_needed),
            self.reference.describe(),
            self.cause
        )
    }
    fn help(&self) -> String {
        "make the loss depend on the parameters (no .detach() or ×0 on the output), check the targets' \
format, add capacity"
            .to_string()
    }
}

/// Whether the targets are per-label 0/1 values (multi-label or binary) rather than class indices: a
/// binary loss with targets shaped like the output.
fn is_per_label(loss: LossKind, prediction_size: &[i64], targets: &Tensor) -> bool {
    matches!(loss, LossKind::Bce | LossKind::BceWithLogits) && targets.size() == prediction_size
}

/// How far below a class-probability target's largest probability the predicted class's may be and
/// still count as right: a mixup row near λ = ½ has two top classes, either of which is a fit.
const TOP_CLASS_MARGIN: f64 = 0.1;

/// Batch accuracy on class-probability targets: the share of samples (and positions) whose predicted
/// class (the argmax over dim 1) holds the target's largest probability, within [`TOP_CLASS_MARGIN`].
fn top_class_accuracy(prediction: &Tensor, targets: &Tensor) -> f64 {
    let right = || -> Result<f64, tch::TchError> {
        let t = targets.f_to_kind(Kind::Double)?;
        let predicted = prediction.f_argmax(1, true)?;
        let held = t.f_gather(1, &predicted, false)?;
        let top = t.f_amax([1i64].as_slice(), true)?;
        held.f_ge_tensor(&top.f_sub_scalar(TOP_CLASS_MARGIN)?)?
            .f_to_kind(Kind::Double)?
            .f_mean(Kind::Double)?
            .f_double_value(&[])
    };
    right().unwrap_or(0.0)
}

/// Batch accuracy: the argmax against class indices, or per label (`per_label`) with a threshold of 0
/// on logits (`bce_with_logits`) or 0.5 on probabilities (`bce`) against targets ≥ 0.5.
pub(crate) fn accuracy(
    prediction: &Tensor,
    targets: &Tensor,
    loss: LossKind,
    per_label: bool,
) -> f64 {
    let predicted = if per_label {
        let threshold = if loss == LossKind::Bce { 0.5 } else { 0.0 };
        prediction.f_gt(threshold).and_then(|p| {
            targets
                .f_to_kind(Kind::Double)
                .and_then(|t| t.f_ge(0.5))
                .and_then(|t| p.f_eq_tensor(&t))
        })
    } else {
        prediction
            .f_argmax(1, false)
            .and_then(|p| p.f_eq_tensor(targets))
    };
    predicted
        .and_then(|eq| eq.f_to_kind(Kind::Double))
        .and_then(|eq| eq.f_mean(Kind::Double))
        .and_then(|m| m.f_double_value(&[]))
        .unwrap_or(0.0)
}

/// A class-index fit seen per sample: how many samples are dead (their target's logit sits on a floor
/// that several classes share, exactly: a ReLU or clamp before the logits holds it at 0, and no gradient
/// can raise it), and over the others the mean cross-entropy and the accuracy. None when the prediction
/// is not [N, K] or a target is ignored.
fn live_fit(prediction: &Tensor, targets: &Tensor) -> Option<(usize, f64, f64)> {
    if prediction.dim() != 2 || targets.dim() != 1 {
        return None;
    }
    let p = prediction.f_detach().ok()?.f_to_kind(Kind::Double).ok()?;
    let floor = p.f_amin([1].as_slice(), false).ok()?.f_unsqueeze(1).ok()?;
    let tolerance = p
        .f_abs()
        .ok()?
        .f_amax([1].as_slice(), true)
        .ok()?
        .f_mul_scalar(1e-7)
        .ok()?
        .f_add_scalar(1e-12)
        .ok()?;
    let on_floor = p
        .f_sub(&floor)
        .ok()?
        .f_abs()
        .ok()?
        .f_le_tensor(&tolerance)
        .ok()?;
    let targets = targets.f_to_kind(Kind::Int64).ok()?.f_unsqueeze(1).ok()?;
    let shared_floor = on_floor
        .f_sum_dim_intlist([1].as_slice(), false, Kind::Int64)
        .ok()?;
    let target_on_floor = on_floor.f_gather(1, &targets, false).ok()?;
    let ce = p
        .f_log_softmax(1, Kind::Double)
        .ok()?
        .f_gather(1, &targets, false)
        .ok()?;
    let right = p.f_argmax(1, true).ok()?.f_eq_tensor(&targets).ok()?;
    let shared_floor = train::to_vec(&shared_floor).ok()?;
    let target_on_floor = train::to_vec(&target_on_floor).ok()?;
    let ce = train::to_vec(&ce).ok()?;
    let right = train::to_vec(&right).ok()?;
    let (mut dead, mut loss, mut hits, mut live) = (0, 0.0, 0.0, 0.0);
    for i in 0..ce.len() {
        if target_on_floor[i] > 0.0 && shared_floor[i] >= 2.0 {
            dead += 1;
        } else {
            live += 1.0;
            loss -= ce[i];
            hits += right[i];
        }
    }
    (live > 0.0).then(|| (dead, loss / live, hits / live))
}

/// What a fit is judged against: scale-free, so that a trained checkpoint that starts near its floor
/// passes, and a fresh model is held to the same bar.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Reference {
    /// Classification: `share` × ln K (K classes; K = 2 per label), the loss of a uniform guess.
    Classes { k: i64, share: f64 },
    /// Class-probability targets: their mean entropy (the loss's floor) + `share` × ln K.
    Probabilities { k: i64, share: f64, entropy: f64 },
    /// Regression: `share` × the loss of the best constant prediction (Var(targets) for `mse`).
    Constant { loss: f64, share: f64 },
    /// Constant targets: `share` × the initial loss.
    Start { share: f64 },
}

impl Reference {
    fn describe(&self) -> String {
        match *self {
            Reference::Classes { k: 2, share } => {
                format!("{} × ln 2, the loss of a coin toss per label", num(share))
            }
            Reference::Classes { k, share } => format!(
                "{} × ln {k}, the loss of a uniform guess over {k} classes, with every sample right",
                num(share)
            ),
            Reference::Probabilities { k, share, entropy } => format!(
                "the targets' mean entropy {} (the loss of predicting them exactly) + {} × ln {k}, with \
every sample's top class right",
                num(entropy),
                num(share)
            ),
            Reference::Constant { loss, share } => format!(
                "{}% of {}, the loss of the best constant prediction",
                num(share * 100.0),
                num(loss)
            ),
            Reference::Start { share } => format!("{}% of the start", num(share * 100.0)),
        }
    }
}

/// The mean binary entropy of float targets in [0, 1]: the floor of `bce` (0 for 0/1 labels).
fn target_entropy(targets: &Tensor) -> Result<f64, CheckError> {
    let h = train::binary_entropy(targets)?
        .f_mean(Kind::Double)?
        .f_double_value(&[])?;
    // Exactly 0/1 targets have no floor; the clamp leaves ~1e-11 per value.
    Ok(if h < 1e-9 { 0.0 } else { h })
}

/// The loss of the best constant prediction of `targets` (its mean for `mse` and `bce`, its median for
/// `l1` and `smooth_l1`), and the loss's floor (the targets' entropy for `bce`, else 0).
fn constant_loss(loss: LossKind, targets: &Tensor) -> Result<(f64, f64), CheckError> {
    let y = targets.f_to_kind(Kind::Double)?;
    let values = train::to_vec(&y)?;
    let mean = crate::stats::mean(&values);
    let median = crate::stats::median(&values);
    let n = values.len().max(1) as f64;
    Ok(match loss {
        LossKind::Mse => (
            crate::stats::variance(&values) * (n - 1.0).max(0.0) / n,
            0.0,
        ),
        LossKind::L1 => (
            values.iter().map(|v| (v - median).abs()).sum::<f64>() / n,
            0.0,
        ),
        LossKind::SmoothL1 => {
            let huber = |d: f64| {
                if d.abs() < 1.0 {
                    0.5 * d * d
                } else {
                    d.abs() - 0.5
                }
            };
            (
                values.iter().map(|v| huber(v - median)).sum::<f64>() / n,
                0.0,
            )
        }
        _ => {
            let p = mean.clamp(1e-12, 1.0 - 1e-12);
            let h = -(p * p.ln() + (1.0 - p) * (1.0 - p).ln());
            (h, target_entropy(&y)?)
        }
    })
}

/// A cause that the shapes or scales name outright (issue 22, 13): an output and targets of different
/// shapes that the elementwise loss broadcasts against each other (`[N, 1]` vs `[N]`), or targets (or
/// inputs) at a raw scale far from the untrained output's. None when neither applies.
fn shape_or_scale_cause(
    prediction: &Result<Tensor, CheckError>,
    x: &Tensor,
    y: &Tensor,
    loss: LossKind,
) -> Option<String> {
    let prediction = prediction.as_ref().ok()?;
    if loss.is_classification() {
        return None;
    }
    let (p, t) = (prediction.size(), y.size());
    let n = t.first().copied().unwrap_or(0);
    let p_batch: Vec<i64> = std::iter::once(n)
        .chain(p.iter().skip(1).copied())
        .collect();
    if p_batch != t {
        let shape = |s: &[i64]| {
            let v: Vec<String> = s.iter().map(|d| d.to_string()).collect();
            format!("[{}]", v.join(", "))
        };
        let broadcast = Tensor::f_empty(p_batch.as_slice(), (tch::Kind::Float, tch::Device::Cpu))
            .ok()
            .and_then(|a| {
                a.f_add(&Tensor::f_empty(t.as_slice(), (tch::Kind::Float, tch::Device::Cpu)).ok()?)
                    .ok()
            })
            .map(|b| format!(", which broadcast to {}", shape(&b.size())))
            .unwrap_or_default();
        return Some(format!(
            "the output is {} and the targets {}{broadcast} in {}: each output is compared with every \
target, not with its own; give both the same shape (e.g. targets.unsqueeze(1) or output.squeeze(1))",
            shape(&p_batch),
            shape(&t),
            loss.as_str()
        ));
    }
    let rms = |v: &Tensor| -> Option<f64> {
        v.f_to_kind(tch::Kind::Double)
            .ok()?
            .f_square()
            .ok()?
            .f_mean(tch::Kind::Double)
            .ok()?
            .f_double_value(&[])
            .ok()
            .map(f64::sqrt)
    };
    let (out, target) = (rms(prediction)?, rms(y)?);
    if target > 10.0 && target > 30.0 * out.max(1e-12) {
        return Some(format!(
            "the targets are at raw scale (rms {}) while the untrained output is at {}: each Adam step \
moves the output by about the lr, so the fit cannot get there; standardise the targets (and invert it on \
the predictions)",
            num(target),
            num(out)
        ));
    }
    let input = rms(x)?;
    if input > 100.0 {
        return Some(format!(
            "the inputs are at raw scale (rms {}): the first layer's outputs start far too large and \
its gradients swamp the rest; normalise the inputs (input-normalization says which)",
            num(input)
        ));
    }
    None
}

impl Check for OverfitBatch {
    type Options = OverfitBatchOptions;

    const INFO: &'static CheckInfo = &INFO;

    fn run(&self, ctx: &Context, options: &OverfitBatchOptions) -> CheckOutput {
        let (model, data) = (ctx.model()?, ctx.data()?);
        let loss_kind = ctx.setup.resolved_loss(Some(data));
        // cross_entropy / nll fit classes whatever the task says (an exporter that wrote soft targets
        // as `task = "regression"`).
        let classification = ctx.setup.resolved_task(Some(data)) == Task::Classification
            || loss_kind.is_classification();
        let k = data.len().min(options.samples).max(1) as i64;
        let device = model.device();
        let x = data.inputs.f_narrow(0, 0, k)?.f_to_device(device)?;
        let y = data.targets.f_narrow(0, 0, k)?.f_to_device(device)?;
        // A fully convolutional image-to-image model is fitted on crops (issue 11: the same kernels,
        // a fraction of the work per step); the reference loss below is the crop's.
        let (x, y, crops) =
            train::crop_fit_batch(model, &ctx.prediction()?.size(), x, y, classification)?;
        let per_label = is_per_label(loss_kind, &ctx.prediction()?.size(), &data.targets);
        let binary = matches!(loss_kind, LossKind::Bce | LossKind::BceWithLogits);
        // Class probabilities (one-hot, label-smoothed, mixup): the loss's floor is their entropy.
        let soft = classification
            && loss_kind.is_classification()
            && train::holds_probabilities(ctx.prediction()?, &y);
        // The loss to reach: absolute and scale-free (see `Reference`), never a share of the start.
        let (floor, reference) = if classification {
            let k = if binary {
                2
            } else {
                train::class_count(ctx.prediction()?)?
            };
            let share = options.class_loss_share;
            if soft {
                let entropy = train::mean_target_entropy(&y)?;
                (entropy, Reference::Probabilities { k, share, entropy })
            } else {
                let floor = if binary { target_entropy(&y)? } else { 0.0 };
                (floor, Reference::Classes { k, share })
            }
        } else {
            let (loss, floor) = constant_loss(loss_kind, &y)?;
            let share = options.loss_ratio;
            if loss - floor > 1e-12 {
                (floor, Reference::Constant { loss, share })
            } else {
                (floor, Reference::Start { share })
            }
        };
        // A head whose range cannot hold the targets leaves a loss no weights remove (each target's
        // distance to the range, under the loss): when that floor is above the loss to reach, the
        // verdict is settled before any step, and certain.
        if let (Reference::Constant { loss, share }, false) = (reference, classification) {
            let goal = floor + share * (loss - floor);
            let act = model.output_activation()?;
            // The range is the graph's final op's, trusted when the model's real output lies in it.
            let prediction = ctx.prediction()?;
            let range = crate::activation::output_range(&act).filter(|r| {
                prediction.size().get(1..) == y.size().get(1..)
                    && crate::activation::holds(prediction, *r)
            });
            let penalty: Option<fn(f64) -> f64> = match loss_kind {
                LossKind::Mse => Some(|d| d * d),
                LossKind::L1 => Some(|d| d),
                LossKind::SmoothL1 => Some(|d| if d < 1.0 { 0.5 * d * d } else { d - 0.5 }),
                _ => None,
            };
            if let (Some(r), Some(penalty)) = (range, penalty) {
                let values = train::to_vec(&y)?;
                let lost = r.floor(&values, penalty);
                if lost > goal {
                    let violation = CannotOverfit {
                        samples: k as usize,
                        loss: loss_kind.as_str(),
                        loss_start: None,
                        loss_end: None,
                        loss_floor: Some(lost),
                        loss_needed: goal,
                        reference,
                        steps: 0,
                        accuracy: None,
                        per_label,
                        cause: r.cannot_hold(&act.op, "targets", &values),
                    };
                    let f = Finding::new(
                        &violation,
                        Location::data(&data.target_key, Some((0, k as usize))),
                    );
                    return Ok(CheckResult::with_findings(vec![f]));
                }
            }
        }
        let needed = std::cell::Cell::new(f64::NAN);
        let last_accuracy = std::cell::Cell::new(0.0);
        let last_dead = std::cell::Cell::new(0usize);
        let per_sample =
            classification && loss_kind == LossKind::CrossEntropy && !per_label && !soft;
        // One class index per position (segmentation): judged by the share of positions right.
        let dense =
            classification && loss_kind.is_classification() && !per_label && !soft && y.dim() >= 2;
        let done = |loss: f64, prediction: &Tensor| {
            if needed.get().is_nan() {
                needed.set(match reference {
                    Reference::Classes { k, share } | Reference::Probabilities { k, share, .. } => {
                        floor + share * (k.max(2) as f64).ln()
                    }
                    Reference::Constant { loss, share } => floor + share * (loss - floor),
                    Reference::Start { share } => share * loss,
                });
            }
            let acc = if soft {
                top_class_accuracy(prediction, &y)
            } else if classification {
                accuracy(prediction, &y, loss_kind, per_label)
            } else {
                1.0
            };
            last_accuracy.set(acc);
            let accuracy_needed = if dense { options.dense_accuracy } else { 1.0 };
            if loss <= needed.get() && acc >= accuracy_needed {
                return true;
            }
            // Dead samples (identical logits, no gradient): a minority is judged on the live ones.
            match per_sample.then(|| live_fit(prediction, &y)).flatten() {
                Some((dead, live_loss, live_acc)) => {
                    last_dead.set(dead);
                    dead > 0
                        && 4 * dead <= k as usize
                        && live_acc >= 1.0
                        && live_loss <= needed.get()
                }
                None => false,
            }
        };
        let mut copy = model.trainable_copy()?;
        let started = std::time::Instant::now();
        let fit = train::fit_batch(
            copy.as_mut(),
            &x,
            &y,
            loss_kind,
            options.lr,
            options.steps,
            &done,
            ctx.progress,
            &train::Budget::start(ctx.setup.check_budget),
            "overfitting the batch",
        )?;
        let steps = fit.losses.len() - 1;
        let run = train::training_run("overfit", &x, fit.losses.len(), steps, started);
        let on = crops
            .map(|c| format!(" (on {c} crops)"))
            .unwrap_or_default();
        let curve = Curve::new(
            format!("overfit {} loss{on}", loss_kind.as_str()),
            fit.losses.clone(),
        );
        let at = Location::data(&data.target_key, Some((0, k as usize)));
        train::fit_outcome(curve, needed.get(), run, fit.reached, at, |start, end| {
            let cause = train::no_gradient_cause(&fit).unwrap_or_else(|| {
                let dead = last_dead.get();
                if 4 * dead > k as usize {
                    format!(
                        "{dead} of {k} samples have their target's logit held on a floor shared by other \
classes: a ReLU or clamp before the logits outputs 0 for it, so no gradient can raise it"
                    )
                } else if end > needed.get() {
                    shape_or_scale_cause(&ctx.prediction().map(|p| p.shallow_clone()), &x, &y, loss_kind)
                        .unwrap_or_else(|| {
                            "too little capacity, or a mismatch between the output and the targets"
                                .to_string()
                        })
                } else if per_label {
                    "the loss fell, but not every label is predicted correctly".to_string()
                } else {
                    "the loss fell, but not every sample is classified correctly".to_string()
                }
            });
            Ok(CannotOverfit {
                samples: k as usize,
                loss: loss_kind.as_str(),
                loss_start: Some(start),
                loss_end: Some(end),
                loss_floor: None,
                loss_needed: needed.get(),
                reference,
                steps,
                accuracy: classification.then(|| last_accuracy.get()),
                per_label,
                cause,
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multi_label_accuracy_thresholds_logits_at_0_and_probabilities_at_half() {
        let targets = Tensor::from_slice(&[1f32, 0., 1., 0., 0., 1.]).reshape([2, 3]);
        let logits = Tensor::from_slice(&[2f32, -1., 0.5, -3., -0.1, 4.]).reshape([2, 3]);
        assert!(is_per_label(
            LossKind::BceWithLogits,
            &logits.size(),
            &targets
        ));
        assert_eq!(
            accuracy(&logits, &targets, LossKind::BceWithLogits, true),
            1.0
        );
        let probabilities = logits.sigmoid();
        assert_eq!(accuracy(&probabilities, &targets, LossKind::Bce, true), 1.0);
        // Probabilities judged as logits would all read 1: three of six labels are 0.
        assert!(
            (accuracy(&probabilities, &targets, LossKind::BceWithLogits, true) - 0.5).abs() < 1e-9
        );
        // Class indices keep the argmax.
        let classes = Tensor::from_slice(&[0i64, 2]);
        assert!(!is_per_label(
            LossKind::CrossEntropy,
            &logits.size(),
            &classes
        ));
        assert_eq!(
            accuracy(&logits, &classes, LossKind::CrossEntropy, false),
            1.0
        );
    }

    #[test]
    fn soft_targets_are_right_when_the_predicted_class_holds_the_top_probability() {
        // One-hot, label-smoothed, and a mixup row near λ = ½ whose runner-up class is predicted.
        let rows = |r: [[f32; 3]; 4]| Tensor::from_slice(r.as_flattened()).reshape([4, 3]);
        let targets = rows([
            [1., 0., 0.],
            [0.025, 0.025, 0.95],
            [0.48, 0.52, 0.],
            [0.7, 0.3, 0.],
        ]);
        let logits = rows([[3., 0., 0.], [0., 0., 2.], [1., 0.5, 0.], [0., 1., 0.]]);
        // The last sample's predicted class holds 0.3 against a top of 0.7: wrong.
        assert!((top_class_accuracy(&logits, &targets) - 0.75).abs() < 1e-12);
        let dense = targets.reshape([1, 4, 3]).permute([0, 2, 1]);
        let dense_logits = logits.reshape([1, 4, 3]).permute([0, 2, 1]);
        assert!((top_class_accuracy(&dense_logits, &dense) - 0.75).abs() < 1e-12);
    }
}
