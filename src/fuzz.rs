//! What every fuzz target shares: the committed seed corpus (`fuzz/corpus/<parser>/`, see
//! `fuzz/make_corpus.py`), the mutations applied to a seed, the case count and the check that an
//! error stays one line. The targets sit beside their parsers (`data/fuzz.rs`, `baseline.rs`,
//! `config/fuzz_corpus.rs`, `model/fuzz.rs`) and are all named `fuzz_*`: run them together with
//! `cargo test --bin trainlint fuzz_`; `PROPTEST_CASES` raises the case count for a long campaign.
use std::path::{Path, PathBuf};

use proptest::prelude::*;

/// The seed files of one parser with their names, in name order.
pub fn corpus(parser: &str) -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(parser);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no seeds in {}", dir.display());
    files
        .into_iter()
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&p).unwrap())
        })
        .collect()
}

/// The seed at `index` (modulo the corpus) of `parser`, with `edits` applied, and its name.
pub fn mutated_seed(parser: &str, index: usize, edits: &[Mutation]) -> (String, Vec<u8>) {
    let mut seeds = corpus(parser);
    let (name, bytes) = seeds.swap_remove(index % seeds.len());
    (name, apply(bytes, edits, &[]))
}

/// Writes the seed at `index` of `parser`, with `edits` applied, under the seed's name (keeping its
/// extension) in a folder of its own, and reads it with `read`.
pub fn fuzz_one(
    parser: &str,
    index: usize,
    edits: &[Mutation],
    read: impl FnOnce(&Path) -> Result<(), TestCaseError>,
) -> Result<(), TestCaseError> {
    let (name, bytes) = mutated_seed(parser, index, edits);
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join(name);
    std::fs::write(&p, bytes).unwrap();
    read(&p)
}

/// One edit of a seed file; positions are taken modulo the file's length.
#[derive(Clone, Debug)]
pub enum Mutation {
    FlipBit(usize, u8),
    Truncate(usize),
    Insert(usize, Vec<u8>),
    Remove(usize, usize),
    /// A little-endian integer of 2, 4 or 8 bytes written over the file: a corrupted length,
    /// size, offset or count field.
    Field(usize, u8, u64),
    /// The n-th run of ASCII digits replaced: a shape, an offset, a step or a count in text.
    Number(usize, &'static str),
    /// One of the target's own tokens inserted (a TOML table header, a NUL, a BOM…).
    Token(usize, usize),
    /// The line at the first position copied to the start of the line at the second (duplicate
    /// keys, tables, rows).
    DuplicateLine(usize, usize),
}

/// Values that break size arithmetic: zero, one, the edges of 16, 32 and 63 bits, huge.
const EDGES: [u64; 10] = [
    0,
    1,
    0x7FFF,
    0xFFFF,
    0x7FFF_FFFF,
    0xFFFF_FFFF,
    1 << 32,
    1 << 40,
    i64::MAX as u64,
    u64::MAX,
];

const NUMBERS: [&str; 9] = [
    "0",
    "-1",
    "4294967296",
    "9223372036854775807",
    "18446744073709551616",
    "99999999999999999999999",
    "1e308",
    "nan",
    "",
];

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        3 => (any::<usize>(), 0u8..8).prop_map(|(at, bit)| Mutation::FlipBit(at, bit)),
        1 => any::<usize>().prop_map(Mutation::Truncate),
        2 => (any::<usize>(), prop::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(at, bytes)| Mutation::Insert(at, bytes)),
        2 => (any::<usize>(), 1usize..32).prop_map(|(at, n)| Mutation::Remove(at, n)),
        2 => (
            any::<usize>(),
            prop::sample::select(vec![2u8, 4, 8]),
            prop_oneof![prop::sample::select(EDGES.to_vec()), any::<u64>()]
        )
            .prop_map(|(at, width, value)| Mutation::Field(at, width, value)),
        2 => (any::<usize>(), prop::sample::select(NUMBERS.to_vec()))
            .prop_map(|(nth, text)| Mutation::Number(nth, text)),
        2 => (any::<usize>(), any::<usize>()).prop_map(|(at, t)| Mutation::Token(at, t)),
        1 => (any::<usize>(), any::<usize>()).prop_map(|(from, to)| Mutation::DuplicateLine(from, to)),
    ]
}

/// A seed (by index into the corpus) and the edits to apply to it.
pub fn mutated() -> impl Strategy<Value = (usize, Vec<Mutation>)> {
    (any::<usize>(), prop::collection::vec(mutation(), 1..6))
}

/// `bytes` with `edits` applied; `tokens` are the target's own (none: token edits do nothing).
pub fn apply(mut bytes: Vec<u8>, edits: &[Mutation], tokens: &[&[u8]]) -> Vec<u8> {
    for edit in edits {
        let len = bytes.len().max(1);
        match edit {
            Mutation::FlipBit(at, bit) => {
                if let Some(b) = bytes.get_mut(at % len) {
                    *b ^= 1 << bit;
                }
            }
            Mutation::Truncate(at) => bytes.truncate(at % (bytes.len() + 1)),
            Mutation::Insert(at, new) => {
                let at = at % (bytes.len() + 1);
                bytes.splice(at..at, new.iter().copied());
            }
            Mutation::Remove(at, n) => {
                let at = at % len;
                let end = (at + n).min(bytes.len());
                if at < end {
                    bytes.drain(at..end);
                }
            }
            Mutation::Field(at, width, value) => {
                let width = *width as usize;
                if bytes.len() >= width {
                    let at = at % (bytes.len() - width + 1);
                    bytes[at..at + width].copy_from_slice(&value.to_le_bytes()[..width]);
                }
            }
            Mutation::Number(nth, text) => {
                let runs = digit_runs(&bytes);
                if !runs.is_empty() {
                    let (start, end) = runs[nth % runs.len()];
                    bytes.splice(start..end, text.bytes());
                }
            }
            Mutation::Token(at, t) => {
                if !tokens.is_empty() {
                    let at = at % (bytes.len() + 1);
                    bytes.splice(at..at, tokens[t % tokens.len()].iter().copied());
                }
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
                let line = starts[from % starts.len()];
                let end = bytes[line..]
                    .iter()
                    .position(|b| *b == b'\n')
                    .map_or(bytes.len(), |p| line + p + 1);
                let copy = bytes[line..end].to_vec();
                let dest = starts[to % starts.len()];
                bytes.splice(dest..dest, copy);
            }
        }
    }
    bytes
}

fn digit_runs(bytes: &[u8]) -> Vec<(usize, usize)> {
    let mut runs = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i].is_ascii_digit() {
            let start = i;
            while i < bytes.len() && bytes[i].is_ascii_digit() {
                i += 1;
            }
            runs.push((start, i));
        } else {
            i += 1;
        }
    }
    runs
}

/// Ok, or an error of one line without a libtorch frame.
pub fn one_line<T>(r: Result<T, impl std::fmt::Display>) -> Result<(), TestCaseError> {
    if let Err(e) = r {
        let text = e.to_string();
        prop_assert!(!text.contains('\n'), "{}", text);
        prop_assert!(!text.contains("Exception raised from"), "{}", text);
        prop_assert!(text.len() < 2000, "{} bytes: {}", text.len(), text);
    }
    Ok(())
}

/// `default` cases per target (CI), or `PROPTEST_CASES` (a long campaign).
pub fn config(default: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default);
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}
