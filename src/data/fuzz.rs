//! Fuzz targets for every byte parser of user files: each starts from the committed seed corpus in
//! `fuzz/corpus/<parser>/` (small files made by numpy, PyTorch and the tools that write logs, see
//! `fuzz/make_corpus.py`), applies random mutations (bit flips, truncation, inserted bytes, little-
//! endian length and size fields overwritten with edge values, numbers in the text replaced by
//! absurd ones) and reads the result. A reader must answer `Ok` or a one-line `Err`: never panic,
//! abort or hang, and never allocate what a corrupted size field claims (the budget here is 16 MiB,
//! the files are a few hundred bytes). Run them together with `cargo test --bin trainlint fuzz_`;
//! `PROPTEST_CASES` raises the number of cases for a longer campaign.
use std::path::Path;

use proptest::prelude::*;

use super::budget::Budget;
use super::*;
use crate::fuzz::{apply, config, corpus, fuzz_one, mutated, one_line, Mutation};

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
        out.write_all(&apply(bytes, edits, &[])).unwrap();
    }
    out.finish().unwrap().into_inner()
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
    #![proptest_config(config(1500))]

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
