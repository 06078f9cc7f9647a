//! loss-oscillation: the loss oscillates or diverges instead of descending, in the loss log and in a
//! learning-rate probe on a copy of the model.
use super::prelude::*;
use crate::ports::OptimizerKind;
use crate::stats::{self, OscillationThresholds, Rng, Verdict};
use crate::train::{self, Budget};

pub struct LossOscillation;

static INFO: CheckInfo = CheckInfo {
    id: "loss-oscillation",
    group: Group::Loss,
    default_level: Level::Deny,
    summary: "The loss descends instead of oscillating or diverging (loss log and a learning-rate probe)",
    docs: Docs {
        what: "Analyses the loss log's total loss, and runs a learning-rate probe: a copy of the model \
trained with the configured optimizer, learning rate and batch size for `probe_steps` steps, its loss \
measured after every step on one FIXED evaluation batch, which removes minibatch noise. A log with fewer \
than `min_points` finite rows is not judged: without the probe the check is skipped with that reason; \
with it, the probe's verdict stands and the check's note says the log was not judged. A log judged \
without a finding whose last quarter sits at most half as high as its start, and that still descends in \
its second half (its last quarter below 90% of its second quarter), already shows that the configured lr trains: the probe is then not run (`probe_with_log = true` runs it anyway), and the note \
says so. Every training the check runs counts against `run.check_budget`: a probe that cannot finish \
within it is reported undecided (skipped), never passed.",
        why: "A learning rate too high for the model makes the loss bounce or zig-zag around a high value, \
or blow up to Inf/NaN; too little capacity makes it bounce without descending. Minibatch losses are \
noisy by nature (the slope changes sign ~67% of the time for pure noise), so a naive sign-change count \
flags every healthy SGD run; trainlint separates the trend from the noise first.",
        details: include_str!("loss_oscillation.md"),
    },
    kinds: &[
        &LogDiverges::KIND,
        &LogCollapsed::KIND,
        &LogOscillates::KIND,
        &ProbeDiverges::KIND,
        &ProbeSpikes::KIND,
        &ProbeCollapses::KIND,
        &LogStallsHighLr::KIND,
        &ProbeOscillates::KIND,
    ],
    trains: true,
    setup: &["optimizer", "lr", "batch_size", "momentum"],
    needs: &[Need::TrainModeBatch, Need::Loss],
    ..CheckInfo::PLAIN
};

/// Options of loss-oscillation.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct LossOscillationOptions {
    /// Fewest log rows to analyse.
    #[schemars(range(min = 3))]
    pub min_points: usize,
    /// Residual lag-1 autocorrelation at or below which swings are a zig-zag.
    #[schemars(range(min = -1, max = 1))]
    pub zigzag_autocorr: f64,
    /// Smallest residual amplitude (log units) ever flagged.
    #[schemars(range(min = 0))]
    pub min_amplitude: f64,
    /// A zig-zag is flagged when its amplitude is this share of the descent.
    #[schemars(range(min = 0))]
    pub amplitude_to_descent: f64,
    /// Net descent from the start (log units; 0.4 ≈ 1.5×) below which the log made no progress.
    #[schemars(range(min = 0))]
    pub min_progress: f64,
    /// Residual amplitude (log units) flagged when there is no progress.
    #[schemars(range(min = 0))]
    pub bounce_amplitude: f64,
    /// Rise of the trend (log units) that is divergence.
    #[schemars(extend("exclusiveMinimum" = 0))]
    pub divergence_rise: f64,
    /// After the initial drop, the level's wander (log units, RMS) flagged without progress.
    #[schemars(range(min = 0))]
    pub min_wander: f64,
    /// The wander must also be this many times what the minibatch noise alone gives the trend.
    #[schemars(range(min = 0))]
    pub wander_to_noise: f64,
    /// Run the learning-rate probe when a model and data are given.
    pub probe: bool,
    /// Run the probe even when the loss log already shows a healthy descent at the configured lr
    /// (judged without a finding, its last quarter at most half its start); `false` lets such a log
    /// stand for the probe and spares its cost.
    pub probe_with_log: bool,
    /// Steps of the learning-rate probe.
    #[schemars(range(min = 1))]
    pub probe_steps: usize,
    /// Probe loss ending this many times above its start is divergence.
    #[schemars(range(min = 1))]
    pub probe_divergence: f64,
    /// Probe loss jumping this many times above its start is unstable.
    #[schemars(range(min = 1))]
    pub probe_spike: f64,
    /// Adam / AdamW: warm-up steps of the probe that confirms a finding is not the cold start (0: none).
    pub probe_warmup: usize,
    /// Stop the probe early once its loss has settled into a clean descent (checked after every step
    /// from step 20): at most half its start, never above 1.5× it, up in at most 15% of the steps,
    /// and lower than 10 steps before. `false` always runs `probe_steps` steps.
    pub probe_early_stop: bool,
}

impl Default for LossOscillationOptions {
    fn default() -> Self {
        let t = OscillationThresholds::default();
        LossOscillationOptions {
            min_points: 30,
            zigzag_autocorr: t.zigzag_autocorr,
            min_amplitude: t.min_amplitude,
            amplitude_to_descent: t.amplitude_to_descent,
            min_progress: t.min_progress,
            bounce_amplitude: t.bounce_amplitude,
            divergence_rise: t.divergence_rise,
            min_wander: t.min_wander,
            wander_to_noise: t.wander_to_noise,
            probe: true,
            probe_with_log: false,
            probe_steps: 60,
            probe_divergence: 2.0,
            probe_spike: 10.0,
            probe_warmup: 10,
            probe_early_stop: true,
        }
    }
}

const LOWER_LR: &str =
    "lower the learning rate by 3–10× (or add warm-up); if it bounces at any learning rate, add capacity";

/// What the log analysis measured.
#[derive(Serialize)]
pub struct LogEvidence {
    pub amplitude: f64,
    pub descent: f64,
    pub residual_autocorr: f64,
    pub amplitude_growth: f64,
    pub start_level: f64,
    pub last_quarter_level: f64,
    /// After the initial drop: the trend's up-and-down wander (RMS, log units when `log_space`).
    pub wander: f64,
    /// The step where the plateau after the initial drop starts.
    pub plateau_from_step: f64,
    #[serde(skip)]
    pub first_step: f64,
    #[serde(skip)]
    pub last_step: f64,
}

/// The logged loss rises over the run instead of descending
///
/// # Why
/// A loss whose level ends well above where it started is diverging: the learning rate is too high for the
/// model (or the loss is mis-specified), and training longer makes it worse.
///
/// # How
/// The values are taken in log space when all positive. Error when the interquartile mean of the last quarter
/// lies `divergence_rise` (ln 2: doubled) above the level at the start (the interquartile mean of the first
/// 5% of the points, at least 5). Needs `min_points` finite rows.
///
/// # Fix
/// Lower the learning rate by 3–10× (or add warm-up); check the loss's sign and reduction.
#[derive(Serialize, ViolationMetadata)]
#[kind(id = "loss-oscillation/log-diverges", grade = error)]
#[kind(example(args = "--log fixtures/logs/rising.csv", severity = error, message = "the loss diverges over steps 0..199: its level rose from 7.16 (start) to 33.6 (last quarter)"))]
pub struct LogDiverges {
    #[serde(flatten)]
    pub log: LogEvidence,
}

impl Violation for LogDiverges {
    fn message(&self) -> String {
        let l = &self.log;
        format!(
            "the loss diverges over steps {}..{}: its level rose from {} (start) to {} (last quarter)",
            num(l.first_step),
            num(l.last_step),
            num(l.start_level),
            num(l.last_quarter_level)
        )
    }
    fn help(&self) -> String {
        LOWER_LR.into()
    }
}

