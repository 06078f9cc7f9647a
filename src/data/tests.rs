//! Readers called directly: the inflation cap, reading only the samples kept, and property tests
//! that arbitrary or mutated files end in `Ok` or a one-line `Err`, never a panic.
use std::io::Write;
use std::path::{Path, PathBuf};

use proptest::prelude::*;

use super::budget::Budget;
use super::npy::tests::npy;
use super::*;

fn file(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::File::create(&p).unwrap().write_all(bytes).unwrap();
    p
}

/// An `.npz` of (member name, bytes), deflated as `np.savez_compressed` writes it.
fn npz(members: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated)
        .large_file(true);
    for (name, bytes) in members {
        zip.start_file(*name, options).unwrap();
        zip.write_all(bytes).unwrap();
    }
    zip.finish().unwrap().into_inner()
}

fn f32s(n: usize) -> Vec<u8> {
    (0..n).flat_map(|i| (i as f32).to_le_bytes()).collect()
}

fn safetensors(header: &str, data: &[u8]) -> Vec<u8> {
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend(header.as_bytes());
    out.extend(data);
    out
}

fn valid_npz() -> Vec<u8> {
    npz(&[
        ("inputs.npy", npy("<f4", false, "(4, 3)", &f32s(12))),
        ("targets.npy", npy("|u1", false, "(4,)", &[0, 1, 2, 3])),
    ])
}

fn valid_safetensors() -> Vec<u8> {
    safetensors(
        r#"{"__metadata__":{"a":"b"},"inputs":{"dtype":"F32","shape":[4,3],"data_offsets":[0,48]},"targets":{"dtype":"I64","shape":[4],"data_offsets":[48,80]}}"#,
        &[0; 80],
    )
}

/// A mega-byte of zeros per step, declared as a float64 array of `rows` rows.
fn zeros_npz(rows: usize) -> Vec<u8> {
    npz(&[
        (
            "inputs.npy",
            npy("<f8", false, &format!("({rows}, 1)"), &vec![0; rows * 8]),
        ),
        (
            "targets.npy",
            npy("<f8", false, &format!("({rows},)"), &vec![0; rows * 8]),
        ),
    ])
}

#[test]
fn whole_arrays_stop_at_the_inflation_cap() {
    let dir = tempfile::tempdir().unwrap();
    let p = file(dir.path(), "zeros.npz", &zeros_npz(1 << 18)); // 2 MiB per array, 4 KiB on disk
    assert!(std::fs::metadata(&p).unwrap().len() < 64 << 10);
    let e = read_arrays_within(&p, &mut Budget::new(1 << 20))
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.starts_with("array `inputs` in ") && e.contains("inflates beyond 1 MiB (2 MiB to read)"),
        "{e}"
    );
    assert!(read_arrays_within(&p, &mut Budget::new(8 << 20)).is_ok());
}

#[test]
fn a_dataset_reads_only_the_samples_it_keeps() {
    let dir = tempfile::tempdir().unwrap();
    let p = file(dir.path(), "zeros.npz", &zeros_npz(1 << 18));
    // 16 of 262 144 rows fit a 1 MiB budget that the whole arrays do not.
    let d = load_dataset_within(&p, "inputs", "targets", 16, &mut Budget::new(1 << 20)).unwrap();
    assert_eq!(d.inputs.size(), vec![16, 1]);
    assert_eq!(d.targets.size(), vec![16]);
    // The same from a safetensors file whose data ends after those rows: nothing past them is read.
    let p = file(
        dir.path(),
        "x.safetensors",
        &safetensors(
            r#"{"inputs":{"dtype":"F32","shape":[1000,3],"data_offsets":[0,12000]},"targets":{"dtype":"F32","shape":[1000],"data_offsets":[12000,16000]}}"#,
            &[0; 16000],
        ),
    );
    let d = load_dataset_within(&p, "inputs", "targets", 2, &mut Budget::new(1 << 10)).unwrap();
    assert_eq!(d.inputs.size(), vec![2, 3]);
}

