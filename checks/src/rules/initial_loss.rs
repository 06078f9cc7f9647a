//! initial-loss: an untrained model's loss on the sample against what a neutral init gives.
use super::prelude::*;
use crate::train;
use tch::{Kind, Tensor};

pub struct InitialLoss;

static INFO: CheckInfo = CheckInfo {
    id: "initial-loss",
    group: Group::Loss,
    default_level: Level::Warn,
    summary: "An untrained model's loss starts near the value a neutral output gives",
    docs: Docs {
        what: "Computes the configured loss of the untrained model's eval-mode output on the data sample \
and compares it with the loss of a neutral output: ln K for K-class cross-entropy (uniform \
probabilities; also for class-probability targets, whose rows sum to 1), ln 2 per label for binary \
cross-entropy (probability ½), and for regression losses the loss of an all-zero output (mean² + variance \
of the targets for MSE). Trained checkpoints are skipped.",
        why: "A freshly initialised model should be unsure. An initial loss far above the neutral value \
means the model starts confidently wrong (a last layer initialised too large, a bias far from the \
prior): the first hundreds of steps only undo the init, and the large early gradients can destabilise \
training (Karpathy's recipe: \"verify loss @ init\").",
        details: include_str!("initial_loss.md"),
    },
    kinds: &[&HighInitialLoss::KIND],
    needs: &[Need::Loss],
    ..CheckInfo::PLAIN
};

/// Options of initial-loss.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct InitialLossOptions {
    /// How many times the neutral loss the initial loss may reach (mse: ratio² times, on the rms scale).
    #[schemars(range(min = 1))]
    pub ratio: f64,
    /// For classification losses, the least excess over the neutral loss, in nats, that is reported.
    #[schemars(range(min = 0))]
    pub min_excess: f64,
    /// `auto`: a trained checkpoint (skipped) when a BatchNorm layer counted batches; `trained`; `untrained`.
    pub model_state: ModelState,
}

/// Whether initial-loss judges the model as untrained.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum ModelState {
    Auto,
    Trained,
    Untrained,
}

impl Default for InitialLossOptions {
    fn default() -> Self {
        InitialLossOptions {
            ratio: 2.5,
            min_excess: 1.0,
            model_state: ModelState::Auto,
        }
    }
}

/// The untrained model's loss is far above the value a neutral output gives
///
/// # Why
/// An untrained model should predict close to uniform probabilities (or close to 0 for regression): an
/// initial loss many times the neutral value means confident, wrong predictions from the start, which wastes
/// the first steps undoing the init and makes the early gradients large.
///
/// # How
/// The configured loss of the eval-mode output on the whole sample, against the neutral loss: ln K for
/// cross_entropy / nll with K classes, ln 2 for bce / bce_with_logits (per label), and for mse, l1 and
/// smooth_l1 the loss of an all-zero output. Warning when a classification loss exceeds `ratio`× the neutral
/// loss and the neutral loss plus `min_excess` nats; for mse when it exceeds `ratio`²× (for l1 / smooth_l1
/// `ratio`×) the larger of the neutral loss and the loss of a unit error, so a default-initialised head with
/// a small output never fires on small targets. When the inputs are floating point, the loss is computed
/// again on the sample standardised per feature (per channel for images): if that one is normal, the raw
/// input scale is the cause (input-normalization's finding), and initial-loss stays silent. Skipped for
/// trained checkpoints: a BatchNorm layer with num_batches_tracked > 0 (`model_state = "auto"`), or
/// `model_state = "trained"`; `"untrained"` judges any model.
///
/// # Fix
/// Initialise the last layer small or at zero (nn.init.zeros_(head.weight), or std 0.01), and set its bias to
/// the log class prior (bias = log(p_k)) for unbalanced classes or to the targets' mean for regression.
#[derive(Serialize, ViolationMetadata)]
#[kind(id = "initial-loss/high-initial-loss", grade = warning)]
#[kind(example(args = "--model fixtures/models/classifier_hot_head.pt --data fixtures/data/classes4.npz", severity = warning, message = "the initial cross_entropy loss is 4.57, 3.3× the neutral 1.39 (ln 4): the logits have std 3.62 across classes, so the untrained model is confidently wrong"))]
pub struct HighInitialLoss {
    pub loss_kind: String,
    pub loss: f64,
    pub expected: f64,
    /// How the expected value is derived, in words (`ln 10`, `ln 2 per label`, `mean² + variance`).
    pub expected_as: String,
    /// The std of the logits across classes (cross-entropy), their rms (binary cross-entropy), or the
    /// rms of the output (regression).
    pub output_scale: f64,
    /// The mean logit (binary cross-entropy only: a bias far from the log-odds of the prior).
    pub output_mean: Option<f64>,
    /// The rms of the targets (regression only).
    pub target_scale: Option<f64>,
    /// The loss a bias at the log class prior would give (classification only).
    pub prior_loss: Option<f64>,
    pub last_layer: Option<String>,
}

