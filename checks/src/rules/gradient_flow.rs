//! gradient-flow: every trainable parameter receives a finite gradient from the loss.
use crate::finding::{Finding, Location};
use crate::options::{OptionSpec, Options};
use crate::ports::Mode;
use crate::train;
use crate::{Check, CheckInfo, CheckOutput, CheckResult, Context, Curve, Docs, Group, Level};

pub struct GradientFlow;

const ID: &str = "gradient-flow";

static INFO: CheckInfo = CheckInfo {
    id: ID,
    group: Group::Gradient,
    default_level: Level::Deny,
    summary: "Every trainable parameter receives a finite gradient from the loss",
    docs: Docs {
        what: "Runs one forward and backward pass of the configured loss on a batch of the sample, on a \
copy of the model, and looks at the gradient of every trainable parameter.",
        why: "A parameter that no gradient reaches never trains: a layer defined but forgotten in \
forward, a branch cut off by .detach() or .item(), a module used only under torch.no_grad(). The loss \
still falls (the rest of the model trains), so the bug hides for a whole run. A NaN or Inf gradient \
poisons every parameter at the first optimizer step.",
        how: "Error for trainable parameters whose gradient is undefined after backward (no autograd \
path from the loss), listed by module; error for non-finite gradients; warning for whole weight \
tensors whose gradient is exactly zero (e.g. multiplied by 0). Frozen parameters (requires_grad = \
false) are not judged. Dead ReLU units, which give zero gradients to some entries only, are not \
flagged. The batch is the first `batch` samples, in train mode.",
        example: "error[gradient-flow] 2 of 6 trainable parameters get no gradient from the loss, so they \
never train: aux.weight, aux.bias (module aux)",
        fix: "Call every layer you define in forward (or delete it), and remove .detach() / .item() / \
torch.no_grad() from the path between the parameters and the loss; check the inputs and the loss for \
NaN / Inf.",
    },
    options: &[OptionSpec::int("batch", 32, "Samples in the forward/backward pass")],
    trains: false,
};

impl Check for GradientFlow {
    fn info(&self) -> &'static CheckInfo {
        &INFO
    }

    fn run(&self, ctx: &Context, options: &Options) -> CheckOutput {
        let (Some(model), Some(data)) = (ctx.model, ctx.data) else {
            return Ok(CheckResult::skipped("needs a model and data"));
        };
        let n = data.len().min(options.usize("batch")).max(1) as i64;
        let device = model.device();
        let x = data.inputs.f_narrow(0, 0, n)?.f_to_device(device)?;
        let y = data.targets.f_narrow(0, 0, n)?.f_to_device(device)?;
        let loss_kind = ctx.setup.resolved_loss(Some(data));
        let mut copy = model.trainable_copy()?;
        let params = copy.parameters()?;
        let trainable: Vec<&(String, tch::Tensor)> =
            params.iter().filter(|(_, p)| p.requires_grad()).collect();
        if trainable.is_empty() {
            return Ok(CheckResult::skipped(
                "the model has no trainable parameters",
            ));
        }
        let prediction = copy.forward(&x, Mode::Train)?;
        let loss = train::loss(loss_kind, &prediction, &y)?;
        let at = |names: &[&str]| {
            let first = names.first().copied().unwrap_or("");
            Location::parameter(first)
        };
        if !loss.requires_grad() {
            let names: Vec<&str> = trainable.iter().map(|(n, _)| n.as_str()).collect();
            return Ok(CheckResult::with_findings(vec![Finding::error(
                ID,
                format!(
                    "none of the {} trainable parameters gets a gradient: the {} loss does not depend on them \
(the output is detached or constant)",
                    trainable.len(),
                    loss_kind.as_str()
                ),
            )
            .at(at(&names))
            .help("remove .detach() / .item() / torch.no_grad() from the path between the parameters and the output")
            .evidence("no_gradient", names.len())]));
        }
        loss.f_backward()?;
        let (mut missing, mut non_finite, mut zero) = (Vec::new(), Vec::new(), Vec::new());
        let mut curve = Curve::new("gradient norm per parameter", Vec::new());
        curve.log_scale = true;
        for (name, p) in &trainable {
            let g = p.grad();
            if !g.defined() {
                missing.push(name.as_str());
                continue;
            }
            let norm = g.f_norm()?.f_double_value(&[])?;
            curve.x.push(curve.y.len() as f64);
            curve.y.push(norm);
            curve.labels.push(name.clone());
            if !norm.is_finite() {
                non_finite.push(name.as_str());
            } else if norm == 0.0 && name.ends_with("weight") && p.numel() > 1 {
                zero.push(name.as_str());
            }
        }
        let list = |names: &[&str]| {
            let mut modules: Vec<String> = names
                .iter()
                .map(|n| {
                    crate::finding::display_module(n.rsplit_once('.').map(|(m, _)| m).unwrap_or(""))
                })
                .collect();
            modules.dedup();
            let shown: Vec<&str> = names.iter().take(8).copied().collect();
            let more = if names.len() > 8 {
                format!(" and {} more", names.len() - 8)
            } else {
                String::new()
            };
            format!(
                "{}{more} (module{} {})",
                shown.join(", "),
                if modules.len() == 1 { "" } else { "s" },
                modules.join(", ")
            )
        };
        let mut findings = Vec::new();
        if !missing.is_empty() {
            findings.push(
                Finding::error(
                    ID,
                    format!(
                        "{} of {} trainable parameters get no gradient from the loss, so they never train: {}",
                        missing.len(),
                        trainable.len(),
                        list(&missing)
                    ),
                )
                .at(at(&missing))
                .help("call every layer you define in forward (or delete it), and remove .detach() / .item() / torch.no_grad() between it and the loss")
                .evidence("no_gradient", missing.iter().map(|s| s.to_string()).collect::<Vec<_>>()),
            );
        }
        if !non_finite.is_empty() {
            findings.push(
                Finding::error(ID, format!("{} parameters get NaN or Inf gradients: {}", non_finite.len(), list(&non_finite)))
                    .at(at(&non_finite))
                    .help("look for NaN / Inf in the inputs, log(0) or division by zero in forward, or an exploding loss")
                    .evidence("non_finite", non_finite.iter().map(|s| s.to_string()).collect::<Vec<_>>()),
            );
        }
        if !zero.is_empty() {
            findings.push(
                Finding::warning(
                    ID,
                    format!(
                        "{} weight tensors get an exactly zero gradient on this batch: {}",
                        zero.len(),
                        list(&zero)
                    ),
                )
                .at(at(&zero))
                .help("check for a multiplication by 0 or a saturated activation on their path")
                .evidence(
                    "zero_gradient",
                    zero.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
                )
                .evidence("loss", loss.f_double_value(&[])?),
            );
        }
        Ok(CheckResult::with_findings(findings).curve(curve))
    }
}
