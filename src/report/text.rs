//! The human report: findings grouped by check, each with evidence, location and fix; then a table of
//! check statuses and a summary line.
use colored::Colorize;
use trainlint_checks::{Curve, Input, Severity};

use super::{visible, Report};
use crate::run::Status;

/// A compact sparkline of a curve (at most `width` characters), log-scaled when the curve spans
/// more than two orders of magnitude.
fn sparkline(values: &[f64], width: usize) -> String {
    const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    let finite: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    if finite.is_empty() || width == 0 {
        return String::new();
    }
    let (lo, hi) = trainlint_checks::stats::min_max(&finite);
    let log = lo > 0.0 && hi / lo > 100.0;
    let tf = |v: f64| if log { v.ln() } else { v };
    let (tlo, thi) = (tf(lo), tf(hi));
    let n = values.len();
    let cols = n.min(width);
    (0..cols)
        .map(|c| {
            let a = c * n / cols;
            let b = ((c + 1) * n / cols).max(a + 1);
            let chunk: Vec<f64> = values[a..b]
                .iter()
                .copied()
                .filter(|v| v.is_finite())
                .collect();
            if chunk.is_empty() {
                return '×';
            }
            let v = tf(chunk.iter().sum::<f64>() / chunk.len() as f64);
            let level = if thi > tlo {
                ((v - tlo) / (thi - tlo) * 7.0).round() as usize
            } else {
                3
            };
            BARS[level.min(7)]
        })
        .collect()
}

fn curve_line(c: &Curve) -> String {
    let first = c.y.first().copied().unwrap_or(f64::NAN);
    let last = c.y.last().copied().unwrap_or(f64::NAN);
    let target = c
        .target
        .map(|t| format!(", target {}", trainlint_checks::finding::num(t)))
        .unwrap_or_default();
    format!(
        "{} {} ({} → {} over {} points{target})",
        visible(&c.name),
        sparkline(&c.y, 48),
        trainlint_checks::finding::num(first),
        trainlint_checks::finding::num(last),
        c.y.len()
    )
}

pub fn render(report: &Report) -> String {
    let mut out = String::new();
    let i = &report.inputs;
    let mut header = format!("trainlint {}", report.tool.version);
    for (label, v) in i.labeled() {
        header.push_str(&format!(" · {label} {}", visible(v)));
    }
    if let Some(device) = &i.device {
        header.push_str(&format!(" · device {}", visible(device)));
    }
    header.push_str(&format!(" · seed {}", report.seed));
    out.push_str(&format!("{}\n", header.dimmed()));
    for w in &report.warnings {
        out.push_str(&format!(
            "{} {}: {}\n",
            "warning:".yellow().bold(),
            w.input,
            visible(&w.message)
        ));
    }
    for c in &report.checks {
        if c.findings.is_empty() {
            continue;
        }
        out.push('\n');
        for f in &c.findings {
            let tag = match f.severity {
                Severity::Error => format!("error[{}]", f.kind).red().bold(),
                Severity::Warning => format!("warning[{}]", f.kind).yellow().bold(),
            };
            out.push_str(&format!("{tag} {}\n", visible(&f.message).bold()));
            if !f.location.is_empty() {
                out.push_str(&format!(
                    "  {} {}\n",
                    "-->".blue().bold(),
                    visible(&f.location.to_string())
                ));
            }
            if !f.help.is_empty() {
                out.push_str(&format!(
                    "  {} {}\n",
                    "= help:".cyan().bold(),
                    visible(&f.help)
                ));
            }
        }
        for curve in c
            .curves
            .iter()
            .filter(|c| c.y.len() > 1 && c.labels.is_empty())
        {
            out.push_str(&format!(
                "  {} {}\n",
                "= curve:".dimmed(),
                curve_line(curve)
            ));
        }
    }
    out.push('\n');
    let width = report.checks.iter().map(|c| c.id.len()).max().unwrap_or(10);
    for c in &report.checks {
        let errors = c
            .findings
            .iter()
            .filter(|f| f.severity == Severity::Error)
            .count();
        let warnings = c.findings.len() - errors;
        let status = match c.status {
            Status::Passed => "passed".green().to_string(),
            Status::Findings => {
                let mut parts = Vec::new();
                if errors > 0 {
                    parts.push(plural(errors, "error"));
                }
                if warnings > 0 {
                    parts.push(plural(warnings, "warning"));
                }
                let s = parts.join(", ");
                if errors > 0 {
                    s.red().to_string()
                } else {
                    s.yellow().to_string()
                }
            }
            Status::Skipped => format!("skipped: {}", visible(c.reason.as_deref().unwrap_or("")))
                .dimmed()
                .to_string(),
            Status::Failed => "failed".red().bold().to_string(),
        };
        let status = match &c.note {
            Some(note) if c.status != Status::Skipped => {
                format!("{status} {}", format!("· {}", visible(note)).dimmed())
            }
            _ => status,
        };
        let ignored = if c.ignored > 0 {
            format!(" ({} ignored)", c.ignored)
        } else {
            String::new()
        };
        out.push_str(&format!(
            "  {:width$}  {:>9}  {status}{ignored}\n",
            c.id,
            format_duration(c.duration_ms)
        ));
    }
    out.push_str(&missing_inputs(report));
    for i in &report.unused_ignores {
        let at = i
            .location
            .as_deref()
            .map(|l| format!(" at {}", visible(l)))
            .unwrap_or_default();
        out.push_str(&format!(
            "{} [[ignore]] for {}{at} (config line {}) matched no finding; remove it (reason was: {})\n",
            "warning:".yellow().bold(),
            visible(&i.check),
            i.line,
            visible(&i.reason)
        ));
    }
    if let Some(b) = &report.baseline {
        out.push_str(&format!("{} finding(s) hidden by the baseline\n", b.hidden));
        for e in &b.stale {
            let at = if e.location.is_empty() {
                String::new()
            } else {
                format!(" at {}", visible(&e.location))
            };
            out.push_str(&format!(
                "{} baseline entry {}{at} (×{}) no longer occurs; update the baseline\n",
                "warning:".yellow().bold(),
                visible(&e.kind),
                e.count
            ));
        }
    }
    let s = &report.summary;
    let line = format!(
        "Found {}, {} in {} checks ({} passed, {} with findings, {} skipped, {} failed) in {}",
        plural(s.errors, "error"),
        plural(s.warnings, "warning"),
        s.checks,
        s.passed,
        s.with_findings,
        s.skipped,
        s.failed,
        format_duration(s.duration_ms)
    );
    let line = if s.errors > 0 {
        line.red().bold()
    } else if s.warnings > 0 {
        line.yellow().bold()
    } else {
        line.green().bold()
    };
    out.push_str(&format!("\n{line}\n"));
    out
}

