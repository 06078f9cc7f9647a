//! sequential-data: the file's order is not i.i.d. while the loader does not shuffle.
use super::prelude::*;
use crate::stats::{self, Rng};
use crate::train::to_vec;
use tch::{Kind, Tensor};

pub struct SequentialData;

static INFO: CheckInfo = CheckInfo {
    id: "sequential-data",
    group: Group::Data,
    default_level: Level::Deny,
    summary: "The data is not in sequential order (video frames, sorted classes) while the loader does not shuffle",
    docs: Docs {
        what: "When `setup.shuffle = false` and `setup.temporal = false`, tests whether the samples, in \
file order (the order a non-shuffling loader feeds them), look i.i.d. Passes when `shuffle = true`; \
skipped when `temporal = true`.",
        why: "Without shuffling, each batch holds neighbouring frames of one video or a single class, \
and each step's gradient points at that slice only.",
        details: include_str!("sequential_data.md"),
    },
    kinds: &[&UnshuffledOrder::KIND],
    setup: &["batch_size", "shuffle"],
    ..CheckInfo::PLAIN
};

/// Options of sequential-data.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct SequentialDataOptions {
    /// Adjacency ratio at or below which inputs are ordered.
    #[schemars(extend("exclusiveMinimum" = 0), range(max = 1))]
    pub max_adjacency_ratio: f64,
    /// Significance level of the permutation test.
    #[schemars(extend("exclusiveMinimum" = 0), range(max = 1))]
    pub alpha: f64,
    /// Random orders for the permutation p-value.
    #[schemars(range(min = 10))]
    pub permutations: usize,
    /// Runs-test z at or below which class labels are ordered.
    #[schemars(range(max = 0))]
    pub runs_z: f64,
    /// Lag-1 autocorrelation of float targets at or above which they are ordered.
    #[schemars(extend("exclusiveMinimum" = 0), range(max = 1))]
    pub max_autocorr: f64,
    /// Use at most this many samples (the distance matrix is n×n).
    #[schemars(range(min = 8))]
    pub max_samples: usize,
}

impl Default for SequentialDataOptions {
    fn default() -> Self {
        SequentialDataOptions {
            max_adjacency_ratio: 0.5,
            alpha: 0.01,
            permutations: 200,
            runs_z: -4.0,
            max_autocorr: 0.5,
            max_samples: 1024,
        }
    }
}

/// The samples are in sequential order and the loader does not shuffle
///
/// # Why
/// Without shuffling, each batch holds neighbouring frames of one video or a single class: the gradient of
/// each step points at that slice only, the model forgets what it saw a few batches ago, BatchNorm statistics
/// swing from batch to batch, and the loss curve looks fine per batch while the model fails on everything
/// else.
///
/// # How
/// Adjacency ratio = mean distance between consecutive inputs / mean distance over all pairs (≈1 for i.i.d.
/// order, ≪1 for video frames), with a permutation p-value over `permutations` random orders; flagged when ≤
/// `max_adjacency_ratio` and p ≤ `alpha`. Class labels: Wald–Wolfowitz runs test, flagged when z ≤ `runs_z`;
/// the share of batches of `setup.batch_size` holding one class is reported. Float targets: lag-1
/// autocorrelation (mean over up to 64 target dims), flagged when ≥ `max_autocorr` and significant (r·√n ≥
/// 4). Uses the first `max_samples` samples; needs at least 8.
///
/// # Fix
/// Set shuffle=True in the DataLoader (or shuffle the file once); if the order matters for the task (optical
/// flow, odometry), set `temporal = true` and shuffle whole sequences instead.
#[skip_serializing_none]
#[derive(Serialize, ViolationMetadata)]
#[kind(id = "sequential-data/unshuffled-order", grade = error)]
#[kind(example(args = "fixtures/configs/sorted_classes_no_shuffle.toml", severity = error, message = "samples are in sequential order and the loader does not shuffle: 5 label runs where ~159 are expected (z = -27.3); 57.1% of batches of 32 hold a single class"))]
pub struct UnshuffledOrder {
    /// The tests that found order, in words.
    #[serde(skip)]
    pub reasons: Vec<String>,
    pub adjacency_ratio: Option<f64>,
    pub adjacency_p_value: Option<f64>,
    pub label_runs: Option<usize>,
    pub expected_runs: Option<f64>,
    pub runs_z: Option<f64>,
    pub single_class_batch_share: Option<f64>,
    pub target_autocorr: Option<f64>,
}

impl Violation for UnshuffledOrder {
    fn message(&self) -> String {
        format!(
            "samples are in sequential order and the loader does not shuffle: {}",
            self.reasons.join("; ")
        )
    }
    fn help(&self) -> String {
        "set shuffle=True in the DataLoader (or shuffle the file); if order matters, set setup.temporal = true"
            .to_string()
    }
}

