//! Training helpers shared by the checks that train an in-memory copy: the configured loss, the
//! optimizers (libtorch's update rules, in place: [`crate::optim`]) over the copy's parameters, and a fit
//! loop that records the curve.
use tch::{Kind, Reduction, Tensor};

use crate::optim::Optimizer;

use crate::ports::{LossKind, Mode, OptimizerKind, TrainableModel};
use crate::stats::Rng;
// Class-probability (soft) targets (issue 22, 4) live in `crate::targets`, which `ports` reads too.
use crate::targets::not_probabilities;
pub use crate::targets::{
    check_probability_targets, holds_probabilities, probability_problem, PROBABILITY_SUM_TOLERANCE,
};
use crate::CheckError;

/// The target PyTorch's classification losses skip (`ignore_index`), the only negative index allowed.
const IGNORE_INDEX: i64 = -100;

/// The loss between a prediction and its target, as PyTorch's functional losses compute it.
///
/// Class indices are validated first ([`check_class_targets`]): libtorch answers an index outside the
/// logits with a C++ error and its stack, not with words. Float targets shaped like the logits are
/// class probabilities ([`holds_probabilities`]: one-hot, label-smoothed, mixup or distillation
/// targets): cross_entropy reads them as such, nll as −Σ t·log p over the classes; targets that are not
/// probabilities make the check skip with the reason ([`check_probability_targets`]).
pub fn loss(kind: LossKind, prediction: &Tensor, target: &Tensor) -> Result<Tensor, CheckError> {
    let soft = kind.is_classification() && holds_probabilities(prediction, target);
    if soft {
        check_probability_targets(prediction, target)?;
    } else if kind.is_classification() {
        check_class_targets(target, class_count(prediction)?)?;
    }
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
        // A float target of the logits' shape is what libtorch reads as class probabilities.
        LossKind::CrossEntropy if soft => {
            prediction.f_cross_entropy_loss(&t(), none, Reduction::Mean, IGNORE_INDEX, 0.0)?
        }
        LossKind::CrossEntropy => prediction.f_cross_entropy_loss(
            &target.to_kind(Kind::Int64),
            none,
            Reduction::Mean,
            IGNORE_INDEX,
            0.0,
        )?,
        // nll_loss takes indices only: with probabilities, −Σ_k t_k · log p_k per sample (and
        // position), averaged as cross_entropy averages it.
        LossKind::Nll if soft => t()
            .f_mul(prediction)?
            .f_sum_dim_intlist([1i64].as_slice(), false, prediction.kind())?
            .f_mean(prediction.kind())?
            .f_neg()?,
        LossKind::Nll => prediction.f_nll_loss(
            &target.to_kind(Kind::Int64),
            none,
            Reduction::Mean,
            IGNORE_INDEX,
        )?,
    })
}

/// The number of logits K of a classification output: dim 1 of a batch `[N, K, …]`, dim 0 of a single
/// sample `[K]`.
pub fn class_count(prediction: &Tensor) -> Result<i64, CheckError> {
    match prediction.size()[..] {
        [] => Err(CheckError::Other(
            "the model's output is a scalar (0-d); a classification loss needs logits per class"
                .into(),
        )),
        [k] => Ok(k),
        [_, k, ..] => Ok(k),
    }
}

/// Every class index in `targets` names one of `classes` logits: 0..K-1, or -100 (PyTorch's
/// `ignore_index`). The error names the first bad index and its sample (dim 0 of `targets`): pass the
/// whole targets, or a batch that starts at sample 0, for the sample to be the data's.
///
/// Float targets `[N, K, …]` with K = `classes` ≥ 2 are class probabilities, not indices: they are
/// checked as such ([`probability_problem`]), a skip with the reason when they are not.
pub fn check_class_targets(targets: &Tensor, classes: i64) -> Result<(), CheckError> {
    if targets.numel() == 0 {
        return Ok(());
    }
    if targets.is_floating_point()
        && targets.dim() >= 2
        && targets.size()[1] == classes
        && classes >= 2
    {
        return match probability_problem(targets)? {
            None => Ok(()),
            Some(problem) => Err(not_probabilities(classes, &problem)),
        };
    }
    let flat = targets
        .f_to_kind(Kind::Int64)?
        .f_flatten(0, -1)?
        .f_to_device(tch::Device::Cpu)?;
    let values = Vec::<i64>::try_from(&flat)?;
    let per_sample = match targets.size().first() {
        Some(&n) if n > 0 => values.len() / n as usize,
        _ => 1,
    }
    .max(1);
    let bad = values
        .iter()
        .position(|&c| (c < 0 && c != IGNORE_INDEX) || c >= classes);
    // Float targets reach the loss cast to integers; say so, or "class index 1" reads as a mistake.
    let cast = if targets.is_floating_point() {
        format!(" (the {:?} targets cast to integers)", targets.kind())
    } else {
        String::new()
    };
    match bad {
        None => Ok(()),
        Some(i) => Err(CheckError::Other(format!(
            "targets hold class index {} at sample {}{cast}; class indices must be in 0..{} for K = {classes} logits",
            values[i],
            i / per_sample,
            classes - 1
        ))),
    }
}