#[test]
fn the_listing_of_a_missing_key_shows_declared_shapes() {
    let dir = tempfile::tempdir().unwrap();
    let p = file(dir.path(), "d.npz", &valid_npz());
    let e = load_dataset(&p, "x", "targets", 2)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.ends_with("has no array `x` (it has: `inputs` [4, 3], `targets` [4])"),
        "{e}"
    );
    let p = file(dir.path(), "d.safetensors", &valid_safetensors());
    let d = load_dataset(&p, "inputs", "targets", 3).unwrap();
    assert_eq!(
        (d.inputs.size(), d.targets.kind()),
        (vec![3, 3], Kind::Int64)
    );
}

#[test]
fn io_errors_are_in_words() {
    use std::io::{Error, ErrorKind};
    let denied = Error::from(ErrorKind::PermissionDenied);
    assert_eq!(paths::describe_io(&denied), "permission denied");
    let e = DataError::Unreadable {
        path: "x.npz".into(),
        reason: paths::describe_io(&denied),
    };
    assert_eq!(e.to_string(), "cannot read x.npz: permission denied");
}

#[test]
fn control_characters_in_names_stay_on_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let p = file(
        dir.path(),
        "n.npz",
        &npz(&[("in\nputs.npy", npy("<c8", false, "(1,)", &[0; 8]))]),
    );
    let e = read_arrays(&p).err().unwrap().to_string();
    assert!(!e.contains('\n') && e.contains("in\\nputs"), "{e}");
}

/// Ok, or an error of one line.
fn one_line<T>(r: Result<T, DataError>) -> Result<(), TestCaseError> {
    if let Err(e) = r {
        let text = e.to_string();
        prop_assert!(!text.contains('\n'), "{}", text);
        prop_assert!(!text.contains("Exception raised from"), "{}", text);
    }
    Ok(())
}

/// `bytes` with some bytes overwritten and maybe cut short.
fn mutate(mut bytes: Vec<u8>, edits: &[(usize, u8)], cut: Option<usize>) -> Vec<u8> {
    for &(at, value) in edits {
        let len = bytes.len();
        bytes[at % len] = value;
    }
    if let Some(cut) = cut {
        bytes.truncate(cut % (bytes.len() + 1));
    }
    bytes
}

fn edits() -> impl Strategy<Value = (Vec<(usize, u8)>, Option<usize>)> {
    (
        prop::collection::vec((any::<usize>(), any::<u8>()), 1..6),
        prop::option::of(any::<usize>()),
    )
}

/// Both readers of a data file: every array whole, and a dataset of a few samples, within a budget
/// small enough to keep the test fast.
fn read_both(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), TestCaseError> {
    let p = file(dir, name, bytes);
    one_line(read_arrays_within(&p, &mut Budget::new(16 << 20)))?;
    one_line(load_dataset_within(
        &p,
        "inputs",
        "targets",
        3,
        &mut Budget::new(16 << 20),
    ))?;
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic_a_data_reader(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let dir = tempfile::tempdir().unwrap();
        for name in ["a.npy", "a.npz", "a.safetensors"] {
            read_both(dir.path(), name, &bytes)?;
        }
        let mut npy_like = b"\x93NUMPY\x01\x00".to_vec();
        npy_like.extend(&bytes);
        read_both(dir.path(), "b.npy", &npy_like)?;
    }

    #[test]
    fn mutated_npy_files_never_panic((edits, cut) in edits(), fortran in any::<bool>(), descr in "[<>|=]?[fiub?][1248]") {
        let dir = tempfile::tempdir().unwrap();
        let valid = npy(&descr, fortran, "(4, 3)", &[7; 96]);
        let bytes = mutate(valid, &edits, cut);
        std::fs::create_dir(dir.path().join("f")).unwrap();
        file(&dir.path().join("f"), "targets.npy", &npy("<f4", false, "(4,)", &f32s(4)));
        read_both(&dir.path().join("f"), "inputs.npy", &bytes)?;
    }

    #[test]
    fn npy_headers_with_arbitrary_shapes_never_panic(shape in prop::collection::vec(any::<i64>(), 0..4), fortran in any::<bool>()) {
        let text = format!("({})", shape.iter().map(|d| format!("{d},")).collect::<String>());
        let dir = tempfile::tempdir().unwrap();
        let bytes = npz(&[("inputs.npy", npy("<f4", fortran, &text, &[0; 64])), ("targets.npy", npy("<f4", false, "(4,)", &[0; 16]))]);
        read_both(dir.path(), "s.npz", &bytes)?;
    }

    #[test]
    fn mutated_npz_files_never_panic((edits, cut) in edits()) {
        let dir = tempfile::tempdir().unwrap();
        read_both(dir.path(), "m.npz", &mutate(valid_npz(), &edits, cut))?;
    }

    #[test]
    fn mutated_safetensors_files_never_panic((edits, cut) in edits()) {
        let dir = tempfile::tempdir().unwrap();
        read_both(dir.path(), "m.safetensors", &mutate(valid_safetensors(), &edits, cut))?;
    }

    #[test]
    fn arbitrary_and_mutated_logs_never_panic(text in "[0-9a-z,.\\-+{}\":\\[\\] \n]{0,200}", (edits, cut) in edits()) {
        let dir = tempfile::tempdir().unwrap();
        let csv = "step,loss,loss_a,acc\n0,1.5,0.5,0.1\n1,1.25,,0.2\n2,nan,0.25,\n";
        let jsonl = "{\"step\": 0, \"loss\": 1.5, \"phase\": \"t\"}\n\n{\"step\": 1, \"loss\": null}\n";
        for (name, valid) in [("l.csv", csv), ("l.jsonl", jsonl), ("l.tsv", csv)] {
            for bytes in [text.as_bytes().to_vec(), mutate(valid.as_bytes().to_vec(), &edits, cut)] {
                let p = file(dir.path(), name, &bytes);
                one_line(load_log(&p, None, &[]))?;
                one_line(load_log(&p, Some("loss"), &["loss_a".to_string()]))?;
            }
        }
    }
}

