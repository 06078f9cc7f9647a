//! lr-sharpness: the learning rate against the stability bound of the loss's sharpness at init.
use super::prelude::*;
use crate::ports::OptimizerKind;
use crate::train;
use tch::Tensor;

pub struct LrSharpness;

static INFO: CheckInfo = CheckInfo {
    id: "lr-sharpness",
    group: Group::Fit,
    default_level: Level::Warn,
    summary: "The SGD learning rate is below the stability bound set by the loss's sharpness",
    docs: Docs {
        what: "Estimates the sharpness λ (the largest eigenvalue of the Hessian of the configured loss \
with respect to the trainable parameters) on the first `batch` samples, by Lanczos iteration on \
Hessian-vector products (double backward), and compares the configured SGD learning rate with the \
stability bound: gradient descent on a quadratic of curvature λ diverges when lr > 2/λ, heavy-ball \
momentum β moves the bound to 2(1+β)/λ. Skipped for Adam / AdamW (their preconditioned bound, \
38/lr, does not predict divergence before training settles: measured, see the kind's docs) and for \
models with BatchNorm / GroupNorm / InstanceNorm (scale-invariant weights self-stabilise).",
        why: "A learning rate above the bound makes the first steps overshoot along the sharpest \
direction: the loss oscillates or blows up before training starts. Sharpness usually rises during \
training (progressive sharpening), so a lr above the bound at init only gets worse.",
        details: include_str!("lr_sharpness.md"),
    },
    kinds: &[&LrAboveBound::KIND],
    draws_random: true,
    setup: &["optimizer", "lr", "momentum"],
    needs: &[Need::Loss],
    ..CheckInfo::PLAIN
};

/// Options of lr-sharpness.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct LrSharpnessOptions {
    /// Samples in the batch whose loss is probed.
    #[schemars(range(min = 1))]
    pub batch: usize,
    /// Most Lanczos steps (one Hessian-vector product each).
    #[schemars(range(min = 2))]
    pub iterations: usize,
    /// Stop once λ changes by less than this fraction between iterations.
    #[schemars(extend("exclusiveMinimum" = 0))]
    pub tolerance: f64,
    /// Warn when lr exceeds the largest stable lr by more than this factor.
    #[schemars(range(min = 1))]
    pub factor: f64,
    /// Skip models whose trainable parameters take more MiB than this: the Hessian-vector products
    /// hold about 6× the parameters in memory.
    #[schemars(extend("exclusiveMinimum" = 0))]
    pub max_parameter_mib: f64,
}

impl Default for LrSharpnessOptions {
    fn default() -> Self {
        LrSharpnessOptions {
            batch: 32,
            iterations: 20,
            tolerance: 1e-2,
            factor: 2.0,
            max_parameter_mib: 128.0,
        }
    }
}