/// −Σ_k p_k ln p_k along dim 1 (0 · ln 0 = 0), per sample and position.
fn entropy_along_classes(p: &Tensor) -> Result<Tensor, CheckError> {
    let plogp = p.f_mul(&p.f_clamp_min(1e-300)?.f_log()?)?;
    Ok(plogp
        .f_sum_dim_intlist([1i64].as_slice(), false, Kind::Double)?
        .f_neg()?)
}

/// The mean entropy of class-probability targets, in nats: the floor of cross_entropy on them (its
/// value when the predicted probabilities equal the targets; 0 for one-hot targets).
pub fn mean_target_entropy(targets: &Tensor) -> Result<f64, CheckError> {
    let p = targets.f_to_kind(Kind::Double)?;
    let h = entropy_along_classes(&p)?
        .f_mean(Kind::Double)?
        .f_double_value(&[])?;
    // One-hot targets have no floor; rounding leaves ~1e-16.
    Ok(if h < 1e-9 { 0.0 } else { h })
}

/// The binary entropy −p·ln p − (1−p)·ln(1−p) of each probability in `p`, in nats, in f64 (p clamped
/// to [1e-12, 1 − 1e-12]): what `bce` scores at best on targets of those frequencies.
pub fn binary_entropy(p: &Tensor) -> Result<Tensor, CheckError> {
    let p = p.f_to_kind(Kind::Double)?.f_clamp(1e-12, 1.0 - 1e-12)?;
    let q = p.f_neg()?.f_add_scalar(1.0)?;
    Ok(p.f_mul(&p.f_log()?)?
        .f_add(&q.f_mul(&q.f_log()?)?)?
        .f_neg()?)
}

/// The entropy of the mean of class-probability targets (over samples and positions), in nats: the
/// cross_entropy of the best constant prediction, the soft targets' class prior.
pub fn probability_prior_entropy(targets: &Tensor) -> Result<f64, CheckError> {
    let p = targets.f_to_kind(Kind::Double)?;
    let dims: Vec<i64> = std::iter::once(0).chain(2..p.dim() as i64).collect();
    let mean = p.f_mean_dim(dims.as_slice(), true, Kind::Double)?;
    Ok(entropy_along_classes(&mean)?
        .f_sum(Kind::Double)?
        .f_double_value(&[])?)
}

/// The optimizer of the configured kind (libtorch's update rules) over every parameter of `model`.
pub fn optimizer(
    model: &dyn TrainableModel,
    kind: OptimizerKind,
    lr: f64,
    momentum: f64,
    weight_decay: f64,
) -> Result<Optimizer, CheckError> {
    let mut opt = Optimizer::new(kind, lr, momentum, weight_decay)?;
    for (_, p) in model.parameters()? {
        if p.requires_grad() {
            opt.add_parameter(&p)?;
        }
    }
    Ok(opt)
}

/// The intra-op CPU threads of checks that train side by side on worker threads (the CLI's runner):
/// `total` threads shared by the checks still running. Each takes its share before every step
/// ([`Budget::allow`] calls [`take_share`]), so a check that ends hands its threads to the others.
/// libtorch keeps the thread count per thread (OpenMP's), so a share changes only its own thread.
pub mod side_by_side {
    use std::cell::{Cell, RefCell};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;

    use tch::Tensor;

    use crate::CheckError;

    static TOTAL: AtomicUsize = AtomicUsize::new(0);
    static RUNNING: AtomicUsize = AtomicUsize::new(0);

