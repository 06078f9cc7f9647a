//! Class-probability (soft) targets (issue 22, 4): whether a classification loss reads float targets
//! as class probabilities, and why they are not valid ones. Below both the ports (the dataset asks
//! it) and the training code, which re-exports it.
use tch::{Kind, Tensor};

use crate::CheckError;

/// How far the K probabilities of one sample (of one position, for dense targets) may sum from 1:
/// float32 rows of one-hot, label-smoothed or mixed targets sum to 1 within ~1e-6.
pub const PROBABILITY_SUM_TOLERANCE: f64 = 1e-3;

/// Whether a classification loss reads `target` as class probabilities rather than class indices:
/// floating point with as many dims as the logits and K ≥ 2 (`[N, K, …]`; indices have no class dim). PyTorch's
/// cross_entropy decides the same way (a float target of the input's shape); a float target of
/// another shape, e.g. `[N]`, holds indices and is cast to integers.
pub fn holds_probabilities(prediction: &Tensor, target: &Tensor) -> bool {
    // One class along dim 1 is no distribution (cross_entropy over it is 0 whatever the model does):
    // such targets stay indices, validated in words.
    target.is_floating_point()
        && target.dim() >= 2
        && target.dim() == prediction.dim()
        && target.size()[1] >= 2
}

/// Why `targets` (`[N, K, …]`) are not class probabilities along dim 1, in words naming the first
/// offending sample, or None when they are: every value finite and in [0, 1], each sample's (each
/// position's) K values summing to 1 ± [`PROBABILITY_SUM_TOLERANCE`].
pub fn probability_problem(targets: &Tensor) -> Result<Option<String>, CheckError> {
    let size = targets.size();
    if size.len() < 2 {
        return Ok(Some(format!(
            "they have shape {size:?}, without a class dim"
        )));
    }
    let t = targets
        .f_to_kind(Kind::Double)?
        .f_to_device(tch::Device::Cpu)?;
    let n = size[0].max(1);
    // The sample (dim 0) of the first true entry of `mask`, with the entry's flat index.
    let first = |mask: &Tensor| -> Result<Option<(i64, i64)>, CheckError> {
        let m = mask.f_flatten(0, -1)?;
        if m.numel() == 0 || m.f_any()?.f_int64_value(&[])? == 0 {
            return Ok(None);
        }
        let i = m
            .f_to_kind(Kind::Int64)?
            .f_argmax(0, false)?
            .f_int64_value(&[])?;
        let per_sample = (m.numel() as i64 / n).max(1);
        Ok(Some((i / per_sample, i)))
    };
    let flat = t.f_flatten(0, -1)?;
    if let Some((sample, i)) = first(&t.f_isfinite()?.f_logical_not()?)? {
        let v = flat.f_double_value(&[i])?;
        return Ok(Some(format!("sample {sample} holds {v}")));
    }
    if let Some((sample, i)) = first(&t.f_lt(0.0)?.f_logical_or(&t.f_gt(1.0)?)?)? {
        let v = flat.f_double_value(&[i])?;
        return Ok(Some(format!(
            "sample {sample} holds {}, outside [0, 1]",
            crate::finding::num(v)
        )));
    }
    let sums = t.f_sum_dim_intlist([1i64].as_slice(), false, Kind::Double)?;
    let off = sums
        .f_sub_scalar(1.0)?
        .f_abs()?
        .f_gt(PROBABILITY_SUM_TOLERANCE)?;
    if let Some((sample, i)) = first(&off)? {
        let s = sums.f_flatten(0, -1)?.f_double_value(&[i])?;
        return Ok(Some(format!(
            "the {} probabilities of sample {sample} sum to {}",
            size[1],
            crate::finding::num(s)
        )));
    }
    Ok(None)
}

/// The skip of a check whose classification loss would read float targets with `classes` values along
/// dim 1 as class probabilities that they are not: libtorch computes a meaningless loss on them (or
/// fails in C++).
pub(crate) fn not_probabilities(classes: i64, problem: &str) -> CheckError {
    CheckError::Skip(format!(
        "the float targets have a class dim (K = {classes} values per sample), so cross_entropy / nll \
read them as class probabilities, but {problem} (each sample's K values must lie in [0, 1] and sum to 1 \
± {PROBABILITY_SUM_TOLERANCE}); give class indices as integers, or rows of class probabilities"
    ))
}

/// Float targets shaped like the logits hold valid class probabilities: the same shape as the
/// prediction, and [`probability_problem`] finds nothing. Otherwise a skip with the reason.
pub fn check_probability_targets(prediction: &Tensor, target: &Tensor) -> Result<(), CheckError> {
    let (t, p) = (target.size(), prediction.size());
    if t != p {
        return Err(CheckError::Skip(format!(
            "the float targets have a class dim, so cross_entropy / nll read them as class probabilities, \
but each sample's targets have shape {:?} and the model's output {:?}: the targets need one probability \
per logit (or give class indices as integers)",
            t.get(1..).unwrap_or_default(),
            p.get(1..).unwrap_or_default()
        )));
    }
    match probability_problem(target)? {
        None => Ok(()),
        Some(problem) => Err(not_probabilities(t.get(1).copied().unwrap_or(1), &problem)),
    }
}
