//! `--output-format junit`: one testcase per check, so passing checks show green in CI dashboards.
use trainlint_checks::Severity;

use super::Report;
use crate::run::Status;

/// Text as XML character data or an attribute value: markup characters as entities, and the
/// characters XML does not allow (C0 controls but tab, LF and CR; U+FFFE, U+FFFF) or discourages (C1
/// controls, noncharacters) as their visible escapes (`\x1b`, `\u{ffff}`), so that the document stays
/// well-formed whatever a column name or an exception message holds.
pub fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c if super::is_hidden_char(c) => out.push_str(&super::escaped_char(c)),
            c => out.push(c),
        }
    }
    out
}

pub fn render(report: &Report) -> String {
    let s = &report.summary;
    let failures = s.with_findings;
    let secs = |ms: f64| format!("{:.3}", ms / 1000.0);
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    out.push_str(&format!(
        "<testsuites name=\"trainlint\" tests=\"{}\" failures=\"{failures}\" errors=\"{}\" skipped=\"{}\" time=\"{}\">\n",
        s.checks,
        s.failed,
        s.skipped,
        secs(s.duration_ms)
    ));
    out.push_str(&format!(
        "  <testsuite name=\"trainlint\" tests=\"{}\" failures=\"{failures}\" errors=\"{}\" skipped=\"{}\" time=\"{}\">\n",
        s.checks,
        s.failed,
        s.skipped,
        secs(s.duration_ms)
    ));
    for c in &report.checks {
        let open = format!(
            "    <testcase classname=\"trainlint.{}\" name=\"{}\" time=\"{}\"",
            c.group.as_str(),
            c.id,
            secs(c.duration_ms)
        );
        let body: Vec<String> = c
            .findings
            .iter()
            .map(|f| {
                let mut text = format!("{}[{}] {}", f.severity.as_str(), f.kind, f.message);
                if !f.location.is_empty() {
                    text.push_str(&format!("\n  --> {}", f.location));
                }
                if !f.help.is_empty() {
                    text.push_str(&format!("\n  = help: {}", f.help));
                }
                text
            })
            .collect();
        match c.status {
            Status::Passed => match &c.note {
                Some(note) => out.push_str(&format!(
                    "{open}>\n      <system-out>{}</system-out>\n    </testcase>\n",
                    xml_escape(note)
                )),
                None => out.push_str(&format!("{open}/>\n")),
            },
            Status::Skipped => out.push_str(&format!(
                "{open}>\n      <skipped message=\"{}\"/>\n    </testcase>\n",
                xml_escape(c.reason.as_deref().unwrap_or(""))
            )),
            Status::Findings | Status::Failed => {
                let tag = if c.status == Status::Failed {
                    "error"
                } else {
                    "failure"
                };
                let worst = c
                    .findings
                    .iter()
                    .map(|f| f.severity)
                    .max()
                    .unwrap_or(Severity::Error);
                out.push_str(&format!(
                    "{open}>\n      <{tag} type=\"{}\" message=\"{}\">{}</{tag}>\n    </testcase>\n",
                    worst.as_str(),
                    xml_escape(&c.findings[0].message),
                    xml_escape(&body.join("\n"))
                ));
            }
        }
    }
    out.push_str("  </testsuite>\n</testsuites>\n");
    out
}
