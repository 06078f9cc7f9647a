//! Fuzzing of what trainlint reads in a TorchScript archive before libtorch loads it: the record
//! listing (libtorch's zip reader, through the shim), the inspection of names and sizes, and the pickle
//! scanner. Each target starts from the committed corpus in `fuzz/corpus/` and mutates it (bytes
//! overwritten, little-endian sizes set to extremes, bytes inserted, the tail cut); a case passes when
//! the reader returns, Ok or Err, without a panic or an abort. Bounded case counts keep CI quick; run
//! more with `PROPTEST_CASES=20000 cargo test --bin trainlint fuzz_`.
use std::path::Path;

use proptest::prelude::*;

use super::{archive, archive_records, pickle};

/// Every file of `fuzz/corpus/<target>/`, sorted by name.
fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut paths: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    paths.sort();
    assert!(!paths.is_empty(), "empty corpus {}", dir.display());
    paths.iter().map(|p| std::fs::read(p).unwrap()).collect()
}

#[derive(Debug, Clone)]
enum Mutation {
    Byte(usize, u8),
    /// A 4- or 8-byte little-endian field set to an extreme (a size, a count, an offset).
    Field(usize, bool, u64),
    Insert(usize, Vec<u8>),
    Cut(usize),
}

fn mutations() -> impl Strategy<Value = Vec<Mutation>> {
    let extreme = prop_oneof![
        Just(0u64),
        Just(1),
        Just(u32::MAX as u64),
        Just(u64::MAX),
        Just(1 << 31),
        Just(1 << 62),
        any::<u64>()
    ];
    let one = prop_oneof![
        4 => (any::<usize>(), any::<u8>()).prop_map(|(at, b)| Mutation::Byte(at, b)),
        2 => (any::<usize>(), any::<bool>(), extreme).prop_map(|(at, wide, v)| Mutation::Field(at, wide, v)),
        1 => (any::<usize>(), prop::collection::vec(any::<u8>(), 1..16)).prop_map(|(at, b)| Mutation::Insert(at, b)),
        1 => any::<usize>().prop_map(Mutation::Cut),
    ];
    prop::collection::vec(one, 1..6)
}

fn mutate(mut bytes: Vec<u8>, mutations: &[Mutation]) -> Vec<u8> {
    for m in mutations {
        let len = bytes.len().max(1);
        match m {
            Mutation::Byte(at, b) if !bytes.is_empty() => bytes[at % len] = *b,
            Mutation::Field(at, wide, v) => {
                let field = if *wide {
                    v.to_le_bytes().to_vec()
                } else {
                    (*v as u32).to_le_bytes().to_vec()
                };
                if bytes.len() >= field.len() {
                    let at = at % (bytes.len() - field.len() + 1);
                    bytes[at..at + field.len()].copy_from_slice(&field);
                }
            }
            Mutation::Insert(at, b) => {
                let at = at % (bytes.len() + 1);
                bytes.splice(at..at, b.iter().copied());
            }
            Mutation::Cut(at) => bytes.truncate(at % (bytes.len() + 1)),
            Mutation::Byte(..) => {}
        }
    }
    bytes
}

/// `PROPTEST_CASES` when set (a long local run), else `default` (CI).
fn cases(default: u32) -> ProptestConfig {
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

proptest! {
    #![proptest_config(cases(2048))]

    #[test]
    fn fuzz_pickle_scanner(seed in any::<prop::sample::Index>(), edits in mutations()) {
        let seeds = corpus("pickle");
        let bytes = mutate(seeds[seed.index(seeds.len())].clone(), &edits);
        if let Ok(scan) = pickle::scan(&bytes) {
            // What it reports is bounded by what it read.
            prop_assert!(scan.storages.len() <= bytes.len());
            prop_assert!(scan.globals.len() <= bytes.len());
        }
    }
}

proptest! {
    #![proptest_config(cases(256))]

    #[test]
    fn fuzz_archive_records(seed in any::<prop::sample::Index>(), edits in mutations()) {
        let seeds = corpus("archive");
        let bytes = mutate(seeds[seed.index(seeds.len())].clone(), &edits);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.pt");
        std::fs::write(&path, &bytes).unwrap();
        match archive_records(&path) {
            Ok(records) => {
                let found = archive::inspect(&records, bytes.len() as u64);
                let lines = found.damaged.iter().chain(&found.unscanned);
                for line in lines {
                    prop_assert!(!line.contains('\n'), "{line}");
                }
            }
            Err(e) => prop_assert!(!e.to_string().contains('\n'), "{e}"),
        }
    }
}

#[test]
fn every_archive_seed_is_read() {
    for (i, bytes) in corpus("archive").into_iter().enumerate() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.pt");
        std::fs::write(&path, bytes).unwrap();
        let records = archive_records(&path).unwrap_or_else(|e| panic!("seed {i}: {e}"));
        assert!(records.iter().any(|r| r.name == b"data.pkl"), "seed {i}");
    }
    for (i, bytes) in corpus("pickle").into_iter().enumerate() {
        pickle::scan(&bytes).unwrap_or_else(|e| panic!("pickle seed {i}: {e}"));
    }
}
