//! gradient-flow: every trainable parameter receives a gradient from the loss.
use super::prelude::*;
use crate::ports::{OptimizerKind, TrainableModel};
use crate::train;

pub struct GradientFlow;

static INFO: CheckInfo = CheckInfo {
    id: "gradient-flow",
    group: Group::Gradient,
    default_level: Level::Deny,
    summary: "Every trainable parameter receives a gradient from the loss",
    docs: Docs {
        what: "Runs one forward and backward pass of the configured loss on the first `batch` samples, in \
train mode, on a copy of the model, and looks at the gradient of every trainable parameter. Frozen \
parameters (requires_grad = false) are not judged, nor are parameters forward never reads (those are \
`unused-parameters` findings). NaN / Inf gradients are the `nonfinite` check's finding: when any gradient \
is non-finite, gradient-flow does not judge zero gradients on that pass.",
        why: "A parameter that no gradient reaches never trains; the bug hides behind a loss that still \
falls.",
        details: include_str!("gradient_flow.md"),
    },
    kinds: &[&NoGradient::KIND, &ZeroGradient::KIND],
    needs: &[Need::TrainModeBatch, Need::Loss],
    ..CheckInfo::PLAIN
};

/// Options of gradient-flow.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct GradientFlowOptions {
    /// Samples in the forward/backward pass.
    #[schemars(range(min = 1))]
    pub batch: usize,
}

impl Default for GradientFlowOptions {
    fn default() -> Self {
        GradientFlowOptions { batch: 32 }
    }
}

/// Parameter names for a message: the first 8, a count of the rest, and their modules.
fn list(names: &[String]) -> String {
    let mut modules: Vec<String> = names
        .iter()
        .map(|n| crate::finding::display_module(n.rsplit_once('.').map(|(m, _)| m).unwrap_or("")))
        .collect();
    modules.dedup();
    format!(
        "{} (module{} {})",
        crate::finding::first_of(names, 8),
        if modules.len() == 1 { "" } else { "s" },
        modules.join(", ")
    )
}

/// Trainable parameters get no gradient from the loss, so they never train
///
/// # Why
/// A parameter that no gradient reaches never trains: a layer defined but forgotten in forward, a branch cut
/// off by .detach() or .item(), a module used only under torch.no_grad(). The loss still falls (the rest of
/// the model trains), so the bug hides for a whole run.
///
/// # How
/// Error for trainable parameters whose gradient is undefined after backward (no autograd path from the
/// loss), listed by module; when the loss itself has no graph, every trainable parameter is named.
///
/// # Fix
/// Call every layer you define in forward (or delete it), and remove .detach() / .item() / torch.no_grad()
/// from the path between the parameters and the loss.
#[derive(Serialize, ViolationMetadata)]
#[kind(id = "gradient-flow/no-gradient", grade = error)]
#[kind(example(args = "--model fixtures/models/partly_detached.pt --data fixtures/data/regression.npz", severity = error, message = "2 of 4 trainable parameters get no gradient from the loss, so they never train: body.weight, body.bias (module body)"))]
pub struct NoGradient {
    pub no_gradient: Vec<String>,
    pub trainable: usize,
    /// The loss does not depend on any parameter at all.
    #[serde(skip)]
    pub loss_detached: Option<&'static str>,
}

impl Violation for NoGradient {
    fn message(&self) -> String {
        match self.loss_detached {
            Some(loss) => format!(
                "none of the {} trainable parameters gets a gradient: the {loss} loss does not depend on them \
(the output is detached or constant)",
                self.trainable
            ),
            None => format!(
                "{} of {} trainable parameters get no gradient from the loss, so they never train: {}",
                self.no_gradient.len(),
                self.trainable,
                list(&self.no_gradient)
            ),
        }
    }
    fn help(&self) -> String {
        "call every layer you define in forward (or delete it), and remove .detach() / .item() / \
torch.no_grad() between it and the loss"
            .to_string()
    }
}

/// Whole weight tensors get an exactly zero gradient on the sample batch
///
/// # Why
/// A weight whose every entry gets exactly zero gradient does not move: its path to the loss is multiplied by
/// 0 or saturated (a dead branch), even though autograd reaches it.
///
/// # How
/// Warning for weight tensors with more than one entry whose gradient norm is exactly 0 after one backward
/// pass and still exactly 0 after one SGD step (lr `setup.lr`) on the copy and a second backward pass. The
/// second look spares the branches gated by a zero-initialised parameter, whose weights get a zero gradient
/// on the first pass only: torchvision's zero_init_residual (γ = 0 in the last BatchNorm of each residual
/// block) and zero-initialised output layers (ViT's head). Dead ReLU units, which zero some entries only, are
/// not flagged.
///
/// # Fix
/// Check for a multiplication by 0 or a saturated activation on their path.
#[derive(Serialize, ViolationMetadata)]
#[kind(id = "gradient-flow/zero-gradient", grade = warning)]
#[kind(example(args = "--model fixtures/models/classifier_zero_logits.pt --data fixtures/data/classes4.npz", severity = warning, message = "2 weight tensors get an exactly zero gradient on this batch: fc1.weight, fc2.weight (modules fc1, fc2)"))]
pub struct ZeroGradient {
    pub zero_gradient: Vec<String>,
    pub loss: f64,
}

