//! One renderer per output format, all over the same [`Report`].
pub mod json;
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
    pub summary: Summary,
    pub checks: Vec<CheckRun>,
    /// `[[ignore]]` entries that matched no finding: stale, worth deleting.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unused_ignores: Vec<crate::config::Ignore>,
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
    pub device: String,
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
        timings: bool,
    ) -> Self {
        let mut checks = checks;
        if !timings {
            for c in &mut checks {
                c.duration_ms = 0.0;
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
            summary: s,
            checks,
            unused_ignores,
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