impl Violation for HighInitialLoss {
    fn message(&self) -> String {
        let ratio = self.loss / self.expected.max(1e-300);
        let scale = match self.target_scale {
            Some(t) => format!(
                "the output's rms is {} against the targets' {}",
                num(self.output_scale),
                num(t)
            ),
            None => match self.output_mean {
                Some(mean) => format!(
                    "the logits have rms {} (mean {}), so the untrained model is confidently wrong",
                    num(self.output_scale),
                    num(mean)
                ),
                None => format!(
                    "the logits have std {} across classes, so the untrained model is confidently wrong",
                    num(self.output_scale)
                ),
            },
        };
        format!(
            "the initial {} loss is {}, {}× the neutral {} ({}): {scale}",
            self.loss_kind,
            num(self.loss),
            num(ratio),
            num(self.expected),
            self.expected_as
        )
    }
    fn help(&self) -> String {
        let layer = self
            .last_layer
            .as_deref()
            .map(|l| format!(" (`{l}`)"))
            .unwrap_or_default();
        match (self.target_scale, self.prior_loss) {
            (Some(_), _) => format!(
                "initialise the last layer{layer} small or at zero and its bias to the targets' mean"
            ),
            (None, Some(prior)) => format!(
                "make the logits start near 0: initialise the last layer{layer} small or at zero \
(nn.init.zeros_), drop any factor that scales them up at init, and set its bias to the log {} (initial \
loss {})",
                if self.output_mean.is_some() { "odds of each label's prior, log(p / (1 - p))," } else { "class prior, log(p_k)," },
                num(prior)
            ),
            (None, None) => format!(
                "make the logits start near 0: initialise the last layer{layer} small or at zero \
(nn.init.zeros_), and drop any factor that scales them up at init"
            ),
        }
    }
}

/// The largest num_batches_tracked of any BatchNorm layer (0 when there is none).
fn batches_tracked(model: &dyn Model) -> Result<i64, CheckError> {
    let mut most = 0;
    for (name, b) in model.buffers()? {
        if name.ends_with("num_batches_tracked") && b.numel() == 1 {
            most = most.max(b.f_int64_value(&[])?);
        }
    }
    Ok(most)
}

/// The inputs standardised per feature (2-D) or per channel (dim 1 of 3-D and more): zero mean, unit
/// variance over the sample; constant features are only centred.
pub(crate) fn standardised(inputs: &Tensor) -> Result<Tensor, CheckError> {
    let x = inputs.f_to_kind(Kind::Float)?;
    let dims: Vec<i64> = match x.dim() {
        0 | 1 => vec![0],
        2 => vec![0],
        d => std::iter::once(0).chain(2..d as i64).collect(),
    };
    let mean = x.f_mean_dim(dims.as_slice(), true, Kind::Float)?;
    let std = x.f_std_dim(dims.as_slice(), false, true)?;
    let std = std.f_where_scalarother(&std.f_gt(1e-12)?, 1.0)?;
    Ok(x.f_sub(&mean)?.f_div(&std)?.f_to_kind(inputs.kind())?)
}

