//! SGD, Adam and AdamW with libtorch's update rules (`torch::optim`, as tch's `COptimizer` builds them:
//! no Nesterov, no dampening, no AMSGrad, L2 weight decay for SGD and Adam, decoupled for AdamW, betas
//! 0.9 / 0.999, eps 1e-8), updating each parameter in place, at most [`CHUNK`] elements at a time, and
//! dropping the gradients in [`Optimizer::zero_grad`] as `torch.optim`'s `zero_grad()` does.
//!
//! Why not libtorch's optimizers themselves: Adam's step builds `sqrt(v) / sqrt(bias correction)` over
//! a whole parameter, two temporaries the size of the largest layer on top of the weights, gradients
//! and both moments (128 MiB for a 4096 × 4096 layer). Chunked, the step's temporaries stay at a few
//! megabytes whatever the model. The gradients are dropped (set to None) rather than zeroed so that
//! the backward pass hands its fresh gradients over instead of adding them into zeroed copies.
use std::cell::RefCell;

use tch::{COptimizer, Tensor};

use crate::ports::OptimizerKind;
use crate::CheckError;

/// Elements updated at a time: 1 MiB of f32 per temporary.
pub const CHUNK: i64 = 1 << 18;

const BETAS: (f64, f64) = (0.9, 0.999);
const EPS: f64 = 1e-8;

/// An optimizer over some parameters (tensors sharing storage and gradient with the model's).
pub struct Optimizer {
    kind: OptimizerKind,
    lr: f64,
    momentum: f64,
    weight_decay: f64,
    params: Vec<Tensor>,
    /// Each parameter's state, created at its first update.
    state: RefCell<Vec<State>>,
    /// libtorch's optimizer over the same parameters, used only for its `zero_grad`, which sets every
    /// gradient to None (tch has no other way to drop a gradient). Plain SGD: it holds no state.
    clear: COptimizer,
    /// The step's temporaries.
    scratch: RefCell<Scratch>,
    /// Elements per update chunk ([`CHUNK`]; smaller in tests).
    chunk: i64,
}

#[derive(Default)]
struct State {
    /// Steps taken with a gradient (Adam's bias correction; SGD's first step starts its momentum).
    steps: i32,
    /// Adam's first moment, or SGD's momentum buffer.
    first: Option<Tensor>,
    /// Adam's second moment.
    second: Option<Tensor>,
}

impl Optimizer {
    pub fn new(
        kind: OptimizerKind,
        lr: f64,
        momentum: f64,
        weight_decay: f64,
    ) -> Result<Optimizer, CheckError> {
        Ok(Optimizer {
            kind,
            lr,
            momentum,
            weight_decay,
            params: Vec::new(),
            state: RefCell::new(Vec::new()),
            clear: COptimizer::sgd(0.0, 0.0, 0.0, 0.0, false)?,
            scratch: RefCell::new(Scratch::default()),
            chunk: CHUNK,
        })
    }

    /// Adds a parameter to update.
    pub fn add_parameter(&mut self, param: &Tensor) -> Result<(), CheckError> {
        self.clear.add_parameters(param, 0)?;
        self.params.push(param.shallow_clone());
        self.state.get_mut().push(State::default());
        Ok(())
    }

    pub fn set_learning_rate(&mut self, lr: f64) -> Result<(), CheckError> {
        self.lr = lr;
        Ok(())
    }

    /// Drops every parameter's gradient (`zero_grad(set_to_none=True)`).
    pub fn zero_grad(&self) -> Result<(), CheckError> {
        Ok(self.clear.zero_grad()?)
    }

    /// One update from the current gradients; a parameter without a gradient is left alone (and its
    /// step count too), as in libtorch.
    pub fn step(&self) -> Result<(), CheckError> {
        let _guard = tch::no_grad_guard();
        let mut states = self.state.borrow_mut();
        let mut scratch = self.scratch.borrow_mut();
        for (param, state) in self.params.iter().zip(states.iter_mut()) {
            let grad = param.grad();
            if !grad.defined() {
                continue;
            }
            self.update(param, &grad, state, &mut scratch)?;
        }
        Ok(())
    }

