//! The reference pages under docs/ are generated from the code (`./dev docs`): a committed page that
//! differs from what the code generates fails here, so the docs cannot drift.
mod common;

use common::*;

#[test]
fn the_committed_docs_are_what_the_code_generates() {
    let o = run(&["docs", "--check", "--out", "docs"]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}\nrun `./dev docs` and commit docs/",
        stderr(&o)
    );
}

#[test]
fn a_stale_missing_or_orphaned_page_is_named_and_written_again() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().to_str().unwrap();
    // Nothing there: every page is missing.
    let o = run(&["docs", "--check", "--out", out]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("checks/init-std.md is missing"),
        "{}",
        stderr(&o)
    );
    let o = run(&["docs", "--out", out]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(
        run(&["docs", "--check", "--out", out]).status.code(),
        Some(0)
    );
    // An edited page and a page of a check that no longer exists.
    let page = dir.path().join("checks/init-std.md");
    let text = std::fs::read_to_string(&page).unwrap();
    std::fs::write(&page, text.replace("## Options", "## Settings")).unwrap();
    let orphan = dir.path().join("checks/retired-check.md");
    std::fs::write(
        &orphan,
        format!("{}\n# gone\n", text.lines().next().unwrap()),
    )
    .unwrap();
    let o = run(&["docs", "--check", "--out", out]);
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o);
    assert!(e.contains("checks/init-std.md differs"), "{e}");
    assert!(
        e.contains("checks/retired-check.md is no longer generated"),
        "{e}"
    );
    // Writing again restores the page and removes the orphan; a hand-written page is left alone.
    let mine = dir.path().join("checks/notes.md");
    std::fs::write(&mine, "# my notes\n").unwrap();
    assert_eq!(run(&["docs", "--out", out]).status.code(), Some(0));
    assert_eq!(std::fs::read_to_string(&page).unwrap(), text);
    assert!(!orphan.exists());
    assert_eq!(std::fs::read_to_string(&mine).unwrap(), "# my notes\n");
}

#[cfg(unix)]
#[test]
fn a_fifo_in_place_of_a_page_is_refused_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("checks")).unwrap();
    let fifo = dir.path().join("checks.md");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    let out = dir.path().to_str().unwrap();
    // --check does not open it (reading a FIFO would block): it is not a page.
    let o = run(&["docs", "--check", "--out", out]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("checks.md is missing"),
        "{}",
        stderr(&o)
    );
    let o = run(&["docs", "--out", out]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("is not a regular file"),
        "{}",
        stderr(&o)
    );
    // Nothing was written before the refusal.
    assert_eq!(
        std::fs::read_dir(dir.path().join("checks"))
            .unwrap()
            .count(),
        0
    );
    use std::os::unix::fs::FileTypeExt;
    assert!(std::fs::symlink_metadata(&fifo)
        .unwrap()
        .file_type()
        .is_fifo());
}

/// GitHub's anchor for a heading: lower case, punctuation other than `-` and `_` dropped, spaces
/// become `-`.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// The lines of a Markdown page outside its fenced code blocks.
fn prose(text: &str) -> impl Iterator<Item = &str> {
    let mut fenced = false;
    text.lines().filter(move |line| {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            return false;
        }
        !fenced
    })
}

/// The anchors of a Markdown page: its headings outside code blocks.
fn anchors(text: &str) -> Vec<String> {
    prose(text)
        .filter(|line| line.starts_with('#'))
        .map(|line| slug(line.trim_start_matches('#')))
        .collect()
}

/// The targets of a page's inline links, `[text](target)`, outside code blocks.
fn links(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in prose(text) {
        let mut rest = line;
        while let Some(i) = rest.find("](") {
            let after = &rest[i + 2..];
            let Some(end) = after.find(')') else { break };
            out.push(after[..end].to_string());
            rest = &after[end..];
        }
    }
    out
}

/// Every relative link in the README and under docs/ reaches a file of the repository, and every
/// `#anchor` a heading of its page: moving a section between pages cannot leave a dead link.
#[test]
fn every_link_in_the_readme_and_docs_reaches_its_page_and_heading() {
    let root = root();
    let mut pages = vec![root.join("README.md")];
    for dir in [root.join("docs"), root.join("docs/checks")] {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            if e.path().extension().is_some_and(|x| x == "md") {
                pages.push(e.path());
            }
        }
    }
    let mut dead = Vec::new();
    let mut seen = 0;
    for page in &pages {
        let text = std::fs::read_to_string(page).unwrap();
        for target in links(&text) {
            if target.starts_with("http://") || target.starts_with("https://") {
                continue;
            }
            seen += 1;
            let (file, anchor) = target.split_once('#').unwrap_or((&target, ""));
            let path = if file.is_empty() {
                page.clone()
            } else {
                page.parent().unwrap().join(file)
            };
            if !path.exists() {
                dead.push(format!("{}: {target} (no such file)", page.display()));
                continue;
            }
            if !anchor.is_empty() {
                let text = std::fs::read_to_string(&path).unwrap();
                if !anchors(&text).iter().any(|a| a == anchor) {
                    dead.push(format!("{}: {target} (no such heading)", page.display()));
                }
            }
        }
    }
    assert!(dead.is_empty(), "dead links:\n{}", dead.join("\n"));
    assert!(seen > 50, "only {seen} links found: the parser broke");
}
