//! Finding kinds: every documented example is what a real fixture run prints, `explain` documents every
//! kind, `--select` / `--ignore` / `[[ignore]]` work per kind, and the README's tables and docs/configuration.md are generated.
mod common;

use common::*;
use trainlint::report::docs;
use trainlint_checks::{registry, Severity};

/// Split a message into its words and its numbers.
fn tokens(message: &str) -> Vec<(String, Option<f64>)> {
    let mut out = Vec::new();
    let mut word = String::new();
    let chars: Vec<char> = message.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let starts_number = c.is_ascii_digit()
            || (c == '-'
                && chars.get(i + 1).is_some_and(|d| d.is_ascii_digit())
                && word.ends_with(' '));
        if starts_number {
            if !word.is_empty() {
                out.push((std::mem::take(&mut word), None));
            }
            let mut j = i + 1;
            while j < chars.len()
                && (chars[j].is_ascii_digit()
                    || (chars[j] == '.' && chars.get(j + 1).is_some_and(|d| d.is_ascii_digit()))
                    || (chars[j] == 'e'
                        && chars
                            .get(j + 1)
                            .is_some_and(|d| d.is_ascii_digit() || *d == '-')))
            {
                if chars[j] == 'e' && chars[j + 1] == '-' {
                    j += 1;
                }
                j += 1;
            }
            let text: String = chars[i..j].iter().collect();
            out.push((text.clone(), text.parse().ok()));
            i = j;
        } else {
            word.push(c);
            i += 1;
        }
    }
    if !word.is_empty() {
        out.push((word, None));
    }
    out
}

/// The same words, and numbers within 10% (training on another CPU moves the third digit).
fn same_message(documented: &str, actual: &str) -> Result<(), String> {
    let (d, a) = (tokens(documented), tokens(actual));
    if d.len() != a.len() {
        return Err(format!(
            "different shape:\n  docs: {documented}\n  real: {actual}"
        ));
    }
    // A documented `~` before a number marks a value that chaotic training moves by more than 10%
    // from one CPU to another (the end of an unstable run): any number matches it.
    let mut free = false;
    for ((dt, dn), (at, an)) in d.iter().zip(&a) {
        match (dn, an) {
            (Some(_), Some(_)) if std::mem::take(&mut free) => {}
            (None, None) if dt.strip_suffix('~') == Some(at.as_str()) => free = true,
            (Some(x), Some(y)) => {
                let close = (x - y).abs() <= 0.1 * x.abs().max(y.abs()) || (x - y).abs() < 0.02;
                if !close {
                    return Err(format!(
                        "{dt} vs {at}:\n  docs: {documented}\n  real: {actual}"
                    ));
                }
            }
            _ if dt == at => {}
            _ => {
                return Err(format!(
                    "{dt:?} vs {at:?}:\n  docs: {documented}\n  real: {actual}"
                ))
            }
        }
    }
    Ok(())
}

#[test]
fn the_message_comparison_tolerates_digits_not_words() {
    assert!(same_message(
        "std 1 is outside 0.0241..0.53",
        "std 1.02 is outside 0.0242..0.53"
    )
    .is_ok());
    assert!(same_message("std 1 is outside", "std 2 is outside").is_err());
    assert!(same_message("went from 1.39 to 1.39", "went from 1.39 up to 1.39").is_err());
    assert!(same_message("ratio 1.3e4×", "ratio 1.31e4×").is_ok());
    assert!(same_message("autocorrelation -0.484", "autocorrelation -0.49").is_ok());
    assert!(same_message("ended at ~1.6 after 60", "ended at 2.9 after 60").is_ok());
    assert!(same_message("ended at ~1.6 after 60", "ended at 2.9 after 90").is_err());
    assert!(same_message("ended at 1.6 after 60", "ended at 2.9 after 60").is_err());
}

/// Kinds that no fixture can produce: a check failing is an internal error, covered in tests/cli.rs.
const WITHOUT_EXAMPLE: &[&str] = &["check-failed"];

