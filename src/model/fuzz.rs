//! Fuzzing of what trainlint reads in a TorchScript archive before libtorch loads it: the record
//! listing (libtorch's zip reader, through the shim), the inspection of names and sizes, and the pickle
//! scanner, from `fuzz/corpus/{archive,pickle}/` with the mutations of `crate::fuzz`; a case passes
//! when the reader returns, Ok or Err, without a panic or an abort.
use proptest::prelude::*;

use super::{archive, archive_records, pickle};
use crate::fuzz::{apply, config, corpus, mutated};

proptest! {
    #![proptest_config(config(2048))]

    #[test]
    fn fuzz_pickle_scanner((seed, edits) in mutated()) {
        let seeds = corpus("pickle");
        let bytes = apply(seeds[seed % seeds.len()].1.clone(), &edits, &[]);
        if let Ok(scan) = pickle::scan(&bytes) {
            // What it reports is bounded by what it read.
            prop_assert!(scan.storages.len() <= bytes.len());
            prop_assert!(scan.globals.len() <= bytes.len());
        }
    }
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn fuzz_archive_records((seed, edits) in mutated()) {
        let seeds = corpus("archive");
        let bytes = apply(seeds[seed % seeds.len()].1.clone(), &edits, &[]);
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
    for (i, (_, bytes)) in corpus("archive").into_iter().enumerate() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.pt");
        std::fs::write(&path, bytes).unwrap();
        let records = archive_records(&path).unwrap_or_else(|e| panic!("seed {i}: {e}"));
        assert!(records.iter().any(|r| r.name == b"data.pkl"), "seed {i}");
    }
    for (i, (_, bytes)) in corpus("pickle").into_iter().enumerate() {
        pickle::scan(&bytes).unwrap_or_else(|e| panic!("pickle seed {i}: {e}"));
    }
}
