//! The config loader fuzzed from a committed seed corpus: `fuzz/corpus/config/*.toml` (read as
//! `trainlint.toml`) and `fuzz/corpus/pyproject/*.toml` (read as `pyproject.toml`), real configs and odd
//! ones, each mutated at the byte level: bit flips, truncation, deleted ranges, inserted random bytes,
//! NULs, huge or odd numbers, deep nesting, and duplicated lines (duplicate keys and tables). Whatever
//! the bytes, finding and loading the file gives settings or a [`ConfigError`], never a panic, and the
//! error renders as one message line plus a snippet free of control characters.
//!
//! Bounded for CI (256 cases, `PROPTEST_CASES` for more); a new seed is a file dropped into the corpus.
use std::sync::OnceLock;

use proptest::prelude::*;

use super::{discover, load_file, Settings};
use crate::fuzz::{apply, config, corpus, mutated};

/// Bytes that stress the parser and the reader when dropped anywhere.
fn tokens() -> Vec<Vec<u8>> {
    let mut t: Vec<Vec<u8>> = [
        "\0",
        "\u{1b}[2J",
        "\r",
        "\u{feff}",
        "\u{ffff}",
        "\"",
        "'''",
        "[",
        "]]",
        "=",
        "\n[setup]\n",
        "\n[[ignore]]\ncheck = \"init-std\"\n",
        "\n[checks.init-std]\nlevel = ",
        "\n[tool.trainlint]\n",
        "\n[run]\nselect = []\n",
        "99999999999999999999999999",
        "18446744073709551616",
        "-9223372036854775809",
        "9223372036854775807",
        "1e309",
        "-1e-400",
        "nan",
        "-inf",
        "0x7fffffffffffffff",
        "0b1_0",
        "1979-05-27T07:32:00Z",
        "\"\\u0000\"",
        "\"\\uD800\"",
        "\"\\U0010FFFF\"",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect();
    // Nesting deep enough to overflow a recursive parser's stack.
    t.push(format!("x = {}", "[".repeat(5000)).into_bytes());
    t.push(format!("x = {}", "{a = ".repeat(2000)).into_bytes());
    t.push(format!("{}x = 1", "a.".repeat(2000)).into_bytes());
    t
}

/// Finds and loads `bytes` written as `name` in a fresh folder; the error, if any, must render.
fn load_bytes(name: &str, bytes: &[u8]) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    std::fs::write(&path, bytes).unwrap();
    let _ = discover(dir.path());
    let mut settings = Settings::default();
    if let Err(e) = load_file(&path, &mut settings) {
        let message = e.to_string();
        prop_assert!(!message.trim().is_empty());
        prop_assert!(!message.ends_with(": "), "an empty reason: {message:?}");
        if let Some(snippet) = e.render_snippet() {
            prop_assert!(
                !snippet
                    .chars()
                    .any(|c| c.is_control() && c != '\n' && c != '\t'),
                "control characters in {snippet:?}"
            );
        }
    }
    Ok(())
}

/// Every seed with the name it is read under: `fuzz/corpus/config/*` as `trainlint.toml`,
/// `fuzz/corpus/pyproject/*` as `pyproject.toml`, read once.
fn seeds() -> &'static [(&'static str, Vec<u8>)] {
    static SEEDS: OnceLock<Vec<(&'static str, Vec<u8>)>> = OnceLock::new();
    SEEDS.get_or_init(|| {
        [
            ("config", "trainlint.toml"),
            ("pyproject", "pyproject.toml"),
        ]
        .into_iter()
        .flat_map(|(kind, name)| corpus(kind).into_iter().map(move |(_, b)| (name, b)))
        .collect()
    })
}

#[test]
fn every_seed_loads_or_refuses_in_words() {
    assert!(seeds().len() >= 8, "a handful of seeds of each kind");
    for (name, bytes) in seeds() {
        load_bytes(name, bytes).unwrap();
    }
}

proptest! {
    #![proptest_config(config(256))]

    /// Mutated seeds give settings or a ConfigError, never a panic.
    #[test]
    fn fuzz_config((seed, edits) in mutated()) {
        let (name, bytes) = &seeds()[seed % seeds().len()];
        let tokens = tokens();
        let tokens: Vec<&[u8]> = tokens.iter().map(Vec::as_slice).collect();
        load_bytes(name, &apply(bytes.clone(), &edits, &tokens))?;
    }
}
