//! SGD, Adam and AdamW with PyTorch's update rules (`torch.optim`, default options: no Nesterov, no
//! dampening, no AMSGrad, L2 weight decay for SGD and Adam, decoupled for AdamW), updating the
//! parameters in place, a chunk of at most [`CHUNK`] elements at a time.
//!
//! Why not libtorch's own optimizers: their Adam step builds `sqrt(v) / sqrt(bias correction)` as two
//! whole-tensor temporaries, so a large layer briefly costs twice its size again on top of the weights,
//! gradients and both moments. Chunked, the step's temporaries stay at a few megabytes whatever the
//! model, which keeps the audit of a 200 MB model under 1 GB.
use tch::Tensor;

use crate::ports::OptimizerKind;
use crate::CheckError;

/// Elements updated at a time (4 MB of f32 per temporary).
pub const CHUNK: i64 = 1 << 20;

pub struct Optimizer {
    kind: OptimizerKind,
    lr: f64,
    momentum: f64,
    weight_decay: f64,
    betas: (f64, f64),
    eps: f64,
    /// Steps taken, for Adam's bias correction.
    steps: i32,
    params: Vec<Slot>,
    /// Elements per update chunk ([`CHUNK`]; smaller in tests).
    chunk: i64,
}

/// One parameter and its state: Adam's two moments, or SGD's momentum buffer (in `first`).
struct Slot {
    param: Tensor,
    first: Option<Tensor>,
    second: Option<Tensor>,
}

impl Optimizer {
    pub fn new(kind: OptimizerKind, lr: f64, momentum: f64, weight_decay: f64) -> Optimizer {
        Optimizer {
            kind,
            lr,
            momentum,
            weight_decay,
            betas: (0.9, 0.999),
            eps: 1e-8,
            steps: 0,
            params: Vec::new(),
            chunk: CHUNK,
        }
    }

    /// Adds a parameter (a tensor sharing storage with the model's).
    pub fn add(&mut self, param: &Tensor) {
        self.params.push(Slot {
            param: param.shallow_clone(),
            first: None,
            second: None,
        });
    }

    /// Zeroes every gradient, as `optimizer.zero_grad(set_to_none=False)` does.
    pub fn zero_grad(&self) -> Result<(), CheckError> {
        for slot in &self.params {
            let mut g = slot.param.grad();
            if g.defined() {
                let _ = g.f_detach_()?;
                let _ = g.f_zero_()?;
            }
        }
        Ok(())
    }

    /// One update from the current gradients; a parameter without a gradient is left alone.
    pub fn step(&mut self) -> Result<(), CheckError> {
        let _guard = tch::no_grad_guard();
        self.steps += 1;
        let (b1, b2) = self.betas;
        let t = self.steps;
        for slot in &mut self.params {
            let grad = slot.param.grad();
            if !grad.defined() {
                continue;
            }
            let p = flat(&slot.param)?;
            let g = grad.f_reshape([-1])?;
            let n = p.numel() as i64;
            let adam = self.kind != OptimizerKind::Sgd;
            if slot.first.is_none() && (adam || self.momentum != 0.0) {
                slot.first = Some(p.f_zeros_like()?);
                if adam {
                    slot.second = Some(p.f_zeros_like()?);
                }
            }
            let mut start = 0;
            while start < n {
                let len = self.chunk.min(n - start);
                let mut pc = p.f_narrow(0, start, len)?;
                let mut gc = g.f_narrow(0, start, len)?.f_to_kind(pc.kind())?;
                let coupled = self.weight_decay != 0.0 && self.kind != OptimizerKind::AdamW;
                if coupled {
                    gc = gc.f_add(&pc.f_mul_scalar(self.weight_decay)?)?;
                }
                match self.kind {
                    OptimizerKind::Sgd => {
                        let update = match &slot.first {
                            Some(buf) => {
                                let mut bc = buf.f_narrow(0, start, len)?;
                                if t == 1 {
                                    bc.f_copy_(&gc)?;
                                } else {
                                    let _ = bc.f_mul_scalar_(self.momentum)?;
                                    let _ = bc.f_add_(&gc)?;
                                }
                                bc
                            }
                            None => gc,
                        };
                        let _ = pc.f_sub_(&update.f_mul_scalar(self.lr)?)?;
                    }
                    OptimizerKind::Adam | OptimizerKind::AdamW => {
                        if self.kind == OptimizerKind::AdamW && self.weight_decay != 0.0 {
                            let _ = pc.f_mul_scalar_(1.0 - self.lr * self.weight_decay)?;
                        }
                        let (Some(m), Some(v)) = (&slot.first, &slot.second) else {
                            return Err(CheckError::Other("Adam state missing".into()));
                        };
                        let mut mc = m.f_narrow(0, start, len)?;
                        let mut vc = v.f_narrow(0, start, len)?;
                        let _ = mc.f_lerp_(&gc, 1.0 - b1)?;
                        let _ = vc.f_mul_scalar_(b2)?;
                        let _ = vc.f_add_(&gc.f_square()?.f_mul_scalar(1.0 - b2)?)?;
                        let bias1 = 1.0 - b1.powi(t);
                        let bias2 = 1.0 - b2.powi(t);
                        let step_size = self.lr / bias1;
                        // denom = sqrt(v) / sqrt(bias2) + eps; p -= step_size · m / denom.
                        let mut denom = vc.f_sqrt()?;
                        let _ = denom.f_div_scalar_(bias2.sqrt())?;
                        let _ = denom.f_add_scalar_(self.eps)?;
                        let _ = denom.f_mul_scalar_(-1.0 / step_size)?;
                        let _ = pc.f_addcdiv_(&mc, &denom)?;
                    }
                }
                start += len;
            }
        }
        Ok(())
    }
}

