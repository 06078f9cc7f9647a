//! One renderer per output format, all over the same [`Report`].
pub mod docs;
pub mod github;
pub mod gitlab;
pub mod graph;
pub mod html;
pub mod json;
pub mod junit;
pub mod sarif;
pub mod text;

use serde::Serialize;
use trainlint_checks::{skip_serializing_none, Severity};

use crate::run::{CheckRun, Status};

/// Everything a renderer needs: what was audited and what each check concluded.
#[skip_serializing_none]
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
    pub baseline: Option<crate::baseline::BaselineOutcome>,
    /// The libtorch threads the checks ran with and why; like every timing, absent with `--no-timings`
    /// (it depends on the machine and on how busy it was).
    pub threads: Option<Threads>,
    /// The config line of each key, for file:line locations (not part of the JSON report).
    #[serde(skip)]
    pub key_lines: std::collections::BTreeMap<String, usize>,
}

/// How many CPU threads libtorch used, why, and how its OpenMP threads waited.
#[derive(Serialize)]
pub struct Threads {
    pub count: usize,
    pub reason: String,
    pub openmp_wait_policy: String,
    /// Whether the checks that train ran side by side, sharing the threads, or why not.
    pub side_by_side: String,
}

pub use crate::escape::{escaped_char, is_hidden_char, visible};

/// Where a finding points in the user's files: the config line that configures what it is about,
/// else the model, data or log file it concerns (line 1).
pub fn file_and_line(
    report: &Report,
    check: &str,
    f: &trainlint_checks::Finding,
) -> (String, usize) {
    let (input, line) = source_of(report, check, f);
    let path = input
        .and_then(|label| report.inputs.shown(label))
        .unwrap_or("trainlint.toml");
    (path.to_string(), line)
}

/// [`file_and_line`] with the input named by its label (`config`, `model`, `data`, `log`; `None`
/// when no input was given), so that a format can spell the path itself (SARIF's URIs).
pub fn source_of(
    report: &Report,
    check: &str,
    f: &trainlint_checks::Finding,
) -> (Option<&'static str>, usize) {
    let i = &report.inputs;
    if i.config.is_some() {
        let keys = [
            f.location.config_key.clone(),
            Some(format!("checks.{check}")),
        ];
        for key in keys.into_iter().flatten() {
            if let Some(line) = report.key_lines.get(&key) {
                return (Some("config"), *line);
            }
        }
    }
    let l = &f.location;
    let by_kind = if l.log_column.is_some() {
        "log"
    } else if l.data_key.is_some() && l.module.is_none() {
        "data"
    } else if l.module.is_some() || l.parameter.is_some() || l.buffer.is_some() {
        "model"
    } else {
        ""
    };
    let label = [by_kind, "model", "data", "log", "config"]
        .into_iter()
        .find(|label| i.shown(label).is_some());
    (label, 1)
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

#[skip_serializing_none]
#[derive(Serialize, Default)]
pub struct Inputs {
    pub config: Option<String>,
    pub model: Option<String>,
    pub data: Option<String>,
    pub log: Option<String>,
    /// Where the model ran; absent without a model, where nothing runs on a device.
    pub device: Option<String>,
    /// The inputs' paths as the file system spells them (bytes that need not be UTF-8), relative to
    /// the working directory like the strings above, by label: for formats that can carry them whole.
    #[serde(skip)]
    pub raw: Vec<(&'static str, std::path::PathBuf)>,
}

/// A problem with an input that is not a finding about the setup (a sample of one, a single class):
/// reported once, above the findings.
#[derive(Debug, Serialize)]
pub struct Warning {
    /// The input it concerns: `data`.
    pub input: &'static str,
    pub message: String,
}

impl Inputs {
    /// The input with this label (`config`, `model`, `data`, `log`) as shown in reports.
    pub fn shown(&self, label: &str) -> Option<&str> {
        match label {
            "config" => self.config.as_deref(),
            "model" => self.model.as_deref(),
            "data" => self.data.as_deref(),
            "log" => self.log.as_deref(),
            _ => None,
        }
    }

    /// The input with this label as the file system spells it, when known.
    pub fn raw(&self, label: &str) -> Option<&std::path::Path> {
        self.raw
            .iter()
            .find(|(l, _)| *l == label)
            .map(|(_, p)| p.as_path())
    }

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
            threads: None,
            key_lines,
        }
    }

    /// Every finding, check by check, in report order.
    pub fn findings(&self) -> impl Iterator<Item = &trainlint_checks::Finding> {
        self.checks.iter().flat_map(|c| &c.findings)
    }

    /// Whether any finding is at or above `fail_on`.
    pub fn fails(&self, fail_on: Severity) -> bool {
        self.findings().any(|f| f.severity >= fail_on)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::borrow::Cow;

    #[test]
    fn hidden_characters_print_as_their_escapes_and_the_rest_as_itself() {
        assert!(matches!(visible("loss_é ✓\tx\n"), Cow::Borrowed(_)));
        assert_eq!(
            visible("\u{1b}[31mred\u{7}\r\u{9b}\u{0}"),
            "\\x1b[31mred\\x07\\x0d\\u{9b}\\x00"
        );
        assert_eq!(
            visible("a\u{fdd0}\u{fffe}\u{ffff}\u{1fffe}\u{10ffff}b\u{fffd}"),
            "a\\u{fdd0}\\u{fffe}\\u{ffff}\\u{1fffe}\\u{10ffff}b\u{fffd}"
        );
    }
}
