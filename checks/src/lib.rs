//! The checks of trainlint.
//!
//! A check reads the model, the data sample and the loss log through the ports in [`ports`] and
//! returns [`Finding`]s with their evidence. Each check lives in one file under [`rules`], carrying its
//! documentation and typed options next to the logic; [`registry::all`] lists them.

pub mod activation;
pub mod finding;
pub mod graph;
pub mod norm;
pub mod optim;
pub mod options;
pub mod ports;
pub mod registry;
pub mod rules;
pub mod stats;
pub mod targets;
pub mod train;

pub use finding::{
    skip_serializing_none, CheckFailed, Curve, Example, Finding, Grade, KindInfo, Location,
    Severity, Violation, ViolationMetadata,
};
pub use options::{CheckOptions, NoOptions};
pub use ports::{
    Context, Dataset, LossLog, Model, ModuleInfo, OutputActivation, Setup, TrainableModel,
};

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// How loudly a check speaks: off, findings capped at warnings, or findings as the check grades them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Allow,
    Warn,
    Deny,
}

impl Level {
    pub fn parse(s: &str) -> Option<Level> {
        match s {
            "allow" => Some(Level::Allow),
            "warn" => Some(Level::Warn),
            "deny" => Some(Level::Deny),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Allow => "allow",
            Level::Warn => "warn",
            Level::Deny => "deny",
        }
    }
}

/// Groups let users select or ignore related checks at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Group {
    Model,
    Data,
    Loss,
    Batchnorm,
    Fit,
    Gradient,
}

impl Group {
    pub const ALL: [Group; 6] = [
        Group::Model,
        Group::Data,
        Group::Loss,
        Group::Batchnorm,
        Group::Fit,
        Group::Gradient,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            Group::Model => "model",
            Group::Data => "data",
            Group::Loss => "loss",
            Group::Batchnorm => "batchnorm",
            Group::Fit => "fit",
            Group::Gradient => "gradient",
        }
    }
}

/// The documentation of a check as a whole; each kind it reports documents itself ([`KindInfo`]).
pub struct Docs {
    pub what: &'static str,
    pub why: &'static str,
    /// Markdown beyond the kinds' own docs: how the thresholds were calibrated, measurements,
    /// carve-outs against false alarms, full example findings. It lives beside the check's source
    /// (`rules/<check>.md`) and ends its docs page and `explain CHECK`.
    pub details: &'static str,
}

/// What a check declares about itself.
pub struct CheckInfo {
    pub id: &'static str,
    pub group: Group,
    pub default_level: Level,
    pub summary: &'static str,
    pub docs: Docs,
    /// Every kind of finding the check reports.
    pub kinds: &'static [&'static KindInfo],
    /// Whether the check trains an in-memory copy of the model (progress is shown for these).
    pub trains: bool,
    /// Whether the check itself draws from libtorch's global random generator outside the model's
    /// forward (random inputs, random directions). The checks that train and draw nothing themselves
    /// may run side by side on copies of the model: the model's own draws come from each check's own
    /// generator ([`crate::train::side_by_side::drawing`]), so no draw of one can move another's.
    pub draws_random: bool,
    /// The `[setup]` values its verdict rests on: when the config leaves one unset and the check ran,
    /// the report says what was assumed in its place.
    pub setup: &'static [&'static str],
    /// What it needs of the data sample beyond its being there: a sample that cannot give it (one
    /// sample under BatchNorm, class indices past the logits) skips the check with the reason.
    pub needs: &'static [Need],
    /// The one task it applies to (identity-overfit: image-to-image), or every task.
    pub task: Option<ports::Task>,
}

impl CheckInfo {
    /// The facts most checks share: it trains nothing, draws no random numbers of its own, rests on
    /// no `[setup]` value, needs nothing more of the sample and applies to every task. A check's
    /// `INFO` names what is its own and ends with `..CheckInfo::PLAIN`.
    pub const PLAIN: CheckInfo = CheckInfo {
        id: "",
        group: Group::Model,
        default_level: Level::Deny,
        summary: "",
        docs: Docs {
            what: "",
            why: "",
            details: "",
        },
        kinds: &[],
        trains: false,
        draws_random: false,
        setup: &[],
        needs: &[],
        task: None,
    };

