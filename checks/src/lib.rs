//! The checks of trainlint.
//!
//! A check reads the model, the data sample and the loss log through the ports in [`ports`] and
//! returns [`Finding`]s with their evidence. Each check lives in one file under [`rules`], carrying its
//! documentation and typed options next to the logic; [`registry::all`] lists them.

pub mod activation;
pub mod finding;
pub mod options;
pub mod ports;
pub mod registry;
pub mod rules;
pub mod stats;
pub mod train;

pub use finding::{Curve, Finding, Location, Severity};
pub use options::{OptionSpec, OptionValue, Options};
pub use ports::{
    Context, Dataset, LossLog, Model, ModuleInfo, OutputActivation, Setup, TrainableModel,
};

use serde::Serialize;

/// How loudly a check speaks: off, findings capped at warnings, or findings as the check grades them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
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

/// The documentation of a check, in fixed sections; `trainlint explain` and SARIF render it.
pub struct Docs {
    pub what: &'static str,
    pub why: &'static str,
    pub how: &'static str,
    pub example: &'static str,
    pub fix: &'static str,
}

/// What a check declares about itself.
pub struct CheckInfo {
    pub id: &'static str,
    pub group: Group,
    pub default_level: Level,
    pub summary: &'static str,
    pub docs: Docs,
    pub options: &'static [OptionSpec],
    /// Whether the check trains an in-memory copy of the model (progress is shown for these).
    pub trains: bool,
}

/// What a check found: findings, or the reason it could not apply, plus curves worth plotting.
#[derive(Debug, Default)]
pub struct CheckResult {
    pub findings: Vec<Finding>,
    pub skipped: Option<String>,
    pub curves: Vec<Curve>,
}

impl CheckResult {
    pub fn passed() -> Self {
        Self::default()
    }
    pub fn skipped(reason: impl Into<String>) -> Self {
        CheckResult {
            skipped: Some(reason.into()),
            ..Self::default()
        }
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
}

pub type CheckOutput = Result<CheckResult, CheckError>;

pub trait Check: Send + Sync {
    fn info(&self) -> &'static CheckInfo;
    fn run(&self, ctx: &Context, options: &Options) -> CheckOutput;
}
