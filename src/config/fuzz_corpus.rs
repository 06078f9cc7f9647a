//! The config loader fuzzed from a committed seed corpus: `fuzz/corpus/config/*.toml` (read as
//! `trainlint.toml`) and `fuzz/corpus/pyproject/*.toml` (read as `pyproject.toml`), real configs and odd
//! ones, each mutated at the byte level: bit flips, truncation, deleted ranges, inserted random bytes,
//! NULs, huge or odd numbers, deep nesting, and duplicated lines (duplicate keys and tables). Whatever
//! the bytes, finding and loading the file gives settings or a [`ConfigError`], never a panic, and the
//! error renders as one message line plus a snippet free of control characters.
//!
//! Bounded for CI (256 cases); a new seed is a file dropped into the corpus.
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::Config;

use super::{discover, load_file, Settings};

/// The corpus files of one kind, in name order.
fn corpus(kind: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(kind);
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    paths.sort();
    assert!(paths.len() >= 4, "{}: a handful of seeds", dir.display());
    paths.iter().map(|p| std::fs::read(p).unwrap()).collect()
}

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

#[derive(Debug, Clone)]
enum Mutation {
    FlipBit(Index, u8),
    Truncate(Index),
    Delete(Index, usize),
    InsertBytes(Index, Vec<u8>),
    InsertToken(Index, Index),
    /// Copies the line at the first index to the start of the line at the second.
    DuplicateLine(Index, Index),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        3 => (any::<Index>(), 0..8u8).prop_map(|(at, bit)| Mutation::FlipBit(at, bit)),
        1 => any::<Index>().prop_map(Mutation::Truncate),
        2 => (any::<Index>(), 1..16usize).prop_map(|(at, n)| Mutation::Delete(at, n)),
        2 => (any::<Index>(), prop::collection::vec(any::<u8>(), 1..8))
            .prop_map(|(at, b)| Mutation::InsertBytes(at, b)),
        3 => (any::<Index>(), any::<Index>()).prop_map(|(at, t)| Mutation::InsertToken(at, t)),
        2 => (any::<Index>(), any::<Index>()).prop_map(|(from, to)| Mutation::DuplicateLine(from, to)),
    ]
}

fn apply(bytes: &mut Vec<u8>, m: &Mutation, tokens: &[Vec<u8>]) {
    let at = |i: &Index, len: usize| i.index(len + 1);
    match m {
        Mutation::FlipBit(i, bit) if !bytes.is_empty() => {
            let i = i.index(bytes.len());
            bytes[i] ^= 1 << bit;
        }
        Mutation::FlipBit(..) => {}
        Mutation::Truncate(i) => bytes.truncate(at(i, bytes.len())),
        Mutation::Delete(i, n) => {
            let start = at(i, bytes.len());
            let end = (start + n).min(bytes.len());
            bytes.drain(start..end);
        }
        Mutation::InsertBytes(i, b) => {
            let i = at(i, bytes.len());
            bytes.splice(i..i, b.iter().copied());
        }
        Mutation::InsertToken(i, t) => {
            let i = at(i, bytes.len());
            bytes.splice(i..i, t.get(tokens).iter().copied());
        }
        Mutation::DuplicateLine(from, to) => {
            let starts: Vec<usize> = std::iter::once(0)
                .chain(
                    bytes
                        .iter()
                        .enumerate()
                        .filter(|(_, b)| **b == b'\n')
                        .map(|(i, _)| i + 1),
                )
                .collect();
            let line = *from.get(&starts);
            let end = bytes[line..]
                .iter()
                .position(|b| *b == b'\n')
                .map(|p| line + p + 1)
                .unwrap_or(bytes.len());
            let copy = bytes[line..end].to_vec();
            let dest = *to.get(&starts);
            bytes.splice(dest..dest, copy);
        }
    }
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

/// Every seed with the name it is read under, read once.
fn seeds() -> &'static [(&'static str, Vec<u8>)] {
    static SEEDS: OnceLock<Vec<(&'static str, Vec<u8>)>> = OnceLock::new();
    SEEDS.get_or_init(|| {
        let mut all: Vec<(&'static str, Vec<u8>)> = corpus("config")
            .into_iter()
            .map(|b| ("trainlint.toml", b))
            .collect();
        all.extend(
            corpus("pyproject")
                .into_iter()
                .map(|b| ("pyproject.toml", b)),
        );
        all
    })
}

#[test]
fn every_seed_loads_or_refuses_in_words() {
    for (name, bytes) in seeds() {
        load_bytes(name, bytes).unwrap();
    }
}

proptest! {
    #![proptest_config(Config { cases: 256, failure_persistence: None, ..Config::default() })]

    /// Mutated seeds give settings or a ConfigError, never a panic.
    #[test]
    fn mutated_seeds_never_panic_the_loader(
        seed in any::<Index>(),
        mutations in prop::collection::vec(mutation(), 1..8),
    ) {
        let (name, seed) = seed.get(seeds());
        let mut bytes = seed.clone();
        let tokens = tokens();
        for m in &mutations {
            apply(&mut bytes, m, &tokens);
        }
        load_bytes(name, &bytes)?;
    }
}