    thread_local! {
        static MINE: Cell<usize> = const { Cell::new(0) };
    }

    /// `checks` checks start side by side on `total` threads.
    pub fn begin(total: usize, checks: usize) {
        TOTAL.store(total, Ordering::SeqCst);
        RUNNING.store(checks, Ordering::SeqCst);
    }

    /// The checks side by side are over (those that timed out may still run: their share stops
    /// changing, and nothing else takes one).
    pub fn finish() {
        RUNNING.store(0, Ordering::SeqCst);
    }

    /// A check that ran side by side ended (on its thread).
    pub fn ended() {
        let _ = RUNNING.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
    }

    /// The share of the threads this thread should use now; None when no checks run side by side.
    pub fn share() -> Option<usize> {
        let running = RUNNING.load(Ordering::SeqCst);
        (running > 0).then(|| (TOTAL.load(Ordering::SeqCst) / running).max(1))
    }

    /// Sets this thread's libtorch thread count to its [`share`], when that changed.
    pub fn take_share() {
        if let Some(want) = share() {
            MINE.with(|mine| {
                if mine.get() != want {
                    tch::set_num_threads(want as i32);
                    mine.set(want);
                }
            });
        }
    }

    // ---- a generator of its own for each check side by side
    //
    // libtorch has one global CPU generator. A model whose training forward draws random numbers
    // (dropout) would have checks side by side take their draws from it in whatever order their
    // threads reach it, and each check's result would depend on timing. Instead each such check keeps
    // the generator's state as its own: a forward takes the one lock, puts the check's state into the
    // generator, runs, and takes the state back out. Forwards of such a model then run one at a time,
    // while the backward passes and optimizer steps still overlap, and every check draws exactly the
    // numbers it draws when run alone.

    /// What a check's own generator holds: just seeded (as `manual_seed` leaves it), or a state.
    enum Own {
        Seeded(i64),
        State(Tensor),
    }

    thread_local! {
        /// This thread's own generator; None when it shares the global one (run alone).
        static OWN: RefCell<Option<Own>> = const { RefCell::new(None) };
        /// Whether this thread holds the generator now (a forward inside a forward takes it once).
        static HOLDING: Cell<bool> = const { Cell::new(false) };
    }

    /// The one lock that forwards drawing from an own generator take.
    static GENERATOR: Mutex<()> = Mutex::new(());

    /// Reads and replaces the global CPU generator's state (the model adapter implements it: tch
    /// has no such call).
    pub trait GeneratorState {
        fn get(&self) -> Result<Tensor, CheckError>;
        fn set(&self, state: &Tensor) -> Result<(), CheckError>;
    }

    /// From now on this thread (a check's worker) draws from a generator of its own, seeded with
    /// `seed`, in every forward it runs through [`drawing`].
    pub fn own_generator(seed: i64) {
        OWN.with(|own| *own.borrow_mut() = Some(Own::Seeded(seed)));
    }

    /// Whether this thread draws from a generator of its own.
    fn owns_generator() -> bool {
        OWN.with(|own| own.borrow().is_some())
    }

    /// `tch::manual_seed` for a check: seeds its own generator when it has one, else the global one.
    pub fn manual_seed(seed: i64) {
        OWN.with(|own| match own.borrow_mut().as_mut() {
            Some(own) => *own = Own::Seeded(seed),
            None => tch::manual_seed(seed),
        })
    }

    /// Runs `f` (a forward) drawing from this thread's own generator, when it has one; else just runs
    /// it.
    pub fn drawing<R>(
        generator: &dyn GeneratorState,
        f: impl FnOnce() -> Result<R, CheckError>,
    ) -> Result<R, CheckError> {
        if !owns_generator() || HOLDING.with(Cell::get) {
            return f();
        }
        // A check that panicked while holding the lock left no state half-written that matters here:
        // every holder replaces the generator's whole state first.
        let _lock = GENERATOR.lock().unwrap_or_else(|e| e.into_inner());
        OWN.with(|own| match own.borrow().as_ref() {
            Some(Own::Seeded(seed)) => {
                tch::manual_seed(*seed);
                Ok(())
            }
            Some(Own::State(state)) => generator.set(state),
            None => Ok(()),
        })?;
        HOLDING.with(|h| h.set(true));
        let out = f();
        HOLDING.with(|h| h.set(false));
        let state = generator.get()?;
        OWN.with(|own| *own.borrow_mut() = Some(Own::State(state)));
        out
    }
}

