//! `--output-format github`: GitHub Actions workflow commands, which annotate the run and the PR.
use super::{file_and_line, Report};

/// Escape a workflow command's message (GitHub's own rules: %, CR, LF); control characters other
/// than these (ESC, which the log viewer would interpret) print as their visible escapes.
fn escape_data(s: &str) -> String {
    let visible: String = s
        .chars()
        .map(|c| match c {
            '\r' | '\n' => c.to_string(),
            c if super::is_hidden_char(c) => super::escaped_char(c),
            c => c.to_string(),
        })
        .collect();
    visible
        .replace('%', "%25")
        .replace('\r', "%0D")
        .replace('\n', "%0A")
}

/// Escape a property value: the message rules plus `:` and `,`.
fn escape_property(s: &str) -> String {
    escape_data(s).replace(':', "%3A").replace(',', "%2C")
}

pub fn render(report: &Report) -> String {
    let mut out = String::new();
    for w in &report.warnings {
        out.push_str(&format!(
            "::warning title={}::{}\n",
            escape_property(&format!("trainlint {}", w.input)),
            escape_data(&w.message)
        ));
    }
    for c in &report.checks {
        for f in &c.findings {
            let (file, line) = file_and_line(report, c.id, f);
            let command = match f.severity {
                trainlint_checks::Severity::Error => "error",
                trainlint_checks::Severity::Warning => "warning",
            };
            let mut message = f.message.clone();
            if !f.location.is_empty() {
                message.push_str(&format!("\n--> {}", f.location));
            }
            if !f.help.is_empty() {
                message.push_str(&format!("\nhelp: {}", f.help));
            }
            out.push_str(&format!(
                "::{command} file={},line={line},title={}::{}\n",
                escape_property(&file),
                escape_property(&format!("trainlint {}", f.kind)),
                escape_data(&message)
            ));
        }
    }
    for c in report
        .checks
        .iter()
        .filter(|c| c.reason.is_some() && c.findings.is_empty())
    {
        out.push_str(&format!(
            "::notice title={}::{}\n",
            escape_property(&format!("trainlint {} skipped", c.id)),
            escape_data(c.reason.as_deref().unwrap_or(""))
        ));
    }
    for c in report.checks.iter().filter(|c| c.reason.is_none()) {
        if let Some(note) = &c.note {
            out.push_str(&format!(
                "::notice title={}::{}\n",
                escape_property(&format!("trainlint {}", c.id)),
                escape_data(note)
            ));
        }
    }
    let s = &report.summary;
    out.push_str(&format!(
        "::notice title=trainlint::{} errors, {} warnings in {} checks ({} passed, {} skipped, {} failed)\n",
        s.errors, s.warnings, s.checks, s.passed, s.skipped, s.failed
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workflow_commands_escape_newlines_percent_and_property_separators() {
        assert_eq!(escape_data("50% done\nnext\r"), "50%25 done%0Anext%0D");
        assert_eq!(escape_property("a:b,c"), "a%3Ab%2Cc");
    }
}