/// The logged loss blew up, then sat on the loss of a constant output: training collapsed
///
/// # Why
/// A loss that explodes and then rests exactly where a model that ignores its input would score (ln K for K
/// balanced classes, the targets' variance for mse) has not recovered: the blow-up killed the model (dead
/// ReLUs, saturated units) and it now predicts the same for every input. The flat end looks calm, and without
/// this check such a run passes as a plateau.
///
/// # How
/// Needs the data sample (for the constant output's loss: the entropy of the class prior to ln K for
/// cross_entropy / nll, with K from the model's logits or the targets; the targets' variance per output for
/// mse). Error when the log peaks at 10× that loss or more before its last quarter, and its last quarter's
/// level (interquartile mean) sits within 0.8–1.25× of it without descending (at least 97% of the third
/// quarter's). Replaces the log's other verdicts.
///
/// # Fix
/// Lower the learning rate by 10× or more (or clip gradients, warm up) and restart from a fresh init: the
/// collapsed weights do not recover.
#[derive(Serialize, ViolationMetadata)]
#[kind(id = "loss-oscillation/log-collapsed", grade = error)]
#[kind(example(args = "fixtures/configs/collapsed.toml", severity = error, message = "the loss collapsed over steps 0..299: it blew up to 6.29e4 at step 1, then sat at 2.34 (last quarter), the loss of a constant output (ln 10 = 2.3): the model stopped learning and gives every input (nearly) the same output"))]
pub struct LogCollapsed {
    #[serde(flatten)]
    pub log: LogEvidence,
    /// The highest logged loss and its step.
    pub peak: f64,
    pub peak_step: f64,
    /// What a model that gives every input the same output scores (ln K, the class prior's entropy, the
    /// targets' variance), and how it was computed.
    pub constant_loss: f64,
    pub constant_as: String,
}

impl Violation for LogCollapsed {
    fn message(&self) -> String {
        format!(
            "the loss collapsed over steps {}..{}: it blew up to {} at step {}, then sat at {} (last quarter), \
the loss of a constant output ({}): the model stopped learning and gives every input (nearly) the same output",
            num(self.log.first_step),
            num(self.log.last_step),
            num(self.peak),
            num(self.peak_step),
            num(self.log.last_quarter_level),
            self.constant_as
        )
    }
    fn help(&self) -> String {
        "lower the learning rate by 10× or more (or clip gradients, warm up) and restart from a fresh init"
            .into()
    }
}

/// What a model that gives every input the same output scores on this data: the floor a collapsed
/// run sits on. (lo, hi): the best constant's loss and the uniform one's (equal but for classes).
struct ConstantLoss {
    lo: f64,
    hi: f64,
    what: String,
}

fn constant_output_loss(ctx: &Context) -> Option<ConstantLoss> {
    let data = ctx.data?;
    match ctx.setup.resolved_loss(Some(data)) {
        LossKind::CrossEntropy | LossKind::Nll
            if data.targets_are_classes() || data.targets_are_probabilities() =>
        {
            // Class probabilities (one-hot, smoothed, mixup): the best constant output predicts their
            // mean, and scores its entropy; a uniform one still scores ln K (each row sums to 1).
            let soft = !data.targets_are_classes();
            let from_logits = ctx
                .model
                .and_then(|_| ctx.prediction().ok())
                .and_then(|p| train::class_count(p).ok());
            let k = match from_logits {
                Some(k) => k,
                None if soft => data.targets.size()[1],
                None => data.targets.f_max().ok()?.f_int64_value(&[]).ok()? + 1,
            };
            if k < 2 {
                return None;
            }
            let prior = if soft {
                train::probability_prior_entropy(&data.targets).ok()?
            } else {
                super::initial_loss::prior_entropy(&data.targets, k).ok()?
            };
            let uniform = (k as f64).ln();
            if !prior.is_finite() || prior <= 0.0 {
                return None;
            }
            let what = if (uniform - prior).abs() <= 0.01 * uniform {
                format!("ln {k} = {}", num(uniform))
            } else {
                format!(
                    "{} for the class prior, ln {k} = {} for uniform outputs",
                    num(prior),
                    num(uniform)
                )
            };
            Some(ConstantLoss {
                lo: prior,
                hi: uniform,
                what,
            })
        }
        LossKind::Mse if data.targets.is_floating_point() && data.len() >= 2 => {
            let n = data.len() as i64;
            let y = data
                .targets
                .f_to_kind(tch::Kind::Double)
                .ok()?
                .f_reshape([n, -1])
                .ok()?;
            let v = y
                .f_var_dim(Some([0i64].as_slice()), false, false)
                .ok()?
                .f_mean(tch::Kind::Double)
                .ok()?
                .f_double_value(&[])
                .ok()?;
            (v.is_finite() && v > 0.0).then(|| ConstantLoss {
                lo: v,
                hi: v,
                what: format!("the targets' variance, {}", num(v)),
            })
        }
        _ => None,
    }
}

/// The logged loss zig-zags or bounces instead of descending
///
/// # Why
/// A loss that zig-zags step to step, or bounces around a level it does not leave, is the classic sign of a
/// learning rate too high for the model (or too little capacity); healthy minibatch noise rides on a
/// descending trend.
///
/// # How
/// The values are taken in log space when all positive; the trend is a running interquartile mean and the
/// residual the rest. Warning for a zig-zag (residual lag-1 autocorrelation ≤ `zigzag_autocorr`, robust
/// residual amplitude ≥ `min_amplitude` and ≥ `amplitude_to_descent` × the net descent), for no progress (net
/// descent from the start < `min_progress`) with swings ≥ `bounce_amplitude`, or for a plateau after the
/// initial drop (from the first point whose trend is halfway down from the start to its minimum) that makes
/// no progress (< `min_progress`) while its trend goes up and down: the level of consecutive blocks (1/12 of
/// the plateau, 5 to 25 points) stays at an RMS distance ≥ `min_wander` from the closest non-increasing
/// sequence, and ≥ `wander_to_noise` × what white minibatch noise alone gives block levels (residual
/// amplitude / √block). A healthy converged plateau's level stays flat under its noise; a learning rate too
/// high keeps it wandering. A log that starts on a converged plateau shows no progress by construction: give
/// it from the first step.
///
/// # Fix
/// Lower the learning rate by 3–10× (or add warm-up / gradient clipping); if the loss bounces at any learning
/// rate, the model may lack capacity.
#[derive(Serialize, ViolationMetadata)]
#[kind(id = "loss-oscillation/log-oscillates", grade = warning)]
#[kind(example(args = "--log fixtures/logs/high_lr_zigzag.csv", severity = warning, message = "the loss oscillates without descending over steps 0..299: swings ±21.7% around its trend while the net descent is 13.8% (level at the start 1.65, last quarter 1.41)"))]
pub struct LogOscillates {
    #[serde(flatten)]
    pub log: LogEvidence,
    #[serde(skip)]
    pub zigzag: bool,
    /// No zig-zag and net progress, but a plateau after the initial drop whose trend wanders.
    #[serde(skip)]
    pub wandering: bool,
    #[serde(skip)]
    pub log_space: bool,
}

impl Violation for LogOscillates {
    fn message(&self) -> String {
        let l = &self.log;
        let pct = |x: f64| {
            if self.log_space {
                format!("±{}%", num(100.0 * (x.exp() - 1.0)))
            } else {
                format!("±{}", num(x))
            }
        };
        if self.wandering {
            return format!(
                "the loss wanders on a plateau after its initial drop over steps {}..{}: its smoothed level \
goes up and down by {} (RMS) without descending, with swings {} around it (level at the start {}, last \
quarter {})",
                num(l.plateau_from_step),
                num(l.last_step),
                pct(l.wander),
                pct(l.amplitude),
                num(l.start_level),
                num(l.last_quarter_level)
            );
        }
        let what = if self.zigzag {
            format!(
                "zig-zags step to step (residual lag-1 autocorrelation {})",
                num(l.residual_autocorr)
            )
        } else {
            "oscillates without descending".to_string()
        };
        let descent = if self.log_space {
            100.0 * (1.0 - (-l.descent).exp())
        } else {
            l.descent
        };
        format!(
            "the loss {what} over steps {}..{}: swings {} around its trend while the net descent is {}% \
(level at the start {}, last quarter {})",
            num(l.first_step),
            num(l.last_step),
            pct(l.amplitude),
            num(descent),
            num(l.start_level),
            num(l.last_quarter_level)
        )
    }
    fn help(&self) -> String {
        LOWER_LR.into()
    }
}

/// What the learning-rate probe measured.
#[derive(Serialize)]
pub struct ProbeEvidence {
    #[serde(skip)]
    pub optimizer: &'static str,
    #[serde(skip)]
    pub lr: f64,
    #[serde(skip)]
    pub batch_size: usize,
    /// " (assumed: …)" when the config left the optimizer, lr or batch size unset.
    #[serde(skip)]
    pub assumed: String,
    pub probe_start: f64,
    pub probe_end: f64,
    pub probe_up_share: f64,
    pub probe_steps: usize,
    /// The control: the same probe from the same start on the same batches at lr / 10.
    pub control_lr: f64,
    pub control_end: f64,
    pub control_peak: f64,
    pub control_up_share: f64,
    /// A restart (issue 23, 9): the probe began from a checkpoint that already fits the sample, and was
    /// judged against what a constant output scores (this loss), not against its own start.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub restart_constant_loss: Option<f64>,
}

