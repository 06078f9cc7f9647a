//! loss-oscillation: the loss oscillates or diverges instead of descending, in the loss log and in a
//! learning-rate probe on a copy of the model.
use crate::finding::{num, Finding, Location};
use crate::options::{OptionSpec, Options};
use crate::ports::{LossLog, Mode};
use crate::stats::{self, Oscillation, OscillationThresholds, Rng, Verdict};
use crate::train;
use crate::{
    Check, CheckError, CheckInfo, CheckOutput, CheckResult, Context, Curve, Docs, Group, Level,
};

pub struct LossOscillation;

const ID: &str = "loss-oscillation";

static INFO: CheckInfo = CheckInfo {
    id: ID,
    group: Group::Loss,
    default_level: Level::Deny,
    summary: "The loss descends instead of oscillating or diverging (loss log and a learning-rate probe)",
    docs: Docs {
        what: "Analyses the loss log's total loss, and runs a learning-rate probe: a copy of the model \
trained with the configured optimizer, learning rate and batch size for `probe_steps` steps, its loss \
measured after every step on one FIXED evaluation batch, which removes minibatch noise.",
        why: "A learning rate too high for the model makes the loss bounce or zig-zag around a high value, \
or blow up to Inf/NaN; too little capacity makes it bounce without descending. Minibatch losses are \
noisy by nature (the slope changes sign ~67% of the time for pure noise), so a naive sign-change count \
flags every healthy SGD run; trainlint separates the trend from the noise first.",
        how: "Log (values in log space when all positive): the trend is a running median; the residual is \
the rest. Divergence (error): a non-finite loss after finite ones, or the median of the last quarter \
`divergence_rise` (ln 2: doubled) above the level at the start (the first 5% of the points, at least 5). Oscillation (warning): a zig-zag \
(residual lag-1 autocorrelation ≤ `zigzag_autocorr`, robust residual amplitude ≥ `min_amplitude` and ≥ \
`amplitude_to_descent` × the net descent), or no progress (net descent from the start < `min_progress`) \
with swings ≥ `bounce_amplitude`. Give the log from the first step: a log that starts on a converged \
plateau shows no progress by construction. Probe: divergence (error) when the evaluation loss becomes non-finite or ends \
`probe_divergence`× above its start; unstable (warning) when it jumps `probe_spike`× above its start at any \
step; oscillation (warning) when it made no progress (end ≥ 0.9 × start) with ≥ 30% of the steps going up, \
or zig-zags (≥ 45% of the steps up).",
        example: "warning[loss-oscillation] the loss oscillates without descending over steps 0..299: swings \
±47% around its trend while the net descent is -4% (first quarter median 1.35, last 1.41)",
        fix: "Lower the learning rate by 3–10× (or add warm-up / gradient clipping); if the loss bounces \
at any learning rate, the model may lack capacity.",
    },
    options: &[
        OptionSpec::int("min_points", 30, "Fewest log rows to analyse"),
        OptionSpec::float("zigzag_autocorr", -0.4, "Residual lag-1 autocorrelation at or below which swings are a zig-zag"),
        OptionSpec::float("min_amplitude", 0.05, "Smallest residual amplitude (log units) ever flagged"),
        OptionSpec::float("amplitude_to_descent", 0.5, "A zig-zag is flagged when its amplitude is this share of the descent"),
        OptionSpec::float("min_progress", 0.4, "Net descent from the start (log units; 0.4 ≈ 1.5×) below which the log made no progress"),
        OptionSpec::float("bounce_amplitude", 0.15, "Residual amplitude (log units) flagged when there is no progress"),
        OptionSpec::float("divergence_rise", std::f64::consts::LN_2, "Rise of the trend (log units) that is divergence"),
        OptionSpec::boolean("probe", true, "Run the learning-rate probe when a model and data are given"),
        OptionSpec::int("probe_steps", 60, "Steps of the learning-rate probe"),
        OptionSpec::float("probe_divergence", 2.0, "Probe loss ending this many times above its start is divergence"),
        OptionSpec::float("probe_spike", 10.0, "Probe loss jumping this many times above its start is unstable"),
    ],
    trains: true,
};

