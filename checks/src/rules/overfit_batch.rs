//! overfit-batch: the model can overfit one small batch of the real targets.
use tch::{Kind, Tensor};

use crate::finding::{num, Finding, Location};
use crate::options::{OptionSpec, Options};
use crate::ports::Task;
use crate::train;
use crate::{Check, CheckInfo, CheckOutput, CheckResult, Context, Curve, Docs, Group, Level};

pub struct OverfitBatch;

const ID: &str = "overfit-batch";

static INFO: CheckInfo = CheckInfo {
    id: ID,
    group: Group::Fit,
    default_level: Level::Deny,
    summary: "The model can overfit one small batch of the real targets",
    docs: Docs {
        what: "Trains an in-memory copy of the model on `samples` samples of the real data and targets with \
the configured loss and Adam, and reports whether it can memorise them.",
        why: "Overfitting a single batch is the first sanity check of every training setup (Karpathy's \
recipe): a model that cannot memorise 16 samples has a bug between the output and the loss (detached \
logits, logits multiplied by 0, wrong target format) or far too little capacity, and more data or more \
steps will not fix it.",
        how: "Adam (lr `lr`) for up to `steps` steps on a fixed batch, stopping early once the loss is ≤ \
`loss_ratio` × its initial value and, for classification, the batch accuracy is 100%. Failing: the \
curve's start and end, the accuracy, and the cause when the gradients tell it (no gradient reaches the \
parameters).",
        example: "error[overfit-batch] the model cannot overfit 16 samples: the loss went from 1.39 to 1.39 \
(0% lower; needs ≤ 5% of the start) in 0 steps; batch accuracy 25%. Likely cause: no gradient reaches \
the parameters: all 4 parameters got a zero gradient (the output path is detached, multiplied by 0, or \
constant)",
        fix: "Make the loss depend on the parameters (no .detach() or multiplication by 0 on the output), \
check the target format against the loss, and give the model enough capacity.",
    },
    options: &[
        OptionSpec::int("samples", 16, "Samples in the batch"),
        OptionSpec::int("steps", 500, "Most Adam steps"),
        OptionSpec::float("lr", 1e-3, "Adam learning rate"),
        OptionSpec::float("loss_ratio", 0.05, "Loss to reach, as a share of the initial loss"),
    ],
    trains: true,
};

fn accuracy(prediction: &Tensor, targets: &Tensor) -> f64 {
    prediction
        .f_argmax(1, false)
        .and_then(|p| p.f_eq_tensor(targets))
        .and_then(|eq| eq.f_to_kind(Kind::Double))
        .and_then(|eq| eq.f_mean(Kind::Double))
        .and_then(|m| m.f_double_value(&[]))
        .unwrap_or(0.0)
}

impl Check for OverfitBatch {
    fn info(&self) -> &'static CheckInfo {
        &INFO
    }

    fn run(&self, ctx: &Context, options: &Options) -> CheckOutput {
        let (Some(model), Some(data)) = (ctx.model, ctx.data) else {
            return Ok(CheckResult::skipped("needs a model and data"));
        };
        let classification = ctx.setup.resolved_task(Some(data)) == Task::Classification;
        let loss_kind = ctx.setup.resolved_loss(Some(data));
        let k = data.len().min(options.usize("samples")).max(1) as i64;
        let device = model.device();
        let x = data.inputs.f_narrow(0, 0, k)?.f_to_device(device)?;
        let y = data.targets.f_narrow(0, 0, k)?.f_to_device(device)?;
        let ratio = options.f64("loss_ratio");
        let initial = std::cell::Cell::new(None::<f64>);
        let last_accuracy = std::cell::Cell::new(0.0);
        let done = |loss: f64, prediction: &Tensor| {
            let start = *initial.get().get_or_insert(loss);
            initial.set(Some(start));
            let acc = if classification {
                accuracy(prediction, &y)
            } else {
                1.0
            };
            last_accuracy.set(acc);
            loss <= ratio * start && acc >= 1.0
        };
        let mut copy = model.trainable_copy()?;
        let fit = train::fit_batch(
            copy.as_mut(),
            &x,
            &y,
            loss_kind,
            options.f64("lr"),
            options.usize("steps"),
            &done,
            ctx.progress,
        )?;
        let mut curve = Curve::new(
            format!("overfit {} loss", loss_kind.as_str()),
            fit.losses.clone(),
        );
        let (start, end) = (
            fit.losses[0],
            *fit.losses.last().expect("at least one step"),
        );
        curve.target = Some(ratio * start);
        curve.log_scale = true;
        if fit.reached {
            return Ok(CheckResult::passed().curve(curve));
        }
        let acc = last_accuracy.get();
        let accuracy_text = if classification {
            format!("; batch accuracy {}%", num(acc * 100.0))
        } else {
            String::new()
        };
        let cause = train::no_gradient_cause(&fit).unwrap_or_else(|| {
            if end > ratio * start {
                "too little capacity, or a mismatch between the output and the targets".to_string()
            } else {
                "the loss fell, but not every sample is classified correctly".to_string()
            }
        });
        let lower = if start != 0.0 {
            100.0 * (1.0 - end / start)
        } else {
            0.0
        };
        curve.window = Some((0.0, (fit.losses.len() - 1) as f64));
        let f = Finding::error(
            ID,
            format!(
                "the model cannot overfit {k} samples: the {} loss went from {} to {} ({}% lower; needs ≤ {}% of the start) \
in {} steps{accuracy_text}. Likely cause: {cause}",
                loss_kind.as_str(),
                num(start),
                num(end),
                num(lower.max(0.0)),
                num(ratio * 100.0),
                fit.losses.len() - 1
            ),
        )
        .at(Location::data(&data.target_key, Some((0, k as usize))))
        .help("make the loss depend on the parameters (no .detach() or ×0 on the output), check the targets' format, add capacity")
        .evidence("loss_start", start)
        .evidence("loss_end", end)
        .evidence("accuracy", acc)
        .evidence("cause", cause.clone());
        Ok(CheckResult::with_findings(vec![f]).curve(curve))
    }
}