/// The path of the model's last Linear / Conv module, in module order.
fn last_layer(model: &dyn Model) -> Option<String> {
    model
        .modules()
        .iter()
        .rev()
        .find(|m| {
            matches!(m.kind.as_str(), "Linear" | "LazyLinear" | "Bilinear")
                || m.kind.starts_with("Conv")
                || m.kind.starts_with("LazyConv")
        })
        .map(|m| m.path.clone())
}

/// What the loss of `prediction` is judged against.
struct Judged {
    loss: f64,
    expected: f64,
    expected_as: String,
    /// The loss above which the finding fires.
    limit: f64,
    output_scale: f64,
    output_mean: Option<f64>,
    target_scale: Option<f64>,
    prior_loss: Option<f64>,
}

fn scalar(t: Tensor) -> Result<f64, CheckError> {
    Ok(t.f_to_kind(Kind::Double)?.f_double_value(&[])?)
}

/// The entropy of the class prior of class-index `targets` (classes 0..k, -100 ignored): the loss of a
/// bias at log(prior). Class-probability targets: [`train::probability_prior_entropy`].
pub(crate) fn prior_entropy(targets: &Tensor, k: i64) -> Result<f64, CheckError> {
    let t = targets.f_to_kind(Kind::Int64)?.f_flatten(0, -1)?;
    let t = t.f_masked_select(&t.f_ge(0)?)?;
    let counts = t.f_bincount::<&Tensor>(None, k)?.f_to_kind(Kind::Double)?;
    let total = scalar(counts.f_sum(Kind::Double)?)?;
    if total == 0.0 {
        return Ok(f64::NAN);
    }
    let p = counts.f_div_scalar(total)?;
    let plogp = p.f_mul(&p.f_clamp_min(1e-300)?.f_log()?)?;
    Ok(-scalar(plogp.f_sum(Kind::Double)?)?)
}

