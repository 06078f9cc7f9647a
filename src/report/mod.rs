//! One renderer per output format, all over the same [`Report`].
pub mod github;
pub mod gitlab;
pub mod html;
pub mod json;
pub mod junit;
pub mod sarif;
pub mod text;

use serde::Serialize;
use trainlint_checks::Severity;

use crate::run::{CheckRun, Status};

/// Everything a renderer needs: what was audited and what each check concluded.
#[derive(Serialize)]
pub struct Report {
    pub version: u32,
    pub tool: Tool,
    pub inputs: Inputs,
    pub seed: u64,
    /// Problems with the inputs that limit what the checks can say (see [`Warning`]).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<Warning>,
    pub summary: Summary,
    pub checks: Vec<CheckRun>,
    /// `[[ignore]]` entries that matched no finding: stale, worth deleting.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unused_ignores: Vec<crate::config::Ignore>,
    /// With `--baseline`: how many findings the baseline hid, and its entries that no longer occur.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub baseline: Option<crate::baseline::BaselineOutcome>,
    /// The config line of each key, for file:line locations (not part of the JSON report).
    #[serde(skip)]
    pub key_lines: std::collections::BTreeMap<String, usize>,
}

/// Where a finding points in the user's files: the config line that configures what it is about,
/// else the model, data or log file it concerns (line 1).
pub fn file_and_line(
    report: &Report,
    check: &str,
    f: &trainlint_checks::Finding,
) -> (String, usize) {
    let i = &report.inputs;
    if let Some(config) = &i.config {
        let keys = [
            f.location.config_key.clone(),
            Some(format!("checks.{check}")),
        ];
        for key in keys.into_iter().flatten() {
            if let Some(line) = report.key_lines.get(&key) {
                return (config.clone(), *line);
            }
        }
    }
    let l = &f.location;
    let by_kind = if l.log_column.is_some() {
        i.log.clone()
    } else if l.data_key.is_some() && l.module.is_none() {
        i.data.clone()
    } else if l.module.is_some() || l.parameter.is_some() || l.buffer.is_some() {
        i.model.clone()
    } else {
        None
    };
    let path = by_kind
        .or_else(|| i.model.clone())
        .or_else(|| i.data.clone())
        .or_else(|| i.log.clone())
        .or_else(|| i.config.clone())
        .unwrap_or_else(|| "trainlint.toml".to_string());
    (path, 1)
}

/// A stable fingerprint of a finding: its check, location and message with the numbers taken out, so
/// that a rerun with slightly different numbers keeps the same identity.
/// A stable hash of a finding's identity (its kind and location), for SARIF fingerprints.
pub fn fingerprint(f: &trainlint_checks::Finding) -> String {
    let (kind, location) = f.identity();
    let text = format!("{kind}\u{1f}{location}");
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        hash ^= b as u64;
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{hash:016x}")
}

#[derive(Serialize)]
pub struct Tool {
    pub name: &'static str,
    pub version: &'static str,
}

#[derive(Serialize, Default)]
pub struct Inputs {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub config: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log: Option<String>,
    /// Where the model ran; absent without a model, where nothing runs on a device.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
}

/// A problem with an input that is not a finding about the setup (a sample of one, a single class):
/// reported once, above the findings.
#[derive(Serialize)]
pub struct Warning {
    /// The input it concerns: `data`.
    pub input: &'static str,
    pub message: String,
}

impl Inputs {
    /// The inputs that were given, with their labels, in report order.
    pub fn labeled(&self) -> Vec<(&'static str, &str)> {
        [
            ("config", &self.config),
            ("model", &self.model),
            ("data", &self.data),
            ("log", &self.log),
        ]
        .into_iter()
        .filter_map(|(label, v)| v.as_deref().map(|v| (label, v)))
        .collect()
    }
}

#[derive(Serialize, Default, Clone, Copy)]
pub struct Summary {
    pub errors: usize,
    pub warnings: usize,
    pub checks: usize,
    pub passed: usize,
    pub with_findings: usize,
    pub skipped: usize,
    pub failed: usize,
    pub duration_ms: f64,
}

/// The JSON report's format version; bump on incompatible changes.
pub const REPORT_VERSION: u32 = 1;

impl Report {
    pub fn new(
        inputs: Inputs,
        seed: u64,
        checks: Vec<CheckRun>,
        unused_ignores: Vec<crate::config::Ignore>,
        key_lines: std::collections::BTreeMap<String, usize>,
        timings: bool,
    ) -> Self {
        let mut checks = checks;
        if !timings {
            for c in &mut checks {
                c.duration_ms = 0.0;
                for t in &mut c.training {
                    t.ms_per_step = 0.0;
                }
            }
        }
        let mut s = Summary {
            checks: checks.len(),
            ..Summary::default()
        };
        for c in &checks {
            s.duration_ms += c.duration_ms;
            match c.status {
                Status::Passed => s.passed += 1,
                Status::Findings => s.with_findings += 1,
                Status::Skipped => s.skipped += 1,
                Status::Failed => s.failed += 1,
            }
            for f in &c.findings {
                match f.severity {
                    Severity::Error => s.errors += 1,
                    Severity::Warning => s.warnings += 1,
                }
            }
        }
        Report {
            version: REPORT_VERSION,
            tool: Tool {
                name: "trainlint",
                version: env!("CARGO_PKG_VERSION"),
            },
            inputs,
            seed,
            warnings: Vec::new(),
            summary: s,
            checks,
            unused_ignores,
            baseline: None,
            key_lines,
        }
    }

    /// Whether any finding is at or above `fail_on`.
    pub fn fails(&self, fail_on: Severity) -> bool {
        self.checks
            .iter()
            .flat_map(|c| &c.findings)
            .any(|f| f.severity >= fail_on)
    }
}
