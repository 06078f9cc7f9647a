//! `--output-format sarif`: SARIF 2.1.0 for GitHub code scanning and other viewers.
use serde_json::{json, Value};
use trainlint_checks::{registry, CheckFailed, KindInfo, Level, Severity, ViolationMetadata};

use super::{file_and_line, fingerprint, source_of, Report};

fn level(s: Severity) -> &'static str {
    match s {
        Severity::Error => "error",
        Severity::Warning => "warning",
    }
}

/// A SARIF rule per finding kind: its docs are the kind's, its tags the check and group.
fn rule(kind: &KindInfo) -> Value {
    let check = registry::find(kind.check());
    let default = match check.as_ref().map(|c| c.info().default_level) {
        Some(Level::Warn) => "warning",
        Some(Level::Allow) => "none",
        _ => level(kind.grade.base()),
    };
    let mut tags = vec![kind.check().to_string()];
    if let Some(c) = &check {
        tags.push(c.info().group.as_str().to_string());
    }
    let example = kind
        .example
        .map(|e| {
            format!(
                "\n\n**Example** (`trainlint check {}`): {}",
                e.args, e.message
            )
        })
        .unwrap_or_default();
    json!({
        "id": kind.id,
        "name": kind.id,
        "shortDescription": {"text": kind.summary},
        "fullDescription": {"text": format!("{}. {}", kind.summary, kind.why)},
        "help": {
            "text": format!("{}\n\nHow it decides: {}\n\nFix: {}", kind.why, kind.how, kind.fix),
            "markdown": format!("{}\n\n**How it decides:** {}\n\n**Fix:** {}{example}", kind.why, kind.how, kind.fix),
        },
        "defaultConfiguration": {"level": default},
        "properties": {"tags": tags},
    })
}

/// A path as a URI reference (RFC 3986): its raw bytes, so that a file name that is not UTF-8
/// survives, percent-encoded but for the unreserved characters and `/`.
fn uri_of(path: &std::path::Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    percent_encode(path.as_os_str().as_bytes())
}

fn percent_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for &b in bytes {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b'/' => {
                out.push(b as char)
            }
            // `:` too: in a relative reference's first segment it would read as a scheme.
            b => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

pub fn render(report: &Report) -> String {
    // Every kind of every check that ran, then check-failed when a check failed.
    let mut kinds: Vec<&'static KindInfo> = report
        .checks
        .iter()
        .filter_map(|c| registry::find(c.id))
        .flat_map(|c| c.info().kinds.iter().copied())
        .collect();
    if report
        .checks
        .iter()
        .any(|c| c.findings.iter().any(|f| f.kind == CheckFailed::KIND.id))
    {
        kinds.push(&CheckFailed::KIND);
    }
    let rules: Vec<Value> = kinds.iter().map(|k| rule(k)).collect();
    let mut results = Vec::new();
    for c in &report.checks {
        for f in &c.findings {
            let (path, line) = file_and_line(report, c.id, f);
            let uri = match source_of(report, c.id, f)
                .0
                .and_then(|l| report.inputs.raw(l))
            {
                Some(raw) => uri_of(raw),
                None => percent_encode(path.as_bytes()),
            };
            let rule_index = kinds.iter().position(|k| k.id == f.kind).unwrap_or(0);
            let mut text = f.message.clone();
            if !f.location.is_empty() {
                text.push_str(&format!(" ({})", f.location));
            }
            if !f.help.is_empty() {
                text.push_str(&format!(". Fix: {}", f.help));
            }
            let mut result = json!({
                "ruleId": f.kind,
                "ruleIndex": rule_index,
                "level": level(f.severity),
                "message": {"text": text},
                "locations": [{
                    "physicalLocation": {
                        "artifactLocation": {"uri": uri},
                        "region": {"startLine": line},
                    },
                }],
                "partialFingerprints": {"trainlintFinding/v1": fingerprint(f)},
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::ffi::OsStrExt;

    #[test]
    fn uris_percent_encode_every_byte_but_the_unreserved_ones_and_slashes() {
        let raw = std::ffi::OsStr::from_bytes(b"runs/a b%\xff:\xc3\xa9#?.pt");
        assert_eq!(
            uri_of(std::path::Path::new(raw)),
            "runs/a%20b%25%FF%3A%C3%A9%23%3F.pt"
        );
        assert_eq!(
            uri_of(std::path::Path::new("fixtures/m_1-2~x.pt")),
            "fixtures/m_1-2~x.pt"
        );
    }
}
