//! double-activation: the loss expects logits but gets probabilities, or the other way round.
use super::prelude::*;
use crate::activation::{is_probability, output_range};

pub struct DoubleActivation;

static INFO: CheckInfo = CheckInfo {
    id: "double-activation",
    group: Group::Loss,
    default_level: Level::Deny,
    summary: "The model's final activation and the loss do not apply the same squashing twice (or never)",
    docs: Docs {
        what: "Compares the model's final op (from the TorchScript graph) with the configured loss: \
cross_entropy expects raw logits, bce_with_logits expects raw logits, bce expects probabilities in [0, 1], \
nll expects log-probabilities. Skipped when `setup.loss` is not set.",
        why: "A loss that applies the activation the model already applied (or expects one the model \
never applies) trains a different function from the one intended, usually without any error.",
        details: include_str!("double_activation.md"),
    },
    kinds: &[&SquashedTwice::KIND, &NotProbabilities::KIND, &NotLogProbabilities::KIND],
    ..CheckInfo::PLAIN
};

/// The model ends in softmax / sigmoid and the loss applies log_softmax / sigmoid itself
///
/// # Why
/// cross_entropy applies log_softmax itself: feeding it softmax outputs squashes twice, the gradients shrink
/// by orders of magnitude and training stalls at a high loss. bce_with_logits applies a sigmoid itself: after
/// a sigmoid head the effective output lives in (0.5, 0.73) and cannot fit the targets.
///
/// # How
/// Error when the graph's final op is softmax or sigmoid and the loss is cross_entropy or bce_with_logits.
///
/// # Fix
/// Return raw logits from the model and let the loss apply the activation, or switch to the loss that expects
/// probabilities (bce for a sigmoid head).
#[derive(Serialize, ViolationMetadata)]
#[kind(id = "double-activation/squashed-twice", grade = error)]
#[kind(example(args = "--model fixtures/models/head_softmax.pt --data fixtures/data/targets_cls4.npz --loss cross_entropy", severity = error, message = "the model ends in softmax but the loss is cross_entropy, which applies log_softmax itself: the output is squashed twice"))]
pub struct SquashedTwice {
    pub activation: String,
    pub loss: &'static str,
}

impl Violation for SquashedTwice {
    fn message(&self) -> String {
        let what = if self.loss == "cross_entropy" {
            "log_softmax"
        } else {
            "a sigmoid"
        };
        format!(
            "the model ends in {} but the loss is {}, which applies {what} itself: the output is squashed twice",
            self.activation, self.loss
        )
    }
    fn help(&self) -> String {
        if self.loss == "cross_entropy" {
            format!("remove the final {} and return logits", self.activation)
        } else {
            format!(
                "remove the final {} (keep bce_with_logits), or switch the loss to bce",
                self.activation
            )
        }
    }
}

/// The loss is bce, but the model's output is not bounded to [0, 1]
///
/// # Why
/// bce takes the log of the output and of one minus it: on an unbounded output it is undefined (log of a
/// negative number) and crashes or returns NaN as soon as an output leaves [0, 1].
///
/// # How
/// Error when the loss is bce and the attainable range of the graph's final op is not inside [0, 1] (sigmoid
/// and softmax are; linear, relu, tanh are not).
///
/// # Fix
/// Use bce_with_logits on the raw output (numerically stabler), or end the model with a sigmoid.
#[derive(Serialize, ViolationMetadata)]
#[kind(id = "double-activation/not-probabilities", grade = error)]
#[kind(example(args = "--model fixtures/models/head_linear.pt --data fixtures/data/targets_01.npz --loss bce", severity = error, message = "the loss is bce, which needs probabilities in [0, 1], but the model's output (linear) is not bounded to [0, 1]"))]
pub struct NotProbabilities {
    pub activation: String,
    pub loss: &'static str,
}

impl Violation for NotProbabilities {
    fn message(&self) -> String {
        format!(
            "the loss is bce, which needs probabilities in [0, 1], but the model's output ({}) is not bounded to [0, 1]",
            self.activation
        )
    }
    fn help(&self) -> String {
        "use bce_with_logits on the raw output, or end the model with a sigmoid".to_string()
    }
}

/// The loss is nll, but the model does not end in log_softmax
///
/// # Why
/// nll only picks the output at the target class and negates it: on anything but log-probabilities it has no
/// lower bound, and the model learns to blow that output up.
///
/// # How
/// Error when the loss is nll and the graph's final op is not log_softmax.
///
/// # Fix
/// End the model with log_softmax, or use cross_entropy on raw logits.
#[derive(Serialize, ViolationMetadata)]
#[kind(id = "double-activation/not-log-probabilities", grade = error)]
#[kind(example(args = "--model fixtures/models/head_linear.pt --data fixtures/data/targets_cls4.npz --loss nll", severity = error, message = "the loss is nll, which needs log-probabilities, but the model ends in linear, not log_softmax"))]
pub struct NotLogProbabilities {
    pub activation: String,
    pub loss: &'static str,
}

impl Violation for NotLogProbabilities {
    fn message(&self) -> String {
        format!(
            "the loss is nll, which needs log-probabilities, but the model ends in {}, not log_softmax",
            self.activation
        )
    }
    fn help(&self) -> String {
        "end the model with log_softmax, or use cross_entropy on raw logits".to_string()
    }
}

impl Check for DoubleActivation {
    type Options = NoOptions;

    const INFO: &'static CheckInfo = &INFO;

    fn run(&self, ctx: &Context, _options: &NoOptions) -> CheckOutput {
        let model = ctx.model()?;
        let loss = ctx.setup.loss.ok_or(CheckError::missing(Input::Loss))?;
        let act = model.output_activation()?;
        let activation = act.op.clone();
        let unit_interval = output_range(&act).is_some_and(|r| r.lo >= 0.0 && r.hi <= 1.0);
        let at = Location {
            module: Some("<root>".into()),
            config_key: Some("setup.loss".into()),
            ..Location::default()
        };
        let loss_name = loss.as_str();
        let finding = match loss {
            LossKind::CrossEntropy | LossKind::BceWithLogits if is_probability(&act.op) => {
                Finding::new(
                    &SquashedTwice {
                        activation,
                        loss: loss_name,
                    },
                    at,
                )
            }
            LossKind::Bce if !unit_interval => Finding::new(
                &NotProbabilities {
                    activation,
                    loss: loss_name,
                },
                at,
            ),
            LossKind::Nll if act.op != "log_softmax" => Finding::new(
                &NotLogProbabilities {
                    activation,
                    loss: loss_name,
                },
                at,
            ),
            _ => return Ok(CheckResult::passed()),
        };
        Ok(CheckResult::with_findings(vec![finding]))
    }
}