/// The SGD learning rate is clearly above the stability bound 2(1+β)/λ of the loss at init
///
/// # Why
/// On a quadratic of curvature λ, SGD with momentum β converges only for lr < 2(1+β)/λ (2/λ without
/// momentum). Above that, the step overshoots along the sharpest direction and the loss oscillates or
/// diverges from the first steps. Training usually sharpens the loss further (progressive sharpening), so a
/// lr above the bound at init predicts trouble; a lr below it is no guarantee.
///
/// # How
/// One forward pass on a copy in train mode on the first `batch` samples (default 32; one dropout mask, kept
/// for every step), the loss's gradient with create_graph, then Lanczos iteration on Hessian-vector products
/// (double backward) from a seeded random direction: power iteration's Krylov refinement, one product per
/// step, which finds the top of the spectrum even when a negative eigenvalue of similar size makes plain
/// power iteration oscillate (seen on a fresh ResNet). Up to `iterations` steps (default 20), stopping once
/// the largest Ritz value changes by less than `tolerance` (1e-2). λ includes the weight decay. Warning when
/// lr exceeds the largest stable lr 2(1+β)/λ by more than `factor` (default 2): near the bound, large-lr
/// training often self-stabilises after a spike, so a smaller excess is flagged only when the run's evidence
/// shows it does not: the loss log becomes non-finite or its last quarter sits 2× above its start, or 30
/// steps of SGD at the configured lr on the same batch (a copy) end non-finite, 2× above their start, or go
/// up in 40% of the steps without 10% progress. Skipped for Adam / AdamW: their bound, 38/lr for β1 = 0.9 on
/// the sharpness preconditioned by the second moments (the largest eigenvalue of P⁻¹H, P = diag(√v̂ + ε);
/// Cohen et al. 2022), describes training that has settled at the edge of stability, and measured before that
/// it does not separate good from bad learning rates: with v̂ from 1, 5 or 20 real Adam steps, on the
/// committed MLP (MSE) a lr of 0.01 that trains to 1e-10 is 60–200× above the bound, while on the committed
/// classifier a lr of 1 whose loss climbs to 115 is 200× above it after 1 step and 0.04× after 20 (Adam's v̂
/// grows as the loss oscillates and pulls P⁻¹H back under the bound). loss-oscillation's probe runs Adam
/// itself at the configured lr. Skipped for models with BatchNorm / GroupNorm / InstanceNorm: the weights
/// before a normalisation layer are (nearly) scale-invariant, SGD on them grows their norm and lowers their
/// curvature until stable (Arora et al. 2019), so the sharpness at init does not bound the usable lr (a fresh
/// GoogLeNet-pattern network: λ ≈ 245, 6× SGD 0.1 / 0.9's bound, and it trains well). Skipped for models
/// whose trainable parameters exceed `max_parameter_mib` (128): the products hold about 6× the parameters in
/// memory (a 200 MB MLP peaked at 1.35 GB), above the 1 GB the rest of the audit keeps.
///
/// # Fix
/// Lower lr to the largest stable lr or below (or warm it up from there); normalise the inputs and use a
/// default init, which lower λ.
#[derive(Serialize, ViolationMetadata)]
#[kind(id = "lr-sharpness/lr-above-stability-bound", grade = warning)]
#[kind(example(args = "fixtures/configs/sgd_lr_above_sharpness.toml", severity = warning, message = "lr 2 is 5.64× the largest stable lr 0.354 for SGD (momentum 0): the loss's sharpness λ = 5.64 on 32 samples is above the stability bound 2(1+β)/lr = 1; expect the loss to oscillate or diverge from the first steps"))]
pub struct LrAboveBound {
    pub lr: f64,
    pub momentum: f64,
    /// Largest Hessian eigenvalue of the loss on the batch (plus the weight decay).
    pub sharpness: f64,
    /// 2(1+β)/lr: the largest sharpness that lr is stable on.
    pub bound: f64,
    /// 2(1+β)/λ: the largest stable learning rate.
    pub max_stable_lr: f64,
    pub batch: usize,
    pub iterations: usize,
    /// Between the bound and `factor` × it: what showed that this lr does not self-stabilise (the
    /// loss log, or a short SGD run at the lr on the same batch).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub confirmed_by: Option<String>,
}

impl Violation for LrAboveBound {
    fn message(&self) -> String {
        format!(
            "lr {} is {}× the largest stable lr {} for SGD (momentum {}): the loss's sharpness λ = {} on {} \
samples is above the stability bound 2(1+β)/lr = {}; expect the loss to oscillate or diverge from the \
first steps",
            num(self.lr),
            num(self.lr / self.max_stable_lr),
            num(self.max_stable_lr),
            num(self.momentum),
            num(self.sharpness),
            self.batch,
            num(self.bound)
        ) + &self
            .confirmed_by
            .as_ref()
            .map(|c| format!(" ({c})"))
            .unwrap_or_default()
    }
    fn help(&self) -> String {
        format!(
            "lower lr to {} or below, or warm it up from there; sharpness usually rises during training",
            num(self.max_stable_lr)
        )
    }
}