    /// One parameter's update from its gradient, chunk by chunk, creating its state at its first.
    fn update(
        &self,
        param: &Tensor,
        grad: &Tensor,
        state: &mut State,
        scratch: &mut Scratch,
    ) -> Result<(), CheckError> {
        let first_step = state.steps == 0;
        state.steps += 1;
        let adam = self.kind != OptimizerKind::Sgd;
        if first_step && (adam || self.momentum != 0.0) {
            state.first = Some(param.f_zeros_like()?);
            if adam {
                state.second = Some(param.f_zeros_like()?);
            }
        }
        let moment = |t: &Option<Tensor>, rows| t.as_ref().map(|t| part(t, rows)).transpose();
        for rows in chunks(param, self.chunk) {
            let p = part(param, rows)?;
            let g = part(grad, rows)?;
            let first = moment(&state.first, rows)?;
            match (self.kind, first, moment(&state.second, rows)?) {
                (OptimizerKind::Sgd, buf, _) => self.sgd(p, g, buf, first_step, scratch)?,
                (_, Some(m), Some(v)) => self.adam(p, g, m, v, state.steps, scratch)?,
                _ => {
                    return Err(CheckError::Other(
                        "the optimizer lost Adam's moments".into(),
                    ))
                }
            }
        }
        Ok(())
    }

    /// `torch::optim::SGD::step` on a chunk `p` of a parameter with gradient `d`: d = g (+ wd·p); with
    /// momentum (its buffer `b`), b = d at the first step, then b = m·b + d, and d = b; p -= lr·d.
    fn sgd(
        &self,
        mut p: Tensor,
        mut d: Tensor,
        momentum: Option<Tensor>,
        first_step: bool,
        scratch: &mut Scratch,
    ) -> Result<(), CheckError> {
        if self.weight_decay != 0.0 {
            let mut decayed = scratch.take(&p, 2, self.chunk)?;
            let _ = p.f_mul_scalar_out(&decayed, self.weight_decay)?;
            let _ = decayed.f_add_(&d)?;
            d = decayed;
        }
        if let Some(mut b) = momentum {
            if first_step {
                b.f_copy_(&d)?;
            } else {
                let _ = b.f_mul_scalar_(self.momentum)?;
                let _ = b.f_add_(&d)?;
            }
            d = b;
        }
        let update = scratch.take(&p, 0, self.chunk)?;
        let _ = d.f_mul_scalar_out(&update, -self.lr)?;
        let _ = p.f_add_(&update)?;
        Ok(())
    }

    /// `torch::optim::Adam::step` / `AdamW::step` on a chunk `p` of a parameter with gradient `g` and
    /// its moments `m` and `v`, at step `steps` (from 1).
    #[allow(clippy::too_many_arguments)]
    fn adam(
        &self,
        mut p: Tensor,
        mut g: Tensor,
        mut m: Tensor,
        mut v: Tensor,
        steps: i32,
        scratch: &mut Scratch,
    ) -> Result<(), CheckError> {
        let (b1, b2) = BETAS;
        let bias1 = 1.0 - b1.powi(steps);
        let bias2 = 1.0 - b2.powi(steps);
        let step_size = self.lr / bias1;
        if self.kind == OptimizerKind::AdamW {
            // p *= 1 - lr·wd, before the moments (libtorch does it even when wd = 0: a no-op).
            if self.weight_decay != 0.0 {
                let _ = p.f_mul_scalar_(1.0 - self.lr * self.weight_decay)?;
            }
        } else if self.weight_decay != 0.0 {
            let mut decayed = scratch.take(&p, 2, self.chunk)?;
            let _ = p.f_mul_scalar_out(&decayed, self.weight_decay)?;
            let _ = decayed.f_add_(&g)?;
            g = decayed;
        }
        let t = scratch.take(&p, 0, self.chunk)?;
        // m = b1·m + (1 - b1)·g
        let _ = m.f_mul_scalar_(b1)?;
        let _ = g.f_mul_scalar_out(&t, 1.0 - b1)?;
        let _ = m.f_add_(&t)?;
        // v = b2·v + (1 - b2)·g²
        let _ = v.f_mul_scalar_(b2)?;
        let _ = g.f_mul_scalar_out(&t, 1.0 - b2)?;
        let _ = v.f_addcmul_(&t, &g)?;
        // p -= lr / bias1 · m / (sqrt(v) / sqrt(bias2) + eps)
        let mut denom = scratch.take(&p, 1, self.chunk)?;
        let _ = v.f_sqrt_out(&denom)?;
        let _ = denom.f_div_scalar_(bias2.sqrt())?;
        let _ = denom.f_add_scalar_(EPS)?;
        let _ = m.f_mul_scalar_out(&t, -step_size)?;
        let _ = p.f_addcdiv_(&t, &denom)?;
        Ok(())
    }
}