impl ProbeEvidence {
    fn what(&self) -> String {
        format!(
            "{} at lr {} (batch {}){}",
            self.optimizer,
            num(self.lr),
            self.batch_size,
            self.assumed
        )
    }
    fn help(&self) -> String {
        format!("lower setup.lr by 3–10× (try {})", num(self.lr / 10.0))
    }
    /// A probe finding's message: what ran, its verdict, what the evaluation loss did, the control.
    fn message(&self, verdict: &str, loss: String) -> String {
        format!(
            "learning-rate probe: {} {verdict}: the loss on a fixed evaluation batch {loss}{}",
            self.what(),
            self.control()
        )
    }
    fn control(&self) -> String {
        let restart = self
            .restart_constant_loss
            .map(|c| {
                format!(
                    "; restarted from a checkpoint that already fits the sample, it rose past the loss of a \
constant output ({})",
                    num(c)
                )
            })
            .unwrap_or_default();
        restart
            + &format!(
                "; at lr {} it went to {} (peak {}, up in {}% of the steps)",
                num(self.control_lr),
                num(self.control_end),
                num(self.control_peak),
                num(self.control_up_share * 100.0)
            )
    }
}

/// `Violation` for a probe kind: the message is [`ProbeEvidence::message`] with the kind's verdict and
/// what its evaluation loss did (`$loss`, from the violation `$v` and its probe `$p`); the help is the
/// probe's unless `help:` gives another.
macro_rules! probe_violation {
    ($kind:ty, $verdict:literal, |$v:ident, $p:ident| $loss:expr) => {
        probe_violation!($kind, $verdict, |$v, $p| $loss, help: |p| p.help());
    };
    ($kind:ty, $verdict:literal, |$v:ident, $p:ident| $loss:expr, help: |$h:ident| $help:expr) => {
        impl Violation for $kind {
            fn message(&self) -> String {
                #[allow(unused_variables)]
                let $v = self;
                let $p = &self.probe;
                $p.message($verdict, $loss)
            }
            fn help(&self) -> String {
                let $h = &self.probe;
                $help
            }
        }
    };
}

/// The configured optimizer and learning rate make the loss diverge within a few dozen steps
///
/// # Why
/// If the loss on a fixed batch grows within 60 steps from the model's own start, the real run will diverge
/// or waste its first epochs recovering: the learning rate is too high for this model.
///
/// # How
/// The probe trains a copy with the configured optimizer, lr and batch size for `probe_steps` steps on random
/// batches of the sample and measures the loss after each step on one fixed evaluation batch (the first 64
/// samples). With `probe_early_stop` it stops sooner once that loss has settled into a clean descent (checked
/// after every step from step 20: at most half its start, never above 1.5× it, up in at most 15% of the
/// steps, lower than 10 steps before); such a curve carries no finding, and on 1,175 real probes none that
/// stopped would have had one after 60 steps. It also stops once that loss has stayed above `probe_spike`×
/// its start for 10 steps in a row (a run that holds a finding whatever follows), and then runs the control
/// below for as many steps. Error when that loss becomes non-finite or ends `probe_divergence`× above its
/// start. A probe that starts at most half as high as a constant output scores (the loss of log-collapsed)
/// restarts a trained checkpoint at the lr its schedule began with: it bounces out of a minimum reached at a
/// decayed lr, and a lower lr always has the lower noise floor there. Such a restart holds a finding only
/// when its loss rises past that constant's loss (the peak for a spike, the last quarter's level for
/// divergence and oscillation), as a fresh run at a too-high lr would. Every probe finding must survive two
/// confirmations, run only when one is pending: with Adam / AdamW, and for a restart with any optimizer, the
/// same probe with the lr warmed up over `probe_warmup` steps must show a finding too (a restarted Adam's
/// first bias-corrected step moves every weight by ~lr and spikes any trained checkpoint: that is the
/// optimizer's cold start, not the lr); and the control, the same probe from the same start on the same
/// batches at lr / 10, must clearly do better (for divergence, end below half the configured end; for a
/// spike, a peak at most a third as high; for oscillation, 15 points fewer steps up or an end 10% lower).
/// Skipped with `probe = false`.
///
/// # Fix
/// Lower setup.lr by 3–10× (or add warm-up / gradient clipping).
#[derive(Serialize, ViolationMetadata)]
#[kind(id = "loss-oscillation/probe-diverges", grade = error)]
#[kind(example(args = "fixtures/configs/adam_lr1.toml", severity = error, message = "learning-rate probe: adam at lr 1 (batch 16) diverges: the loss on a fixed evaluation batch went from 0.955 to 1.13e5 in 10 steps; at lr 0.1 it went to 0.872 (peak 35.1, up in 40% of the steps)"))]
pub struct ProbeDiverges {
    #[serde(flatten)]
    pub probe: ProbeEvidence,
}

probe_violation!(ProbeDiverges, "diverges", |v, p| format!(
    "went from {} to {} in {} steps",
    num(p.probe_start),
    num(p.probe_end),
    p.probe_steps
));

/// The configured learning rate makes the loss spike far above its start
///
/// # Why
/// A loss that jumps 10× above its start, even if it recovers, shows a learning rate at the edge of
/// stability: weights are thrown far away and the run relies on luck to come back.
///
/// # How
/// The same probe as probe-diverges. Warning when the evaluation loss jumps `probe_spike`× above its start at
/// any step and does not end diverged, confirmed as for probe-diverges.
///
/// # Fix
/// Lower setup.lr by 3–10×, or warm the learning rate up over the first steps.
#[derive(Serialize, ViolationMetadata)]
#[kind(id = "loss-oscillation/probe-spikes", grade = warning)]
#[kind(example(args = "fixtures/configs/bn_adam_lr1.toml", severity = warning, message = "learning-rate probe: adam at lr 1 (batch 32) is unstable: the loss on a fixed evaluation batch jumped to 5210 (2230× its start 2.34) at step 1, and ended at ~1.8 after 60 steps; at lr 0.1 it went to 0.484 (peak 14.4, up in ~28.3% of the steps)"))]
pub struct ProbeSpikes {
    #[serde(flatten)]
    pub probe: ProbeEvidence,
    pub probe_peak: f64,
    pub probe_peak_step: usize,
}

probe_violation!(ProbeSpikes, "is unstable", |v, p| format!(
    "jumped to {} ({}× its start {}) at step {}, and ended at {} after {} steps",
    num(v.probe_peak),
    num(v.probe_peak / p.probe_start),
    num(p.probe_start),
    v.probe_peak_step,
    num(p.probe_end),
    p.probe_steps
));

/// The configured learning rate blows the model up, and it ends giving every input the same output
///
/// # Why
/// A probe whose evaluation loss explodes and then rests on the loss of a constant output (ln K, the targets'
/// variance) has not recovered from a spike: the model died (dead ReLUs, saturated units) and now scores what
/// ignoring the input scores. The real run would sit there too, looking calm.
///
/// # How
/// The same probe as probe-diverges, with the data sample's constant-output loss as for log-collapsed. Error
/// when the evaluation loss peaks at 10× that loss or more before its last step and ends within 0.95–1.1× of
/// it (the best constant's loss to the uniform one's), not descending over its last 10 steps. With Adam /
/// AdamW the warmed-up rerun must show a finding too; the lr / 10 control is run and reported but not
/// required to do better (a collapse is no converged minimum's noise, and at lr / 10 the model may still
/// collapse).
///
/// # Fix
/// Lower setup.lr by 10× or more (or clip gradients, warm up) until the probe no longer blows up.
#[derive(Serialize, ViolationMetadata)]
#[kind(id = "loss-oscillation/probe-collapses", grade = error)]
#[kind(example(args = "fixtures/configs/collapsed.toml", severity = error, message = "learning-rate probe: sgd at lr 5 (batch 32) collapses: the loss on a fixed evaluation batch blew up to 4.98e5 at step 2, then came to rest at 2.34 after 60 steps, the loss of a constant output (ln 10 = 2.3); at lr 0.5 it went to 2.32 (peak 1024, up in 11.7% of the steps)"))]
pub struct ProbeCollapses {
    #[serde(flatten)]
    pub probe: ProbeEvidence,
    pub probe_peak: f64,
    pub probe_peak_step: usize,
    pub constant_loss: f64,
    pub constant_as: String,
}