/// The inputs whose absence skipped checks, recognised by the skip reasons the checks give (a unit
/// test keeps these in step with them), each with what to add.
/// "To run the skipped checks:", one line per missing input with the checks it would let run; empty
/// when no check was skipped for a missing input. A check that needs two missing inputs names the
/// first; adding it shows the next.
fn missing_inputs(report: &Report) -> String {
    let mut lines = String::new();
    for input in Input::ALL {
        let ids: Vec<&str> = report
            .checks
            .iter()
            .filter(|c| c.status == Status::Skipped && c.missing == Some(input))
            .map(|c| c.id)
            .collect();
        if !ids.is_empty() {
            lines.push_str(&format!("  add {} → {}\n", input.to_add(), ids.join(", ")));
        }
    }
    if lines.is_empty() {
        return lines;
    }
    format!("\nTo run the skipped checks:\n{lines}")
}

/// `--statistics`: the number of findings per check, most first, like `ruff --statistics`.
pub fn statistics(report: &Report) -> String {
    let mut rows: Vec<(usize, usize, &str)> = report
        .checks
        .iter()
        .filter(|c| !c.findings.is_empty())
        .map(|c| {
            let errors = c
                .findings
                .iter()
                .filter(|f| f.severity == Severity::Error)
                .count();
            (c.findings.len(), errors, c.id)
        })
        .collect();
    rows.sort_by(|a, b| b.0.cmp(&a.0).then(a.2.cmp(b.2)));
    let mut out = String::new();
    for (n, errors, id) in rows {
        out.push_str(&format!(
            "{n:5}  {id:20} {errors} error(s), {} warning(s)\n",
            n - errors
        ));
    }
    if out.is_empty() {
        out.push_str("    0  no findings\n");
    }
    out
}

pub fn plural(n: usize, word: &str) -> String {
    if n == 1 {
        format!("1 {word}")
    } else {
        format!("{n} {word}s")
    }
}

pub fn format_duration(ms: f64) -> String {
    if ms >= 1000.0 {
        format!("{:.2} s", ms / 1000.0)
    } else {
        format!("{ms:.0} ms")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparkline_spans_the_full_range_and_downsamples() {
        assert_eq!(
            sparkline(&[0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0], 8),
            "▁▂▃▄▅▆▇█"
        );
        assert_eq!(
            sparkline(&(0..100).map(|i| i as f64).collect::<Vec<_>>(), 10)
                .chars()
                .count(),
            10
        );
        assert_eq!(sparkline(&[1.0, f64::NAN, 2.0], 3), "▁×█");
    }
}