/// The loss log's total turns non-finite after finite values, or its last quarter's level (interquartile
/// mean) sits more than 2× above its start's (the first 5%, at least 5 points): why, or None.
fn log_diverges(ctx: &Context) -> Option<String> {
    let log = ctx.log?;
    let column = log.total.clone().or_else(|| log.terms.first().cloned())?;
    let values = log.columns.get(&column)?;
    let first = values.iter().position(|v| v.is_finite())?;
    if let Some(at) = values[first..].iter().position(|v| !v.is_finite()) {
        return Some(format!(
            "the loss log turns {} at step {}",
            values[first + at],
            crate::finding::num(log.steps[first + at])
        ));
    }
    let finite: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    if finite.len() < 20 {
        return None;
    }
    let k = (finite.len() / 20).max(5);
    let start = crate::stats::interquartile_mean(&finite[..k]);
    let end = crate::stats::interquartile_mean(&finite[finite.len() - finite.len() / 4..]);
    (start > 0.0 && end > 2.0 * start).then(|| {
        format!(
            "the loss log rises from {} to {} (last quarter)",
            crate::finding::num(start),
            crate::finding::num(end)
        )
    })
}

/// 30 steps of SGD at the configured lr, momentum and weight decay on a copy, on the batch the sharpness
/// was measured on: why they show the lr failing (non-finite, ending 2× above the start, or going up in
/// 40% of the steps without 10% progress), or None.
fn short_run_fails(
    ctx: &Context,
    model: &dyn Model,
    x: &Tensor,
    y: &Tensor,
    loss_kind: LossKind,
) -> Result<Option<String>, CheckError> {
    const STEPS: usize = 30;
    let setup = ctx.setup;
    let mut copy = model.trainable_copy()?;
    let opt = train::optimizer(
        copy.as_ref(),
        OptimizerKind::Sgd,
        setup.lr,
        setup.momentum,
        setup.weight_decay,
    )?;
    let budget = train::Budget::start(setup.check_budget);
    let started = std::time::Instant::now();
    let mut losses = Vec::with_capacity(STEPS + 1);
    for step in 0..=STEPS {
        budget.allow("the confirming SGD run", step, STEPS + 1, started)?;
        tch::manual_seed(setup.seed as i64);
        let l = train::step(copy.as_mut(), &opt, loss_kind, x, y, Mode::Train)?;
        losses.push(l);
        if !l.is_finite() {
            break;
        }
    }
    let (start, end) = (losses[0], *losses.last().expect("one step at least"));
    let n = crate::finding::num;
    if !end.is_finite() {
        return Ok(Some(format!(
            "{} SGD steps at this lr on the same batch end at {end}",
            losses.len() - 1
        )));
    }
    if start > 0.0 && end > 2.0 * start {
        return Ok(Some(format!(
            "{STEPS} SGD steps at this lr on the same batch take the loss from {} to {}",
            n(start),
            n(end)
        )));
    }
    let ups = losses.windows(2).filter(|w| w[1] > w[0] * 1.01).count();
    if ups * 10 >= STEPS * 4 && end >= 0.9 * start {
        return Ok(Some(format!(
            "{STEPS} SGD steps at this lr on the same batch go up in {ups} of them, from {} to {}",
            n(start),
            n(end)
        )));
    }
    Ok(None)
}

/// Σ⟨a, b⟩ over parameter-shaped tensors.
fn dot(a: &[Tensor], b: &[Tensor]) -> Result<f64, CheckError> {
    let mut s = 0.0;
    for (x, y) in a.iter().zip(b) {
        s += x.f_mul(y)?.f_sum(tch::Kind::Double)?.f_double_value(&[])?;
    }
    Ok(s)
}