fn thresholds(o: &Options) -> OscillationThresholds {
    OscillationThresholds {
        zigzag_autocorr: o.f64("zigzag_autocorr"),
        min_amplitude: o.f64("min_amplitude"),
        amplitude_to_descent: o.f64("amplitude_to_descent"),
        divergence_rise: o.f64("divergence_rise"),
        min_progress: o.f64("min_progress"),
        bounce_amplitude: o.f64("bounce_amplitude"),
    }
}

fn percent_swing(o: &Oscillation) -> String {
    if o.log_space {
        format!("±{}%", num(100.0 * (o.amplitude.exp() - 1.0)))
    } else {
        format!("±{}", num(o.amplitude))
    }
}

fn analyse_log(log: &LossLog, options: &Options) -> (Vec<Finding>, Option<Curve>) {
    let Some(column) = log.total.clone().or_else(|| log.terms.first().cloned()) else {
        return (Vec::new(), None);
    };
    let values = &log.columns[&column];
    let steps = &log.steps;
    let mut curve = Curve::new(format!("loss log `{column}`"), values.clone());
    curve.x = steps.clone();
    curve.log_scale = true;
    let first_finite = values.iter().position(|v| v.is_finite());
    let blow_up = first_finite.and_then(|f| {
        values[f..]
            .iter()
            .position(|v| !v.is_finite())
            .map(|i| i + f)
    });
    if let Some(at) = blow_up {
        let before = values[..at]
            .iter()
            .copied()
            .filter(|v| v.is_finite())
            .fold(0.0, f64::max);
        let start = (at.saturating_sub(20)).max(first_finite.unwrap_or(0));
        curve.window = Some((steps[start], steps[at]));
        let f = Finding::error(
            ID,
            format!(
                "the loss diverged: it becomes {} at step {} (largest finite value before: {})",
                values[at],
                num(steps[at]),
                num(before)
            ),
        )
        .at(Location::log(&column, (steps[start], steps[at])))
        .help(
            "lower the learning rate by 3–10×, add gradient clipping, or warm up the learning rate",
        )
        .evidence("diverged_at_step", steps[at])
        .evidence("largest_finite", before);
        return (vec![f], Some(curve));
    }
    let finite: Vec<(f64, f64)> = steps
        .iter()
        .zip(values)
        .filter(|(_, v)| v.is_finite())
        .map(|(s, v)| (*s, *v))
        .collect();
    if finite.len() < options.usize("min_points") {
        return (Vec::new(), Some(curve));
    }
    let ys: Vec<f64> = finite.iter().map(|p| p.1).collect();
    let o = stats::measure_oscillation(&ys);
    let (first, last) = (finite[0].0, finite[finite.len() - 1].0);
    let q = (ys.len() / 4).max(1);
    let k = (ys.len() / 20).clamp(5, ys.len());
    let (m_first, m_last) = (
        stats::interquartile_mean(&ys[..k]),
        stats::interquartile_mean(&ys[ys.len() - q..]),
    );
    let evidence = |f: Finding| {
        f.at(Location::log(&column, (first, last)))
            .evidence("amplitude", o.amplitude)
            .evidence("descent", o.descent)
            .evidence("residual_autocorr", o.residual_autocorr)
            .evidence("amplitude_growth", o.amplitude_growth)
            .evidence("start_level", m_first)
            .evidence("last_quarter_level", m_last)
    };
    let descent_pct = if o.log_space {
        100.0 * (1.0 - (-o.descent).exp())
    } else {
        o.descent
    };
    let finding = match stats::judge_oscillation(&o, &thresholds(options)) {
        Verdict::Descending => None,
        Verdict::Diverging => Some(evidence(Finding::error(
            ID,
            format!(
                "the loss diverges over steps {}..{}: its level rose from {} (start) to {} (last quarter)",
                num(first),
                num(last),
                num(m_first),
                num(m_last)
            ),
        ))),
        Verdict::Oscillating => {
            let kind = if o.residual_autocorr <= options.f64("zigzag_autocorr") {
                format!("zig-zags step to step (residual lag-1 autocorrelation {})", num(o.residual_autocorr))
            } else {
                "oscillates without descending".to_string()
            };
            Some(evidence(Finding::warning(
                ID,
                format!(
                    "the loss {kind} over steps {}..{}: swings {} around its trend while the net descent is {}% \
(level at the start {}, last quarter {})",
                    num(first),
                    num(last),
                    percent_swing(&o),
                    num(descent_pct),
                    num(m_first),
                    num(m_last)
                ),
            )))
        }
    };
    if finding.is_some() {
        curve.window = Some((first, last));
    }
    let findings = finding
        .map(|f| f.help("lower the learning rate by 3–10× (or add warm-up); if it bounces at any learning rate, add capacity"))
        .into_iter()
        .collect();
    (findings, Some(curve))
}

