//! What range the model's final op can produce: shared by output-range and double-activation.
use crate::ports::OutputActivation;

/// The attainable output range of a final op: [lo, hi] with ±∞ for unbounded sides.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Range {
    pub lo: f64,
    pub hi: f64,
}

impl Range {
    pub fn span(&self) -> f64 {
        self.hi - self.lo
    }
    pub fn describe(&self) -> String {
        let side = |x: f64| {
            if x == f64::INFINITY {
                "∞".to_string()
            } else if x == f64::NEG_INFINITY {
                "-∞".to_string()
            } else {
                crate::finding::num(x)
            }
        };
        format!("[{}, {}]", side(self.lo), side(self.hi))
    }

    /// How far `v` lies outside the range (0 inside it).
    pub fn distance(&self, v: f64) -> f64 {
        (v - v.clamp(self.lo, self.hi)).abs()
    }

    /// The mean of `penalty(distance)` over `values`: the least loss an output confined to the range
    /// can reach against them, under a loss that charges `penalty` for an error (`d²` for mse).
    pub fn floor(&self, values: &[f64], penalty: impl Fn(f64) -> f64) -> f64 {
        values
            .iter()
            .map(|v| penalty(self.distance(*v)))
            .sum::<f64>()
            / values.len().max(1) as f64
    }

    /// Why an output op `op` with this range cannot hold `values` (`what`: "inputs", "targets"): the
    /// share of them outside it and their span.
    pub fn cannot_hold(&self, op: &str, what: &str, values: &[f64]) -> String {
        let outside = values.iter().filter(|v| self.distance(**v) > 0.0).count();
        let (lo, hi) = crate::stats::min_max(values);
        format!(
            "the output activation {op} can only produce {}, but {}% of the {what} lie outside it ({what} span [{}, {}])",
            self.describe(),
            crate::finding::num(outside as f64 * 100.0 / values.len().max(1) as f64),
            crate::finding::num(lo),
            crate::finding::num(hi)
        )
    }
}

const INF: f64 = f64::INFINITY;

/// The range an op bounds its output to; None for ops that do not bound it (linear, conv, add …).
pub fn output_range(act: &OutputActivation) -> Option<Range> {
    let r = |lo, hi| Some(Range { lo, hi });
    match act.op.as_str() {
        "sigmoid" | "hardsigmoid" | "softmax" => r(0.0, 1.0),
        "tanh" | "hardtanh" | "clamp" | "clip" => match act.clamp {
            Some((lo, hi)) => r(
                if lo.is_nan() { -INF } else { lo },
                if hi.is_nan() { INF } else { hi },
            ),
            None if act.op == "tanh" => r(-1.0, 1.0),
            None if act.op == "hardtanh" => r(-1.0, 1.0),
            None => None,
        },
        "log_softmax" | "logsigmoid" => r(-INF, 0.0),
        "relu" | "softplus" | "exp" | "abs" | "square" => r(0.0, INF),
        "relu6" => r(0.0, 6.0),
        "elu" | "celu" => r(-1.0, INF),
        "selu" => r(-1.7581, INF),
        "gelu" => r(-0.17, INF),
        "silu" => r(-0.2785, INF),
        _ => None,
    }
}

/// Ops whose output is a probability (sigmoid, softmax).
pub fn is_probability(op: &str) -> bool {
    matches!(op, "sigmoid" | "softmax" | "hardsigmoid")
}

/// Whether every value of `prediction` (the model's real output) lies in `range`: a bound read from the
/// graph's final op is trusted for a settled verdict only when the output agrees with it.
pub fn holds(prediction: &tch::Tensor, range: Range) -> bool {
    let bounds = || -> Result<(f64, f64), tch::TchError> {
        let p = prediction.f_to_kind(tch::Kind::Double)?;
        Ok((
            p.f_min()?.f_double_value(&[])?,
            p.f_max()?.f_double_value(&[])?,
        ))
    };
    let slack = |b: f64| 1e-6 * b.abs().max(1.0);
    matches!(bounds(), Ok((lo, hi)) if lo >= range.lo - slack(range.lo) && hi <= range.hi + slack(range.hi))
}