/// The evidence of order in a sample, each part computed when it applies.
#[derive(Clone, Debug, Default)]
pub struct OrderEvidence {
    pub adjacency: Option<stats::Adjacency>,
    pub runs: Option<stats::RunsTest>,
    pub single_class_batches: Option<f64>,
    pub target_autocorr: Option<f64>,
    pub n: usize,
}

fn pairwise_distances(x: &Tensor) -> Result<Vec<f64>, CheckError> {
    let flat = x.f_to_kind(Kind::Double)?.f_flatten(1, -1)?;
    let flat = if flat.dim() == 1 {
        flat.f_unsqueeze(1)?
    } else {
        flat
    };
    let d = Tensor::f_cdist(&flat, &flat, 2.0, None::<i64>)?;
    to_vec(&d)
}

fn class_evidence(labels: &[i64], batch_size: usize) -> (stats::RunsTest, f64) {
    let runs = stats::runs_test(labels);
    let batches: Vec<&[i64]> = labels
        .chunks(batch_size.max(1))
        .filter(|b| b.len() > 1)
        .collect();
    let single = batches
        .iter()
        .filter(|b| b.iter().all(|v| *v == b[0]))
        .count();
    let share = if batches.is_empty() {
        0.0
    } else {
        single as f64 / batches.len() as f64
    };
    (runs, share)
}

/// Lag-1 autocorrelation of the targets along the sample axis, averaged over up to 64 target dims.
fn target_autocorrelation(targets: &[f64], n: usize) -> f64 {
    let dims = targets.len() / n.max(1);
    let step = (dims / 64).max(1);
    let values: Vec<f64> = (0..dims)
        .step_by(step)
        .map(|d| {
            stats::autocorrelation(
                &(0..n).map(|i| targets[i * dims + d]).collect::<Vec<_>>(),
                1,
            )
        })
        .filter(|v| v.is_finite())
        .collect();
    stats::mean(&values)
}

impl Check for SequentialData {
    type Options = SequentialDataOptions;

    const INFO: &'static CheckInfo = &INFO;

