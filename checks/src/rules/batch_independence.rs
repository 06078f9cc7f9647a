//! batch-independence: in eval mode, each sample's output depends on that sample's input only.
use super::prelude::*;
use tch::{Kind, Tensor};

pub struct BatchIndependence;

static INFO: CheckInfo = CheckInfo {
    id: "batch-independence",
    group: Group::Model,
    default_level: Level::Deny,
    summary: "In eval mode, each sample's output depends on that sample's input only",
    docs: Docs {
        what: "On a copy of the model in eval mode, runs the first `samples` samples as one batch, then \
the same batch with one sample j replaced by another sample of the data, for every j in turn, and \
measures how much the output of every other sample i changes. In eval mode (dropout off, BatchNorm on its \
running statistics) no layer of an ordinary network looks across the batch, so those outputs must not \
move at all.",
        why: "A reshape, view or transpose across dim 0, an RNN or attention layer whose batch_first does \
not match the data, or a reduction over the wrong dim mixes samples: the model trains on a blend of its \
batch, the loss still falls, and predictions depend on which samples share a batch.",
        details: include_str!("batch_independence.md"),
    },
    kinds: &[&SamplesMixed::KIND],
    draws_random: true,
    ..CheckInfo::PLAIN
};

/// Options of batch-independence.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct BatchIndependenceOptions {
    /// Samples in the probing batch (each is replaced once).
    #[schemars(range(min = 2))]
    pub samples: usize,
    /// Largest change of another sample's output, relative to the replaced sample's own, taken as noise.
    #[schemars(extend("exclusiveMinimum" = 0))]
    pub max_leak: f64,
}

impl Default for BatchIndependenceOptions {
    fn default() -> Self {
        BatchIndependenceOptions {
            samples: 4,
            max_leak: 1e-3,
        }
    }
}

/// In eval mode, changing one sample's input changes other samples' outputs
///
/// # Why
/// Without BatchNorm's batch statistics (eval mode) a network that treats samples independently gives each
/// sample an output that depends on its own input only. When other samples' outputs move, forward mixes the
/// batch: `h.view(T, N, H)` where `view(N, T, H)` was meant, `x.transpose(0, 1).reshape(N, -1)`, an nn.GRU /
/// nn.LSTM / nn.MultiheadAttention / nn.Transformer with batch_first=False fed [N, T, …] data (it runs along,
/// or attends across, the batch). Training still lowers the loss, on a blend of samples.
///
/// # How
/// Eval mode, no gradients, on a copy: the first `samples` samples (default 4) as one batch, then for every j
/// the batch with sample j replaced by another sample of the data (integer inputs such as token ids stay
/// valid; a float sample equal to its replacement gets noise instead). For every other sample i, the change
/// of output i (L2) relative to the change of output j. Error when any ratio exceeds `max_leak` (default
/// 1e-3; an independent forward changes them by exactly 0). When every mixed pair has i after j, the message
/// says so: that is a recurrent layer running along the batch. Every pass starts from the same seed, so a
/// forward that draws noise in eval mode (a VAE's sampling) draws it alike each time; skipped when two passes
/// on the same batch still differ, when the output's dim 0 is not the batch, or when no replacement changes
/// its own sample's output (a constant output, e.g. a zero-initialised head).
///
/// # Fix
/// Keep dim 0 the batch through forward: reshape with the batch size first (`x.reshape(N, -1)`, `h.view(N, T,
/// H)`), permute before a reshape only with `.permute(…).contiguous()` in the intended order, and set
/// batch_first=True on RNN / attention / Transformer layers fed [N, T, …]. A model meant to look across the
/// batch (set models, in-batch contrastive logits) can ignore this check.
#[derive(Serialize, ViolationMetadata)]
#[kind(id = "batch-independence/samples-mixed", grade = error)]
#[kind(example(args = "--model fixtures/models/bi_gru_not_batch_first.pt --data fixtures/data/sequences.npz", severity = error, message = "in eval mode, 6 of 12 (replaced, other) sample pairs in a batch of 4 are mixed: replacing sample 2 changes the output of sample 3 by 0.648× its own change; only later samples are affected, as by an RNN / LSTM / GRU running along the batch (batch_first=False fed [N, T, …] data)"))]
pub struct SamplesMixed {
    /// (replaced sample j, changed sample i) pairs past `max_leak`.
    pub mixed_pairs: usize,
    /// Pairs judged (the replaced sample's own output changed).
    pub judged_pairs: usize,
    /// Samples in the probing batch.
    pub batch: usize,
    /// The largest change of another sample's output, relative to the replaced sample's own change.
    pub worst_leak: f64,
    /// The replaced sample and the changed sample of the worst pair.
    pub worst_pair: (usize, usize),
    /// Every mixed pair has the changed sample after the replaced one.
    pub only_later_samples: bool,
}

