//! The configuration file's sections as typed structs: each key is declared once here, with its doc
//! comment, its default (in `Default`) and its bounds. Validation, `trainlint schema`, `trainlint init`'s
//! template and docs/configuration.md all derive from these declarations.
use std::path::{Path, PathBuf};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use trainlint_checks::{Setup, Severity};

/// `trainlint.toml` (or `[tool.trainlint]` in pyproject.toml), less `[checks.*]` and `[[ignore]]`,
/// whose shape depends on the checks.
#[derive(Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct ConfigFile {
    /// The TorchScript model (torch.jit.script(model).save(...) or torch.jit.trace)
    pub model: ModelSection,
    /// A sample of training data: .npz, .npy or .safetensors, samples along dim 0 in loader order
    pub data: DataSection,
    /// An optional loss log: CSV or JSONL with an optional `step` column
    pub log: LogSection,
    /// How the model is trained
    pub setup: Setup,
    /// Which checks run and what fails the run
    pub run: RunSection,
    /// `[checks.ID]` tables and `[[ignore]]` entries are read apart (their shape depends on the
    /// checks): named here so that the sections' reader passes over them.
    #[serde(default, skip_serializing)]
    #[schemars(skip)]
    pub checks: Option<serde::de::IgnoredAny>,
    #[serde(default, skip_serializing)]
    #[schemars(skip)]
    pub ignore: Option<serde::de::IgnoredAny>,
}

/// Which output of forward is the prediction.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum OutputSelector {
    /// A tuple index.
    Index(u64),
    /// A dict key; empty: the first output.
    Key(String),
}

impl Default for OutputSelector {
    fn default() -> Self {
        OutputSelector::Key(String::new())
    }
}

impl std::fmt::Display for OutputSelector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OutputSelector::Index(i) => write!(f, "{i}"),
            OutputSelector::Key(k) => write!(f, "{k}"),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct ModelSection {
    /// Path to the TorchScript file, relative to this file
    pub path: Option<PathBuf>,
    /// Which output is the prediction when forward returns a tuple (an index) or a dict (a key); empty: the first
    pub output: OutputSelector,
    /// cpu, cuda or cuda:N
    #[serde(deserialize_with = "device")]
    pub device: String,
    /// libtorch CPU threads; 0 = the machine's cores
    #[schemars(range(min = 0, max = 1024))]
    pub threads: usize,
}

impl ConfigFile {
    /// The relative paths of `[model]`, `[data]` and `[log]` resolved against `base`, the config
    /// file's folder.
    pub fn resolve_paths(&mut self, base: &Path) {
        let paths = [
            &mut self.model.path,
            &mut self.data.path,
            &mut self.log.path,
        ];
        for p in paths.into_iter().flatten() {
            *p = base.join(&*p);
        }
    }
}

impl Default for ModelSection {
    fn default() -> Self {
        ModelSection {
            path: None,
            output: OutputSelector::default(),
            device: "cpu".into(),
            threads: 0,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct DataSection {
    /// Path to the data sample, relative to this file
    pub path: Option<PathBuf>,
    /// Name of the input array
    pub inputs: String,
    /// Name of the target array (float: regression / image-to-image; integer: class indices)
    pub targets: String,
    /// Use at most this many samples (the first ones)
    #[schemars(range(min = 1))]
    pub max_samples: usize,
}

impl Default for DataSection {
    fn default() -> Self {
        DataSection {
            path: None,
            inputs: "inputs".into(),
            targets: "targets".into(),
            max_samples: 256,
        }
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct LogSection {
    /// Path to the loss log, relative to this file
    pub path: Option<PathBuf>,
    /// The total-loss column; unset: `loss`
    pub loss: Option<String>,
    /// Loss-term columns; empty: every `loss_*` column
    pub terms: Vec<String>,
}

/// The severity at or above which findings fail the run (`[run] fail_on` and `--fail-on`).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum FailOn {
    #[default]
    Error,
    Warning,
}

impl From<FailOn> for Severity {
    fn from(f: FailOn) -> Severity {
        match f {
            FailOn::Error => Severity::Error,
            FailOn::Warning => Severity::Warning,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct RunSection {
    /// Checks, finding kinds or groups to run (ALL = every check)
    #[serde(deserialize_with = "selectors")]
    pub select: Vec<String>,
    /// Checks, finding kinds or groups to skip
    #[serde(deserialize_with = "selectors")]
    pub ignore: Vec<String>,
    /// Exit 1 when a finding at or above this severity remains
    pub fail_on: FailOn,
    /// Seed for everything random; the same seed gives the same report
    pub seed: u64,
    /// Seconds each check that trains may spend; past it, it is skipped as undecided (never passed); 0 = no limit
    #[schemars(range(min = 0, max = 1000000))]
    pub check_budget: f64,
}

impl Default for RunSection {
    fn default() -> Self {
        RunSection {
            select: vec!["ALL".into()],
            ignore: Vec::new(),
            fail_on: FailOn::Error,
            seed: 0,
            check_budget: 60.0,
        }
    }
}

/// An `[[ignore]]` entry: silence a check's (or one finding kind's) findings, optionally at one
/// location, with a reason. This struct is the entry's one declaration: the loader deserializes it
/// and `trainlint schema` derives the entry's schema from it.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Ignore {
    /// A check id or a finding-kind id
    #[serde(deserialize_with = "known_check_or_kind")]
    pub check: String,
    #[serde(default)]
    #[schemars(with = "String")]
    pub location: Option<String>,
    #[serde(deserialize_with = "nonempty_reason")]
    #[schemars(length(min = 1))]
    pub reason: String,
    /// The config line of the entry's first key (set by the loader, not a key of the entry).
    #[serde(skip_deserializing)]
    #[schemars(skip)]
    pub line: usize,
}

/// A device libtorch can be asked for: `cpu`, `cuda` or `cuda:N` (whether the machine has it is the
/// model loader's question).
fn device<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let name = String::deserialize(d)?;
    crate::model::parse_device(&name).map_err(serde::de::Error::custom)?;
    Ok(name)
}

/// Selectors that name something: `ALL`, a group, a check id or a finding-kind id.
fn selectors<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let list = Vec::<String>::deserialize(d)?;
    super::validate_selectors(&list).map_err(serde::de::Error::custom)?;
    Ok(list)
}

/// `check` names a check or a finding kind (`closest` suggests one otherwise).
fn known_check_or_kind<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let id = String::deserialize(d)?;
    let ids = super::check_and_kind_ids();
    if ids.contains(&id.as_str()) {
        return Ok(id);
    }
    let hint = super::closest(&id, ids.iter().copied())
        .map(|c| format!("; did you mean `{c}`?"))
        .unwrap_or_default();
    Err(serde::de::Error::custom(format!(
        "unknown check or kind `{id}`{hint}"
    )))
}

/// A `reason` says something: blank is refused.
fn nonempty_reason<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let text = String::deserialize(d)?;
    if text.trim().is_empty() {
        return Err(serde::de::Error::custom("must not be empty"));
    }
    Ok(text)
}