/// A check's time budget (`run.check_budget`, seconds; 0: none), shared by every training the check
/// runs. A check asks it before each step; when the budget is spent, or when the steps the check still
/// needs before it can reach any verdict cannot fit at the measured time per step, the answer is an
/// undecided skip that says how far the check got, never a pass.
pub struct Budget {
    limit: Option<std::time::Duration>,
    started: std::time::Instant,
}

impl Budget {
    /// Starts the clock (at the start of the check).
    pub fn start(seconds: f64) -> Budget {
        Budget {
            // Beyond 1e6 s (11.6 days) is no limit: it also keeps `Duration` far from overflowing.
            limit: (seconds > 0.0 && seconds <= 1e6)
                .then(|| std::time::Duration::from_secs_f64(seconds)),
            started: std::time::Instant::now(),
        }
    }

    /// Before step `done + 1` of a training of `what` that has run `done` steps since `since` and cannot
    /// decide before step `needed`: Ok to go on, or the undecided skip.
    pub fn allow(
        &self,
        what: &str,
        done: usize,
        needed: usize,
        since: std::time::Instant,
    ) -> Result<(), CheckError> {
        side_by_side::take_share();
        let Some(limit) = self.limit else {
            return Ok(());
        };
        let spent = self.started.elapsed();
        let per_step = if done > 0 {
            since.elapsed().as_secs_f64() / done as f64
        } else {
            0.0
        };
        // The first step carries one-off costs (the graph executor's profiling runs): project from
        // the second on.
        let projected = if done >= 2 {
            spent.as_secs_f64() + needed.saturating_sub(done) as f64 * per_step
        } else {
            spent.as_secs_f64()
        };
        if spent <= limit && projected <= limit.as_secs_f64() {
            return Ok(());
        }
        let pace = if done > 0 {
            format!(" at {} per step", seconds(per_step))
        } else {
            String::new()
        };
        let reached = if spent > limit {
            format!("the {} budget ran out", seconds(limit.as_secs_f64()))
        } else {
            format!(
                "it cannot reach a verdict before step {needed}, {} from now, within the {} budget",
                seconds(projected - spent.as_secs_f64()),
                seconds(limit.as_secs_f64())
            )
        };
        Err(CheckError::Skip(format!(
            "undecided: {what} ran {done} steps{pace} and {reached} (raise run.check_budget or pass --check-budget; 0 = no limit)"
        )))
    }
}

/// Seconds for messages: "850 ms", "4.2 s", "61 s".
fn seconds(s: f64) -> String {
    if s < 1.0 {
        format!("{:.0} ms", s * 1000.0)
    } else if s < 10.0 {
        format!("{s:.1} s")
    } else {
        format!("{s:.0} s")
    }
}