    /// Whether it applies to `task` (the resolved one).
    pub fn applies_to(&self, task: ports::Task) -> bool {
        self.task.is_none_or(|t| t == task)
    }
}

/// What a check needs of the data sample.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    /// A train-mode forward on the sample: BatchNorm computes batch statistics, which one sample
    /// cannot give.
    TrainModeBatch,
    /// The configured loss of the model's output on the targets: class indices must name logits.
    Loss,
}

/// What a check found: findings, or the reason it could not apply, plus curves worth plotting.
#[derive(Debug, Default)]
pub struct CheckResult {
    pub findings: Vec<Finding>,
    pub skipped: Option<String>,
    /// When skipped for want of an input: which one (the text report says how to add it).
    pub missing: Option<Input>,
    pub curves: Vec<Curve>,
    /// The trainings the check ran (checks that train a copy), for the report's timing evidence.
    pub training: Vec<TrainingRun>,
    /// What a check that ran wants said beside its status: part of its input it could not judge, or
    /// work it did not need to do (e.g. "the loss log was not judged: 24 points, needs 30").
    pub note: Option<String>,
}

/// One training of an in-memory copy: how many optimizer steps on what input, and the wall time per
/// step (steps × `ms_per_step` is the training's share of the check's duration).
#[derive(Clone, Debug, serde::Serialize)]
pub struct TrainingRun {
    /// What was trained (`identity`, `overfit`, `probe`, …).
    pub name: String,
    /// The shape of the batch it trained on (a crop's, when it trained on crops).
    pub input_shape: Vec<i64>,
    /// Optimizer steps taken.
    pub steps: usize,
    /// Forward passes, the evaluations included.
    pub forwards: usize,
    /// Wall milliseconds per optimizer step, the forwards between steps included (0 in reports
    /// written without timings).
    pub ms_per_step: f64,
}

/// An input a check can lack. Its skip reason and the report's advice on adding it live here, once.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Input {
    Model,
    Data,
    Log,
    Loss,
}

impl Input {
    pub const ALL: [Input; 4] = [Input::Model, Input::Data, Input::Log, Input::Loss];

    /// The skip reason of a check that lacks this input.
    pub fn reason(self) -> &'static str {
        match self {
            Input::Model => "needs a model: set [model] path (or pass --model)",
            Input::Data => "needs a data sample: set [data] path (or pass --data)",
            Input::Log => "needs a loss log: set [log] path (or pass --log)",
            Input::Loss => {
                "setup.loss is not set: add `loss = \"cross_entropy\"` (or your loss) to [setup], or pass --loss"
            }
        }
    }

    /// What to add, for the report's "To run the skipped checks" list.
    pub fn to_add(self) -> &'static str {
        match self {
            Input::Model => "a model: set [model] path (or pass --model)",
            Input::Data => "a data sample: set [data] path (or pass --data)",
            Input::Log => "a loss log: set [log] path (or pass --log)",
            Input::Loss => "the loss: set `loss = \"…\"` in [setup] (or pass --loss)",
        }
    }
}

impl CheckResult {
    pub fn passed() -> Self {
        Self::default()
    }
    /// Skipped with `reason`: what [`Rule::run_with`] makes of a check's `Err(CheckError::Skip)`, the
    /// one way a check says it does not apply.
    pub(crate) fn skipped(reason: impl Into<String>) -> Self {
        CheckResult {
            skipped: Some(reason.into()),
            ..Self::default()
        }
    }
    /// Skipped for want of `input`, with `reason` (usually `input.reason()`).
    pub(crate) fn missing(input: Input, reason: impl Into<String>) -> Self {
        CheckResult {
            missing: Some(input),
            ..Self::skipped(reason)
        }
    }
    /// One finding: `violation` at `at`.
    pub fn found<V: finding::Violation>(violation: &V, at: finding::Location) -> Self {
        Self::with_findings(vec![Finding::new(violation, at)])
    }
    pub fn with_findings(findings: Vec<Finding>) -> Self {
        CheckResult {
            findings,
            ..Self::default()
        }
    }
    pub fn curve(mut self, curve: Curve) -> Self {
        self.curves.push(curve);
        self
    }
    pub fn trained(mut self, run: TrainingRun) -> Self {
        self.training.push(run);
        self
    }
}

