//! output-range: the output activation can reach the targets, and does not waste half its range.
use super::prelude::*;
use crate::activation::{output_range, Range};
use crate::train::to_vec;
use tch::{Kind, Tensor};

pub struct OutputRange;

static INFO: CheckInfo = CheckInfo {
    id: "output-range",
    group: Group::Model,
    default_level: Level::Deny,
    summary: "The output activation's range matches the targets' range (and the logits cover every class)",
    docs: Docs {
        what: "Reads the model's final op from the TorchScript graph (sigmoid, tanh, softmax, log_softmax, \
relu, softplus, hardtanh / clamp with their bounds, or none), confirms its range on the data and on 10× \
scaled inputs, and compares it with the range of the targets. For classification it compares the number \
of logits with the classes in the targets. Unbounded outputs (a linear or conv head) always pass.",
        why: "A head that cannot produce the targets (or a classifier without a logit per class) can \
never reach zero loss: the model looks under-powered when it is mis-specified.",
        details: include_str!("output_range.md"),
    },
    kinds: &[&TooFewLogits::KIND, &TargetsOutsideRange::KIND, &WastedRange::KIND],
    ..CheckInfo::PLAIN
};

/// Options of output-range.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct OutputRangeOptions {
    /// Share of targets allowed outside the attainable range.
    #[schemars(range(min = 0, max = 1))]
    pub max_outside: f64,
    /// A bounded head whose targets use at most this share of its range is a warning.
    #[schemars(range(min = 0, max = 1))]
    pub min_used_span: f64,
}

impl Default for OutputRangeOptions {
    fn default() -> Self {
        OutputRangeOptions {
            max_outside: 0.0,
            min_used_span: 0.5,
        }
    }
}

/// The classifier outputs fewer logits than the targets have classes
///
/// # Why
/// Classes without a logit can never be predicted, and cross_entropy crashes (or reads garbage on some
/// devices) on a class index past the last logit.
///
/// # How
/// Classification with cross_entropy / nll only (with bce / bce_with_logits each target has its own output,
/// so a binary task has one logit): error when the largest class index in the targets is ≥ the number of
/// logits (dim 1 of the output on the sample).
///
/// # Fix
/// Give the final layer one output per class.
#[derive(Serialize, ViolationMetadata)]
#[kind(id = "output-range/too-few-logits", grade = error)]
#[kind(example(args = "--model fixtures/models/head_linear.pt --data fixtures/data/targets_cls10.npz", severity = error, message = "the model outputs 4 logits but the targets hold class indices up to 9 (10 classes): 6 classes can never be predicted"))]
pub struct TooFewLogits {
    pub logits: i64,
    pub max_class: i64,
    /// The targets are class probabilities (one column per class), not class indices.
    #[serde(skip)]
    pub probabilities: bool,
}

impl Violation for TooFewLogits {
    fn message(&self) -> String {
        let held = if self.probabilities {
            format!("class probabilities over {} classes", self.max_class + 1)
        } else {
            format!(
                "class indices up to {} ({} classes)",
                self.max_class,
                self.max_class + 1
            )
        };
        let missing = self.max_class + 1 - self.logits;
        format!(
            "the model outputs {} logits but the targets hold {held}: {missing} {} never be predicted",
            self.logits,
            if missing == 1 { "class can" } else { "classes can" }
        )
    }
    fn help(&self) -> String {
        format!(
            "give the final layer {} outputs (one per class)",
            self.max_class + 1
        )
    }
}

/// What output-range measured on a bounded head and the targets.
#[derive(Serialize)]
pub struct RangeEvidence {
    pub activation: String,
    pub range_low: f64,
    pub range_high: f64,
    pub target_min: f64,
    pub target_max: f64,
    pub observed_min: f64,
    pub observed_max: f64,
}

impl RangeEvidence {
    fn range(&self) -> Range {
        Range {
            lo: self.range_low,
            hi: self.range_high,
        }
    }
}