fn judge(
    loss_kind: LossKind,
    prediction: &Tensor,
    targets: &Tensor,
    options: &InitialLossOptions,
) -> Result<Judged, CheckError> {
    let prediction = prediction.f_to_kind(Kind::Float)?;
    let loss = scalar(train::loss(loss_kind, &prediction, targets)?)?;
    let std = |t: &Tensor| -> Result<f64, CheckError> {
        if t.numel() < 2 {
            return Ok(0.0);
        }
        scalar(t.f_std(false)?)
    };
    let classification =
        |expected: f64, expected_as: String, prior_loss| -> Result<Judged, CheckError> {
            Ok(Judged {
                loss,
                expected,
                expected_as,
                limit: (expected * options.ratio).max(expected + options.min_excess),
                output_scale: 0.0,
                output_mean: None,
                target_scale: None,
                prior_loss,
            })
        };
    match loss_kind {
        LossKind::CrossEntropy | LossKind::Nll => {
            let k = train::class_count(&prediction)?;
            // Class probabilities sum to 1 per sample, so uniform logits still score ln K; a bias at
            // the log prior scores the entropy of the mean target.
            let prior = if train::holds_probabilities(&prediction, targets) {
                train::probability_prior_entropy(targets)?
            } else {
                prior_entropy(targets, k)?
            };
            let mut j = classification(
                (k as f64).ln(),
                format!("ln {k}"),
                prior.is_finite().then_some(prior),
            )?;
            // Softmax ignores a shift shared by all classes: the spread across classes is the scale.
            j.output_scale = if prediction.dim() >= 2 && prediction.size()[1] > 1 {
                scalar(
                    prediction
                        .f_var_dim(Some([1i64].as_slice()), false, false)?
                        .f_mean(Kind::Float)?,
                )?
                .sqrt()
            } else {
                std(&prediction)?
            };
            Ok(j)
        }
        LossKind::Bce | LossKind::BceWithLogits => {
            let per_label =
                if prediction.numel() as i64 > prediction.size().first().copied().unwrap_or(1) {
                    " per label"
                } else {
                    ""
                };
            let logits = if loss_kind == LossKind::Bce {
                // Probabilities: their log-odds.
                let p = prediction.f_clamp(1e-6, 1.0 - 1e-6)?;
                p.f_div(&p.f_neg()?.f_add_scalar(1.0)?)?.f_log()?
            } else {
                prediction.shallow_clone()
            };
            // The loss of each label's bias at the log-odds of its prior: the mean binary entropy of
            // the label frequencies.
            let y = targets.f_to_kind(Kind::Double)?;
            let frequencies = if y.dim() >= 2 {
                y.f_mean_dim(Some([0i64].as_slice()), false, Kind::Double)?
            } else {
                y.f_mean(Kind::Double)?
            };
            let entropy = train::binary_entropy(&frequencies)?;
            let prior = scalar(entropy.f_mean(Kind::Double)?)?;
            let neutral = std::f64::consts::LN_2;
            let mut j = classification(
                neutral,
                format!("ln 2{per_label}"),
                prior.is_finite().then_some(prior),
            )?;
            j.output_scale = scalar(logits.f_square()?.f_mean(Kind::Float)?)?.sqrt();
            j.output_mean = Some(scalar(logits.f_mean(Kind::Float)?)?);
            Ok(j)
        }
        LossKind::Mse | LossKind::L1 | LossKind::SmoothL1 => {
            let zeros = prediction.f_zeros_like()?;
            let y = targets.f_to_kind(Kind::Float)?;
            let expected = scalar(train::loss(loss_kind, &zeros, &y)?)?;
            let unit_error = scalar(train::loss(loss_kind, &zeros, &y.f_ones_like()?)?)?;
            let factor = if loss_kind == LossKind::Mse {
                options.ratio * options.ratio
            } else {
                options.ratio
            };
            let rms = |t: &Tensor| -> Result<f64, CheckError> {
                Ok(scalar(t.f_square()?.f_mean(Kind::Float)?)?.sqrt())
            };
            let expected_as = match loss_kind {
                LossKind::Mse => "mean² + variance of the targets",
                LossKind::L1 => "mean |target|",
                _ => "an all-zero output",
            };
            Ok(Judged {
                loss,
                expected,
                expected_as: expected_as.to_string(),
                limit: factor * expected.max(unit_error),
                output_scale: rms(&prediction)?,
                output_mean: None,
                target_scale: Some(rms(&y)?),
                prior_loss: None,
            })
        }
    }
}

impl Check for InitialLoss {
    type Options = InitialLossOptions;

    const INFO: &'static CheckInfo = &INFO;

    fn run(&self, ctx: &Context, options: &InitialLossOptions) -> CheckOutput {
        let (model, data) = (ctx.model()?, ctx.data()?);
        match options.model_state {
            ModelState::Trained => {
                return Err(CheckError::skip(
                    "the model is a trained checkpoint (initial-loss.model_state = \"trained\")",
                ))
            }
            ModelState::Untrained => {}
            ModelState::Auto => {
                let tracked = batches_tracked(model)?;
                if tracked > 0 {
                    return Err(CheckError::skip(format!(
                        "the model is a trained checkpoint (its BatchNorm layers have tracked {tracked} \
batches); set initial-loss.model_state = \"untrained\" to judge it anyway"
                    )));
                }
            }
        }
        let loss_kind = ctx.setup.resolved_loss(Some(data));
        let prediction = ctx.prediction()?;
        let targets = data.targets.f_to_device(prediction.device())?;
        if holds_non_finite(prediction)? {
            return Err(CheckError::skip(
                "the output holds NaN or Inf (nonfinite reports it)",
            ));
        }
        let j = judge(loss_kind, prediction, &targets, options)?;
        if !j.loss.is_finite() || j.loss <= j.limit {
            return Ok(CheckResult::passed());
        }
        if data.inputs.is_floating_point() {
            // The same model on standardised inputs: when its loss is normal there, the raw input
            // scale makes the loss, not the init (input-normalization's finding).
            let x = standardised(&data.inputs)?.f_to_device(model.device())?;
            let p = model.predict(&x)?;
            let again = judge(loss_kind, &p, &targets, options)?;
            if again.loss.is_finite() && again.loss <= again.limit {
                return Err(CheckError::skip(format!(
                    "the initial {} loss {} is high only at the inputs' raw scale (on standardised inputs it \
is {}): input-normalization judges the input scale",
                    loss_kind.as_str(),
                    num(j.loss),
                    num(again.loss)
                )));
            }
        }
        let v = HighInitialLoss {
            loss_kind: loss_kind.as_str().to_string(),
            loss: j.loss,
            expected: j.expected,
            expected_as: j.expected_as,
            output_scale: j.output_scale,
            output_mean: j.output_mean,
            target_scale: j.target_scale,
            prior_loss: j.prior_loss,
            last_layer: last_layer(model),
        };
        let at = v
            .last_layer
            .as_deref()
            .map_or_else(Location::default, Location::module);
        Ok(CheckResult::found(&v, at))
    }
}