impl Violation for SamplesMixed {
    fn message(&self) -> String {
        let (j, i) = self.worst_pair;
        let pattern = if self.only_later_samples {
            "; only later samples are affected, as by an RNN / LSTM / GRU running along the batch \
(batch_first=False fed [N, T, …] data)"
        } else {
            ": forward mixes samples across dim 0 (a reshape / view / transpose across the batch, or \
attention over the batch)"
        };
        format!(
            "in eval mode, {} of {} (replaced, other) sample pairs in a batch of {} are mixed: replacing \
sample {j} changes the output of sample {i} by {}× its own change{pattern}",
            self.mixed_pairs,
            self.judged_pairs,
            self.batch,
            num(self.worst_leak)
        )
    }
    fn help(&self) -> String {
        "keep dim 0 the batch through forward (reshape with the batch size first, view in the order the \
memory holds) and set batch_first=True on RNN / attention layers fed [N, T, …]"
            .into()
    }
}

/// The L2 norm of each sample's slice along dim 0 of `t` (float64).
fn per_sample_norms(t: &Tensor) -> Result<Vec<f64>, CheckError> {
    let n = t.size()[0];
    let flat = t
        .f_to_kind(Kind::Double)?
        .f_reshape([n, -1])?
        .f_to_device(tch::Device::Cpu)?;
    let norms = flat.f_norm_scalaropt_dim(2, [1i64].as_slice(), false)?;
    Ok(Vec::<f64>::try_from(&norms)?)
}

/// A replacement for sample `j` of `batch`: another sample of the data, unchanged in kind (token ids stay
/// token ids). A float sample equal to every candidate gets noise of the data's scale instead.
fn replacement(all: &Tensor, batch: &Tensor, j: i64) -> Result<Option<Tensor>, CheckError> {
    let (n_all, n) = (all.size()[0], batch.size()[0]);
    let own = batch.f_get(j)?;
    // Samples after the batch first (the batch's own samples last), so the batch never holds duplicates
    // when the data has enough samples.
    let candidates = (0..n_all)
        .map(|k| (n + j + k) % n_all)
        .filter(|&k| k != j)
        .take(8);
    for k in candidates {
        let other = all.f_get(k)?;
        if !other.f_equal(&own)? {
            return Ok(Some(other));
        }
    }
    if own.is_floating_point() {
        let scale = all
            .f_to_kind(Kind::Double)?
            .f_std(false)?
            .f_double_value(&[])?;
        let scale = if scale.is_finite() && scale > 0.0 {
            scale
        } else {
            1.0
        };
        let noise = own.f_randn_like()?.f_mul_scalar(scale)?;
        return Ok(Some(own.f_add(&noise)?));
    }
    Ok(None)
}

impl Check for BatchIndependence {
    type Options = BatchIndependenceOptions;

    const INFO: &'static CheckInfo = &INFO;