/// Targets fall outside the range the output activation can produce
///
/// # Why
/// A sigmoid cannot output -0.5 and a relu cannot output a negative number: the loss can never reach zero,
/// gradients saturate at the boundary and the model looks under-powered when it is mis-specified (images in
/// 0..255 against a sigmoid, [-1, 1] normalised images against a sigmoid).
///
/// # How
/// Error when more than `max_outside` of the finite targets fall outside the attainable range of the final op
/// (closed bounds, so 0/1 masks pass a sigmoid).
///
/// # Fix
/// Match the head to the targets: sigmoid for [0, 1], tanh for [-1, 1], no activation for unbounded targets;
/// or rescale the targets (divide 0..255 images by 255).
#[derive(Serialize, ViolationMetadata)]
#[kind(id = "output-range/targets-outside-range", grade = error)]
#[kind(example(args = "--model fixtures/models/head_sigmoid.pt --data fixtures/data/targets_pm1.npz", severity = error, message = "sigmoid output lies in [0, 1] but 50.1% of the targets fall outside it (targets span [-0.998, 0.999])"))]
pub struct TargetsOutsideRange {
    #[serde(flatten)]
    pub range: RangeEvidence,
    pub share_outside: f64,
}

impl Violation for TargetsOutsideRange {
    fn message(&self) -> String {
        let r = &self.range;
        format!(
            "{} output lies in {} but {}% of the targets fall outside it (targets span [{}, {}])",
            r.activation,
            r.range().describe(),
            num(self.share_outside * 100.0),
            num(r.target_min),
            num(r.target_max)
        )
    }
    fn help(&self) -> String {
        let r = &self.range;
        let tol = 1e-6 * (r.target_max - r.target_min).abs().max(1.0);
        if r.target_max > 2.0 && r.target_min >= 0.0 && r.range_high <= 1.0 {
            "the targets look like 0..255 pixels: divide them by 255, or drop the output activation"
                .to_string()
        } else if r.target_min < 0.0 && r.target_min >= -1.0 - tol && r.target_max <= 1.0 + tol {
            format!(
                "targets in [-1, 1] need tanh (or no activation), not {}",
                r.activation
            )
        } else {
            format!(
                "remove the final {}, or rescale the targets into {}",
                r.activation,
                r.range().describe()
            )
        }
    }
}

/// A bounded output activation whose targets use only part of its range
///
/// # Why
/// A tanh for targets in [0, 1] wastes half its range and pushes targets at 0 into the saturated tail, where
/// gradients vanish; learning the edge values is slow.
///
/// # How
/// Warning when the targets of a bounded head (not softmax) span at most `min_used_span` of the attainable
/// range.
///
/// # Fix
/// Use the activation whose range the targets fill (sigmoid for [0, 1]), or rescale the targets to cover the
/// head's range.
#[derive(Serialize, ViolationMetadata)]
#[kind(id = "output-range/wasted-range", grade = warning)]
#[kind(example(args = "--model fixtures/models/head_tanh.pt --data fixtures/data/targets_01.npz", severity = warning, message = "tanh output spans [-1, 1] but the targets only use [0, 1] (50% of it): the rest is wasted and targets at the edge sit in the saturated tail"))]
pub struct WastedRange {
    #[serde(flatten)]
    pub range: RangeEvidence,
    pub used_span: f64,
}

impl Violation for WastedRange {
    fn message(&self) -> String {
        let r = &self.range;
        format!(
            "{} output spans {} but the targets only use [{}, {}] ({}% of it): the rest is wasted and targets \
at the edge sit in the saturated tail",
            r.activation,
            r.range().describe(),
            num(r.target_min),
            num(r.target_max),
            num(self.used_span * 100.0)
        )
    }
    fn help(&self) -> String {
        let r = &self.range;
        if r.activation == "tanh" && r.target_min >= 0.0 {
            "use sigmoid for targets in [0, 1], or rescale the targets to [-1, 1]".to_string()
        } else {
            format!(
                "rescale the targets to cover {}, or pick a head that matches them",
                r.range().describe()
            )
        }
    }
}