/// One optimisation step on (inputs, targets); returns the loss before the step.
pub fn step(
    model: &mut dyn TrainableModel,
    opt: &Optimizer,
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

/// `size` sample indices drawn without replacement (the whole range when `size >= n`).
pub fn batch_indices(rng: &mut Rng, n: usize, size: usize) -> Tensor {
    let mut idx: Vec<i64> = (0..n as i64).collect();
    rng.shuffle(&mut idx);
    idx.truncate(size.min(n).max(1));
    Tensor::from_slice(&idx)
}

/// The outcome of fitting a fixed batch.
pub struct Fit {
    /// The loss before each step.
    pub losses: Vec<f64>,
    /// Gradient norm of every parameter after the first backward pass.
    pub first_gradients: Vec<(String, f64)>,
    /// Whether the loss carried a gradient at all (false: the output is detached or constant).
    pub has_graph: bool,
    /// Whether `done` was met.
    pub reached: bool,
}

/// Train `model` on one fixed batch with Adam until `done(loss, prediction)` holds or `max_steps`
/// pass. `progress` receives (step, max_steps, loss). The fit can succeed at any step, so the budget
/// stops it only once spent (an undecided skip named after `what`).
#[allow(clippy::too_many_arguments)]
pub fn fit_batch(
    model: &mut dyn TrainableModel,
    inputs: &Tensor,
    targets: &Tensor,
    loss_kind: LossKind,
    lr: f64,
    max_steps: usize,
    done: &dyn Fn(f64, &Tensor) -> bool,
    progress: &dyn Fn(usize, usize, f64),
    budget: &Budget,
    what: &str,
) -> Result<Fit, CheckError> {
    let opt = optimizer(model, OptimizerKind::Adam, lr, 0.0, 0.0)?;
    let started = std::time::Instant::now();
    let mut fit = Fit {
        losses: Vec::new(),
        first_gradients: Vec::new(),
        has_graph: true,
        reached: false,
    };
    for step in 0..=max_steps {
        budget.allow(what, step, step + 1, started)?;
        opt.zero_grad()?;
        let prediction = model.forward(inputs, Mode::Train)?;
        let l = loss(loss_kind, &prediction, targets)?;
        let value = l.f_double_value(&[])?;
        fit.losses.push(value);
        progress(step, max_steps, value);
        if done(value, &prediction) {
            fit.reached = true;
            break;
        }
        if !value.is_finite() || step == max_steps {
            break;
        }
        if !l.requires_grad() {
            fit.has_graph = false;
            break;
        }
        l.f_backward()?;
        if step == 0 {
            fit.first_gradients = gradient_norms(model)?;
            // Nothing can change when no parameter gets a gradient: stop instead of spinning.
            if fit.first_gradients.iter().all(|(_, g)| *g == 0.0) {
                break;
            }
        }
        opt.step()?;
    }
    Ok(fit)
}

/// Why a fixed batch could not be fitted, when the gradients tell: no gradient reached the parameters.
pub fn no_gradient_cause(fit: &Fit) -> Option<String> {
    if !fit.has_graph {
        return Some(
            "no gradient reaches the parameters: the loss does not depend on any of them (the output is detached \
or constant)"
                .to_string(),
        );
    }
    let total = fit.first_gradients.len();
    let zero = fit
        .first_gradients
        .iter()
        .filter(|(_, g)| *g == 0.0)
        .count();
    (total > 0 && zero == total).then(|| {
        format!(
            "no gradient reaches the parameters: all {total} parameters got a zero gradient (the output path is \
detached, multiplied by 0, or constant)"
        )
    })
}

// ---- issue 11: less work for the same verdicts (crops of fully convolutional models, timings)

/// The smallest side a crop keeps: a fit on smaller crops would mostly see the zero padding.
pub const MIN_CROP_SIDE: i64 = 32;

/// The side a crop of a spatial dimension of size `s` keeps: half of it (at least [`MIN_CROP_SIDE`]),
/// rounded down to a multiple of the largest power of two (up to 32) that divides `s`, so that a model
/// that pools or strides down and back up by that factor keeps its shapes; `s` itself when no such
/// smaller side exists.
fn crop_side(s: i64) -> i64 {
    if s < 2 * MIN_CROP_SIDE {
        return s;
    }
    let p = (1i64 << s.trailing_zeros().min(5)).max(1);
    let c = (s / 2) / p * p;
    if c >= MIN_CROP_SIDE && c < s {
        c
    } else {
        s
    }
}

/// The centred crop of every spatial dimension (dims 2..) of `t` to `sides`.
pub fn crop(t: &Tensor, sides: &[i64]) -> Result<Tensor, CheckError> {
    let size = t.size();
    let mut out = t.shallow_clone();
    for (i, &c) in sides.iter().enumerate() {
        let d = i + 2;
        let s = size[d];
        if c < s {
            out = out.f_narrow(d as i64, (s - c) / 2, c)?;
        }
    }
    Ok(out.f_contiguous()?)
}

/// The spatial sides of a smaller crop on which a fit of `model` on `inputs` (`[N, C, *spatial]`)
/// teaches the same thing, or `None` to keep the full size. `full_output` is the shape of the
/// model's output on a batch of these inputs (any batch size).
///
/// A fit that asks a fully convolutional model for a per-position output (copy the input, denoise it)
/// trains the same kernels on a crop as on the whole image, at a fraction of the cost per step (a
/// quarter for half the side in 2-D). Whether the model is fully convolutional is observed, not
/// guessed: its output must have the same shape as its input at the full size (the caller's shared
/// prediction) and again on a crop of one sample (one eval-mode forward that changes no state). A
/// model that flattens, has a fixed-size layer, or fails on the crop keeps the full size.
pub fn fully_convolutional_crop(
    model: &dyn crate::ports::Model,
    inputs: &Tensor,
    full_output: &[i64],
) -> Result<Option<Vec<i64>>, CheckError> {
    let size = inputs.size();
    if size.len() < 3 || full_output.get(1..) != size.get(1..) {
        return Ok(None);
    }
    let sides: Vec<i64> = size[2..].iter().map(|&s| crop_side(s)).collect();
    if sides.iter().zip(&size[2..]).all(|(c, s)| c == s) {
        return Ok(None);
    }
    let one = crop(&inputs.f_narrow(0, 0, 1)?, &sides)?;
    // A model that refuses the crop (a fixed-size layer, a reshape to the full size) keeps the full
    // size: the error says only that the crop does not apply.
    Ok(match model.predict(&one) {
        Ok(out) if out.size() == one.size() => Some(sides),
        _ => None,
    })
}

/// Inputs and targets of a per-position fit (targets shaped like the inputs, an image-to-image model)
/// cropped alike when [`fully_convolutional_crop`] finds a crop, with the crop's sides joined as
/// `32×32`; unchanged otherwise (and always for classification).
pub fn crop_fit_batch(
    model: &dyn crate::ports::Model,
    full_output: &[i64],
    inputs: Tensor,
    targets: Tensor,
    classification: bool,
) -> Result<(Tensor, Tensor, Option<String>), CheckError> {
    if classification || targets.size() != inputs.size() {
        return Ok((inputs, targets, None));
    }
    match fully_convolutional_crop(model, &inputs, full_output)? {
        Some(sides) => Ok((
            crop(&inputs, &sides)?,
            crop(&targets, &sides)?,
            Some(crop_label(&sides)),
        )),
        None => Ok((inputs, targets, None)),
    }
}

/// A crop's sides as the reports name them: `32×32`.
pub fn crop_label(sides: &[i64]) -> String {
    let sides: Vec<String> = sides.iter().map(|v| v.to_string()).collect();
    sides.join("×")
}

/// How a fit check (identity-overfit, overfit-batch) ends: its loss curve, on a log scale, aiming at
/// `target`, with the run; passed when the fit reached the target, else the one finding `failed` builds
/// from the curve's first and last value, at `at` (the fitted samples), the whole curve its window.
pub fn fit_outcome<V: crate::finding::Violation>(
    mut curve: crate::finding::Curve,
    target: f64,
    run: crate::TrainingRun,
    reached: bool,
    at: crate::finding::Location,
    failed: impl FnOnce(f64, f64) -> Result<V, CheckError>,
) -> Result<crate::CheckResult, CheckError> {
    curve.target = Some(target);
    curve.log_scale = true;
    if reached {
        return Ok(crate::CheckResult::passed().curve(curve).trained(run));
    }
    let (Some(&start), Some(&end)) = (curve.y.first(), curve.y.last()) else {
        return Err(CheckError::Other("a fit without a single loss".into()));
    };
    let violation = failed(start, end)?;
    curve.window = Some((0.0, (curve.y.len() - 1) as f64));
    Ok(crate::CheckResult::found(&violation, at)
        .curve(curve)
        .trained(run))
}

/// How much training a check did, for the JSON report (the compute floor is steps × ms per step).
pub fn training_run(
    name: &str,
    fit_inputs: &Tensor,
    forwards: usize,
    steps: usize,
    started: std::time::Instant,
) -> crate::TrainingRun {
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    crate::TrainingRun {
        name: name.to_string(),
        input_shape: fit_inputs.size(),
        steps,
        forwards,
        ms_per_step: ms / steps.max(1) as f64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logits(n: i64, k: i64) -> Tensor {
        Tensor::zeros([n, k], (Kind::Float, tch::Device::Cpu))
    }

    #[test]
    fn class_indices_outside_the_logits_are_refused_in_words() {
        let prediction = logits(8, 4);
        for (bad, at) in [(-1, 3), (4, 5), (7, 0)] {
            let mut t = vec![0i64, 1, 2, 3, 0, 1, 2, 3];
            t[at] = bad;
            let err = loss(LossKind::CrossEntropy, &prediction, &Tensor::from_slice(&t))
                .unwrap_err()
                .to_string();
            assert_eq!(
                err,
                format!("targets hold class index {bad} at sample {at}; class indices must be in 0..3 for K = 4 logits")
            );
            let log_probs = prediction.log_softmax(1, Kind::Float);
            let err = loss(LossKind::Nll, &log_probs, &Tensor::from_slice(&t)).unwrap_err();
            assert!(matches!(err, CheckError::Other(_)), "{err}");
        }
    }

    #[test]
    fn valid_and_ignored_class_indices_reach_the_loss() {
        let t = Tensor::from_slice(&[0i64, 3, -100, 2]);
        let l = loss(LossKind::CrossEntropy, &logits(4, 4), &t).unwrap();
        assert!((l.double_value(&[]) - 4f64.ln()).abs() < 1e-6);
    }

    #[test]
    fn the_sample_of_a_bad_index_in_dense_targets_is_its_dim_0() {
        // Segmentation: [N, H, W] targets for [N, K, H, W] logits.
        let mut t = vec![0i64; 3 * 2 * 2];
        t[2 * 4 + 1] = 9;
        let t = Tensor::from_slice(&t).reshape([3, 2, 2]);
        let err = check_class_targets(&t, 4).unwrap_err().to_string();
        assert!(err.contains("class index 9 at sample 2;"), "{err}");
    }

    #[test]
    fn a_scalar_output_has_no_logits() {
        let scalar = Tensor::from(1.5f32);
        let err = loss(
            LossKind::CrossEntropy,
            &scalar,
            &Tensor::from_slice(&[0i64]),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("scalar (0-d)"), "{err}");
    }

    // ---- issue 22, 4: class-probability targets
    fn one_hot(classes: &[i64], k: i64) -> Tensor {
        Tensor::from_slice(classes).one_hot(k).to_kind(Kind::Float)
    }

    fn logits_4x3() -> Tensor {
        Tensor::from_slice(&[2f32, -1., 0.5, 0.1, 0.2, 0.3, -3., 4., 1., 0., 0., 7.])
            .reshape([4, 3])
    }

    #[test]
    fn one_hot_probabilities_give_the_loss_of_their_class_indices() {
        let logits = logits_4x3();
        let classes = [0i64, 2, 1, 2];
        let soft = one_hot(&classes, 3);
        let hard = Tensor::from_slice(&classes);
        for kind in [LossKind::CrossEntropy, LossKind::Nll] {
            let p = if kind == LossKind::Nll {
                logits.log_softmax(1, Kind::Float)
            } else {
                logits.shallow_clone()
            };
            let a = loss(kind, &p, &soft).unwrap().double_value(&[]);
            let b = loss(kind, &p, &hard).unwrap().double_value(&[]);
            assert!((a - b).abs() < 1e-6, "{kind:?}: {a} vs {b}");
        }
    }

    #[test]
    fn label_smoothed_probabilities_give_pytorchs_label_smoothing_loss() {
        let logits = logits_4x3();
        let classes = [0i64, 2, 1, 2];
        let smoothed = one_hot(&classes, 3) * 0.9 + 0.1 / 3.0;
        let ours = loss(LossKind::CrossEntropy, &logits, &smoothed)
            .unwrap()
            .double_value(&[]);
        let torch = logits
            .cross_entropy_loss(
                &Tensor::from_slice(&classes),
                None::<&Tensor>,
                Reduction::Mean,
                -100,
                0.1,
            )
            .double_value(&[]);
        assert!((ours - torch).abs() < 1e-6, "{ours} vs {torch}");
        // nll with probabilities: −Σ t·log p, averaged over samples.
        let log_probs = logits.log_softmax(1, Kind::Float);
        let nll = loss(LossKind::Nll, &log_probs, &smoothed)
            .unwrap()
            .double_value(&[]);
        assert!((nll - ours).abs() < 1e-6, "{nll} vs {ours}");
    }

    #[test]
    fn float_targets_with_a_class_dim_that_are_not_probabilities_skip_in_words() {
        let logits = logits_4x3();
        let sums_to_2 =
            Tensor::from_slice(&[1f32, 1., 0., 0., 0., 1., 0., 1., 0., 0., 0., 1.]).reshape([4, 3]);
        let negative = one_hot(&[0, 1, 2, 0], 3) * 2.0 - 0.5;
        for (targets, problem) in [
            (&sums_to_2, "the 3 probabilities of sample 0 sum to 2"),
            (&negative, "sample 0 holds 1.5, outside [0, 1]"),
        ] {
            for kind in [LossKind::CrossEntropy, LossKind::Nll] {
                match loss(kind, &logits, targets) {
                    Err(CheckError::Skip(reason)) => {
                        assert!(
                            reason.contains("read them as class probabilities"),
                            "{reason}"
                        );
                        assert!(reason.contains(problem), "{reason}");
                    }
                    other => panic!("{kind:?}: {:?}", other.map(|t| t.double_value(&[]))),
                }
            }
            // The probe validates the whole targets up front with check_class_targets.
            let err = check_class_targets(targets, 3).unwrap_err();
            assert!(matches!(err, CheckError::Skip(_)), "{err}");
        }
        let nan = one_hot(&[0, 1, 2, 0], 3);
        let _ = nan.get(2).get(1).fill_(f64::NAN);
        assert!(probability_problem(&nan)
            .unwrap()
            .unwrap()
            .starts_with("sample 2 holds NaN"));
        // Not shaped like the logits: one probability per logit is needed.
        let err = loss(LossKind::CrossEntropy, &logits, &one_hot(&[0, 1, 2, 3], 5)).unwrap_err();
        assert!(
            matches!(&err, CheckError::Skip(r) if r.contains("one probability per logit")),
            "{err}"
        );
        // Float class indices (no class dim) are still cast to integers.
        let l = loss(
            LossKind::CrossEntropy,
            &logits,
            &Tensor::from_slice(&[0f32, 2., 1., 2.]),
        )
        .unwrap();
        assert!(l.double_value(&[]).is_finite());
    }

    #[test]
    fn dense_probabilities_are_checked_per_position_and_their_entropies_are_in_nats() {
        // [N=2, K=2, H=1, W=2]: every position's two values sum to 1.
        let t =
            Tensor::from_slice(&[0.5f32, 1., 0.5, 0., 0.9, 0.2, 0.1, 0.8]).reshape([2, 2, 1, 2]);
        assert_eq!(probability_problem(&t).unwrap(), None);
        let h = |p: f64| -(p * p.ln() + (1.0 - p) * (1.0 - p).ln());
        let mean = (h(0.5) + 0.0 + h(0.9) + h(0.2)) / 4.0;
        assert!((mean_target_entropy(&t).unwrap() - mean).abs() < 1e-6);
        // The mean distribution: class 0 has (0.5 + 1 + 0.9 + 0.2) / 4 = 0.65.
        assert!((probability_prior_entropy(&t).unwrap() - h(0.65)).abs() < 1e-6);
        assert_eq!(mean_target_entropy(&one_hot(&[0, 1, 1], 2)).unwrap(), 0.0);
        let logits = Tensor::zeros([2, 2, 1, 2], (Kind::Float, tch::Device::Cpu));
        let l = loss(LossKind::CrossEntropy, &logits, &t).unwrap();
        assert!((l.double_value(&[]) - 2f64.ln()).abs() < 1e-6);
        let bad = t.copy();
        let _ = bad.get(1).get(0).get(0).get(1).fill_(0.5);
        assert_eq!(
            probability_problem(&bad).unwrap().unwrap(),
            "the 2 probabilities of sample 1 sum to 1.3"
        );
    }

    // ---- issue 11
    #[test]
    fn a_crop_halves_each_side_to_a_multiple_of_its_power_of_two_and_never_below_32() {
        for (s, c) in [
            (64, 32),
            (65, 32),
            (128, 64),
            (96, 32),
            (100, 48),
            (224, 96),
        ] {
            assert_eq!(crop_side(s), c, "side {s}");
        }
        // Too small to halve without going below 32.
        for s in [1, 16, 32, 48, 63] {
            assert_eq!(crop_side(s), s, "side {s}");
        }
    }

    #[test]
    fn a_crop_is_centred_on_every_spatial_dimension_and_keeps_batch_and_channels() {
        let t =
            Tensor::arange(2 * 3 * 8 * 6, (Kind::Float, tch::Device::Cpu)).reshape([2, 3, 8, 6]);
        let c = crop(&t, &[4, 6]).unwrap();
        assert_eq!(c.size(), [2, 3, 4, 6]);
        // Rows 2..6 of each 8-row plane, every column.
        assert_eq!(c.double_value(&[0, 0, 0, 0]), 12.0);
        assert_eq!(c.double_value(&[1, 2, 3, 5]), t.double_value(&[1, 2, 5, 5]));
        assert!(c.is_contiguous());
    }
}
