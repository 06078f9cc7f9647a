//! `--output-format gitlab`: GitLab Code Quality JSON (the `codequality` report artifact).
use serde_json::{json, Value};
use trainlint_checks::Severity;

use super::{file_and_line, fingerprint, Report};

pub fn render(report: &Report) -> String {
    let mut issues: Vec<Value> = Vec::new();
    for c in &report.checks {
        for f in &c.findings {
            let (path, line) = file_and_line(report, c.id, f);
            let mut description = f.message.clone();
            if !f.location.is_empty() {
                description.push_str(&format!(" ({})", f.location));
            }
            issues.push(json!({
                "description": description,
                "check_name": f.kind,
                "fingerprint": fingerprint(f),
                "severity": match f.severity { Severity::Error => "major", Severity::Warning => "minor" },
                "location": {"path": path, "lines": {"begin": line}},
            }));
        }
    }
    serde_json::to_string_pretty(&issues).expect("serialises") + "\n"
}