/// An internal failure of a check (reported as `check-failed`; the other checks still run).
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
    #[error("model: {0}")]
    Model(String),
    #[error("{0}")]
    Other(String),
    /// The check does not apply to these inputs; the reason becomes the check's `skipped` status.
    #[error("skipped: {0}")]
    Skip(String),
    /// The check needs an input that was not given: skipped, with the input named and why it is
    /// needed ([`Input::reason`], unless the check has more to say: [`CheckError::missing_because`]).
    #[error("skipped: {1}")]
    Missing(Input, String),
}

impl CheckError {
    /// The check does not apply to these inputs, for `reason`: the one way a check skips
    /// (`return Err(CheckError::skip(…))`, or `?` on a helper that returns it).
    pub fn skip(reason: impl Into<String>) -> Self {
        CheckError::Skip(reason.into())
    }
    /// The check needs `input`, which was not given.
    pub fn missing(input: Input) -> Self {
        CheckError::Missing(input, input.reason().to_string())
    }
    /// The check needs `input`, which was not given, for `reason` (e.g. unless another input can
    /// stand for it).
    pub fn missing_because(input: Input, reason: impl Into<String>) -> Self {
        CheckError::Missing(input, reason.into())
    }
}

pub type CheckOutput = Result<CheckResult, CheckError>;

/// The most points a curve keeps for the reports (JSON, HTML); the checks use every point.
pub const MAX_CURVE_POINTS: usize = 2000;

/// A check, written against its own typed options.
pub trait Check: Send + Sync + 'static {
    /// The check's options: a struct with `#[serde(default, deny_unknown_fields)]`, doc comments on
    /// every field and its defaults in `Default` ([`NoOptions`] when it has none).
    type Options: CheckOptions;
    const INFO: &'static CheckInfo;
    /// The findings; `Err(CheckError::Missing)` (what `ctx.model()?` and friends return when an
    /// input is missing) or `Err(CheckError::Skip)` reports the check as skipped with the reason.
    fn run(&self, ctx: &Context, options: &Self::Options) -> CheckOutput;
}

/// A check with its options type erased, as the registry holds it. Implemented for every [`Check`].
pub trait Rule: Send + Sync {
    fn info(&self) -> &'static CheckInfo;
    /// The JSON Schema of the options (docs, defaults and bounds from the options struct).
    fn options_schema(&self) -> Value;
    /// The default options, as JSON.
    fn default_options(&self) -> Value;
    /// Whether `options` (a JSON object of the user's values) parse; the error says why not.
    fn validate_options(&self, options: &Value) -> Result<(), options::OptionsError>;
    /// Run with the user's option values over the defaults; skipped when `ctx.sample_skips` names it.
    fn run_with(&self, ctx: &Context, options: &Value) -> CheckOutput;
}

impl<C: Check> Rule for C {
    fn info(&self) -> &'static CheckInfo {
        C::INFO
    }
    fn options_schema(&self) -> Value {
        options::schema_of::<C::Options>()
    }
    fn default_options(&self) -> Value {
        serde_json::to_value(C::Options::default()).expect("options serialise")
    }
    fn validate_options(&self, options: &Value) -> Result<(), options::OptionsError> {
        options::parse::<C::Options>(options).map(|_| ())
    }
    fn run_with(&self, ctx: &Context, options: &Value) -> CheckOutput {
        let options = options::parse::<C::Options>(options)
            .map_err(|e| CheckError::Other(format!("invalid options: {e}")))?;
        if let Some(reason) = ctx.sample_skips.get(C::INFO.id) {
            return Ok(CheckResult::skipped(reason.clone()));
        }
        match self.run(ctx, &options) {
            Err(CheckError::Skip(reason)) => Ok(CheckResult::skipped(reason)),
            Err(CheckError::Missing(input, reason)) => Ok(CheckResult::missing(input, reason)),
            Ok(mut result) => {
                result.curves = std::mem::take(&mut result.curves)
                    .into_iter()
                    .map(|c| c.downsampled(MAX_CURVE_POINTS))
                    .collect();
                Ok(result)
            }
            other => other,
        }
    }
}