/// The loss's Hessian times `v`, from the gradients `grads` built with create_graph.
fn hessian_vector(
    grads: &[Tensor],
    params: &[Tensor],
    v: &[Tensor],
) -> Result<Vec<Tensor>, CheckError> {
    let mut gv: Option<Tensor> = None;
    for (g, d) in grads.iter().zip(v) {
        if !g.defined() || !g.requires_grad() {
            continue; // a gradient constant in the parameters: no curvature along it
        }
        let term = g.f_mul(d)?.f_sum(g.kind())?;
        gv = Some(match gv {
            None => term,
            Some(acc) => acc.f_add(&term)?,
        });
    }
    let Some(gv) = gv else {
        return params.iter().map(|p| Ok(p.f_zeros_like()?)).collect();
    };
    let hv = Tensor::f_run_backward(&[gv], params, true, false)?;
    hv.into_iter()
        .zip(params)
        .map(|(h, p)| {
            Ok(if h.defined() {
                h.f_detach()?
            } else {
                p.f_zeros_like()?
            })
        })
        .collect()
}

/// Makes every tensor of `w` its own dense memory, so that it can be updated in place: a
/// Hessian-vector product may hand back an expanded gradient, or one tensor for two parameters (or,
/// in principle, a tensor of `others`).
fn make_own(w: &mut [Tensor], others: &[&Tensor]) -> Result<(), CheckError> {
    for i in 0..w.len() {
        let ptr = w[i].data_ptr();
        let shared = w[..i]
            .iter()
            .chain(others.iter().copied())
            .any(|o| o.data_ptr() == ptr);
        if shared || !w[i].is_contiguous() {
            let mut own = Tensor::f_empty(w[i].size(), (w[i].kind(), w[i].device()))?;
            own.f_copy_(&w[i])?;
            w[i] = own;
        }
    }
    Ok(())
}

/// The eigenvalues of the symmetric tridiagonal matrix with diagonal `alpha` and off-diagonal `beta`.
fn tridiagonal_eigenvalues(alpha: &[f64], beta: &[f64]) -> Result<Vec<f64>, CheckError> {
    let k = alpha.len();
    let mut m = vec![0.0f64; k * k];
    for i in 0..k {
        m[i * k + i] = alpha[i];
        if i + 1 < k {
            m[i * k + i + 1] = beta[i];
            m[(i + 1) * k + i] = beta[i];
        }
    }
    let t = Tensor::from_slice(&m).f_reshape([k as i64, k as i64])?;
    Ok(Vec::<f64>::try_from(&t.f_linalg_eigvalsh("L")?)?)
}