    fn run(&self, ctx: &Context, options: &SequentialDataOptions) -> CheckOutput {
        let data = ctx.data()?;
        if ctx.setup.temporal {
            return Err(CheckError::skip(
                "setup.temporal = true: the task needs the samples in order",
            ));
        }
        if ctx.setup.shuffle {
            return Ok(CheckResult::passed());
        }
        let n = data.len().min(options.max_samples);
        if n < 8 {
            return Err(CheckError::skip(format!(
                "only {n} samples; at least 8 are needed"
            )));
        }
        let inputs = data.inputs.f_narrow(0, 0, n as i64)?;
        let targets = data.targets.f_narrow(0, 0, n as i64)?;
        let mut rng = Rng::new(ctx.setup.seed);
        let mut ev = OrderEvidence {
            n,
            adjacency: Some(stats::adjacency(
                &pairwise_distances(&inputs)?,
                n,
                options.permutations,
                &mut rng,
            )),
            ..OrderEvidence::default()
        };
        let class_labels = if data.targets_are_classes() {
            Some(targets.shallow_clone())
        } else if data.targets_are_probabilities() {
            // Class probabilities (one-hot, smoothed, mixup): each sample's label is its top class.
            Some(targets.f_argmax(1, false)?)
        } else {
            None
        };
        if let Some(class_labels) = class_labels {
            let labels: Vec<i64> = to_vec(&class_labels.f_flatten(0, -1)?)?
                .iter()
                .map(|v| *v as i64)
                .collect();
            if labels.len() == n {
                let (runs, share) = class_evidence(&labels, ctx.setup.batch_size);
                ev.runs = Some(runs);
                ev.single_class_batches = Some(share);
            }
        } else {
            ev.target_autocorr = Some(target_autocorrelation(&to_vec(&targets)?, n));
        }
        let mut v = UnshuffledOrder {
            reasons: Vec::new(),
            adjacency_ratio: None,
            adjacency_p_value: None,
            label_runs: None,
            expected_runs: None,
            runs_z: None,
            single_class_batch_share: None,
            target_autocorr: None,
        };
        if let Some(a) = ev.adjacency {
            v.adjacency_ratio = Some(a.ratio);
            v.adjacency_p_value = Some(a.p_value);
            if a.ratio <= options.max_adjacency_ratio && a.p_value <= options.alpha {
                v.reasons.push(format!(
                    "adjacent samples are {}× closer than random pairs (p = {})",
                    num(1.0 / a.ratio.max(1e-12)),
                    num(a.p_value)
                ));
            }
        }
        if let Some(r) = ev.runs {
            v.label_runs = Some(r.runs);
            v.expected_runs = Some(r.expected);
            v.runs_z = Some(r.z);
            if r.z <= options.runs_z {
                let share = ev.single_class_batches.unwrap_or(0.0);
                v.single_class_batch_share = Some(share);
                v.reasons.push(format!(
                    "{} label runs where ~{} are expected (z = {}); {}% of batches of {} hold a single class",
                    r.runs,
                    num(r.expected.round()),
                    num(r.z),
                    num(share * 100.0),
                    ctx.setup.batch_size
                ));
            }
        }
        if let Some(ac) = ev.target_autocorr {
            v.target_autocorr = Some(ac);
            if ac >= options.max_autocorr && ac * (n as f64).sqrt() >= 4.0 {
                v.reasons.push(format!(
                    "consecutive targets are correlated (lag-1 autocorrelation {})",
                    num(ac)
                ));
            }
        }
        let curve = ev.adjacency.map(|a| {
            let mut c = Curve::new("adjacency ratio (1 = i.i.d.)", vec![a.ratio]);
            c.target = Some(1.0);
            c
        });
        let mut result = if v.reasons.is_empty() {
            CheckResult::passed()
        } else {
            let at = Location::data(&data.input_key, Some((0, n)));
            CheckResult::found(&v, at)
        };
        if let Some(c) = curve {
            result = result.curve(c);
        }
        Ok(result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ordered: a random walk (video-like). Shuffled: the same walk in random order.
    fn walk(rng: &mut Rng, n: usize, dims: usize, step: f64) -> Vec<Vec<f64>> {
        let mut out = vec![(0..dims).map(|_| rng.normal()).collect::<Vec<f64>>()];
        for i in 1..n {
            let next = out[i - 1].iter().map(|v| v + step * rng.normal()).collect();
            out.push(next);
        }
        out
    }

    /// Run `trials` ordered-vs-shuffled trials; `trial` says whether the detector flagged the ordered
    /// and the shuffled sample. Requires ≥ 99% detection and ≤ 1% false alarms.
    fn assert_separates(seed: u64, mut trial: impl FnMut(&mut Rng) -> (bool, bool)) {
        let mut rng = Rng::new(seed);
        let trials = 1000;
        let (mut detected, mut false_alarms) = (0, 0);
        for _ in 0..trials {
            let (ordered, shuffled) = trial(&mut rng);
            detected += ordered as usize;
            false_alarms += shuffled as usize;
        }
        assert!(
            detected as f64 >= 0.99 * trials as f64,
            "detected {detected}/{trials}"
        );
        assert!(
            false_alarms as f64 <= 0.01 * trials as f64,
            "false alarms {false_alarms}/{trials}"
        );
    }

    #[test]
    fn adjacency_detector_catches_ordered_walks_and_passes_their_shuffles() {
        // Random walks (varied length, dims and step size) in file order and shuffled.
        assert_separates(11, |rng| {
            let n = 24 + rng.below(40);
            let dims = 2 + rng.below(14);
            let step = 0.05 + 0.25 * rng.uniform();
            let mut points = walk(rng, n, dims, step);
            let flagged = |a: stats::Adjacency| a.ratio <= 0.5 && a.p_value <= 0.01;
            let ordered = flagged(stats::adjacency(
                &stats::tests::distances(&points),
                n,
                100,
                rng,
            ));
            rng.shuffle(&mut points);
            let shuffled = flagged(stats::adjacency(
                &stats::tests::distances(&points),
                n,
                100,
                rng,
            ));
            (ordered, shuffled)
        });
    }

    #[test]
    fn runs_detector_catches_sorted_labels_and_passes_shuffled_ones() {
        assert_separates(12, |rng| {
            let n = 60 + rng.below(200);
            let classes = 2 + rng.below(8) as i64;
            let mut labels: Vec<i64> = (0..n).map(|_| rng.below(classes as usize) as i64).collect();
            labels.sort();
            let ordered = class_evidence(&labels, 32).0.z <= -4.0;
            rng.shuffle(&mut labels);
            let shuffled = class_evidence(&labels, 32).0.z <= -4.0;
            (ordered, shuffled)
        });
    }

    #[test]
    fn single_class_batches_are_counted() {
        let labels: Vec<i64> = (0..64).map(|i| i / 32).collect();
        let (_, share) = class_evidence(&labels, 16);
        assert_eq!(share, 1.0);
        let alternating: Vec<i64> = (0..64).map(|i| i % 2).collect();
        assert_eq!(class_evidence(&alternating, 16).1, 0.0);
    }
}