fn min_max(t: &Tensor) -> Result<(f64, f64), crate::CheckError> {
    let t = t.f_to_kind(Kind::Double)?;
    let finite = t.f_masked_select(&t.f_isfinite()?)?;
    if finite.numel() == 0 {
        return Ok((f64::NAN, f64::NAN));
    }
    Ok((
        finite.f_min()?.f_double_value(&[])?,
        finite.f_max()?.f_double_value(&[])?,
    ))
}

impl Check for OutputRange {
    type Options = OutputRangeOptions;

    const INFO: &'static CheckInfo = &INFO;

    fn run(&self, ctx: &Context, options: &OutputRangeOptions) -> CheckOutput {
        let (model, data) = (ctx.model()?, ctx.data()?);
        let prediction = ctx.prediction()?;
        let target_at = Location::data(&data.target_key, None);
        // Classes are counted for the losses that index logits by class (cross_entropy, nll); with bce
        // each target belongs to its own output, so one logit for a binary task is right (issue 23).
        if ctx.setup.resolved_task(Some(data)) == Task::Classification
            && ctx.setup.resolved_loss(Some(data)).is_classification()
        {
            if prediction.dim() < 2 {
                return Err(CheckError::skip(
                    "classification output has no class dimension",
                ));
            }
            let logits = prediction.size()[1];
            let probabilities =
                data.targets_are_probabilities() && data.targets.dim() == prediction.dim();
            if !probabilities {
                // Float targets with a class dim that are not probabilities: no classes to count.
                let loss = ctx.setup.resolved_loss(Some(data));
                if let Some(reason) = data.class_probability_problem(loss, prediction) {
                    return Err(CheckError::skip(reason));
                }
            }
            // Class probabilities name their classes by position: K columns are classes 0..K-1.
            let max_class = if probabilities {
                data.targets.size()[1] - 1
            } else {
                data.targets.f_max()?.f_int64_value(&[])?
            };
            if max_class >= logits {
                let v = TooFewLogits {
                    logits,
                    max_class,
                    probabilities,
                };
                return Ok(CheckResult::found(&v, target_at));
            }
            return Ok(CheckResult::passed());
        }
        let activation = model.output_activation()?;
        let Some(range) = output_range(&activation) else {
            return Ok(CheckResult::passed());
        };
        // Confirm on the data and on inputs scaled by 10 (pushes a bounded head to its limits).
        let (obs_lo, obs_hi) = min_max(prediction)?;
        let scaled = if data.inputs.is_floating_point() {
            model.predict(&(&data.inputs * 10.0)).ok()
        } else {
            None
        };
        let (sc_lo, sc_hi) = match &scaled {
            Some(s) => min_max(s)?,
            None => (obs_lo, obs_hi),
        };
        let targets = to_vec(&data.targets)?;
        let finite: Vec<f64> = targets.into_iter().filter(|v| v.is_finite()).collect();
        if finite.is_empty() {
            return Err(CheckError::skip("no finite targets"));
        }
        let (t_lo, t_hi) = crate::stats::min_max(&finite);
        let tol = 1e-6 * (t_hi - t_lo).abs().max(1.0);
        let outside = finite
            .iter()
            .filter(|v| **v < range.lo - tol || **v > range.hi + tol)
            .count();
        let share = outside as f64 / finite.len() as f64;
        let evidence = RangeEvidence {
            activation: activation.op.clone(),
            range_low: range.lo,
            range_high: range.hi,
            target_min: t_lo,
            target_max: t_hi,
            observed_min: obs_lo.min(sc_lo),
            observed_max: obs_hi.max(sc_hi),
        };
        if share > options.max_outside {
            let v = TargetsOutsideRange {
                range: evidence,
                share_outside: share,
            };
            return Ok(CheckResult::found(&v, target_at));
        }
        if range.lo.is_finite() && range.hi.is_finite() && activation.op != "softmax" {
            let used = (t_hi - t_lo) / range.span();
            if used <= options.min_used_span {
                let v = WastedRange {
                    range: evidence,
                    used_span: used,
                };
                return Ok(CheckResult::found(&v, target_at));
            }
        }
        Ok(CheckResult::passed())
    }
}
