//! Hostile data files and loss logs given to the real binary: each must end in exit 2 with one
//! `error:` line in words (or a normal run), never a panic, an abort or a libtorch backtrace. The
//! files are generated here, small, so no blob is committed.
mod common;

use std::path::Path;
use std::process::Output;

use common::archives::{deflated_zeros, f32_bytes, file, npy, safetensors, zip, Member};
use common::{check_json, findings, fixture, run, stderr, write};

/// No panic (101), no abort (134), no C++ backtrace; the message is one line.
fn assert_no_crash(o: &Output) -> String {
    let err = stderr(o);
    let code = o.status.code();
    assert!(
        matches!(code, Some(0..=2)),
        "exit {code:?} (101 is a panic, 134 an abort, None a signal); stderr: {err}"
    );
    for sign in ["panicked", "frame #", "Exception raised from", "backtrace"] {
        assert!(!err.contains(sign), "{sign:?} in stderr: {err}");
    }
    err
}

/// Exit 2 with a single-line `error: …` and no crash; returns the message.
fn assert_one_line_error(o: &Output) -> String {
    let err = assert_no_crash(o);
    assert_eq!(o.status.code(), Some(2), "stderr: {err}");
    assert!(err.starts_with("error: "), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err}");
    err
}

fn check_data(path: &Path) -> Output {
    run(&[
        "check",
        "--no-timings",
        "--data",
        &path.display().to_string(),
    ])
}

fn check_log(path: &Path) -> Output {
    run(&[
        "check",
        "--no-timings",
        "--log",
        &path.display().to_string(),
    ])
}

#[test]
fn an_npz_member_that_claims_a_tebibyte_does_not_abort() {
    // 9 KB on disk; the zip64 header says `inputs.npy` inflates to 1 TiB. Sizes in a file are
    // claims, not facts: allocating them up front aborted the process.
    let dir = tempfile::tempdir().unwrap();
    let mut inputs = Member::stored("inputs.npy", npy("<f4", "(64, 32)", &f32_bytes(64 * 32)));
    (inputs.size, inputs.local_size) = (1 << 40, 1 << 40);
    let targets = Member::stored("targets.npy", npy("<f4", "(64, 1)", &f32_bytes(64)));
    let p = file(dir.path(), "claims.npz", &zip(&[inputs, targets]));
    let o = check_data(&p);
    assert_no_crash(&o);
}

