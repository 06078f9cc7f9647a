//! output-range: the output activation can reach the targets, and does not waste half its range.
use tch::{Kind, Tensor};

use crate::activation::output_range;
use crate::finding::{num, Finding, Location};
use crate::options::{OptionSpec, Options};
use crate::ports::Task;
use crate::train::to_vec;
use crate::{Check, CheckInfo, CheckOutput, CheckResult, Context, Docs, Group, Level};

pub struct OutputRange;

const ID: &str = "output-range";

static INFO: CheckInfo = CheckInfo {
    id: ID,
    group: Group::Model,
    default_level: Level::Deny,
    summary: "The output activation's range matches the targets' range (and the logits cover every class)",
    docs: Docs {
        what: "Reads the model's final op from the TorchScript graph (sigmoid, tanh, softmax, log_softmax, \
relu, softplus, hardtanh / clamp with their bounds, or none), confirms its range on the data and on 10× \
scaled inputs, and compares it with the range of the targets. For classification it compares the number \
of logits with the classes in the targets.",
        why: "A sigmoid cannot output -0.5 and a relu cannot output a negative number: when targets lie \
outside the attainable range the loss can never reach zero, gradients saturate at the boundary and the \
model looks under-powered when it is mis-specified (images in 0..255 against a sigmoid, [-1, 1] \
normalised images against a sigmoid). A tanh for targets in [0, 1] wastes half its range and pushes \
targets at 0 into the saturated tail. Fewer logits than classes make some labels impossible (and crash \
cross_entropy).",
        how: "Error when more than `max_outside` of the targets fall outside the attainable range \
(closed bounds, so 0/1 masks pass a sigmoid). Warning when a bounded activation's targets use at most \
`min_used_span` of its span. Classification: error when the largest class index ≥ the number of logits \
(dim 1 of the output). Unbounded outputs (a linear or conv head) always pass.",
        example: "error[output-range] sigmoid output lies in [0, 1] but 50.1% of the targets fall outside \
it (targets span [-0.998, 0.999])",
        fix: "Match the head to the targets: sigmoid for [0, 1], tanh for [-1, 1], no activation for \
unbounded targets; or rescale the targets (divide 0..255 images by 255). Give the classifier one logit per \
class.",
    },
    options: &[
        OptionSpec::float("max_outside", 0.0, "Share of targets allowed outside the attainable range"),
        OptionSpec::float(
            "min_used_span",
            0.5,
            "A bounded head whose targets use at most this share of its range is a warning",
        ),
    ],
    trains: false,
};

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
    fn info(&self) -> &'static CheckInfo {
        &INFO
    }

    fn run(&self, ctx: &Context, options: &Options) -> CheckOutput {
        let (Some(model), Some(data)) = (ctx.model, ctx.data) else {
            return Ok(CheckResult::skipped("needs a model and data"));
        };
        let prediction = ctx.prediction()?;
        let target_at = Location::data(&data.target_key, None);
        if ctx.setup.resolved_task(Some(data)) == Task::Classification {
            if prediction.dim() < 2 {
                return Ok(CheckResult::skipped(
                    "classification output has no class dimension",
                ));
            }
            let logits = prediction.size()[1];
            let max_class = data.targets.f_max()?.f_int64_value(&[])?;
            if max_class >= logits {
                return Ok(CheckResult::with_findings(vec![Finding::error(
                    ID,
                    format!(
                        "the model outputs {logits} logits but the targets hold class indices up to {max_class} \
({} classes): {} classes can never be predicted",
                        max_class + 1,
                        max_class + 1 - logits
                    ),
                )
                .at(target_at)
                .help(format!("give the final layer {} outputs (one per class)", max_class + 1))
                .evidence("logits", logits)
                .evidence("max_class", max_class)]));
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
            return Ok(CheckResult::skipped("no finite targets"));
        }
        let (t_lo, t_hi) = finite
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
                (a.min(*v), b.max(*v))
            });
        let tol = 1e-6 * (t_hi - t_lo).abs().max(1.0);
        let outside = finite
            .iter()
            .filter(|v| **v < range.lo - tol || **v > range.hi + tol)
            .count();
        let share = outside as f64 / finite.len() as f64;
        let op = &activation.op;
        let evidence = |f: Finding| {
            f.at(target_at.clone())
                .evidence("activation", op.as_str())
                .evidence("range_low", range.lo)
                .evidence("range_high", range.hi)
                .evidence("target_min", t_lo)
                .evidence("target_max", t_hi)
                .evidence("observed_min", obs_lo.min(sc_lo))
                .evidence("observed_max", obs_hi.max(sc_hi))
        };
        if share > options.f64("max_outside") {
            let help = if t_hi > 2.0 && t_lo >= 0.0 && range.hi <= 1.0 {
                "the targets look like 0..255 pixels: divide them by 255, or drop the output activation".to_string()
            } else if t_lo < 0.0 && t_lo >= -1.0 - tol && t_hi <= 1.0 + tol {
                format!("targets in [-1, 1] need tanh (or no activation), not {op}")
            } else {
                format!(
                    "remove the final {op}, or rescale the targets into {}",
                    range.describe()
                )
            };
            return Ok(CheckResult::with_findings(vec![evidence(Finding::error(
                ID,
                format!(
                    "{op} output lies in {} but {}% of the targets fall outside it (targets span [{}, {}])",
                    range.describe(),
                    num(share * 100.0),
                    num(t_lo),
                    num(t_hi)
                ),
            ))
            .help(help)
            .evidence("share_outside", share)]));
        }
        if range.lo.is_finite() && range.hi.is_finite() && op != "softmax" {
            let used = (t_hi - t_lo) / range.span();
            if used <= options.f64("min_used_span") {
                return Ok(CheckResult::with_findings(vec![evidence(Finding::warning(
                    ID,
                    format!(
                        "{op} output spans {} but the targets only use [{}, {}] ({}% of it): the rest is wasted \
and targets at the edge sit in the saturated tail",
                        range.describe(),
                        num(t_lo),
                        num(t_hi),
                        num(used * 100.0)
                    ),
                ))
                .help(if op == "tanh" && t_lo >= 0.0 {
                    "use sigmoid for targets in [0, 1], or rescale the targets to [-1, 1]".to_string()
                } else {
                    format!("rescale the targets to cover {}, or pick a head that matches them", range.describe())
                })
                .evidence("used_span", used)]));
            }
        }
        Ok(CheckResult::passed())
    }
}