fn probe(ctx: &Context, options: &Options) -> Result<(Vec<Finding>, Option<Curve>), CheckError> {
    let (Some(model), Some(data)) = (ctx.model, ctx.data) else {
        return Ok((Vec::new(), None));
    };
    let setup = ctx.setup;
    let loss_kind = setup.resolved_loss(Some(data));
    let mut copy = model.trainable_copy()?;
    let opt = train::optimizer(
        copy.as_ref(),
        setup.optimizer,
        setup.lr,
        setup.momentum,
        setup.weight_decay,
    )?;
    let n = data.len();
    let device = model.device();
    let eval_n = n.min(64) as i64;
    // Move the sample to the model's device once, not on every step.
    let inputs = data.inputs.f_to_device(device)?;
    let targets = data.targets.f_to_device(device)?;
    let eval_x = inputs.f_narrow(0, 0, eval_n)?;
    let eval_y = targets.f_narrow(0, 0, eval_n)?;
    let mut rng = Rng::new(setup.seed);
    let steps = options.usize("probe_steps");
    let mut curve = vec![train::evaluate(copy.as_mut(), loss_kind, &eval_x, &eval_y)?];
    for step in 0..steps {
        let idx = train::batch_indices(&mut rng, n, setup.batch_size.max(2)).f_to_device(device)?;
        let x = inputs.f_index_select(0, &idx)?;
        let y = targets.f_index_select(0, &idx)?;
        train::step(copy.as_mut(), &opt, loss_kind, &x, &y, Mode::Train)?;
        let l = train::evaluate(copy.as_mut(), loss_kind, &eval_x, &eval_y)?;
        curve.push(l);
        (ctx.progress)(step + 1, steps, l);
        if !l.is_finite() {
            break;
        }
    }
    let mut c = Curve::new(
        format!(
            "learning-rate probe ({} lr {}, batch {})",
            setup.optimizer.as_str(),
            num(setup.lr),
            setup.batch_size
        ),
        curve.clone(),
    );
    c.log_scale = true;
    let start = curve[0];
    let end = *curve.last().expect("probe curve has its start");
    let ups = curve.windows(2).filter(|w| w[1] > w[0] * 1.01).count();
    let (peak_step, peak) =
        curve
            .iter()
            .copied()
            .enumerate()
            .fold((0, f64::NEG_INFINITY), |best, (i, v)| {
                if v > best.1 {
                    (i, v)
                } else {
                    best
                }
            });
    let up_share = ups as f64 / (curve.len() - 1).max(1) as f64;
    let at = Location {
        config_key: Some("setup.lr".into()),
        data_key: Some(data.input_key.clone()),
        samples: Some((0, eval_n as usize)),
        ..Location::default()
    };
    let what = format!(
        "{} at lr {} (batch {})",
        setup.optimizer.as_str(),
        num(setup.lr),
        setup.batch_size
    );
    let finding = if !end.is_finite() || end > options.f64("probe_divergence") * start {
        Some(Finding::error(
            ID,
            format!(
                "learning-rate probe: {what} diverges: the loss on a fixed evaluation batch went from {} to {} in {} steps",
                num(start),
                num(end),
                curve.len() - 1
            ),
        ))
    } else if peak >= options.f64("probe_spike") * start {
        Some(Finding::warning(
            ID,
            format!(
                "learning-rate probe: {what} is unstable: the loss on a fixed evaluation batch jumped to {} ({}× its start \
{}) at step {peak_step}, and ended at {} after {} steps",
                num(peak),
                num(peak / start),
                num(start),
                num(end),
                curve.len() - 1
            ),
        ))
    } else if (end >= 0.9 * start && up_share >= 0.3) || up_share >= 0.45 {
        Some(Finding::warning(
            ID,
            format!(
                "learning-rate probe: {what} oscillates: the loss on a fixed evaluation batch went up in {}% of {} steps \
and from {} to {}",
                num(up_share * 100.0),
                curve.len() - 1,
                num(start),
                num(end)
            ),
        ))
    } else {
        None
    };
    if finding.is_some() {
        c.window = Some((0.0, (curve.len() - 1) as f64));
    }
    let findings = finding
        .map(|f| {
            f.at(at)
                .help(format!(
                    "lower setup.lr by 3–10× (try {})",
                    num(setup.lr / 10.0)
                ))
                .evidence("probe_start", start)
                .evidence("probe_end", end)
                .evidence("probe_up_share", up_share)
        })
        .into_iter()
        .collect();
    Ok((findings, Some(c)))
}