#[test]
fn an_archive_directory_listing_millions_of_members_is_refused_before_it_is_read() {
    // A zip64 end record claiming 10 million members: the zip reader would keep an entry for each.
    let mut bytes = Vec::new();
    let record_at = bytes.len() as u64;
    bytes.extend(b"PK\x06\x06");
    bytes.extend(44u64.to_le_bytes());
    bytes.extend([45, 0, 45, 0]);
    bytes.extend([0; 8]);
    bytes.extend(10_000_000u64.to_le_bytes());
    bytes.extend(10_000_000u64.to_le_bytes());
    bytes.extend((460_000_000u64).to_le_bytes());
    bytes.extend(0u64.to_le_bytes());
    bytes.extend(b"PK\x06\x07");
    bytes.extend(0u32.to_le_bytes());
    bytes.extend(record_at.to_le_bytes());
    bytes.extend(1u32.to_le_bytes());
    bytes.extend(b"PK\x05\x06");
    bytes.extend([0; 4]);
    bytes.extend([0xFF; 4]);
    bytes.extend([0xFF; 8]);
    bytes.extend([0; 2]);
    let dir = tempfile::tempdir().unwrap();
    let p = file(dir.path(), "many.npz", &bytes);
    let e = read_arrays(&p).err().unwrap().to_string();
    assert!(
        e.contains("its zip directory lists 10000000 members in 4 GiB; an .npz holds at most 65536 members in 16 MiB"),
        "{e}"
    );
}

#[test]
fn a_sample_is_charged_as_converted() {
    // 64 rows of 1 KiB uint8: 64 KiB read, 256 KiB more as float32.
    let dir = tempfile::tempdir().unwrap();
    let p = file(
        dir.path(),
        "u8.npz",
        &npz(&[
            (
                "inputs.npy",
                npy("|u1", false, "(64, 1024)", &[1; 64 << 10]),
            ),
            ("targets.npy", npy("|u1", false, "(64,)", &[1; 64])),
        ]),
    );
    let e = load_dataset_within(&p, "inputs", "targets", 64, &mut Budget::new(200 << 10))
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("in memory for its first 64 samples (64 KiB as read (|u1), 256 KiB as float32), over the limit of 200 KiB"),
        "{e}"
    );
    let d = load_dataset_within(&p, "inputs", "targets", 64, &mut Budget::new(400 << 10)).unwrap();
    assert_eq!(
        (d.inputs.kind(), d.targets.kind()),
        (Kind::Float, Kind::Int64)
    );
    assert_eq!(d.inputs.double_value(&[63, 1023]), 1.0);
}
