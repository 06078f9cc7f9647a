//! `--output-format sarif`: SARIF 2.1.0 for GitHub code scanning and other viewers.
use serde_json::{json, Value};
use trainlint_checks::{registry, Level, Severity};

use super::{file_and_line, fingerprint, Report};

fn level(s: Severity) -> &'static str {
    match s {
        Severity::Error => "error",
        Severity::Warning => "warning",
    }
}

fn rule(id: &str) -> Value {
    match registry::find(id) {
        Some(check) => {
            let i = check.info();
            let default = match i.default_level {
                Level::Deny => "error",
                Level::Warn => "warning",
                Level::Allow => "none",
            };
            json!({
                "id": i.id,
                "name": i.id,
                "shortDescription": {"text": i.summary},
                "fullDescription": {"text": format!("{} {}", i.docs.what, i.docs.why)},
                "help": {
                    "text": format!("{}\n\nHow it decides: {}\n\nFix: {}", i.docs.what, i.docs.how, i.docs.fix),
                    "markdown": format!("{}\n\n**How it decides:** {}\n\n**Fix:** {}\n\n**Example:** `{}`", i.docs.what, i.docs.how, i.docs.fix, i.docs.example),
                },
                "defaultConfiguration": {"level": default},
                "properties": {"tags": [i.group.as_str()]},
            })
        }
        None => json!({
            "id": id,
            "name": id,
            "shortDescription": {"text": "A check failed internally"},
            "fullDescription": {"text": "A check could not run to the end (an error inside it, not a verdict on the setup). The other checks still ran."},
            "help": {"text": "Read the message for the cause; rerun with the input that made it fail, or report it."},
            "defaultConfiguration": {"level": "error"},
        }),
    }
}

pub fn render(report: &Report) -> String {
    let mut rule_ids: Vec<String> = report.checks.iter().map(|c| c.id.to_string()).collect();
    if report
        .checks
        .iter()
        .any(|c| c.findings.iter().any(|f| f.check == "check-failed"))
    {
        rule_ids.push("check-failed".into());
    }
    let rules: Vec<Value> = rule_ids.iter().map(|id| rule(id)).collect();
    let mut results = Vec::new();
    for c in &report.checks {
        for f in &c.findings {
            let (path, line) = file_and_line(report, c.id, f);
            let rule_index = rule_ids.iter().position(|r| *r == f.check).unwrap_or(0);
            let mut text = f.message.clone();
            if !f.location.is_empty() {
                text.push_str(&format!(" ({})", f.location));
            }
            if !f.help.is_empty() {
                text.push_str(&format!(". Fix: {}", f.help));
            }
            let mut result = json!({
                "ruleId": f.check,
                "ruleIndex": rule_index,
                "level": level(f.severity),
                "message": {"text": text},
                "locations": [{
                    "physicalLocation": {
                        "artifactLocation": {"uri": path.replace('\\', "/")},
                        "region": {"startLine": line},
                    },
                }],
                "partialFingerprints": {"trainlintFinding/v1": fingerprint(c.id, f)},
                "properties": {"evidence": f.evidence},
            });
            if !f.location.is_empty() {
                result["locations"][0]["logicalLocations"] =
                    json!([{"fullyQualifiedName": f.location.to_string()}]);
            }
            results.push(result);
        }
    }
    let sarif = json!({
        "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
        "version": "2.1.0",
        "runs": [{
            "tool": {"driver": {
                "name": "trainlint",
                "version": report.tool.version,
                "semanticVersion": report.tool.version,
                "informationUri": "https://crates.io/crates/trainlint",
                "rules": rules,
            }},
            "results": results,
        }],
    });
    serde_json::to_string_pretty(&sarif).expect("SARIF serialises") + "\n"
}