#[test]
#[cfg(target_os = "linux")]
fn a_zip_bomb_npz_is_read_only_as_far_as_the_samples_need() {
    // 2 GiB of zeros deflated to about 2 MB; with the process's data segment capped at 1 GiB the
    // audit must still run, reading only the first `max_samples` rows (256 by default).
    let dir = tempfile::tempdir().unwrap();
    let rows: u64 = 1 << 27; // 128 Mi rows of 4 float32: 2 GiB
    let header = npy("<f4", &format!("({rows}, 4)"), &[]);
    let inputs = deflated_zeros(&header, 2048);
    let target_header = npy("<f4", &format!("({rows},)"), &[]);
    let targets = deflated_zeros(&target_header, 512);
    let member = |name, compressed: Vec<u8>, size: u64| Member {
        name,
        method: 8,
        compressed,
        size,
        local_size: size,
        crc: 0, // never reached: the reader stops long before the end
    };
    let p = file(
        dir.path(),
        "bomb.npz",
        &zip(&[
            member("inputs.npy", inputs, header.len() as u64 + rows * 16),
            member(
                "targets.npy",
                targets,
                target_header.len() as u64 + rows * 4,
            ),
        ]),
    );
    assert!(std::fs::metadata(&p).unwrap().len() < 8 << 20);
    let bin = assert_cmd::cargo::cargo_bin("trainlint");
    let o = std::process::Command::new("bash")
        .arg("-c")
        .arg(r#"ulimit -d 1048576 && exec "$0" check --no-timings --data "$1""#)
        .arg(&bin)
        .arg(&p)
        .output()
        .unwrap();
    assert_no_crash(&o);
    assert!(
        matches!(o.status.code(), Some(0 | 1)),
        "the first 256 rows are valid data: {}",
        stderr(&o)
    );
}

#[test]
fn reading_all_arrays_stops_at_the_inflation_cap() {
    // `init` reads every array whole; a member whose header declares more than the cap (1 GiB) is
    // refused before anything is inflated, with the cap in the message.
    let dir = tempfile::tempdir().unwrap();
    let header = npy("<f8", "(536870912,)", &[]); // 4 GiB of float64
    let p = file(
        dir.path(),
        "big.npz",
        &zip(&[Member {
            name: "x.npy",
            method: 8,
            compressed: deflated_zeros(&header, 4),
            size: header.len() as u64 + (4 << 30),
            local_size: header.len() as u64 + (4 << 30),
            crc: 0,
        }]),
    );
    let o = run(&[
        "init",
        &dir.path().display().to_string(),
        "--data",
        &p.display().to_string(),
    ]);
    let err = assert_one_line_error(&o);
    assert!(err.contains("inflates beyond 1 GiB"), "{err}");
}

#[test]
fn npy_shapes_whose_byte_size_overflows_or_is_negative_are_refused_in_words() {
    let dir = tempfile::tempdir().unwrap();
    for (shape, words) in [
        // 2^62 · 4 · 4 bytes wraps to 0 in 64 bits.
        ("(4611686018427387904, 4)", "is too large"),
        ("(9223372036854775807, 9223372036854775807)", "is too large"),
        ("(-1, 2)", "negative"),
        ("(-2, -3)", "negative"),
        ("(3, 99999999999999999999)", "shape"),
    ] {
        let inputs = npy("<f4", shape, &f32_bytes(8));
        let npz = zip(&[
            Member::stored("inputs.npy", inputs.clone()),
            Member::stored("targets.npy", npy("<f4", "(2,)", &f32_bytes(2))),
        ]);
        let p = file(dir.path(), "shape.npz", &npz);
        let err = assert_one_line_error(&check_data(&p));
        assert!(err.contains(words), "{shape}: {err}");
        let folder = dir.path().join("npys");
        std::fs::create_dir_all(&folder).unwrap();
        file(&folder, "inputs.npy", &inputs);
        file(&folder, "targets.npy", &npy("<f4", "(2,)", &f32_bytes(2)));
        let err = assert_one_line_error(&check_data(&folder));
        assert!(err.contains(words), "{shape} (.npy): {err}");
    }
}

#[test]
fn a_scalar_array_is_called_a_scalar() {
    let dir = tempfile::tempdir().unwrap();
    let p = file(
        dir.path(),
        "scalar.npz",
        &zip(&[
            Member::stored("inputs.npy", npy("<f4", "()", &f32_bytes(1))),
            Member::stored("targets.npy", npy("<f4", "(2,)", &f32_bytes(2))),
        ]),
    );
    let err = assert_one_line_error(&check_data(&p));
    assert!(err.contains("is a scalar (0-d"), "{err}");
    assert!(err.contains("dim 0"), "{err}");
    assert!(!err.contains("empty"), "{err}");
}

#[test]
fn files_that_are_not_archives_say_so_in_words() {
    let dir = tempfile::tempdir().unwrap();
    let p = file(
        dir.path(),
        "text.npz",
        b"just some text, not a zip archive\n",
    );
    let err = assert_one_line_error(&check_data(&p));
    assert!(err.contains("not a zip archive"), "{err}");
    let p = file(dir.path(), "text.npy", b"just some text, not an array\n");
    let err = assert_one_line_error(&check_data(&p));
    assert!(err.contains("not an .npy array"), "{err}");
    let p = file(dir.path(), "text.safetensors", b"just some text");
    let err = assert_one_line_error(&check_data(&p));
    assert!(err.contains("not a .safetensors file"), "{err}");
}

#[test]
fn safetensors_errors_say_what_is_wrong_in_words() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            r#"{"inputs":{"dtype":"F128","shape":[2],"data_offsets":[0,32]},"targets":{"dtype":"F32","shape":[2],"data_offsets":[32,40]}}"#,
            40,
            "unsupported dtype F128",
        ),
        (
            r#"{"inputs":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"targets":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}}"#,
            12,
            "beyond the end of the file",
        ),
        (
            r#"{"inputs":{"dtype":"F32","shape":[3],"data_offsets":[0,8]},"targets":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}}"#,
            16,
            "shape [3] of F32 needs 12 bytes",
        ),
        (r#"{"inputs": [1, 2]"#, 0, "header is not valid JSON"),
    ];
    for (header, len, words) in cases {
        let p = file(
            dir.path(),
            "x.safetensors",
            &safetensors(header, &vec![0; len]),
        );
        let err = assert_one_line_error(&check_data(&p));
        assert!(err.contains(words), "{header}: {err}");
        assert!(
            !err.contains("Invalid") && !err.contains("Deserialization"),
            "{err}"
        );
    }
    let mut huge = u64::MAX.to_le_bytes().to_vec();
    huge.extend(b"{}");
    let p = file(dir.path(), "x.safetensors", &huge);
    let err = assert_one_line_error(&check_data(&p));
    assert!(err.contains("header"), "{err}");
}

#[test]
fn paths_that_exist_but_cannot_be_read_are_not_called_missing() {
    let dir = tempfile::tempdir().unwrap();
    // A folder as the loss log.
    let err = assert_one_line_error(&check_log(dir.path()));
    assert!(!err.contains("does not exist"), "{err}");
    assert!(err.contains("is a folder"), "{err}");
    // A symlink loop as data and as the log.
    #[cfg(unix)]
    {
        let a = dir.path().join("a.npz");
        let b = dir.path().join("b.npz");
        std::os::unix::fs::symlink(&b, &a).unwrap();
        std::os::unix::fs::symlink(&a, &b).unwrap();
        let err = assert_one_line_error(&check_data(&a));
        assert!(!err.contains("does not exist"), "{err}");
        assert!(err.contains("symbolic links"), "{err}");
        let la = dir.path().join("a.csv");
        let lb = dir.path().join("b.csv");
        std::os::unix::fs::symlink(&lb, &la).unwrap();
        std::os::unix::fs::symlink(&la, &lb).unwrap();
        let err = assert_one_line_error(&check_log(&la));
        assert!(!err.contains("does not exist"), "{err}");
    }
    // Permission denied (root reads anything, so this part only runs as another user).
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let p = file(dir.path(), "locked.npz", b"PK");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o000)).unwrap();
        if std::fs::File::open(&p).is_err() {
            let err = assert_one_line_error(&check_data(&p));
            assert!(err.contains("permission denied"), "{err}");
        }
    }
    let err = assert_one_line_error(&check_data(&dir.path().join("nope.npz")));
    assert!(err.contains("does not exist"), "{err}");
}