probe_violation!(
    ProbeCollapses,
    "collapses",
    |v, p| format!(
        "blew up to {} at step {}, then came to rest at {} after {} steps, the loss of a constant output ({})",
        num(v.probe_peak),
        v.probe_peak_step,
        num(p.probe_end),
        p.probe_steps,
        v.constant_as
    ),
    help: |p| format!(
        "lower setup.lr by 10× or more (try {}), or clip gradients / warm up",
        num(p.lr / 10.0)
    )
);

/// The logged loss stops descending early while a 10× lower learning rate keeps going
///
/// # Why
/// A learning rate too high for the model often shows no divergence and no zig-zag: after a fast first drop
/// the loss rests, noisy, on a plateau far above what the model reaches at a lower lr. The log looks calm and
/// the probe at the configured lr only bounces, so neither is a finding alone; the probe at lr / 10 from the
/// same start on the same batches, ending well below both, is the evidence.
///
/// # How
/// When the log, judged without a finding, no longer descends in its second half (the interquartile mean of
/// its last quarter at least 90% of its second quarter's) and the probe at the configured lr neither finds
/// anything nor settles into a clean descent, the control probe at lr / 10 is run for as many steps. Warning
/// when it ends at most 0.7× the log's last-quarter level and 0.9× the configured probe's (the interquartile
/// mean of its last quarter: a bouncing probe's last value is noise). Converged runs rest too, but a
/// checkpoint at its minimum gains little from a lower lr.
///
/// # Fix
/// Lower setup.lr by 3–10× (or decay it after the first drop), and compare the plateau.
#[derive(Serialize, ViolationMetadata)]
#[kind(id = "loss-oscillation/stalls-at-high-lr", grade = warning)]
#[kind(example(args = "fixtures/configs/adam_plateau.toml", severity = warning, message = "the logged loss rests at 2.98 from step 200 on, while the learning-rate probe at lr 0.02 (adam, batch 32) reaches 1.85 on a fixed evaluation batch, where the configured lr 0.2 reaches 2.71 in 60 steps: the lr is too high for the model to descend further"))]
pub struct LogStallsHighLr {
    #[serde(flatten)]
    pub probe: ProbeEvidence,
    /// The log's level over its last quarter, and the step its second half starts at.
    pub log_level: f64,
    pub log_from_step: f64,
}

impl Violation for LogStallsHighLr {
    fn message(&self) -> String {
        let p = &self.probe;
        format!(
            "the logged loss rests at {} from step {} on, while the learning-rate probe at lr {} ({}, batch {}) \
reaches {} on a fixed evaluation batch, where the configured lr {} reaches {} in {} steps: the lr is too \
high for the model to descend further",
            num(self.log_level),
            num(self.log_from_step),
            num(p.control_lr),
            p.optimizer,
            p.batch_size,
            num(p.control_end),
            num(p.lr),
            num(p.probe_end),
            p.probe_steps
        )
    }
    fn help(&self) -> String {
        self.probe.help()
    }
}

/// The configured learning rate makes the loss go up and down instead of descending
///
/// # Why
/// On a fixed evaluation batch there is no minibatch noise: a loss that rises in a third of the steps without
/// net progress is bouncing across the valley, a learning rate too high for the model.
///
/// # How
/// The same probe as probe-diverges. Warning when the evaluation loss made no progress (end ≥ 0.9 × start)
/// with ≥ 30% of the steps going up (by more than 1%), or zig-zags (≥ 45% of the steps up), confirmed as for
/// probe-diverges; not when the loss log is given and judged descending (a healthy log outweighs a probe that
/// only goes up and down).
///
/// # Fix
/// Lower setup.lr by 3–10×; if the loss bounces at any learning rate, add capacity.
#[derive(Serialize, ViolationMetadata)]
#[kind(id = "loss-oscillation/probe-oscillates", grade = warning)]
#[kind(example(args = "fixtures/configs/sgd_probe_oscillates.toml", severity = warning, message = "learning-rate probe: sgd at lr 0.3 (batch 32) oscillates: the loss on a fixed evaluation batch went up in 48.3% of 60 steps and from 0.955 to ~1.3; at lr 0.03 it went to 0.00291 (peak 0.955, up in 21.7% of the steps)"))]
pub struct ProbeOscillates {
    #[serde(flatten)]
    pub probe: ProbeEvidence,
}

probe_violation!(ProbeOscillates, "oscillates", |v, p| format!(
    "went up in {}% of {} steps and from {} to {}",
    num(p.probe_up_share * 100.0),
    p.probe_steps,
    num(p.probe_start),
    num(p.probe_end)
));

fn thresholds(o: &LossOscillationOptions) -> OscillationThresholds {
    OscillationThresholds {
        zigzag_autocorr: o.zigzag_autocorr,
        min_amplitude: o.min_amplitude,
        amplitude_to_descent: o.amplitude_to_descent,
        divergence_rise: o.divergence_rise,
        min_progress: o.min_progress,
        bounce_amplitude: o.bounce_amplitude,
        min_wander: o.min_wander,
        wander_to_noise: o.wander_to_noise,
    }
}

/// What the log analysis found; `too_short` holds the number of finite rows when there were fewer
/// than `min_points` (nothing was judged).
struct LogAnalysis {
    findings: Vec<Finding>,
    /// Judged, and found descending.
    descending: bool,
    /// Judged without a finding, and its last quarter's level at most half its start's: (start
    /// level, last-quarter level, first step, last step) of a log that can stand for the probe.
    healthy: Option<(f64, f64, f64, f64)>,
    /// Judged without a finding, but its second half no longer descends (its last quarter at least
    /// 90% of its second quarter): the level it rests on and the step its second half starts at.
    stalled: Option<(f64, f64)>,
    curve: Option<Curve>,
    too_short: Option<usize>,
}

fn too_short_reason(rows: usize, options: &LossOscillationOptions) -> String {
    format!(
        "the loss log has {rows} finite rows; loss-oscillation needs at least min_points = {}",
        options.min_points
    )
}