/// A flat view sharing the parameter's storage (parameters are contiguous; a non-contiguous one is
/// refused rather than silently updated in a copy).
fn flat(param: &Tensor) -> Result<Tensor, CheckError> {
    if !param.is_contiguous() {
        return Err(CheckError::Other(
            "a parameter is not contiguous in memory; the optimizer cannot update it in place"
                .into(),
        ));
    }
    Ok(param.f_view([-1])?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{COptimizer, Device, Kind};

    /// Minimises a fixed quadratic-plus-cross term with both optimizers from the same start and
    /// compares every parameter after a few steps.
    fn same_as_libtorch(kind: OptimizerKind, lr: f64, momentum: f64, wd: f64, numel: i64) {
        tch::manual_seed(1);
        let start = Tensor::randn([numel], (Kind::Float, Device::Cpu));
        let target = Tensor::randn([numel], (Kind::Float, Device::Cpu));
        let ours_p = start.copy().set_requires_grad(true);
        let theirs_p = start.copy().set_requires_grad(true);
        let mut ours = Optimizer::new(kind, lr, momentum, wd);
        ours.add(&ours_p);
        ours.chunk = 64;
        let mut theirs = match kind {
            OptimizerKind::Sgd => COptimizer::sgd(lr, momentum, 0.0, wd, false).unwrap(),
            OptimizerKind::Adam => COptimizer::adam(lr, 0.9, 0.999, wd, 1e-8, false).unwrap(),
            OptimizerKind::AdamW => COptimizer::adamw(lr, 0.9, 0.999, wd, 1e-8, false).unwrap(),
        };
        theirs.add_parameters(&theirs_p, 0).unwrap();
        let loss = |p: &Tensor| ((p - &target).square() * (p.sin() + 2.0)).sum(Kind::Float);
        for _ in 0..6 {
            ours.zero_grad().unwrap();
            loss(&ours_p).backward();
            ours.step().unwrap();
            theirs.zero_grad().unwrap();
            loss(&theirs_p).backward();
            theirs.step().unwrap();
        }
        let moved = (&theirs_p - &start).abs().max().double_value(&[]);
        let gap = (&ours_p - &theirs_p).abs().max().double_value(&[]);
        assert!(moved > 1e-3, "{kind:?}: the parameters moved ({moved})");
        assert!(
            gap <= 1e-5 * moved.max(1.0),
            "{kind:?}: {gap} apart after 6 steps"
        );
    }

    #[test]
    fn updates_match_libtorchs_optimizers() {
        // More than one chunk, and a partial last chunk.
        let big = 64 * 2 + 17;
        same_as_libtorch(OptimizerKind::Sgd, 0.01, 0.0, 0.0, 100);
        same_as_libtorch(OptimizerKind::Sgd, 0.01, 0.9, 1e-2, big);
        same_as_libtorch(OptimizerKind::Adam, 1e-2, 0.0, 0.0, 100);
        same_as_libtorch(OptimizerKind::Adam, 1e-2, 0.0, 1e-2, big);
        same_as_libtorch(OptimizerKind::AdamW, 1e-2, 0.0, 0.1, big);
    }

    #[test]
    fn a_parameter_without_gradient_is_left_alone() {
        let p = Tensor::ones([4], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let mut opt = Optimizer::new(OptimizerKind::Adam, 0.1, 0.0, 0.0);
        opt.add(&p);
        opt.zero_grad().unwrap();
        opt.step().unwrap();
        assert_eq!(Vec::<f32>::try_from(&p).unwrap(), [1.0; 4]);
    }
}