#[test]
fn a_log_needs_a_loss_column_not_just_any_column() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(
        dir.path(),
        "acc.csv",
        "step,accuracy\n0,0.1\n1,0.2\n2,0.3\n",
    );
    let err = assert_one_line_error(&check_log(&p));
    assert!(err.contains("no loss column"), "{err}");
    let p = write(
        dir.path(),
        "acc.jsonl",
        "{\"step\": 0, \"accuracy\": 0.1}\n{\"step\": 1, \"accuracy\": 0.2}\n",
    );
    let err = assert_one_line_error(&check_log(&p));
    assert!(err.contains("no loss column"), "{err}");
}

#[test]
fn a_loss_column_without_any_value_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(dir.path(), "empty.csv", "step,loss\n0,\n1,\n2,\n");
    let err = assert_one_line_error(&check_log(&p));
    assert!(err.contains("column `loss` has no value"), "{err}");
    let p = write(
        dir.path(),
        "nulls.jsonl",
        "{\"step\": 0, \"loss\": null}\n{\"step\": 1, \"loss\": null}\n",
    );
    let err = assert_one_line_error(&check_log(&p));
    assert!(err.contains("column `loss` has no value"), "{err}");
}

#[test]
fn a_loss_column_of_nan_and_inf_loads_and_nonfinite_names_the_first_bad_step() {
    // NaN / Inf written in the log are what a diverged run logs: the log loads, `nonfinite` reports the
    // first one, and the other log checks judge the (here too few) finite rows.
    let dir = tempfile::tempdir().unwrap();
    // (A loss with no finite value at all is an input error: see tests/hostile_inputs.rs.)
    let p = write(
        dir.path(),
        "nan.csv",
        "step,loss\n0,1.5\n1,nan\n2,NaN\n3,inf\n4,\n",
    );
    let (code, report) = check_json(&["--log", &p.display().to_string()]);
    assert_eq!(code, 1, "{report}");
    let f = findings(&report, "nonfinite");
    assert_eq!(f.len(), 1, "{report}");
    assert_eq!(f[0]["kind"], "nonfinite/log");
    assert_eq!(f[0]["evidence"]["first_step"], 1.0);
    assert_eq!(
        f[0]["evidence"]["rows"], 3,
        "the empty cell is missing, not NaN"
    );
    assert!(
        findings(&report, "loss-oscillation").is_empty(),
        "one root cause, one finding: {report}"
    );
    let p = write(
        dir.path(),
        "nan.jsonl",
        "{\"step\": 0, \"loss\": null}\n{\"step\": 1, \"loss\": \"NaN\"}\n{\"step\": 2, \"loss\": 0.5}\n",
    );
    let (code, report) = check_json(&["--log", &p.display().to_string()]);
    assert_eq!(code, 1, "{report}");
    let f = findings(&report, "nonfinite");
    assert_eq!(
        f[0]["evidence"]["first_step"], 1.0,
        "null is a missing value"
    );
}

#[test]
fn steps_that_repeat_or_go_back_are_errors_at_their_line() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(
        dir.path(),
        "dup.csv",
        "step,loss\n0,1.0\n1,0.9\n1,0.8\n0,0.7\n",
    );
    let err = assert_one_line_error(&check_log(&p));
    assert!(err.contains("dup.csv:4: step 1"), "{err}");
    let p = write(dir.path(), "back.csv", "step,loss\n0,1.0\n10,0.9\n5,0.8\n");
    let err = assert_one_line_error(&check_log(&p));
    assert!(err.contains("back.csv:4: step 5"), "{err}");
    let p = write(
        dir.path(),
        "back.jsonl",
        "{\"step\": 0, \"loss\": 1.0}\n\n{\"step\": 2, \"loss\": 0.9}\n{\"step\": 1, \"loss\": 0.8}\n",
    );
    let err = assert_one_line_error(&check_log(&p));
    assert!(err.contains("back.jsonl:4: step 1"), "{err}");
}

#[test]
fn the_committed_fixtures_still_load() {
    for data in [
        "data/regression.npz",
        "data/regression.safetensors",
        "data/regression_npy",
    ] {
        let o = run(&["check", "--no-timings", "--data", &fixture(data)]);
        assert!(
            matches!(o.status.code(), Some(0 | 1)),
            "{data}: {}",
            stderr(&o)
        );
    }
}
