//! loss-scale: the terms of a multi-term loss are on the same order of magnitude.
use super::prelude::*;
use crate::stats;

pub struct LossScale;

static INFO: CheckInfo = CheckInfo {
    id: "loss-scale",
    group: Group::Loss,
    default_level: Level::Deny,
    summary: "The terms of a multi-term loss are on the same order of magnitude",
    docs: Docs {
        what: "With two or more loss-term columns in the loss log (`log.terms`, or every `loss_*` column), \
measures each term's typical magnitude over the early and the late window of the log. Skipped with fewer \
than two terms.",
        why: "The optimizer follows the sum: a term orders of magnitude larger than the others owns the \
gradient.",
        details: include_str!("loss_scale.md"),
    },
    kinds: &[&UnbalancedTerms::KIND],
    ..CheckInfo::PLAIN
};

/// Options of loss-scale.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct LossScaleOptions {
    /// Ratio of term magnitudes above which to warn.
    #[schemars(range(min = 1))]
    pub warn_ratio: f64,
    /// Ratio of term magnitudes above which it is an error.
    #[schemars(range(min = 1))]
    pub error_ratio: f64,
    /// Share of the log's rows in the early and in the late window.
    #[schemars(extend("exclusiveMinimum" = 0), range(max = 1))]
    pub window: f64,
}

impl Default for LossScaleOptions {
    fn default() -> Self {
        LossScaleOptions {
            warn_ratio: 10.0,
            error_ratio: 1000.0,
            window: 0.2,
        }
    }
}

/// The terms of a multi-term loss differ by orders of magnitude
///
/// # Why
/// A term 1000× larger than another owns the gradient: the small term (often the one you care about, e.g. the
/// pixel loss next to a perceptual loss) is effectively switched off, and tuning its weight by small factors
/// does nothing.
///
/// # How
/// Magnitude = median |value| over the first and the last `window` share of the rows; ratio = largest /
/// smallest magnitude, the larger of the two windows. Warning when the ratio exceeds `warn_ratio` (one order
/// of magnitude), error past `error_ratio` (three orders). Suggested weights are powers of ten that bring
/// every term to the smallest term's order.
///
/// # Fix
/// Weight the terms so each contributes on the same order (multiply the large term by the suggested weight),
/// or normalise each term (mean instead of sum reduction).
#[derive(Serialize, ViolationMetadata)]
#[kind(id = "loss-scale/unbalanced-terms", grade = past(warning, error, "error_ratio"))]
#[kind(example(args = "--log fixtures/logs/two_terms_4_orders.csv", severity = error, message = "loss terms differ by 8887× (early window): loss_feature ~306 (100% of the total), loss_mse ~0.0345 (0.0113% of the total)"))]
pub struct UnbalancedTerms {
    pub ratio: f64,
    pub window: &'static str,
    /// Term -> typical magnitude, largest first.
    #[serde(serialize_with = "as_map")]
    pub magnitudes: Vec<(String, f64)>,
    #[serde(serialize_with = "as_map")]
    pub shares: Vec<(String, f64)>,
    #[serde(serialize_with = "as_map")]
    pub suggested_weights: Vec<(String, f64)>,
    #[serde(skip)]
    pub error_ratio: f64,
}

impl Violation for UnbalancedTerms {
    fn measure(&self) -> Option<(f64, f64)> {
        Some((self.ratio, self.error_ratio))
    }
    fn message(&self) -> String {
        let listing = self
            .magnitudes
            .iter()
            .zip(&self.shares)
            .map(|((t, m), (_, share))| {
                format!("{t} ~{} ({}% of the total)", num(*m), num(100.0 * share))
            })
            .collect::<Vec<_>>()
            .join(", ");
        format!(
            "loss terms differ by {}× ({} window): {listing}",
            num(self.ratio),
            self.window
        )
    }
    fn help(&self) -> String {
        let (big, big_w) = &self.suggested_weights[0];
        format!(
            "weight the terms to the same order: {} (e.g. multiply {big} by {})",
            self.suggested_weights
                .iter()
                .map(|(t, w)| format!("{t} × {}", num(*w)))
                .collect::<Vec<_>>()
                .join(", "),
            num(*big_w)
        )
    }
}

/// Median |value| of the finite values in `rows`.
fn magnitude(values: &[f64]) -> f64 {
    let abs: Vec<f64> = values
        .iter()
        .filter(|v| v.is_finite())
        .map(|v| v.abs())
        .collect();
    stats::median(&abs)
}

fn power_of_ten(x: f64) -> f64 {
    10f64.powf(x.log10().round())
}

impl Check for LossScale {
    type Options = LossScaleOptions;

    const INFO: &'static CheckInfo = &INFO;

    fn run(&self, ctx: &Context, options: &LossScaleOptions) -> CheckOutput {
        let log = ctx.log()?;
        if log.terms.len() < 2 {
            return Err(CheckError::skip(format!(
                "the log has {} loss-term column(s); loss-scale compares two or more (`loss_*` columns or log.terms)",
                log.terms.len()
            )));
        }
        let rows = log.steps.len();
        let w = ((rows as f64 * options.window).ceil() as usize).clamp(1, rows);
        let windows = [("early", 0..w), ("late", rows - w..rows)];
        let mut worst = (0.0f64, "early", Vec::new());
        for (name, range) in windows.iter() {
            let mags: Vec<(String, f64)> = log
                .terms
                .iter()
                .map(|t| (t.clone(), magnitude(&log.columns[t][range.clone()])))
                .collect();
            let positive: Vec<f64> = mags
                .iter()
                .map(|m| m.1)
                .filter(|m| *m > 0.0 && m.is_finite())
                .collect();
            if positive.len() < 2 {
                continue;
            }
            let ratio = positive.iter().cloned().fold(0.0, f64::max)
                / positive.iter().cloned().fold(f64::INFINITY, f64::min);
            if ratio > worst.0 || worst.2.is_empty() {
                worst = (ratio, name, mags);
            }
        }
        let (ratio, window, mags) = worst;
        let curves: Vec<Curve> = log
            .terms
            .iter()
            .map(|t| {
                let mut c = Curve::new(t.clone(), log.columns[t].clone());
                c.x = log.steps.clone();
                c.log_scale = true;
                c
            })
            .collect();
        if mags.is_empty() {
            return Err(CheckError::skip(
                "the loss terms have no finite non-zero values",
            ));
        }
        let total: f64 = mags.iter().map(|m| m.1).sum();
        let smallest = mags
            .iter()
            .map(|m| m.1)
            .filter(|m| *m > 0.0)
            .fold(f64::INFINITY, f64::min);
        let mut sorted = mags.clone();
        sorted.sort_by(|a, b| b.1.total_cmp(&a.1));
        let weights: Vec<(String, f64)> = sorted
            .iter()
            .map(|(t, m)| (t.clone(), power_of_ten(smallest / m)))
            .collect();
        let mut result = if ratio > options.warn_ratio {
            let first = log.steps.first().copied().unwrap_or(0.0);
            let last = log.steps.last().copied().unwrap_or(0.0);
            let at = Location::log(&sorted[0].0, (first, last));
            let v = UnbalancedTerms {
                ratio,
                window,
                shares: sorted.iter().map(|(t, m)| (t.clone(), m / total)).collect(),
                magnitudes: sorted,
                suggested_weights: weights,
                error_ratio: options.error_ratio,
            };
            CheckResult::found(&v, at)
        } else {
            CheckResult::passed()
        };
        for c in curves {
            result = result.curve(c);
        }
        Ok(result)
    }
}