/// The largest eigenvalue of the Hessian by Lanczos iteration (a Krylov refinement of power iteration:
/// the same one Hessian-vector product per step, but it finds the top of the spectrum even when a
/// negative eigenvalue of similar size would make power iteration oscillate). Returns the estimate and
/// the largest Ritz value after each step; each is a lower bound of the largest eigenvalue.
fn largest_eigenvalue(
    grads: &[Tensor],
    params: &[Tensor],
    options: &LrSharpnessOptions,
    budget: &crate::train::Budget,
) -> Result<(f64, Vec<f64>), CheckError> {
    let started = std::time::Instant::now();
    let scale = |v: &[Tensor], by: f64| -> Result<Vec<Tensor>, CheckError> {
        v.iter()
            .map(|t| Ok(t.f_mul_scalar(by)?))
            .collect::<Result<Vec<_>, CheckError>>()
    };
    let mut v: Vec<Tensor> = params
        .iter()
        .map(|p| p.f_randn_like())
        .collect::<Result<_, _>>()?;
    let norm = dot(&v, &v)?.sqrt();
    v = scale(&v, 1.0 / norm)?;
    let mut previous: Option<Vec<Tensor>> = None;
    let (mut alpha, mut beta) = (Vec::new(), Vec::new());
    let mut estimates: Vec<f64> = Vec::new();
    for i in 0..options.iterations {
        // Two products before the first convergence test.
        budget.allow("the Lanczos iteration", i, 2, started)?;
        let mut w = hessian_vector(grads, params, &v)?;
        let a = dot(&w, &v)?;
        if !a.is_finite() {
            return Err(CheckError::Skip(
                "the Hessian-vector product is not finite".into(),
            ));
        }
        alpha.push(a);
        // In place, one parameter at a time: on a large model every whole copy of the vectors counts.
        let others: Vec<&Tensor> = v.iter().chain(previous.iter().flatten()).collect();
        make_own(&mut w, &others)?;
        for (h, x) in w.iter_mut().zip(&v) {
            let _ = h.f_sub_(&x.f_mul_scalar(a)?)?;
        }
        if let (Some(p), Some(b)) = (&previous, beta.last()) {
            for (h, x) in w.iter_mut().zip(p) {
                let _ = h.f_sub_(&x.f_mul_scalar(*b)?)?;
            }
        }
        let top = tridiagonal_eigenvalues(&alpha, &beta)?
            .into_iter()
            .fold(f64::NEG_INFINITY, f64::max);
        let last = estimates.last().copied();
        estimates.push(top);
        if let Some(p) = last {
            if (top - p).abs() <= options.tolerance * top.abs().max(1e-12) {
                break;
            }
        }
        let b = dot(&w, &w)?.sqrt();
        if !(b.is_finite() && b > 1e-12 * top.abs().max(1e-12)) {
            break; // the Krylov space is exhausted: the Ritz values are exact
        }
        beta.push(b);
        drop(previous.take()); // before w takes its place: three vectors, not four
        for h in w.iter_mut() {
            let _ = h.f_mul_scalar_(1.0 / b)?;
        }
        previous = Some(std::mem::replace(&mut v, w));
    }
    Ok((estimates.last().copied().unwrap_or(0.0), estimates))
}

/// BatchNorm, GroupNorm and InstanceNorm normalise the output of the conv / linear layer before them,
/// which makes that layer's weights scale-invariant (or nearly, through eps).
///
/// The curvature along such weights scales as 1/‖w‖², but SGD's step on them is (nearly) orthogonal to w,
/// so every step grows ‖w‖ and lowers that curvature: a too-large lr corrects itself (Arora et al. 2019,
/// "Theoretical analysis of auto rate-tuning by batch normalization"). A fresh GoogLeNet-pattern network
/// (std-0.01 convs into BatchNorm with eps 1e-3) has λ ≈ 245 on 32 samples, 6× SGD 0.1 / 0.9's bound of
/// 38, and trains well at lr 0.1; excluding only the exactly invariant weights does not fix that.
fn normalises_features(kind: &str) -> bool {
    crate::norm::Norm::of(kind).is_some_and(|n| n.normalises_features())
}

impl Check for LrSharpness {
    type Options = LrSharpnessOptions;

    const INFO: &'static CheckInfo = &INFO;