impl Violation for ZeroGradient {
    fn message(&self) -> String {
        format!(
            "{} weight tensors get an exactly zero gradient on this batch: {}",
            self.zero_gradient.len(),
            list(&self.zero_gradient)
        )
    }
    fn help(&self) -> String {
        "check for a multiplication by 0 or a saturated activation on their path".to_string()
    }
}

/// The parameters among `zero` whose gradient is still exactly zero after one SGD step (lr `lr`, from
/// the gradients of the first backward pass) and a second forward / backward pass.
fn still_zero_after_a_step(
    model: &mut dyn TrainableModel,
    zero: Vec<String>,
    loss_kind: LossKind,
    x: &tch::Tensor,
    y: &tch::Tensor,
    lr: f64,
) -> Result<Vec<String>, CheckError> {
    let opt = train::optimizer(model, OptimizerKind::Sgd, lr, 0.0, 0.0)?;
    opt.step()?;
    opt.zero_grad()?;
    let prediction = model.forward(x, Mode::Train)?;
    let loss = train::loss(loss_kind, &prediction, y)?;
    if loss.requires_grad() {
        loss.f_backward()?;
    }
    let norms = train::gradient_norms(model)?;
    Ok(zero
        .into_iter()
        .filter(|name| {
            norms
                .iter()
                .find(|(n, _)| n == name)
                .is_none_or(|(_, g)| *g == 0.0)
        })
        .collect())
}

impl Check for GradientFlow {
    type Options = GradientFlowOptions;

    const INFO: &'static CheckInfo = &INFO;

    fn run(&self, ctx: &Context, options: &GradientFlowOptions) -> CheckOutput {
        let (model, data) = (ctx.model()?, ctx.data()?);
        let n = data.len().min(options.batch).max(1) as i64;
        let device = model.device();
        let x = data.inputs.f_narrow(0, 0, n)?.f_to_device(device)?;
        let y = data.targets.f_narrow(0, 0, n)?.f_to_device(device)?;
        let loss_kind = ctx.setup.resolved_loss(Some(data));
        // The graph first: a large model's copy takes its place in memory, and reading the model
        // after that loads it again.
        let graph = model.module_graph(None);
        let mut copy = model.trainable_copy()?;
        let params = copy.parameters()?;
        // Parameters forward never reads are unused-parameters' findings (one root cause, one finding).
        let unused = match graph {
            Ok(graph) => crate::rules::unused_parameters::unused_trainable(&graph, &params)
                .into_values()
                .flatten()
                .map(|(name, _)| name)
                .collect(),
            Err(_) => Vec::new(),
        };
        let trainable: Vec<&(String, tch::Tensor)> = params
            .iter()
            .filter(|(n, p)| p.requires_grad() && !unused.contains(n))
            .collect();
        if trainable.is_empty() {
            return Err(CheckError::skip("the model has no trainable parameters"));
        }
        let prediction = copy.forward(&x, Mode::Train)?;
        let loss = train::loss(loss_kind, &prediction, &y)?;
        let at = |names: &[String]| Location::parameter(names.first().map_or("", String::as_str));
        if !loss.requires_grad() {
            let v = NoGradient {
                no_gradient: trainable.iter().map(|(n, _)| n.clone()).collect(),
                trainable: trainable.len(),
                loss_detached: Some(loss_kind.as_str()),
            };
            return Ok(CheckResult::found(&v, at(&v.no_gradient)));
        }
        loss.f_backward()?;
        let (mut missing, mut non_finite, mut zero) = (Vec::new(), Vec::new(), Vec::new());
        let mut curve = Curve::new("gradient norm per parameter", Vec::new());
        curve.log_scale = true;
        for (name, p) in &trainable {
            let g = p.grad();
            if !g.defined() {
                missing.push(name.clone());
                continue;
            }
            let norm = g.f_norm()?.f_double_value(&[])?;
            curve.x.push(curve.y.len() as f64);
            curve.y.push(norm);
            curve.labels.push(name.clone());
            if !norm.is_finite() {
                non_finite.push(name.clone());
            } else if norm == 0.0 && name.ends_with("weight") && p.numel() > 1 {
                zero.push(name.clone());
            }
        }
        // A branch gated by a zero-initialised parameter (zero_init_residual's γ = 0, a zero head) gets a
        // zero gradient on the first pass only: judge the weights again after one SGD step.
        if !non_finite.is_empty() {
            // A NaN / Inf gradient is `nonfinite`'s finding, and an SGD step with it would make every
            // weight NaN: the zero gradients of this pass are not judged.
            zero.clear();
        } else if !zero.is_empty() {
            zero = still_zero_after_a_step(copy.as_mut(), zero, loss_kind, &x, &y, ctx.setup.lr)?;
        }
        let mut findings = Vec::new();
        if !missing.is_empty() {
            let v = NoGradient {
                no_gradient: missing,
                trainable: trainable.len(),
                loss_detached: None,
            };
            findings.push(Finding::new(&v, at(&v.no_gradient)));
        }
        if !zero.is_empty() {
            let v = ZeroGradient {
                zero_gradient: zero,
                loss: loss.f_double_value(&[])?,
            };
            findings.push(Finding::new(&v, at(&v.zero_gradient)));
        }
        Ok(CheckResult::with_findings(findings).curve(curve))
    }
}
