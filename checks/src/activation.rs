//! What range the model's final op can produce: shared by output-range and double-activation.
use crate::ports::OutputActivation;

/// The attainable output range of a final op: [lo, hi] with ±∞ for unbounded sides.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Range {
    pub lo: f64,
    pub hi: f64,
}

impl Range {
    pub fn is_bounded(&self) -> bool {
        self.lo.is_finite() || self.hi.is_finite()
    }
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
