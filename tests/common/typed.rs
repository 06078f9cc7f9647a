//! Typed findings for rule tests, as ruff's `assert_diagnostics!` snapshots them: a check's run
//! through the library (`in_process::audit_of`), shown as its status, then each finding's severity,
//! kind, location, message, help and evidence, and compared with a committed `insta` snapshot.
//!
//! Numbers that training on another CPU can move are redacted to `#`. In the words (message, help,
//! reason, note) every number is: most are floats rounded for reading, and a float one ulp across a
//! rounding edge prints another digit. In the evidence, the integers of a check that neither trains
//! a copy nor draws random numbers (`CheckInfo::trains`, `draws_random`) stay: counts, shapes and
//! indices that the inputs fix; every other number is redacted. Names stay (`features.1`, `conv2`).
//! A test asserts the numbers it cares about from the typed evidence ([`num`]) within a tolerance.
use serde_json::Value;
use trainlint::audit::Audit;
use trainlint::run::{CheckRun, Status};
use trainlint_checks::{registry, Finding, Severity};

/// The run of check `id` in the audit.
pub fn run<'a>(audit: &'a Audit, id: &str) -> &'a CheckRun {
    audit
        .report
        .checks
        .iter()
        .find(|c| c.id == id)
        .unwrap_or_else(|| panic!("no check {id} in the audit"))
}

/// The one finding of check `id`, of the given severity.
pub fn only<'a>(audit: &'a Audit, id: &str, severity: Severity) -> &'a Finding {
    let f = &run(audit, id).findings;
    assert_eq!(f.len(), 1, "{id}: {f:#?}");
    assert_eq!(f[0].severity, severity, "{:#?}", f[0]);
    &f[0]
}

/// Check `id` ran and found nothing.
pub fn passed(audit: &Audit, id: &str) {
    let r = run(audit, id);
    assert_eq!(r.status, Status::Passed, "{id}: {}", show(r));
}

/// Check `id` was skipped; its reason.
pub fn skipped<'a>(audit: &'a Audit, id: &str) -> &'a str {
    let r = run(audit, id);
    assert_eq!(r.status, Status::Skipped, "{id}: {}", show(r));
    r.reason.as_deref().unwrap_or_default()
}

/// No check failed internally (`what` names the audit in the message).
pub fn assert_none_failed(audit: &Audit, what: &str) {
    for c in &audit.report.checks {
        assert_ne!(c.status, Status::Failed, "{what}: {}", show(c));
    }
}

/// Whether a finding reaches the default `fail-on` (error): the CLI's exit 1.
pub fn fails(audit: &Audit) -> bool {
    audit.report.fails(Severity::Error)
}

/// Evidence `key` of a finding, as a number.
pub fn num(f: &Finding, key: &str) -> f64 {
    f.evidence
        .get(key)
        .and_then(Value::as_f64)
        .unwrap_or_else(|| panic!("no number {key} in the evidence of {f:#?}"))
}

/// The kinds of every finding of the audit, in report order.
pub fn kinds(audit: &Audit) -> Vec<&'static str> {
    audit.report.findings().map(|f| f.kind).collect()
}

/// Whether the numbers of check `id` can move with the CPU that trained (see the module's doc).
fn moves(id: &str) -> bool {
    registry::find(id).is_some_and(|r| {
        let info = r.info();
        info.trains || info.draws_random
    })
}

/// A check's run as its snapshot shows it (numbers redacted as the module's doc says).
pub fn show(run: &CheckRun) -> String {
    let all = moves(run.id);
    let status = serde_json::to_value(run.status).expect("a status");
    let mut out = format!("{}: {}", run.id, status.as_str().unwrap_or_default());
    if let Some(reason) = &run.reason {
        out += &format!(": {}", redact(reason));
    }
    out.push('\n');
    if let Some(note) = &run.note {
        out += &format!("note: {}\n", redact(note));
    }
    for f in &run.findings {
        out += &format!("{}[{}] at {}\n", f.severity.as_str(), f.kind, f.location);
        out += &format!("  {}\n", redact(&f.message));
        if !f.help.is_empty() {
            out += &format!("  help: {}\n", redact(&f.help));
        }
        for (key, value) in &f.evidence {
            out += &format!("  {key}: {}\n", evidence(value, all));
        }
    }
    out
}

/// One evidence value, its numbers redacted.
fn evidence(v: &Value, all: bool) -> String {
    match v {
        Value::Number(n) if !all && (n.is_u64() || n.is_i64()) => n.to_string(),
        Value::Number(_) => "#".into(),
        Value::String(s) => format!("{:?}", redact(s)),
        Value::Array(items) => {
            let items: Vec<String> = items.iter().map(|v| evidence(v, all)).collect();
            format!("[{}]", items.join(", "))
        }
        Value::Object(map) => {
            let items: Vec<String> = map
                .iter()
                .map(|(k, v)| format!("{k}: {}", evidence(v, all)))
                .collect();
            format!("{{{}}}", items.join(", "))
        }
        other => other.to_string(),
    }
}

/// `s` with its numbers redacted to `#`. A number starts at a digit that does not continue a name:
/// not after a letter, a digit or `_`, nor after a `.` that follows one (`features.1`, `conv2` and
/// `down.2` stay; `0.5`, `1e-4`, `..299` and `2×` go).
pub fn redact(s: &str) -> String {
    let chars: Vec<char> = s.chars().collect();
    let in_name = |c: char| c.is_alphanumeric() || c == '_';
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while i < chars.len() {
        let continues_name = i > 0
            && (in_name(chars[i - 1]) || (chars[i - 1] == '.' && i > 1 && in_name(chars[i - 2])));
        if !chars[i].is_ascii_digit() || continues_name {
            out.push(chars[i]);
            i += 1;
            continue;
        }
        let digits = |mut j: usize| {
            while j < chars.len() && chars[j].is_ascii_digit() {
                j += 1;
            }
            j
        };
        let mut end = digits(i);
        if end + 1 < chars.len() && chars[end] == '.' && chars[end + 1].is_ascii_digit() {
            end = digits(end + 1);
        }
        if end < chars.len() && matches!(chars[end], 'e' | 'E') {
            let sign = usize::from(matches!(chars.get(end + 1), Some('-' | '+')));
            if chars.get(end + 1 + sign).is_some_and(char::is_ascii_digit) {
                end = digits(end + 1 + sign);
            }
        }
        out.push('#');
        i = end;
    }
    out
}

/// Snapshots check `ID`'s run in an audit, typed ([`show`]), with `insta`: `assert_check!(audit,
/// "loss-scale")`, or with a name for a test that shows several runs.
#[macro_export]
macro_rules! assert_check {
    ($audit:expr, $id:expr) => {
        insta::with_settings!({omit_expression => true}, {
            insta::assert_snapshot!($crate::common::typed::show($crate::common::typed::run(
                &$audit, $id
            )))
        })
    };
    ($name:expr, $audit:expr, $id:expr) => {
        insta::with_settings!({omit_expression => true}, {
            insta::assert_snapshot!(
                $name,
                $crate::common::typed::show($crate::common::typed::run(&$audit, $id))
            )
        })
    };
}
