//! Fuzz targets for every byte parser of user files: each starts from the committed seed corpus in
//! `fuzz/corpus/<parser>/` (small files made by numpy, PyTorch and the tools that write logs, see
//! `fuzz/make_corpus.py`), applies random mutations (bit flips, truncation, inserted bytes, little-
//! endian length and size fields overwritten with edge values, numbers in the text replaced by
//! absurd ones) and reads the result. A reader must answer `Ok` or a one-line `Err`: never panic,
//! abort or hang, and never allocate what a corrupted size field claims (the budget here is 16 MiB,
//! the files are a few hundred bytes). Run them together with `cargo test --bin trainlint fuzz_`;
//! `PROPTEST_CASES` raises the number of cases for a longer campaign.
use std::path::{Path, PathBuf};

use proptest::prelude::*;

use super::budget::Budget;
use super::*;

/// The seed files of one parser, by name.
pub(crate) fn corpus(parser: &str) -> Vec<(String, Vec<u8>)> {
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

/// One edit of a seed file; positions are taken modulo the file's length.
#[derive(Clone, Debug)]
pub(crate) enum Mutation {
    FlipBit(usize, u8),
    Truncate(usize),
    Insert(usize, Vec<u8>),
    Remove(usize, usize),
    /// A little-endian integer of 2, 4 or 8 bytes written over the file: a corrupted length,
    /// size, offset or count field.
    Field(usize, u8, u64),
    /// The n-th run of ASCII digits replaced: a shape, an offset, a step or a count in text.
    Number(usize, &'static str),
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
        (any::<usize>(), 0u8..8).prop_map(|(at, bit)| Mutation::FlipBit(at, bit)),
        any::<usize>().prop_map(Mutation::Truncate),
        (any::<usize>(), prop::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(at, bytes)| Mutation::Insert(at, bytes)),
        (any::<usize>(), 1usize..32).prop_map(|(at, n)| Mutation::Remove(at, n)),
        (
            any::<usize>(),
            prop::sample::select(vec![2u8, 4, 8]),
            prop_oneof![prop::sample::select(EDGES.to_vec()), any::<u64>()]
        )
            .prop_map(|(at, width, value)| Mutation::Field(at, width, value)),
        (any::<usize>(), prop::sample::select(NUMBERS.to_vec()))
            .prop_map(|(nth, text)| Mutation::Number(nth, text)),
    ]
}

/// A seed (by index into the corpus) and the edits to apply to it.
pub(crate) fn mutated() -> impl Strategy<Value = (usize, Vec<Mutation>)> {
    (any::<usize>(), prop::collection::vec(mutation(), 1..5))
}

pub(crate) fn apply(mut bytes: Vec<u8>, edits: &[Mutation]) -> Vec<u8> {
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
                let runs: Vec<(usize, usize)> = digit_runs(&bytes);
                if !runs.is_empty() {
                    let (start, end) = runs[nth % runs.len()];
                    bytes.splice(start..end, text.bytes());
                }
            }
        }
    }
    bytes
}

/// The archive with `edits` applied to every member's bytes, written again by the zip writer.
fn repack(archive: &[u8], edits: &[Mutation], deflate: bool) -> Vec<u8> {
    use std::io::{Read, Write};
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(archive)).unwrap();
    let mut out = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let method = if deflate {
        zip::CompressionMethod::Deflated
    } else {
        zip::CompressionMethod::Stored
    };
    let options = zip::write::SimpleFileOptions::default().compression_method(method);
    for i in 0..zip.len() {
        let mut member = zip.by_index(i).unwrap();
        let mut bytes = Vec::new();
        member.read_to_end(&mut bytes).unwrap();
        out.start_file(member.name().to_string(), options).unwrap();
        out.write_all(&apply(bytes, edits)).unwrap();
    }
    out.finish().unwrap().into_inner()
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
pub(crate) fn one_line<T>(r: Result<T, impl std::fmt::Display>) -> Result<(), TestCaseError> {
    if let Err(e) = r {
        let text = e.to_string();
        prop_assert!(!text.contains('\n'), "{}", text);
        prop_assert!(!text.contains("Exception raised from"), "{}", text);
        prop_assert!(text.len() < 2000, "{} bytes: {}", text.len(), text);
    }
    Ok(())
}

