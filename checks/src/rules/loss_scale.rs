//! loss-scale: the terms of a multi-term loss are on the same order of magnitude.
use crate::finding::{named_numbers, num, Finding, Location};
use crate::options::{OptionSpec, Options};
use crate::stats;
use crate::{Check, CheckInfo, CheckOutput, CheckResult, Context, Curve, Docs, Group, Level};

pub struct LossScale;

const ID: &str = "loss-scale";

static INFO: CheckInfo = CheckInfo {
    id: ID,
    group: Group::Loss,
    default_level: Level::Deny,
    summary: "The terms of a multi-term loss are on the same order of magnitude",
    docs: Docs {
        what: "With two or more loss-term columns in the loss log (`log.terms`, or every `loss_*` column), \
measures each term's typical magnitude (median |value|) over the early and the late window of the log, \
the ratio between the largest and the smallest term, each term's share of the total, and the weights \
that would bring them to the same order.",
        why: "The optimizer follows the sum. A term 1000× larger than another owns the gradient: the small \
term (often the one you care about, e.g. the pixel loss next to a perceptual loss) is effectively \
switched off, and tuning its weight by small factors does nothing.",
        how: "Magnitude = median |value| over the first and the last `window` share of the rows; ratio = \
largest / smallest magnitude, the larger of the two windows. Warning when the ratio exceeds \
`warn_ratio` (one order of magnitude), error past `error_ratio` (three orders). Suggested weights are \
powers of ten that bring every term to the smallest term's order. Skipped with fewer than two terms.",
        example: "error[loss-scale] loss terms differ by 1.3e4× (late window): loss_feature ~139 (100.0% of \
the total), loss_mse ~0.0107 (0.0%)",
        fix: "Weight the terms so each contributes on the same order (multiply the large term by the \
suggested weight), or normalise each term (mean instead of sum reduction).",
    },
    options: &[
        OptionSpec::float("warn_ratio", 10.0, "Ratio of term magnitudes above which to warn"),
        OptionSpec::float("error_ratio", 1000.0, "Ratio of term magnitudes above which it is an error"),
        OptionSpec::float("window", 0.2, "Share of the log's rows in the early and in the late window"),
    ],
    trains: false,
};

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
    fn info(&self) -> &'static CheckInfo {
        &INFO
    }

    fn run(&self, ctx: &Context, options: &Options) -> CheckOutput {
        let Some(log) = ctx.log else {
            return Ok(CheckResult::skipped("no loss log"));
        };
        if log.terms.len() < 2 {
            return Ok(CheckResult::skipped(format!(
                "the log has {} loss-term column(s); loss-scale compares two or more (`loss_*` columns or log.terms)",
                log.terms.len()
            )));
        }
        let rows = log.steps.len();
        let w = ((rows as f64 * options.f64("window")).ceil() as usize).clamp(1, rows);
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
            return Ok(CheckResult::skipped(
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
        let listing = sorted
            .iter()
            .map(|(t, m)| {
                format!(
                    "{t} ~{} ({}% of the total)",
                    num(*m),
                    num(100.0 * m / total)
                )
            })
            .collect::<Vec<_>>()
            .join(", ");
        let weights: Vec<(String, f64)> = sorted
            .iter()
            .map(|(t, m)| (t.clone(), power_of_ten(smallest / m)))
            .collect();
        let severity = if ratio > options.f64("error_ratio") {
            Some(true)
        } else if ratio > options.f64("warn_ratio") {
            Some(false)
        } else {
            None
        };
        let mut result = match severity {
            None => CheckResult::passed(),
            Some(is_error) => {
                let message = format!(
                    "loss terms differ by {}× ({window} window): {listing}",
                    num(ratio)
                );
                let f = if is_error {
                    Finding::error(ID, message)
                } else {
                    Finding::warning(ID, message)
                };
                let (big, big_w) = &weights[0];
                let first = log.steps.first().copied().unwrap_or(0.0);
                let last = log.steps.last().copied().unwrap_or(0.0);
                let f = f
                    .at(Location::log(big, (first, last)))
                    .help(format!(
                        "weight the terms to the same order: {} (e.g. multiply {big} by {})",
                        weights
                            .iter()
                            .map(|(t, w)| format!("{t} × {}", num(*w)))
                            .collect::<Vec<_>>()
                            .join(", "),
                        num(*big_w)
                    ))
                    .evidence("ratio", ratio)
                    .evidence("window", window.to_string())
                    .evidence(
                        "magnitudes",
                        named_numbers(sorted.iter().map(|(t, m)| (t, *m))),
                    )
                    .evidence(
                        "shares",
                        named_numbers(sorted.iter().map(|(t, m)| (t, m / total))),
                    )
                    .evidence(
                        "suggested_weights",
                        named_numbers(weights.iter().map(|(t, w)| (t, *w))),
                    );
                CheckResult::with_findings(vec![f])
            }
        };
        for c in curves {
            result = result.curve(c);
        }
        Ok(result)
    }
}
