//! double-activation: the loss expects logits but gets probabilities, or the other way round.
use crate::activation::{is_probability, output_range};
use crate::finding::{Finding, Location};
use crate::options::Options;
use crate::ports::LossKind;
use crate::{Check, CheckInfo, CheckOutput, CheckResult, Context, Docs, Group, Level};

pub struct DoubleActivation;

const ID: &str = "double-activation";

static INFO: CheckInfo = CheckInfo {
    id: ID,
    group: Group::Loss,
    default_level: Level::Deny,
    summary: "The model's final activation and the loss do not apply the same squashing twice (or never)",
    docs: Docs {
        what: "Compares the model's final op (from the TorchScript graph) with the configured loss: \
cross_entropy expects raw logits, bce_with_logits expects raw logits, bce expects probabilities in [0, 1], \
nll expects log-probabilities.",
        why: "cross_entropy applies log_softmax itself: feeding it softmax outputs squashes twice, the \
gradients shrink by orders of magnitude and training stalls at a high loss. bce_with_logits applies a \
sigmoid itself: after a sigmoid head the effective output lives in (0.5, 0.73) and cannot fit the \
targets. bce on an unbounded output is undefined (log of a negative number) and crashes or returns NaN. \
nll on anything but log_softmax outputs has no lower bound.",
        how: "Errors: softmax (or sigmoid) output with cross_entropy; sigmoid (or softmax) output with \
bce_with_logits; an output not bounded to [0, 1] with bce; an output other than log_softmax with nll. \
Skipped when `setup.loss` is not set.",
        example: "error[double-activation] the model ends in softmax but the loss is cross_entropy, which \
applies log_softmax itself: the output is squashed twice",
        fix: "Return raw logits from the model and let the loss apply the activation (or switch to the \
loss that expects what the model returns: bce for sigmoid outputs, nll for log_softmax outputs).",
    },
    options: &[],
    trains: false,
};

impl Check for DoubleActivation {
    fn info(&self) -> &'static CheckInfo {
        &INFO
    }

    fn run(&self, ctx: &Context, _options: &Options) -> CheckOutput {
        let Some(model) = ctx.model else {
            return Ok(CheckResult::skipped("no model"));
        };
        let Some(loss) = ctx.setup.loss else {
            return Ok(CheckResult::skipped("setup.loss is not set"));
        };
        let act = model.output_activation()?;
        let op = act.op.as_str();
        let unit_interval = output_range(&act).is_some_and(|r| r.lo >= 0.0 && r.hi <= 1.0);
        let problem = match loss {
            LossKind::CrossEntropy if is_probability(op) => Some((
                format!("the model ends in {op} but the loss is cross_entropy, which applies log_softmax itself: the output is squashed twice"),
                format!("remove the final {op} and return logits"),
            )),
            LossKind::BceWithLogits if is_probability(op) => Some((
                format!("the model ends in {op} but the loss is bce_with_logits, which applies a sigmoid itself: the output is squashed twice"),
                format!("remove the final {op} (keep bce_with_logits), or switch the loss to bce"),
            )),
            LossKind::Bce if !unit_interval => Some((
                format!("the loss is bce, which needs probabilities in [0, 1], but the model's output ({op}) is not bounded to [0, 1]"),
                "use bce_with_logits on the raw output, or end the model with a sigmoid".to_string(),
            )),
            LossKind::Nll if op != "log_softmax" => Some((
                format!("the loss is nll, which needs log-probabilities, but the model ends in {op}, not log_softmax"),
                "end the model with log_softmax, or use cross_entropy on raw logits".to_string(),
            )),
            _ => None,
        };
        Ok(match problem {
            Some((message, help)) => CheckResult::with_findings(vec![Finding::error(ID, message)
                .at(Location {
                    module: Some("<root>".into()),
                    config_key: Some("setup.loss".into()),
                    ..Location::default()
                })
                .help(help)
                .evidence("activation", op)
                .evidence("loss", loss.as_str())]),
            None => CheckResult::passed(),
        })
    }
}
