//! Training helpers shared by the checks that train an in-memory copy: the configured loss, libtorch's
//! own optimizers over the copy's parameters, and a fit loop that records the curve.
use tch::{COptimizer, Kind, Reduction, Tensor};

use crate::ports::{LossKind, Mode, OptimizerKind, TrainableModel};
use crate::CheckError;

/// The loss between a prediction and its target, as PyTorch's functional losses compute it.
pub fn loss(kind: LossKind, prediction: &Tensor, target: &Tensor) -> Result<Tensor, CheckError> {
    let t = || target.to_kind(prediction.kind());
    let none: Option<&Tensor> = None;
    Ok(match kind {
        LossKind::Mse => prediction.f_mse_loss(&t(), Reduction::Mean)?,
        LossKind::L1 => prediction.f_l1_loss(&t(), Reduction::Mean)?,
        LossKind::SmoothL1 => prediction.f_smooth_l1_loss(&t(), Reduction::Mean, 1.0)?,
        LossKind::Bce => prediction.f_binary_cross_entropy(&t(), none, Reduction::Mean)?,
        LossKind::BceWithLogits => {
            prediction.f_binary_cross_entropy_with_logits(&t(), none, none, Reduction::Mean)?
        }
        LossKind::CrossEntropy => prediction.f_cross_entropy_loss(
            &target.to_kind(Kind::Int64),
            none,
            Reduction::Mean,
            -100,
            0.0,
        )?,
        LossKind::Nll => {
            prediction.f_nll_loss(&target.to_kind(Kind::Int64), none, Reduction::Mean, -100)?
        }
    })
}

/// libtorch's optimizer of the configured kind over every parameter of `model`.
pub fn optimizer(
    model: &dyn TrainableModel,
    kind: OptimizerKind,
    lr: f64,
    momentum: f64,
    weight_decay: f64,
) -> Result<COptimizer, CheckError> {
    let mut opt = match kind {
        OptimizerKind::Sgd => COptimizer::sgd(lr, momentum, 0.0, weight_decay, false)?,
        OptimizerKind::Adam => COptimizer::adam(lr, 0.9, 0.999, weight_decay, 1e-8, false)?,
        OptimizerKind::AdamW => COptimizer::adamw(lr, 0.9, 0.999, weight_decay, 1e-8, false)?,
    };
    for (_, p) in model.parameters()? {
        if p.requires_grad() {
            opt.add_parameters(&p, 0)?;
        }
    }
    Ok(opt)
}

/// One optimisation step on (inputs, targets); returns the loss before the step.
pub fn step(
    model: &mut dyn TrainableModel,
    opt: &COptimizer,
    loss_kind: LossKind,
    inputs: &Tensor,
    targets: &Tensor,
    mode: Mode,
) -> Result<f64, CheckError> {
    opt.zero_grad()?;
    let prediction = model.forward(inputs, mode)?;
    let l = loss(loss_kind, &prediction, targets)?;
    let value = l.f_double_value(&[])?;
    if l.requires_grad() {
        l.f_backward()?;
    }
    opt.step()?;
    Ok(value)
}

/// The loss of `model` on a fixed batch, without gradients, in eval mode.
pub fn evaluate(
    model: &mut dyn TrainableModel,
    loss_kind: LossKind,
    inputs: &Tensor,
    targets: &Tensor,
) -> Result<f64, CheckError> {
    let _guard = tch::no_grad_guard();
    let prediction = model.forward(inputs, Mode::Eval)?;
    Ok(loss(loss_kind, &prediction, targets)?.f_double_value(&[])?)
}

/// The L2 norm of every parameter's gradient after a backward pass, by name (0 when none arrived).
pub fn gradient_norms(model: &dyn TrainableModel) -> Result<Vec<(String, f64)>, CheckError> {
    let mut out = Vec::new();
    for (name, p) in model.parameters()? {
        let g = p.grad();
        let norm = if g.defined() {
            g.f_norm()?.f_double_value(&[])?
        } else {
            0.0
        };
        out.push((name, norm));
    }
    Ok(out)
}

/// Float32 copy of a tensor's values, flattened (for statistics in Rust).
pub fn to_vec(t: &Tensor) -> Result<Vec<f64>, CheckError> {
    let flat = t
        .f_to_kind(Kind::Double)?
        .f_flatten(0, -1)?
        .f_to_device(tch::Device::Cpu)?;
    Ok(Vec::<f64>::try_from(&flat)?)
}