/// The step's temporaries: flat buffers of one chunk, kept from step to step, so that the step
/// allocates nothing after the first (a fresh chunk-sized temporary per operation makes glibc keep
/// tens of megabytes of freed heap).
#[derive(Default)]
struct Scratch {
    buffers: Vec<Tensor>,
}

impl Scratch {
    /// Buffer `i` of at least `len` elements, viewed with `like`'s shape (replaced by a larger one, or
    /// one of another kind or device, when needed).
    fn take(&mut self, like: &Tensor, i: usize, len: i64) -> Result<Tensor, CheckError> {
        let n = like.numel() as i64;
        let options = (like.kind(), like.device());
        while self.buffers.len() <= i {
            self.buffers.push(Tensor::f_empty([0], options)?);
        }
        let b = &mut self.buffers[i];
        if (b.numel() as i64) < n || b.kind() != like.kind() || b.device() != like.device() {
            *b = Tensor::f_empty([n.max(len)], options)?;
        }
        Ok(b.f_narrow(0, 0, n)?.f_view(like.size().as_slice())?)
    }
}

/// A slice of a parameter, its gradient or its state: rows `start..start + len` along dim 0, or the
/// whole tensor (`None`, for a 0-d one).
type Rows = Option<(i64, i64)>;

/// Slices of at most about `chunk` elements along dim 0 that cover `t` (a row bigger than `chunk` is one
/// slice; a 0-d tensor is one slice, the whole of it).
fn chunks(t: &Tensor, chunk: i64) -> Vec<Rows> {
    let size = t.size();
    let Some(&rows) = size.first() else {
        return vec![None];
    };
    let per_row: i64 = size[1..].iter().product::<i64>().max(1);
    let step = (chunk / per_row).max(1);
    (0..rows)
        .step_by(step as usize)
        .map(|s| Some((s, step.min(rows - s))))
        .collect()
}