    fn run(&self, ctx: &Context, options: &BatchIndependenceOptions) -> CheckOutput {
        let (model, data) = (ctx.model()?, ctx.data()?);
        let n = data.len().min(options.samples) as i64;
        if n < 2 {
            return Err(CheckError::Skip(format!(
                "needs at least 2 samples to compare, the data has {}",
                data.len()
            )));
        }
        let device = model.device();
        // The batch and the samples that replace its members: no more of the data goes to the device.
        let pool = (data.len() as i64).min(2 * n);
        let all = data.inputs.f_narrow(0, 0, pool)?.f_to_device(device)?;
        let x = all.f_narrow(0, 0, n)?;
        let mut copy = model.trainable_copy()?;
        let _no_grad = tch::no_grad_guard();
        // Running statistics that an eval-mode forward moves are BatchNorm normalising with the
        // batch's own statistics (batch_norm traced with training=True): samples mix by design.
        // (The buffers share storage with the copy, so they show what the forward did.)
        let live_stats: Vec<Tensor> = copy
            .buffers()?
            .into_iter()
            .filter(|(name, _)| name.ends_with("running_mean") || name.ends_with("running_var"))
            .map(|(_, b)| b)
            .collect();
        let before = live_stats
            .iter()
            .map(|b| b.f_detach_copy())
            .collect::<Result<Vec<_>, _>>()?;
        // The same seed before every pass: a forward that draws noise in eval mode (a VAE's sampling,
        // dropout forced on) draws the same noise for every sample each time.
        let seed = ctx.setup.seed as i64;
        let mut forward = |batch: &Tensor| {
            tch::manual_seed(seed);
            copy.forward(batch, Mode::Eval)
        };
        let base = forward(&x)?;
        let after = &live_stats;
        if before.iter().zip(after).any(|(a, b)| !a.equal(b)) {
            return Err(CheckError::Skip(
                "BatchNorm uses the batch's statistics even in eval mode (an eval-mode forward moved its \
running statistics, as in a model traced in train mode): samples mix through it by design"
                    .into(),
            ));
        }
        if base.dim() == 0 || base.size()[0] != n {
            return Err(CheckError::Skip(format!(
                "the output's shape {:?} has no batch dim of {n} to pair outputs with samples",
                base.size()
            )));
        }
        if base.f_isfinite()?.f_all()?.f_int64_value(&[])? == 0 {
            return Err(CheckError::Skip(
                "the eval-mode output holds NaN or Inf".into(),
            ));
        }
        let repeat = per_sample_norms(&forward(&x)?.f_sub(&base)?)?;
        let scale = per_sample_norms(&base)?.into_iter().fold(0.0, f64::max);
        if repeat.iter().any(|d| *d > 1e-6 * scale) {
            return Err(CheckError::Skip(
                "the eval-mode output changes between two passes on the same batch (the forward draws \
random numbers in a way a fixed seed does not repeat)"
                    .into(),
            ));
        }
        let (mut judged, mut mixed) = (0usize, Vec::new());
        let mut worst = (0.0f64, (0usize, 0usize));
        let mut curve = Curve::new("largest leak per replaced sample", Vec::new());
        for j in 0..n {
            let Some(other) = replacement(&all, &x, j)? else {
                continue;
            };
            let mut changed = x.f_zeros_like()?;
            changed.f_copy_(&x)?;
            changed.f_get(j)?.f_copy_(&other)?;
            let out = forward(&changed)?;
            if out.size() != base.size() {
                return Err(CheckError::Skip(format!(
                    "the output's shape changes with the batch's contents ({:?} then {:?})",
                    base.size(),
                    out.size()
                )));
            }
            let delta = per_sample_norms(&out.f_sub(&base)?)?;
            let own = delta[j as usize];
            if !(own.is_finite() && own > 0.0) {
                continue; // the model ignores this input change: nothing to compare with
            }
            let mut largest = 0.0f64;
            for (i, d) in delta.iter().enumerate() {
                if i == j as usize {
                    continue;
                }
                judged += 1;
                let leak = if d.is_finite() {
                    d / own
                } else {
                    f64::INFINITY
                };
                largest = largest.max(leak);
                if leak > options.max_leak {
                    mixed.push((j as usize, i));
                    if leak > worst.0 {
                        worst = (leak, (j as usize, i));
                    }
                }
            }
            curve.x.push(j as f64);
            curve.y.push(largest);
            curve.labels.push(format!("sample {j}"));
        }
        if judged == 0 {
            return Err(CheckError::Skip(
                "no replaced sample changed its own output, so there is nothing to compare".into(),
            ));
        }
        curve.target = Some(options.max_leak);
        if mixed.is_empty() {
            return Ok(CheckResult::passed()); // a curve of zeros says nothing a pass does not
        }
        let v = SamplesMixed {
            mixed_pairs: mixed.len(),
            judged_pairs: judged,
            batch: n as usize,
            worst_leak: worst.0,
            worst_pair: worst.1,
            only_later_samples: mixed.iter().all(|(j, i)| i > j),
        };
        let at = Location::data(&data.input_key, Some((0, n as usize)));
        Ok(CheckResult::found(&v, at).curve(curve))
    }
}