fn analyse_log(
    log: &LossLog,
    options: &LossOscillationOptions,
    constant: Option<&ConstantLoss>,
) -> LogAnalysis {
    let judged = |findings: Vec<Finding>, curve| LogAnalysis {
        descending: findings.is_empty(),
        healthy: None,
        stalled: None,
        findings,
        curve,
        too_short: None,
    };
    // A log whose trend is not judged: it turns non-finite, or has too few finite rows.
    let not_judged = |curve, too_short| LogAnalysis {
        descending: false,
        too_short,
        ..judged(Vec::new(), Some(curve))
    };
    let Some(column) = log.total.clone().or_else(|| log.terms.first().cloned()) else {
        return judged(Vec::new(), None);
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
        // A loss that turns NaN / Inf is the `nonfinite` check's finding (one root cause, one
        // finding); the rows before it are what a diverging run looked like, not a trend to judge.
        let start = (at.saturating_sub(20)).max(first_finite.unwrap_or(0));
        curve.window = Some((steps[start], steps[at]));
        curve.name = format!(
            "{} (not judged: it becomes {} at step {}, reported by nonfinite)",
            curve.name,
            values[at],
            num(steps[at])
        );
        return not_judged(curve, None);
    }
    let finite: Vec<(f64, f64)> = steps
        .iter()
        .zip(values)
        .filter(|(_, v)| v.is_finite())
        .map(|(s, v)| (*s, *v))
        .collect();
    if finite.len() < options.min_points {
        curve.name = format!(
            "{} (not judged: {})",
            curve.name,
            too_short_reason(finite.len(), options)
        );
        return not_judged(curve, Some(finite.len()));
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
    let evidence = LogEvidence {
        amplitude: o.amplitude,
        descent: o.descent,
        residual_autocorr: o.residual_autocorr,
        amplitude_growth: o.amplitude_growth,
        start_level: m_first,
        last_quarter_level: m_last,
        wander: o.wander,
        plateau_from_step: finite[o.plateau_start.min(finite.len() - 1)].0,
        first_step: first,
        last_step: last,
    };
    let at = Location::log(&column, (first, last));
    // A blow-up, then a flat rest on a constant output's loss: collapsed, whatever the trend says.
    let n = ys.len();
    let (peak_i, peak) =
        ys.iter()
            .copied()
            .enumerate()
            .fold(
                (0, f64::NEG_INFINITY),
                |b, (i, v)| if v > b.1 { (i, v) } else { b },
            );
    let third = stats::interquartile_mean(&ys[n / 2..n - q]);
    if let Some(c) = constant {
        if n - q > n / 2
            && peak >= 10.0 * c.hi
            && peak_i < n - q
            && m_last >= 0.8 * c.lo
            && m_last <= 1.25 * c.hi
            && m_last >= 0.97 * third
        {
            let v = LogCollapsed {
                peak,
                peak_step: finite[peak_i].0,
                constant_loss: c.lo,
                constant_as: c.what.clone(),
                log: evidence,
            };
            curve.window = Some((first, last));
            return judged(vec![Finding::new(&v, at)], Some(curve));
        }
    }
    let finding = match stats::judge_oscillation(&o, &thresholds(options)) {
        Verdict::Descending => None,
        Verdict::Diverging => Some(Finding::new(&LogDiverges { log: evidence }, at)),
        Verdict::Oscillating => {
            let t = thresholds(options);
            let zigzag = o.residual_autocorr <= options.zigzag_autocorr
                && o.amplitude >= t.min_amplitude
                && o.amplitude >= t.amplitude_to_descent * o.descent.max(0.0);
            let bounce = o.descent < t.min_progress && o.amplitude >= t.bounce_amplitude;
            let wandering = !zigzag && !bounce && stats::is_wandering(&o, &t);
            let at = if wandering {
                Location::log(&column, (evidence.plateau_from_step, last))
            } else {
                at
            };
            let v = LogOscillates {
                log: evidence,
                zigzag: o.residual_autocorr <= options.zigzag_autocorr,
                wandering,
                log_space: o.log_space,
            };
            Some(Finding::new(&v, at))
        }
    };
    if finding.is_some() {
        curve.window = Some((first, last));
    }
    // Still descending in its second half, or resting there (converged, or stalled too high: the
    // probe and its control tell which).
    let second = stats::interquartile_mean(&ys[n / 4..(n / 2).max(n / 4 + 1)]);
    let rests = m_last >= 0.9 * second;
    let healthy = (finding.is_none() && m_first > 0.0 && m_last <= 0.5 * m_first && !rests)
        .then_some((m_first, m_last, first, last));
    let stalled = (finding.is_none() && rests).then_some((m_last, finite[n / 2].0));
    LogAnalysis {
        healthy,
        stalled,
        ..judged(finding.into_iter().collect(), Some(curve))
    }
}

/// A probe run: the loss on the fixed evaluation batch before the first step and after each step.
struct ProbeRun {
    curve: Vec<f64>,
    /// The step after which the run stopped at a settled descent ([`settled_descent`]), if it did.
    settled_at: Option<usize>,
    /// The step after which the run stopped at a sustained divergence ([`sustained_divergence`]).
    diverged_at: Option<usize>,
    /// Steps, evaluations and time of the run (issue 11), set by [`probe_run`].
    training: Option<crate::TrainingRun>,
    /// A restart ([`restart`]): the losses of the best and of the uniform constant output, which the
    /// run must rise past to hold a finding.
    restart: Option<(f64, f64)>,
    start: f64,
    end: f64,
    up_share: f64,
    peak: f64,
    peak_step: usize,
}

impl ProbeRun {
    fn new(curve: Vec<f64>) -> Self {
        let start = curve[0];
        let end = *curve.last().expect("probe curve has its start");
        let ups = steps_up(&curve);
        let (peak_step, peak) =
            curve
                .iter()
                .copied()
                .enumerate()
                .fold((0, f64::NEG_INFINITY), |best, (i, v)| {
                    if v > best.1 || v.is_nan() {
                        (i, v)
                    } else {
                        best
                    }
                });
        let up_share = ups as f64 / (curve.len() - 1).max(1) as f64;
        ProbeRun {
            curve,
            settled_at: None,
            diverged_at: None,
            training: None,
            restart: None,
            start,
            end,
            up_share,
            peak,
            peak_step,
        }
    }
    fn diverges(&self, o: &LossOscillationOptions) -> bool {
        !self.end.is_finite()
            || (self.end > o.probe_divergence * self.start
                && self.restart.is_none_or(|(lo, _)| self.tail_level() >= lo))
    }
    fn spikes(&self, o: &LossOscillationOptions) -> bool {
        self.peak >= o.probe_spike * self.start
            && self.restart.is_none_or(|(_, hi)| self.peak >= hi)
    }
    fn oscillates(&self) -> bool {
        ((self.end >= 0.9 * self.start && self.up_share >= 0.3) || self.up_share >= 0.45)
            && self.restart.is_none_or(|(lo, _)| self.tail_level() >= lo)
    }
    /// The level of the last quarter of the curve (its interquartile mean: a bouncing probe's last
    /// value moves with the thread count's rounding).
    fn tail_level(&self) -> f64 {
        let k = self.curve.len();
        stats::interquartile_mean(&self.curve[k - (k / 4).max(1)..])
    }
}

/// The share of a constant output's loss below which a probe's start is a restart ([`restart`]).
const RESTART_SHARE: f64 = 0.5;

/// Whether a probe starting at `start` restarts a checkpoint that already fits the sample: its loss at
/// most half what the best constant output scores (a fresh model starts near or above it). The
/// configured lr is where such a model's schedule began, not where it ended: a minimum reached at a
/// decayed lr is sharper than the peak lr tolerates (its sharpness nears 2 / the last lr), so the first
/// steps at the peak lr always bounce out of it, and near any minimum a lower lr has a lower noise
/// floor. Neither says the lr is too high. What does is the consequence that a fresh run would meet:
/// the loss rising past what a constant output scores (the model loses what it learned). Returns the
/// best and the uniform constant's losses, the levels a restart's level and peak must pass.
fn restart(start: f64, constant: Option<&ConstantLoss>) -> Option<(f64, f64)> {
    constant
        .filter(|c| start.is_finite() && start <= RESTART_SHARE * c.lo)
        .map(|c| (c.lo, c.hi))
}

/// How many steps of a probe curve went up by more than 1% (the oscillation verdict's count).
fn steps_up(curve: &[f64]) -> usize {
    curve.windows(2).filter(|w| w[1] > w[0] * 1.01).count()
}

/// How many steps back a settled descent must still be lower than ([`settled_descent`]).
const SETTLE_LOOKBACK: usize = 10;
/// The first step at which the probe asks [`settled_descent`]; it asks after every step from there.
const SETTLE_FIRST: usize = 20;

/// Whether a probe curve (the start, then one loss per step) has settled into a clean descent that the
/// remaining steps will not turn into a finding: every value finite, the last at most half the start,
/// none above 1.5× the start, at most 15% of the steps up by more than 1% (the oscillation verdict
/// needs 30–45%), and the last below the value [`SETTLE_LOOKBACK`] steps earlier (still descending).
/// To diverge (end above `probe_divergence` = 2× the start) from there the loss must grow 4×, to spike
/// 20×; measured how often that happens on real probes in `scripts/probe_early_stop.py`.
fn settled_descent(curve: &[f64]) -> bool {
    let k = curve.len().saturating_sub(1);
    if k < SETTLE_FIRST || k < SETTLE_LOOKBACK || curve.iter().any(|v| !v.is_finite()) {
        return false;
    }
    let start = curve[0];
    let last = curve[k];
    let ups = steps_up(curve);
    start > 0.0
        && last <= 0.5 * start
        && curve.iter().all(|&v| v <= 1.5 * start)
        && ups as f64 <= 0.15 * k as f64
        && last < curve[k - SETTLE_LOOKBACK]
}

/// Steps in a row that a probe's loss must stay above `probe_spike` × its start for its run to stop
/// as diverged ([`sustained_divergence`]).
const SUSTAINED: usize = 10;

/// Whether a probe curve (the start, then one loss per step) has diverged for good: its last
/// [`SUSTAINED`] values all above `spike` × the start. Such a run already holds a finding whatever
/// follows (its peak is past `probe_spike`), and an end that stayed that high is divergence: the
/// remaining steps could only turn it into a spike that recovers, which the control and the warm-up
/// run judge the same way. Stopping there spares the rest of the run and lets the control run as
/// few steps.
fn sustained_divergence(curve: &[f64], spike: f64, restart: Option<(f64, f64)>) -> bool {
    let k = curve.len().saturating_sub(1);
    let start = curve[0];
    // A restart holds a finding only past the constant output's loss.
    let above = (spike * start).max(restart.map_or(0.0, |(_, hi)| hi));
    k >= SUSTAINED
        && start > 0.0
        && start.is_finite()
        && curve[k + 1 - SUSTAINED..]
            .iter()
            .all(|&v| v.is_finite() && v > above)
}

#[derive(Clone, Copy, PartialEq)]
enum ProbeVerdict {
    Collapses,
    Diverges,
    Spikes,
    Oscillates,
}

/// Train a copy with the configured optimizer at `lr` (warmed up linearly over `warmup` steps) on random
/// batches drawn with the setup's seed, and measure the evaluation loss. The main run (`report`) stops at
/// a [`settled_descent`] when `probe_early_stop` allows it; the confirmations need their whole curves.
#[allow(clippy::too_many_arguments)]
fn probe_run(
    ctx: &Context,
    model: &dyn Model,
    inputs: &tch::Tensor,
    targets: &tch::Tensor,
    eval_n: i64,
    lr: f64,
    warmup: usize,
    steps: usize,
    options: &LossOscillationOptions,
    constant: Option<&ConstantLoss>,
    report: bool,
    budget: &Budget,
) -> Result<ProbeRun, CheckError> {
    let setup = ctx.setup;
    let loss_kind = setup.resolved_loss(ctx.data);
    let mut copy = model.trainable_copy()?;
    let started = std::time::Instant::now();
    let mut opt = train::optimizer(
        copy.as_ref(),
        setup.optimizer,
        lr,
        setup.momentum,
        setup.weight_decay,
    )?;
    let n = inputs.size()[0] as usize;
    let device = model.device();
    let eval_x = inputs.f_narrow(0, 0, eval_n)?;
    let eval_y = targets.f_narrow(0, 0, eval_n)?;
    let mut rng = Rng::new(setup.seed);
    let mut curve = vec![train::evaluate(copy.as_mut(), loss_kind, &eval_x, &eval_y)?];
    let restart = restart(curve[0], constant);
    let mut trained = 0;
    let mut settled_at = None;
    let mut diverged_at = None;
    let mut batch_shape = Vec::new();
    let name = if warmup > 0 {
        "probe (warmed up)"
    } else if report {
        "probe"
    } else {
        "probe (control)"
    };
    // The earliest step this run could end with what its check needs: the main run stops at a
    // sustained divergence or a settled descent; the others need their whole curves unless they
    // diverge.
    let needed = if options.probe_early_stop {
        SUSTAINED.min(steps)
    } else {
        steps
    };
    for step in 0..steps {
        budget.allow(
            &format!("the learning-rate {name}"),
            step,
            if report { needed } else { steps },
            started,
        )?;
        if step < warmup {
            opt.set_learning_rate(lr * (step + 1) as f64 / (warmup + 1) as f64)?;
        } else if step == warmup {
            opt.set_learning_rate(lr)?;
        }
        let idx = train::batch_indices(&mut rng, n, setup.batch_size.max(2)).f_to_device(device)?;
        let x = inputs.f_index_select(0, &idx)?;
        let y = targets.f_index_select(0, &idx)?;
        train::step(copy.as_mut(), &opt, loss_kind, &x, &y, Mode::Train)?;
        trained += 1;
        if batch_shape.is_empty() {
            batch_shape = x.size();
        }
        let l = train::evaluate(copy.as_mut(), loss_kind, &eval_x, &eval_y)?;
        curve.push(l);
        if report {
            (ctx.progress)(step + 1, steps, l);
        }
        if !l.is_finite() {
            break;
        }
        let done = step + 1;
        if options.probe_early_stop
            && done < steps
            && sustained_divergence(&curve, options.probe_spike, restart)
        {
            diverged_at = Some(done);
            if report {
                (ctx.progress)(steps, steps, l);
            }
            break;
        }
        if report && options.probe_early_stop && done < steps && settled_descent(&curve) {
            settled_at = Some(done);
            if report {
                (ctx.progress)(steps, steps, l);
            }
            break;
        }
    }
    let forwards = trained + curve.len();
    let mut run = ProbeRun::new(curve);
    run.restart = restart;
    run.settled_at = settled_at;
    run.diverged_at = diverged_at;
    let mut t = train::training_run(name, inputs, forwards, trained, started);
    t.input_shape = batch_shape;
    run.training = Some(t);
    Ok(run)
}

fn probe(
    ctx: &Context,
    options: &LossOscillationOptions,
    constant: Option<&ConstantLoss>,
    log_descends: bool,
    stalled: Option<(f64, f64)>,
    training: &mut Vec<crate::TrainingRun>,
) -> Result<(Vec<Finding>, Vec<Curve>), CheckError> {
    let (Some(model), Some(data)) = (ctx.model, ctx.data) else {
        return Ok((Vec::new(), Vec::new()));
    };
    let setup = ctx.setup;
    let loss_kind = setup.resolved_loss(Some(data));
    if loss_kind.is_classification() {
        // The probe trains on random batches, whose positions are not the data's samples: check every
        // class index up front, so that the error names the sample in the file.
        train::check_class_targets(&data.targets, train::class_count(ctx.prediction()?)?)?;
    }
    let device = model.device();
    let eval_n = data.len().min(64) as i64;
    // Move the sample to the model's device once, not on every step.
    let inputs = data.inputs.f_to_device(device)?;
    let targets = data.targets.f_to_device(device)?;
    // A fully convolutional image-to-image model is probed on crops (issue 11): its per-position
    // loss averages the same terms over fewer positions, at a fraction of the work per step.
    // (No shared prediction, no crop: the probe never needed it.)
    let full_output = ctx.prediction().map(|p| p.size()).unwrap_or_default();
    let (inputs, targets, crops) = train::crop_fit_batch(
        model,
        &full_output,
        inputs,
        targets,
        loss_kind.is_classification(),
    )?;
    let on = crops.map(|c| format!(", on {c} crops")).unwrap_or_default();
    let budget = Budget::start(setup.check_budget);
    let run = |lr, warmup, steps, report| {
        probe_run(
            ctx, model, &inputs, &targets, eval_n, lr, warmup, steps, options, constant, report,
            &budget,
        )
    };
    let main = run(setup.lr, 0, options.probe_steps, true)?;
    training.extend(main.training.clone());
    // Blown up, then at rest on what a constant output scores: collapsed (checked first: such a curve
    // also spikes, and may look like a descent from a high start). The fixed evaluation batch has no
    // minibatch noise, so the band is narrower than the log's: a model still learning its way back
    // below the constant's loss (5% under it) is a spike it recovers from.
    let collapses = |r: &ProbeRun| {
        let k = r.curve.len() - 1;
        constant.is_some_and(|c| {
            k >= SETTLE_LOOKBACK
                && r.peak.is_finite()
                && r.peak >= 10.0 * c.hi
                && r.peak_step < k
                && r.end >= 0.95 * c.lo
                && r.end <= 1.1 * c.hi
                && r.end >= 0.97 * r.curve[k - SETTLE_LOOKBACK]
        })
    };
    let verdict = |r: &ProbeRun| {
        if collapses(r) {
            Some(ProbeVerdict::Collapses)
        } else if r.diverges(options) {
            Some(ProbeVerdict::Diverges)
        } else if r.spikes(options) {
            Some(ProbeVerdict::Spikes)
        } else if r.oscillates() && !log_descends {
            // A healthy descending log outweighs a probe that only goes up and down.
            Some(ProbeVerdict::Oscillates)
        } else {
            None
        }
    };
    let name = |lr: f64| {
        format!(
            "learning-rate probe ({} lr {}, batch {}{on})",
            setup.optimizer.as_str(),
            num(lr),
            setup.batch_size
        )
    };
    let settled = match (main.settled_at, main.diverged_at) {
        (Some(k), _) => format!(
            " (a settled descent: stopped at step {k} of {})",
            options.probe_steps
        ),
        (None, Some(k)) => format!(
            " (diverged: above {}× its start for {SUSTAINED} steps, stopped at step {k} of {})",
            num(options.probe_spike),
            options.probe_steps
        ),
        (None, None) => String::new(),
    };
    let mut c = Curve::new(format!("{}{settled}", name(setup.lr)), main.curve.clone());
    c.log_scale = true;
    let at = Location {
        config_key: Some("setup.lr".into()),
        data_key: Some(data.input_key.clone()),
        samples: Some((0, eval_n as usize)),
        ..Location::default()
    };
    let evidence = |main: &ProbeRun, control_lr: f64, control: &ProbeRun| ProbeEvidence {
        optimizer: setup.optimizer.as_str(),
        assumed: setup.assumed_note(&["optimizer", "lr", "batch_size"]),
        lr: setup.lr,
        batch_size: setup.batch_size,
        probe_start: main.start,
        probe_end: main.end,
        probe_up_share: main.up_share,
        probe_steps: main.curve.len() - 1,
        control_lr,
        control_end: control.end,
        control_peak: control.peak,
        control_up_share: control.up_share,
        restart_constant_loss: main.restart.map(|(lo, _)| lo),
    };
    // The control: the same probe at lr / 10, from the same start on the same batches, for as many steps
    // as the main run took (fewer when that one stopped at a sustained divergence), so that both ends
    // are compared at the same step; with its curve for the report.
    let control_lr = setup.lr / 10.0;
    let control_run =
        |training: &mut Vec<crate::TrainingRun>| -> Result<(ProbeRun, Curve), CheckError> {
            let control = run(control_lr, 0, main.curve.len() - 1, false)?;
            training.extend(control.training.clone());
            let mut curve = Curve::new(
                format!("{} (control)", name(control_lr)),
                control.curve.clone(),
            );
            curve.log_scale = true;
            Ok((control, curve))
        };
    let Some(pending) = verdict(&main) else {
        // A log that rests on a plateau while the probe at the configured lr neither finds anything
        // nor settles: the control at lr / 10 says whether a lower lr gets well below it (issue 23).
        if let (Some((level, from)), None) = (stalled, main.settled_at) {
            let (control, control_curve) = control_run(training)?;
            // The configured probe bounces: its level is the interquartile mean of its last quarter,
            // not its last value (which moves with the thread count's rounding).
            let main_level = main.tail_level();
            // A restart ([`restart`]) from below the plateau says nothing of it by sinking further at
            // lr / 10 (the lower noise floor): the configured lr must carry it back up to the plateau.
            if control.end.is_finite()
                && control.end <= 0.7 * level
                && control.end <= 0.9 * main_level
                && (main.restart.is_none() || main_level >= 0.9 * level)
            {
                let v = LogStallsHighLr {
                    probe: evidence(&main, control_lr, &control),
                    log_level: level,
                    log_from_step: from,
                };
                return Ok((vec![Finding::new(&v, at)], vec![c, control_curve]));
            }
            return Ok((Vec::new(), vec![c, control_curve]));
        }
        return Ok((Vec::new(), vec![c]));
    };
    // A finding is confirmed by two more runs, made only then (a healthy probe costs one run).
    // 1. The optimizer's cold start: a restarted Adam's first bias-corrected step moves every weight by
    //    ~lr whatever its gradient, which spikes any trained checkpoint. The same probe with the lr
    //    warmed up over `probe_warmup` steps must show a finding too.
    //    A restart with any optimizer is confirmed the same way: a minimum reached at a decayed lr is
    //    left gracefully when the lr ramps up to its peak, as the real run's schedule began from init.
    if (matches!(setup.optimizer, OptimizerKind::Adam | OptimizerKind::AdamW)
        || main.restart.is_some())
        && options.probe_warmup > 0
    {
        let warm = run(setup.lr, options.probe_warmup, options.probe_steps, false)?;
        training.extend(warm.training.clone());
        if verdict(&warm).is_none() {
            let mut w = Curve::new(format!("{} (warmed up)", name(setup.lr)), warm.curve);
            w.log_scale = true;
            return Ok((Vec::new(), vec![c, w]));
        }
    }
    // 2. The control: the same probe at lr / 10. The finding stands only when the lower lr clearly
    //    behaves better; at a converged minimum both go up and down alike, and lowering the lr (the
    //    finding's fix) would not help.
    let (control, control_curve) = control_run(training)?;
    let confirmed = match pending {
        ProbeVerdict::Collapses => true,
        ProbeVerdict::Diverges => {
            control.end.is_finite() && (!main.end.is_finite() || control.end < 0.5 * main.end)
        }
        ProbeVerdict::Spikes => control.peak.is_finite() && main.peak >= 3.0 * control.peak,
        ProbeVerdict::Oscillates => {
            control.up_share <= main.up_share - 0.15 || control.end <= 0.9 * main.end
        }
    };
    if !confirmed {
        return Ok((Vec::new(), vec![c, control_curve]));
    }
    let evidence = evidence(&main, control_lr, &control);
    let finding = match pending {
        ProbeVerdict::Collapses => {
            let c = constant.expect("a collapse is judged against the constant output's loss");
            let v = ProbeCollapses {
                probe: evidence,
                probe_peak: main.peak,
                probe_peak_step: main.peak_step,
                constant_loss: c.lo,
                constant_as: c.what.clone(),
            };
            Finding::new(&v, at)
        }
        ProbeVerdict::Diverges => Finding::new(&ProbeDiverges { probe: evidence }, at),
        ProbeVerdict::Spikes => {
            let v = ProbeSpikes {
                probe: evidence,
                probe_peak: main.peak,
                probe_peak_step: main.peak_step,
            };
            Finding::new(&v, at)
        }
        ProbeVerdict::Oscillates => Finding::new(&ProbeOscillates { probe: evidence }, at),
    };
    c.window = Some((0.0, (main.curve.len() - 1) as f64));
    Ok((vec![finding], vec![c, control_curve]))
}

impl Check for LossOscillation {
    type Options = LossOscillationOptions;

    const INFO: &'static CheckInfo = &INFO;

    fn run(&self, ctx: &Context, options: &LossOscillationOptions) -> CheckOutput {
        let run_probe = options.probe && ctx.model.is_some() && ctx.data.is_some();
        if ctx.log.is_none() && !run_probe {
            return Err(CheckError::missing_because(
                Input::Log,
                "needs a loss log ([log] path or --log), or a model and data for the learning-rate probe",
            ));
        }
        let mut result = CheckResult::passed();
        let mut log_descends = false;
        let mut run_probe = run_probe;
        let mut stalled = None;
        // What a model that ignores its input scores on this data: where a collapsed run rests.
        let constant = constant_output_loss(ctx);
        if let Some(log) = ctx.log {
            let analysis = analyse_log(log, options, constant.as_ref());
            match (analysis.too_short, run_probe) {
                (Some(rows), false) => {
                    return Err(CheckError::Skip(too_short_reason(rows, options)))
                }
                // With the probe, its verdict stands; the log's part is said to be unjudged.
                (Some(rows), true) => {
                    result.note = Some(format!(
                        "the loss log was not judged: {rows} finite rows, needs min_points = {}; \
the learning-rate probe ran",
                        options.min_points
                    ))
                }
                (None, _) => {}
            }
            log_descends = analysis.descending;
            stalled = analysis.stalled;
            // A log of the run that descends cleanly already shows that the configured lr trains:
            // the probe would pay a training to say less.
            if let (Some((from, to, first, last)), true, false) =
                (analysis.healthy, run_probe, options.probe_with_log)
            {
                run_probe = false;
                result.note = Some(format!(
                    "the learning-rate probe was not needed: the loss log descends from {} to {} over steps {}..{} without a finding (probe_with_log = true runs it anyway)",
                    num(from),
                    num(to),
                    num(first),
                    num(last)
                ));
            }
            result.findings.extend(analysis.findings);
            result.curves.extend(analysis.curve);
        }
        if run_probe {
            match probe(
                ctx,
                options,
                constant.as_ref(),
                log_descends,
                stalled,
                &mut result.training,
            ) {
                Ok((findings, curves)) => {
                    result.findings.extend(findings);
                    result.curves.extend(curves);
                }
                // The log's verdict stands when the probe cannot run (targets its loss cannot take,
                // a spent budget): the note says why the probe is missing.
                Err(CheckError::Skip(why)) if ctx.log.is_some() => {
                    result.note = Some(format!("the learning-rate probe did not run: {why}"));
                }
                Err(e) => return Err(e),
            }
        }
        Ok(result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_restart_is_judged_against_the_constant_outputs_loss() {
        let ln10 = 10f64.ln();
        let c = ConstantLoss {
            lo: 2.2,
            hi: ln10,
            what: String::new(),
        };
        // A fresh start (near the constant's loss) is no restart; a start at half of it or lower is.
        assert_eq!(restart(2.4, Some(&c)), None);
        assert_eq!(restart(1.2, Some(&c)), None);
        assert_eq!(restart(0.4, Some(&c)), Some((2.2, ln10)));
        assert_eq!(restart(f64::NAN, Some(&c)), None);
        assert_eq!(restart(0.4, None), None);
        let o = LossOscillationOptions::default();
        let run = |curve: Vec<f64>, restarted: bool| {
            let mut r = ProbeRun::new(curve);
            r.restart = restarted.then_some((2.2, ln10));
            r
        };
        // Bouncing 3-17x above a start of 0.1 and ending 5x above it: below ln 10 a restart's bounce.
        let bounce = [0.1, 0.5, 1.7, 0.4, 1.2, 0.3, 0.9, 0.5, 0.6, 0.45, 0.5];
        let fresh = run(bounce.to_vec(), false);
        assert!(fresh.spikes(&o) && fresh.diverges(&o) && fresh.oscillates());
        let restarted = run(bounce.to_vec(), true);
        assert!(!restarted.spikes(&o) && !restarted.diverges(&o) && !restarted.oscillates());
        // Past the constant's loss, the same verdicts stand.
        let lost = [0.1, 3.0, 9.0, 2.8, 4.0, 3.1, 3.5, 2.9, 3.4, 3.2, 3.6];
        let restarted = run(lost.to_vec(), true);
        assert!(restarted.spikes(&o) && restarted.diverges(&o) && restarted.oscillates());
        let nan = run(vec![0.1, 0.5, f64::NAN], true);
        assert!(nan.diverges(&o));
        // A restart stops as diverged only once 10 steps in a row sit above the constant's loss.
        let mut curve = vec![0.1];
        curve.extend([1.5; 10]);
        assert!(sustained_divergence(&curve, 10.0, None));
        assert!(!sustained_divergence(&curve, 10.0, Some((2.2, ln10))));
        curve.extend([2.5; 10]);
        assert!(sustained_divergence(&curve, 10.0, Some((2.2, ln10))));
    }

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

    /// A probe curve: the start, then `steps` losses from `f(step)`.
    fn probe_curve(steps: usize, f: impl Fn(usize) -> f64) -> Vec<f64> {
        (0..=steps).map(f).collect()
    }

    #[test]
    fn a_clean_descent_to_half_its_start_is_settled_from_step_20_on() {
        let halving = |t: usize| 2.0 * (-(t as f64) / 20.0).exp();
        assert!(settled_descent(&probe_curve(20, halving)));
        assert!(settled_descent(&probe_curve(30, halving)));
        // Too early to judge, however clean.
        assert!(!settled_descent(&probe_curve(19, halving)));
        // Not yet down to half its start: 2 → 1.1 after 20 steps.
        assert!(!settled_descent(
            &probe_curve(20, |t| 2.0 - 0.045 * t as f64)
        ));
    }

    #[test]
    fn a_spike_a_bounce_an_upturn_or_a_nan_is_never_settled() {
        let halving = |t: usize| 2.0 * (-(t as f64) / 20.0).exp();
        // A spike to 1.6x the start on the way down.
        let spike = probe_curve(30, |t| if t == 3 { 3.2 } else { halving(t) });
        assert!(!settled_descent(&spike));
        // 1.5x is still allowed: an Adam cold-start bump that the control would never confirm.
        assert!(settled_descent(&probe_curve(30, |t| if t == 3 {
            3.0
        } else {
            halving(t)
        })));
        // Up by more than 1% in 5 of 30 steps (17%): bouncing on the way down.
        let bounce = probe_curve(30, |t| halving(t) * if t % 6 == 5 { 1.2 } else { 1.0 });
        assert!(!settled_descent(&bounce));
        // Down to a quarter, then creeping back up over the last 10 steps (each rise under 1%).
        let low = 2.0 * 0.93f64.powi(20);
        let upturn = probe_curve(30, |t| {
            if t <= 20 {
                2.0 * 0.93f64.powi(t as i32)
            } else {
                low + 0.002 * (t - 20) as f64
            }
        });
        assert!(upturn[30] <= 1.0 && upturn.windows(2).all(|w| w[1] <= w[0] * 1.01));
        assert!(!settled_descent(&upturn));
        let mut nan = probe_curve(30, halving);
        nan[12] = f64::NAN;
        assert!(!settled_descent(&nan));
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

    fn short_log(rows: usize) -> LossLog {
        let mut log = LossLog {
            steps: (0..rows).map(|i| i as f64).collect(),
            total: Some("loss".into()),
            ..LossLog::default()
        };
        let values = (0..rows).map(|i| 1.0 / (1.0 + i as f64)).collect();
        log.columns.insert("loss".into(), values);
        log
    }

    fn log_of(values: Vec<f64>) -> LossLog {
        let mut log = LossLog {
            steps: (0..values.len()).map(|i| i as f64).collect(),
            total: Some("loss".into()),
            ..LossLog::default()
        };
        log.columns.insert("loss".into(), values);
        log
    }

    fn collapsed(values: Vec<f64>, constant: f64) -> bool {
        let c = ConstantLoss {
            lo: constant,
            hi: constant,
            what: String::new(),
        };
        let a = analyse_log(
            &log_of(values),
            &LossOscillationOptions::default(),
            Some(&c),
        );
        a.findings
            .iter()
            .any(|f| f.kind == "loss-oscillation/log-collapsed")
    }

    #[test]
    fn a_collapse_needs_a_blow_up_then_a_flat_rest_on_the_constant_outputs_loss() {
        let mut rng = Rng::new(7);
        let noisy = |rng: &mut Rng, level: f64| level * (0.05 * rng.normal()).exp();
        // mse on targets of variance 0.8: a blow-up at step 3, then flat at 0.8.
        let rest = |rng: &mut Rng, peak: f64| -> Vec<f64> {
            (0..200)
                .map(|t| match t {
                    0..=2 => 1.0,
                    3 => peak,
                    _ => noisy(rng, 0.8),
                })
                .collect()
        };
        assert!(collapsed(rest(&mut rng, 50.0), 0.8));
        // A spike short of 10× the constant loss is not a blow-up.
        assert!(!collapsed(rest(&mut rng, 7.0), 0.8));
        // A run that never moved from the constant's loss did not collapse (nothing blew up).
        let flat: Vec<f64> = (0..200).map(|_| noisy(&mut rng, 0.8)).collect();
        assert!(!collapsed(flat, 0.8));
        // A blow-up that the run recovers from, descending well below the constant's loss.
        let recovers: Vec<f64> = (0..200)
            .map(|t| match t {
                3 => 50.0,
                _ => noisy(&mut rng, 0.8 * (-(t as f64) / 60.0).exp() + 0.05),
            })
            .collect();
        assert!(!collapsed(recovers, 0.8));
        // Still descending at the end, even if near the constant's loss: not (yet) a collapse.
        let descending: Vec<f64> = (0..200)
            .map(|t| match t {
                3 => 50.0,
                _ => 1.2 - 0.3 * t as f64 / 200.0,
            })
            .collect();
        assert!(!collapsed(descending, 0.8));
        // Healthy noisy descents never collapse, whatever the constant's loss is set to.
        for _ in 0..300 {
            let curve = super::tests::descending(&mut rng);
            let c = curve[0];
            assert!(!collapsed(curve, c));
        }
    }

    #[test]
    fn a_log_shorter_than_min_points_without_a_probe_is_skipped_with_the_reason() {
        let setup = crate::ports::Setup::default();
        let log = short_log(10);
        let mut ctx = Context::new(&setup);
        ctx.log = Some(&log);
        match LossOscillation.run(&ctx, &LossOscillationOptions::default()) {
            Err(CheckError::Skip(reason)) => assert_eq!(
                reason,
                "the loss log has 10 finite rows; loss-oscillation needs at least min_points = 30"
            ),
            other => panic!("not skipped: {other:?}"),
        }
        let log = short_log(30);
        ctx.log = Some(&log);
        assert!(LossOscillation
            .run(&ctx, &LossOscillationOptions::default())
            .is_ok());
    }

    #[test]
    fn a_rising_trend_is_divergence() {
        let v: Vec<f64> = (0..100).map(|t| 0.5 * (t as f64 / 30.0).exp()).collect();
        assert_eq!(verdict(&v), Verdict::Diverging);
    }
}
