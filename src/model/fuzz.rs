//! Fuzzing of what trainlint reads in a TorchScript archive before libtorch loads it: the record
//! listing (libtorch's zip reader, through the shim), the inspection of names and sizes, and the pickle
//! scanner, from `fuzz/corpus/{archive,pickle}/` with the mutations of `crate::fuzz`; a case passes
//! when the reader returns, Ok or Err, without a panic or an abort.
use proptest::prelude::*;

use super::{archive, archive_records, pickle};
use crate::fuzz::{config, corpus, fuzz_one, mutated, mutated_seed};

proptest! {
    #![proptest_config(config(2048))]

    #[test]
    fn fuzz_pickle_scanner((seed, edits) in mutated()) {
        let (_, bytes) = mutated_seed("pickle", seed, &edits);
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
        fuzz_one("archive", seed, &edits, |path| {
            match archive_records(path) {
                Ok(records) => {
                    let file_bytes = std::fs::metadata(path).unwrap().len();
                    let found = archive::inspect(&records, file_bytes);
                    let lines = found.damaged.iter().chain(&found.unscanned);
                    for line in lines {
                        prop_assert!(!line.contains('\n'), "{line}");
                    }
                }
                Err(e) => prop_assert!(!e.to_string().contains('\n'), "{e}"),
            }
            Ok(())
        })?;
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