/// Every kind's documented example (what `explain` shows), audited in process through the library:
/// the typed findings of the run, and the documented one among them with its severity.
#[test]
fn every_documented_example_is_what_its_fixture_run_prints() {
    let mut failures = Vec::new();
    let mut without = Vec::new();
    let mut typed = String::new();
    for kind in registry::kinds() {
        let Some(example) = kind.example else {
            without.push(kind.id);
            continue;
        };
        let mut args: Vec<&str> = example.args.split_whitespace().collect();
        args.extend(["--select", kind.id]);
        let audit = in_process::audit_of(&args);
        let found = in_process::findings_of(&audit);
        typed.push_str(&format!("{}\n", example.args));
        for f in &found {
            let evidence: Vec<&str> = f.evidence.keys().map(String::as_str).collect();
            typed.push_str(&format!(
                "  {}[{}] at {}; evidence: {}\n",
                f.severity.as_str(),
                f.kind,
                f.location,
                evidence.join(", ")
            ));
        }
        assert!(
            found.iter().all(|f| f.kind == kind.id),
            "--select {} let other kinds through: {found:?}",
            kind.id
        );
        // The documented line, severity included (`explain` prints the example's severity).
        let matching: Vec<Severity> = found
            .iter()
            .filter(|f| same_message(example.message, &f.message).is_ok())
            .map(|f| f.severity)
            .collect();
        if matching.is_empty() {
            let messages: Vec<&str> = found.iter().map(|f| f.message.as_str()).collect();
            failures.push(format!(
                "{}: documented\n  {}\nfixture run printed\n  {messages:#?}",
                kind.id, example.message
            ));
        } else if !matching.contains(&example.severity) {
            failures.push(format!(
                "{}: documented as {}, the fixture run reports {matching:?}",
                kind.id,
                example.severity.as_str()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    assert_eq!(without, WITHOUT_EXAMPLE, "kinds without an example");
    // Every finding of every example, typed: kind, severity, location and the evidence it carries
    // (its numbers left out: training on another CPU moves them; the messages above compare them
    // within 10%).
    insta::assert_snapshot!(typed);
}

#[test]
fn explain_documents_every_check_and_kind() {
    // The texts, from the library; `explain` prints them (below, one kind and one check).
    for kind in registry::kinds() {
        let text = docs::kind_text(kind, 1, false);
        assert!(text.starts_with(&format!("# {}\n", kind.id)), "{text}");
        for section in ["## Why it matters", "## How it decides", "## How to fix"] {
            assert!(text.contains(section), "{}: {section}", kind.id);
        }
        assert_eq!(
            text.contains("## Example"),
            kind.example.is_some(),
            "{}",
            kind.id
        );
    }
    for check in registry::all() {
        let text = docs::check_text(check.as_ref());
        assert!(
            text.starts_with(&format!("# {}\n", check.info().id)),
            "{text}"
        );
        for k in check.info().kinds {
            assert!(
                text.contains(k.id),
                "{} does not list {}",
                check.info().id,
                k.id
            );
        }
    }
    let kind = registry::find_kind("stale-batchnorm/never-updated").unwrap();
    let o = run(&["explain", kind.id]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(stdout(&o), docs::kind_text(kind, 1, false));
    let check = registry::find("stale-batchnorm").unwrap();
    let o = run(&["explain", "stale-batchnorm"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(stdout(&o), docs::check_text(check.as_ref()));
    let o = run(&["explain", "stale-batchnorm/never-updatd"]);
    assert!(assert_input_error(&o).contains("did you mean stale-batchnorm/never-updated"));
}

#[test]
fn json_findings_carry_check_and_kind_and_ignore_silences_exactly_one_kind() {
    let args = model_data("bn_never_updated", "images.npz");
    let mut a: Vec<&str> = args.iter().map(String::as_str).collect();
    a.extend(["--select", "batchnorm,init-std"]);
    let (_, report) = check_json(&a);
    for f in all_findings(&report) {
        assert!(f["check"].is_string() && f["kind"].is_string(), "{f}");
        assert!(f["kind"]
            .as_str()
            .unwrap()
            .starts_with(f["check"].as_str().unwrap()));
    }
    let kinds = kinds_of(&report);
    assert!(
        kinds.contains(&"stale-batchnorm/never-updated".to_string()),
        "{kinds:?}"
    );
    let mut b = a.clone();
    b.extend(["--ignore", "stale-batchnorm/never-updated"]);
    let (_, ignored) = check_json(&b);
    let left = kinds_of(&ignored);
    let expected: Vec<String> = kinds
        .iter()
        .filter(|k| *k != "stale-batchnorm/never-updated")
        .cloned()
        .collect();
    assert_eq!(left, expected);
    // The same through [[ignore]] in the config, which names the kind.
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(
        dir.path(),
        "trainlint.toml",
        "[[ignore]]\ncheck = \"stale-batchnorm/never-updated\"\nreason = \"stats recomputed before export\"\n",
    );
    let mut c = a.clone();
    let cfg = cfg.display().to_string();
    c.insert(0, &cfg);
    let (_, report) = check_json(&c);
    assert_eq!(kinds_of(&report), expected);
}

#[test]
fn the_readme_lists_the_checks_and_kinds_as_rules_markdown_generates_them() {
    let generated = stdout(&run(&["rules", "--markdown"]));
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let begin = "<!-- rules:begin (generated by `trainlint rules --markdown`) -->\n";
    let end = "<!-- rules:end -->";
    let start = readme
        .find(begin)
        .expect("README has the generated rules section")
        + begin.len();
    let stop = readme[start..].find(end).expect("section end") + start;
    assert_eq!(
        readme[start..stop], generated,
        "README's rules tables are stale: paste `cargo run -- rules --markdown` between the markers"
    );
    for kind in registry::kinds() {
        assert!(generated.contains(kind.id));
    }
}

/// Issue 24, 4: the configuration reference in docs/ holds what `trainlint schema --markdown` prints.
#[test]
fn the_docs_config_reference_is_what_schema_markdown_generates() {
    let generated = stdout(&run(&["schema", "--markdown"]));
    let page = std::fs::read_to_string(root().join("docs/configuration.md")).unwrap();
    assert!(
        page.contains(&generated),
        "docs/configuration.md lacks `trainlint schema --markdown`'s table: run `./dev docs`"
    );
    assert!(generated.contains("| `setup.optimizer` |"), "{generated}");
}