impl Check for LossOscillation {
    fn info(&self) -> &'static CheckInfo {
        &INFO
    }

    fn run(&self, ctx: &Context, options: &Options) -> CheckOutput {
        let run_probe = options.bool("probe") && ctx.model.is_some() && ctx.data.is_some();
        if ctx.log.is_none() && !run_probe {
            return Ok(CheckResult::skipped(
                "needs a loss log, or a model and data for the learning-rate probe",
            ));
        }
        let mut result = CheckResult::passed();
        if let Some(log) = ctx.log {
            let (findings, curve) = analyse_log(log, options);
            result.findings.extend(findings);
            result.curves.extend(curve);
        }
        if run_probe {
            let (findings, curve) = probe(ctx, options)?;
            result.findings.extend(findings);
            result.curves.extend(curve);
        }
        Ok(result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdict(values: &[f64]) -> Verdict {
        stats::judge_oscillation(
            &stats::measure_oscillation(values),
            &OscillationThresholds::default(),
        )
    }

    /// A noisy-but-descending minibatch curve: (a·e^(−t/τ) + c) · e^(σ·ε), whose noise-free loss at
    /// least halves over the log (a ≥ 1.5·c, τ ≤ n/2), with σ up to 0.52 (±68% swings).
    fn descending(rng: &mut Rng) -> Vec<f64> {
        let n = 60 + rng.below(940);
        let c = 0.01 + rng.uniform();
        let a = c * (1.5 + 20.0 * rng.uniform());
        let tau = n as f64 * (0.05 + 0.45 * rng.uniform());
        let sigma = 0.02 + 0.5 * rng.uniform();
        (0..n)
            .map(|t| (a * (-(t as f64) / tau).exp() + c) * (sigma * rng.normal()).exp())
            .collect()
    }

    /// A zig-zag: the loss alternates high/low around a flat or slowly drifting level.
    fn zigzag(rng: &mut Rng) -> Vec<f64> {
        let n = 60 + rng.below(940);
        let level = 0.05 + 2.0 * rng.uniform();
        let amp = 0.1 + 0.5 * rng.uniform();
        let noise = amp * 0.5 * rng.uniform();
        let drift = 0.2 * rng.uniform();
        (0..n)
            .map(|t| {
                let sign = if t % 2 == 0 { 1.0 } else { -1.0 };
                level
                    * (1.0 - drift * t as f64 / n as f64)
                    * (sign * amp + noise * rng.normal()).exp()
            })
            .collect()
    }

    #[test]
    fn false_positive_rate_on_noisy_descending_curves_is_at_most_one_percent() {
        let mut rng = Rng::new(21);
        let trials = 1000;
        let flagged = (0..trials)
            .filter(|_| verdict(&descending(&mut rng)) != Verdict::Descending)
            .count();
        assert!(
            flagged * 100 <= trials,
            "{flagged} of {trials} descending curves flagged"
        );
    }

    #[test]
    fn detection_rate_on_zigzag_curves_is_at_least_99_percent() {
        let mut rng = Rng::new(22);
        let trials = 1000;
        let caught = (0..trials)
            .filter(|_| verdict(&zigzag(&mut rng)) == Verdict::Oscillating)
            .count();
        assert!(
            caught * 100 >= 99 * trials,
            "only {caught} of {trials} zig-zags caught"
        );
    }

    #[test]
    fn a_rising_trend_is_divergence() {
        let v: Vec<f64> = (0..100).map(|t| 0.5 * (t as f64 / 30.0).exp()).collect();
        assert_eq!(verdict(&v), Verdict::Diverging);
    }
}