    fn run(&self, ctx: &Context, options: &LrSharpnessOptions) -> CheckOutput {
        let setup = ctx.setup;
        let (model, data) = (ctx.model()?, ctx.data()?);
        if setup.optimizer != OptimizerKind::Sgd {
            return Err(CheckError::Skip(format!(
                "the optimizer is {}{}: the 2(1+β)/lr bound is SGD's; Adam's (38/lr on the sharpness \
preconditioned by its second moments) holds only once training settles, and before that it does not \
separate good from bad lr (measured: healthy lrs sit 200× above it, diverging ones below it); \
loss-oscillation's probe runs Adam instead",
                setup.optimizer.as_str(),
                setup.assumed_note(&["optimizer"])
            )));
        }
        if let Some(norm) = model
            .modules()
            .iter()
            .find(|m| normalises_features(&m.kind))
        {
            return Err(CheckError::Skip(format!(
                "the model normalises features ({} {}): the weights before a normalisation layer are \
(nearly) scale-invariant and SGD on them self-stabilises, so the sharpness at init does not bound the \
usable lr",
                crate::finding::display_module(&norm.path),
                norm.kind
            )));
        }
        let mut bytes = 0f64;
        for (_, p) in model.parameters()? {
            if p.requires_grad() {
                bytes += p.numel() as f64 * p.kind().elt_size_in_bytes() as f64;
            }
        }
        let mib = bytes / (1u64 << 20) as f64;
        if mib > options.max_parameter_mib {
            return Err(CheckError::Skip(format!(
                "the trainable parameters take {} MiB, above `max_parameter_mib` = {}: the Hessian-vector \
products hold about 6× the parameters in memory (raise it to run the check)",
                crate::finding::num(mib),
                crate::finding::num(options.max_parameter_mib)
            )));
        }
        let n = data.len().min(options.batch).max(1) as i64;
        let device = model.device();
        let x = data.inputs.f_narrow(0, 0, n)?.f_to_device(device)?;
        let y = data.targets.f_narrow(0, 0, n)?.f_to_device(device)?;
        let loss_kind = setup.resolved_loss(Some(data));
        let mut copy = model.trainable_copy()?;
        let params: Vec<Tensor> = copy
            .parameters()?
            .into_iter()
            .filter(|(_, p)| p.requires_grad())
            .map(|(_, p)| p)
            .collect();
        if params.is_empty() {
            return Err(CheckError::Skip(
                "the model has no trainable parameters".into(),
            ));
        }
        tch::manual_seed(setup.seed as i64);
        let prediction = copy.forward(&x, Mode::Train)?;
        let loss = train::loss(loss_kind, &prediction, &y)?;
        if !loss.requires_grad() || !loss.f_double_value(&[])?.is_finite() {
            return Err(CheckError::Skip(
                "the loss on the batch has no gradient or is not finite".into(),
            ));
        }
        let grads = Tensor::f_run_backward(&[&loss], &params, true, true)?;
        let stable = 2.0 * (1.0 + setup.momentum);
        // Some ops have no double backward (e.g. hardsigmoid's): the check cannot apply to them.
        let (mut sharpness, estimates) = largest_eigenvalue(
            &grads,
            &params,
            options,
            &crate::train::Budget::start(ctx.setup.check_budget),
        )
        .map_err(|e| match e {
            CheckError::Torch(t) => CheckError::Skip(format!(
                "a Hessian-vector product (double backward) fails on this model: {}",
                t.to_string().lines().next().unwrap_or("")
            )),
            other => other,
        })?;
        sharpness += setup.weight_decay;
        let iterations = estimates.len();
        let mut curve = Curve::new("sharpness estimate per Lanczos step", estimates);
        if sharpness <= 0.0 {
            return Ok(CheckResult::passed().curve(curve));
        }
        let max_stable_lr = stable / sharpness;
        curve.target = Some(stable / setup.lr);
        if setup.lr <= max_stable_lr {
            return Ok(CheckResult::passed().curve(curve));
        }
        // Near the bound SGD may self-stabilise: only the run's evidence says it does not (issue 23).
        let mut confirmed_by = None;
        if setup.lr <= options.factor * max_stable_lr {
            drop(grads);
            drop(params);
            confirmed_by = match log_diverges(ctx) {
                Some(why) => Some(why),
                None => short_run_fails(ctx, model, &x, &y, loss_kind)?,
            };
            if confirmed_by.is_none() {
                return Ok(CheckResult::passed().curve(curve));
            }
        }
        let v = LrAboveBound {
            confirmed_by,
            lr: setup.lr,
            momentum: setup.momentum,
            sharpness,
            bound: stable / setup.lr,
            max_stable_lr,
            batch: n as usize,
            iterations,
        };
        Ok(CheckResult::found(&v, Location::config("setup.lr")).curve(curve))
    }
}
