//! `--output-format json`: the whole report, documented in docs/formats.md (`version` guards its shape).
use super::Report;

pub fn render(report: &Report) -> String {
    let mut s = serde_json::to_string_pretty(report).expect("the report serialises");
    s.push('\n');
    s
}