/// Whether a tensor holds NaN or Inf.
fn holds_non_finite(t: &Tensor) -> Result<bool, CheckError> {
    if !t.is_floating_point() {
        return Ok(false);
    }
    Ok(t.f_isfinite()?.f_all()?.f_int64_value(&[])? == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn neutral_outputs_give_the_expected_losses() {
        let o = InitialLossOptions::default();
        let y = Tensor::from_slice(&[0i64, 1, 2, 3, 0, 1, 2, 3]);
        let j = judge(
            LossKind::CrossEntropy,
            &Tensor::zeros([8, 4], tch::kind::FLOAT_CPU),
            &y,
            &o,
        )
        .unwrap();
        assert!((j.loss - 4f64.ln()).abs() < 1e-6 && (j.expected - 4f64.ln()).abs() < 1e-9);
        assert!(
            (j.prior_loss.unwrap() - 4f64.ln()).abs() < 1e-9,
            "balanced: a uniform prior"
        );
        // Confident logits: 20 on a wrong class.
        let logits = Tensor::zeros([8, 4], tch::kind::FLOAT_CPU);
        let _ = logits.narrow(1, 0, 1).fill_(20.0);
        let y1 = Tensor::from_slice(&[1i64; 8]);
        let j = judge(LossKind::CrossEntropy, &logits, &y1, &o).unwrap();
        assert!(j.loss > j.limit, "{} vs {}", j.loss, j.limit);
        assert!(
            j.prior_loss.unwrap() < 1e-6,
            "a single class: prior entropy 0"
        );
        // MSE: small default outputs on small targets are fine; a loss of ratio² unit errors is not.
        let y = Tensor::from_slice(&[0.01f32, -0.02, 0.015, 0.0]).reshape([4, 1]);
        let p = Tensor::from_slice(&[0.3f32, -0.2, 0.1, 0.25]).reshape([4, 1]);
        let j = judge(LossKind::Mse, &p, &y, &o).unwrap();
        assert!(j.loss < j.limit && (j.limit - 6.25).abs() < 1e-6);
        let j = judge(LossKind::Mse, &p.f_mul_scalar(20.0).unwrap(), &y, &o).unwrap();
        assert!(j.loss > j.limit);
    }

    #[test]
    fn standardising_centres_each_channel() {
        let x = Tensor::from_slice(&[0f32, 255.0, 10.0, 20.0, 128.0, 64.0, 5.0, 15.0])
            .reshape([2, 2, 2]);
        let s = standardised(&x).unwrap();
        let m = s.mean_dim([0i64, 2].as_slice(), false, Kind::Float);
        assert!(m.abs().max().double_value(&[]) < 1e-5);
        let sd = s.std_dim([0i64, 2].as_slice(), false, false);
        assert!((sd - 1.0).abs().max().double_value(&[]) < 1e-4);
    }
}