/// Both readers of a data file, within a 16 MiB budget.
fn read_data_file(path: &Path) -> Result<(), TestCaseError> {
    one_line(read_arrays_within(path, &mut Budget::new(16 << 20)))?;
    one_line(load_dataset_within(
        path,
        "inputs",
        "targets",
        3,
        &mut Budget::new(16 << 20),
    ))?;
    Ok(())
}

/// Write the mutated seed as `name` (keeping the seed's extension) and read it with `read`.
fn fuzz_one(
    parser: &str,
    seed: usize,
    edits: &[Mutation],
    read: impl Fn(&Path) -> Result<(), TestCaseError>,
) -> Result<(), TestCaseError> {
    let seeds = corpus(parser);
    let (name, bytes) = &seeds[seed % seeds.len()];
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join(name);
    std::fs::write(&p, apply(bytes.clone(), edits)).unwrap();
    read(&p)
}

/// 1500 cases per target (a few seconds each in a debug build), or `PROPTEST_CASES`.
pub(crate) fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1500);
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

#[test]
fn every_seed_reads_as_is() {
    for parser in ["npy", "npz", "safetensors"] {
        for (name, bytes) in corpus(parser) {
            let dir = tempfile::tempdir().unwrap();
            let p = dir.path().join(&name);
            std::fs::write(&p, &bytes).unwrap();
            if let Err(e) = read_arrays(&p) {
                panic!("{parser}/{name}: {e}");
            }
        }
    }
    for parser in ["csv", "jsonl"] {
        for (name, bytes) in corpus(parser) {
            let dir = tempfile::tempdir().unwrap();
            let p = dir.path().join(&name);
            std::fs::write(&p, &bytes).unwrap();
            let columns: &[&str] = match name.as_str() {
                "lightning.csv" => &["train_loss", "val_loss"],
                "no_steps.tsv" => &["loss", "acc"],
                _ => &["loss", "loss"],
            };
            if let Err(e) = load_log(&p, Some(columns[0]), &[columns[1].to_string()]) {
                panic!("{parser}/{name}: {e}");
            }
        }
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn fuzz_npy((seed, edits) in mutated()) {
        // As an .npy file with a sibling, as the data folder's one file, and as its own data.
        fuzz_one("npy", seed, &edits, |p| {
            let dir = p.parent().unwrap();
            let inputs = dir.join("inputs.npy");
            std::fs::copy(p, &inputs).unwrap();
            std::fs::write(dir.join("targets.npy"), std::fs::read(p).unwrap()).unwrap();
            read_data_file(&inputs)?;
            read_data_file(dir)?;
            read_data_file(p)
        })?;
    }

    #[test]
    fn fuzz_npz((seed, edits) in mutated(), inner in any::<bool>(), deflate in any::<bool>()) {
        if inner {
            // The members mutated and packed again: a sound archive of damaged arrays.
            let seeds = corpus("npz");
            let (name, bytes) = &seeds[seed % seeds.len()];
            let dir = tempfile::tempdir().unwrap();
            let p = dir.path().join(name);
            std::fs::write(&p, repack(bytes, &edits, deflate)).unwrap();
            read_data_file(&p)?;
        } else {
            fuzz_one("npz", seed, &edits, read_data_file)?;
        }
    }

    #[test]
    fn fuzz_safetensors((seed, edits) in mutated()) {
        fuzz_one("safetensors", seed, &edits, read_data_file)?;
    }

    #[test]
    fn fuzz_csv((seed, edits) in mutated()) {
        fuzz_one("csv", seed, &edits, |p| {
            one_line(load_log(p, None, &[]))?;
            one_line(load_log(p, Some("loss"), &["loss_mse".to_string()]))
        })?;
    }

    #[test]
    fn fuzz_jsonl((seed, edits) in mutated()) {
        fuzz_one("jsonl", seed, &edits, |p| {
            one_line(load_log(p, None, &[]))?;
            one_line(load_log(p, Some("loss"), &["loss_a".to_string()]))
        })?;
    }
}