fn part(t: &Tensor, rows: Rows) -> Result<Tensor, CheckError> {
    Ok(match rows {
        Some((start, len)) => t.f_narrow(0, start, len)?,
        None => t.shallow_clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    fn libtorch(kind: OptimizerKind, lr: f64, momentum: f64, wd: f64) -> COptimizer {
        match kind {
            OptimizerKind::Sgd => COptimizer::sgd(lr, momentum, 0.0, wd, false),
            OptimizerKind::Adam => COptimizer::adam(lr, 0.9, 0.999, wd, 1e-8, false),
            OptimizerKind::AdamW => COptimizer::adamw(lr, 0.9, 0.999, wd, 1e-8, false),
        }
        .unwrap()
    }

    /// Parameters of several shapes (a matrix cut into chunks of whole rows and a partial last one, a
    /// matrix whose single row exceeds a chunk, a vector, a 0-d scalar, one that gets no gradient),
    /// trained on a fixed non-quadratic loss by ours and by libtorch's from the same start, with the
    /// learning rate changed halfway; every parameter must agree after the steps.
    fn same_as_libtorch(kind: OptimizerKind, lr: f64, momentum: f64, wd: f64) {
        tch::manual_seed(1);
        let opts = (Kind::Float, Device::Cpu);
        let shapes: [&[i64]; 5] = [&[37, 5], &[2, 50], &[9], &[], &[3]];
        let start: Vec<Tensor> = shapes.iter().map(|s| Tensor::randn(*s, opts)).collect();
        let target: Vec<Tensor> = shapes.iter().map(|s| Tensor::randn(*s, opts)).collect();
        let fresh = || -> Vec<Tensor> {
            start
                .iter()
                .map(|t| t.copy().set_requires_grad(true))
                .collect()
        };
        let (ours_p, theirs_p) = (fresh(), fresh());
        let mut ours = Optimizer::new(kind, lr, momentum, wd).unwrap();
        ours.chunk = 16;
        let mut theirs = libtorch(kind, lr, momentum, wd);
        for (a, b) in ours_p.iter().zip(&theirs_p) {
            ours.add_parameter(a).unwrap();
            theirs.add_parameters(b, 0).unwrap();
        }
        // The last parameter takes no part in the loss: it never gets a gradient.
        let loss = |ps: &[Tensor]| {
            ps[..4]
                .iter()
                .zip(&target)
                .map(|(p, t)| ((p - t).square() * (p.sin() + 2.0)).sum(Kind::Float))
                .fold(Tensor::zeros([], opts), |a, b| a + b)
        };
        for step in 0..8 {
            if step == 4 {
                ours.set_learning_rate(lr / 3.0).unwrap();
                theirs.set_learning_rate(lr / 3.0).unwrap();
            }
            ours.zero_grad().unwrap();
            loss(&ours_p).backward();
            ours.step().unwrap();
            theirs.zero_grad().unwrap();
            loss(&theirs_p).backward();
            theirs.step().unwrap();
        }
        for (i, ((o, t), s)) in ours_p.iter().zip(&theirs_p).zip(&start).enumerate() {
            let moved = (t - s).abs().max().double_value(&[]);
            let gap = (o - t).abs().max().double_value(&[]);
            if i < 4 {
                assert!(moved > 1e-2, "{kind:?}: parameter {i} moved only {moved}");
            } else {
                assert_eq!(moved, 0.0, "{kind:?}: parameter {i} had no gradient");
            }
            assert!(
                gap <= 1e-5 * moved.max(1.0),
                "{kind:?} lr {lr} momentum {momentum} wd {wd}: parameter {i} is {gap} away from libtorch's after 8 steps (it moved {moved})"
            );
        }
    }

    #[test]
    fn updates_match_libtorchs_optimizers() {
        same_as_libtorch(OptimizerKind::Sgd, 0.01, 0.0, 0.0);
        same_as_libtorch(OptimizerKind::Sgd, 0.01, 0.9, 0.0);
        same_as_libtorch(OptimizerKind::Sgd, 0.01, 0.9, 0.05);
        same_as_libtorch(OptimizerKind::Adam, 0.05, 0.0, 0.0);
        same_as_libtorch(OptimizerKind::Adam, 0.05, 0.0, 0.05);
        same_as_libtorch(OptimizerKind::AdamW, 0.05, 0.0, 0.0);
        same_as_libtorch(OptimizerKind::AdamW, 0.05, 0.0, 0.1);
    }

    #[test]
    fn zero_grad_drops_the_gradients() {
        let p = Tensor::ones([4, 3], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let mut opt = Optimizer::new(OptimizerKind::Adam, 0.1, 0.0, 0.0).unwrap();
        opt.add_parameter(&p).unwrap();
        (&p * 2.0).sum(Kind::Float).backward();
        assert!(p.grad().defined());
        opt.step().unwrap();
        opt.zero_grad().unwrap();
        assert!(!p.grad().defined(), "the gradient is still allocated");
        // A step without gradients changes nothing.
        let before = p.copy();
        opt.step().unwrap();
        assert_eq!((&p - &before).abs().max().double_value(&[]), 0.0);
    }

    #[test]
    fn chunks_cover_every_row_once() {
        let t = Tensor::zeros([10, 3], (Kind::Float, Device::Cpu));
        let rows: Vec<_> = chunks(&t, 7).into_iter().map(|r| r.unwrap()).collect();
        assert_eq!(rows, [(0, 2), (2, 2), (4, 2), (6, 2), (8, 2)]);
        assert_eq!(chunks(&t, 1000), [Some((0, 10))]);
        assert_eq!(
            chunks(&t, 1),
            (0..10).map(|s| Some((s, 1))).collect::<Vec<_>>()
        );
        assert_eq!(chunks(&Tensor::from(1.0f32), 4), [None]);
        assert!(chunks(&Tensor::zeros([0, 3], (Kind::Float, Device::Cpu)), 4).is_empty());
    }
}
