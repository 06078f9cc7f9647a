//! Hostile inputs, round 2 (issue 20): files that are not regular files, outputs aimed at the
//! sibling `.npy` files the run reads, logs and headers built to exhaust memory or time, archives
//! whose headers lie, and values echoed back whole. Every run here is bounded: a data segment of
//! 1 GiB and a wall-clock limit, after which the binary is killed, so a regression fails the test
//! instead of hanging it or taking the machine down. The inputs are built here, at run time.
mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::archives::{deflated_zeros, f32_bytes, file, npy, safetensors, zip, Member};
use common::write;

/// What a bounded run ended with: the exit code (None: killed by a signal, or by the time limit).
struct Ended {
    code: Option<i32>,
    stderr: String,
    timed_out: bool,
}

/// Run `trainlint ARGS` in `dir` with its data segment capped at 1 GiB, killing it after `secs`.
fn bounded(dir: &Path, args: &[&str], secs: u64) -> Ended {
    let bin = assert_cmd::cargo::cargo_bin("trainlint");
    let err_path = dir.join(".stderr");
    let mut child = Command::new("bash")
        .arg("-c")
        .arg(r#"ulimit -d 1048576 && exec "$@""#)
        .arg("bash")
        .arg(&bin)
        .args(args)
        .current_dir(dir)
        .env("CI", "true")
        .env_remove("NO_COLOR")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(secs);
    let (status, timed_out) = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break (Some(status), false);
        }
        if Instant::now() > deadline {
            child.kill().unwrap();
            child.wait().unwrap();
            break (None, true);
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Ended {
        code: status.and_then(|s| s.code()),
        stderr: String::from_utf8_lossy(&std::fs::read(&err_path).unwrap()).into_owned(),
        timed_out,
    }
}

/// Exit 2 with one `error: …` line, no panic, abort or C++ frame; returns the message.
fn one_line_error(e: &Ended) -> String {
    let err = &e.stderr;
    assert!(!e.timed_out, "killed after its time limit; stderr: {err}");
    assert_eq!(e.code, Some(2), "stderr: {err}");
    assert!(err.starts_with("error: "), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err}");
    for sign in ["panicked", "frame #", "Exception raised from", "backtrace"] {
        assert!(!err.contains(sign), "{sign:?} in stderr: {err}");
    }
    err.clone()
}

/// A normal run: exit 0 or 1, in time, without a crash.
fn ran(e: &Ended) {
    assert!(
        !e.timed_out,
        "killed after its time limit; stderr: {}",
        e.stderr
    );
    assert!(
        matches!(e.code, Some(0 | 1)),
        "exit {:?}: {}",
        e.code,
        e.stderr
    );
}

fn good_targets() -> Vec<u8> {
    npy("<f4", "(4,)", &f32_bytes(4))
}

fn check_data(dir: &Path, data: &str) -> Ended {
    bounded(dir, &["check", "--no-timings", "--data", data], 60)
}

// ---- 6: every file the run reads is an input of the overwrite guard ----

#[test]
fn an_output_onto_a_sibling_npy_the_run_reads_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    file(d, "inputs.npy", &npy("<f4", "(4, 3)", &f32_bytes(12)));
    let targets = file(d, "targets.npy", &good_targets());
    let before = std::fs::read(&targets).unwrap();
    for flag in ["-o", "--report", "--write-baseline"] {
        let e = bounded(
            d,
            &[
                "check",
                "--no-timings",
                "--data",
                "inputs.npy",
                flag,
                "targets.npy",
            ],
            60,
        );
        let err = one_line_error(&e);
        assert!(
            err.contains("is a sibling .npy file the data is read from")
                && err.contains("never overwrites its inputs"),
            "{err}"
        );
        assert_eq!(std::fs::read(&targets).unwrap(), before, "{flag}");
    }
    // A sibling the run does not read is no input: writing there is allowed.
    file(d, "other.npy", &good_targets());
    ran(&bounded(
        d,
        &[
            "check",
            "--no-timings",
            "--data",
            "inputs.npy",
            "-o",
            "other.npy",
        ],
        60,
    ));
}

// ---- 9: logs, baselines and sibling .npy files must be regular files ----

fn fifo(dir: &Path, name: &str) -> PathBuf {
    let p = dir.join(name);
    let ok = Command::new("mkfifo").arg(&p).status().unwrap().success();
    assert!(ok, "mkfifo {}", p.display());
    p
}

#[test]
fn a_fifo_or_a_device_as_log_baseline_or_sibling_is_refused_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(d, "loss.csv", "step,loss\n0,1.0\n1,0.5\n");
    fifo(d, "fifo.csv");
    fifo(d, "fifo.json");
    std::os::unix::fs::symlink("/dev/zero", d.join("zero.csv")).unwrap();
    std::os::unix::fs::symlink("/dev/zero", d.join("zero.json")).unwrap();
    let cases: [(&[&str], &str, &str); 4] = [
        (&["--log", "fifo.csv"], "the loss log", "FIFO"),
        (&["--log", "zero.csv"], "the loss log", "character device"),
        (
            &["--log", "loss.csv", "--baseline", "fifo.json"],
            "the --baseline file",
            "FIFO",
        ),
        (
            &["--log", "loss.csv", "--baseline", "zero.json"],
            "the --baseline file",
            "character device",
        ),
    ];
    for (args, role, what) in cases {
        let mut all = vec!["check", "--no-timings"];
        all.extend_from_slice(args);
        let err = one_line_error(&bounded(d, &all, 20));
        assert!(
            err.contains(&format!("{role} is not a regular file (a {what})")),
            "{args:?}: {err}"
        );
    }
    // The targets of an .npy data file, a FIFO beside it.
    let npys = d.join("npys");
    std::fs::create_dir(&npys).unwrap();
    file(&npys, "inputs.npy", &npy("<f4", "(4, 3)", &f32_bytes(12)));
    fifo(&npys, "targets.npy");
    let err = one_line_error(&check_data(d, "npys/inputs.npy"));
    assert!(
        err.contains("targets.npy") && err.contains("is not a regular file (a FIFO)"),
        "{err}"
    );
    // And as a member of a data folder.
    let err = one_line_error(&check_data(d, "npys"));
    assert!(err.contains("is not a regular file (a FIFO)"), "{err}");
}

// ---- 10, 11: bounded logs ----

#[test]
fn a_jsonl_log_with_a_new_key_per_line_stops_at_the_column_limit() {
    // Each line adds a column: stored full length, 20 000 lines took 20 000² values.
    let dir = tempfile::tempdir().unwrap();
    let text: String = (0..20_000)
        .map(|i| format!("{{\"step\": {i}, \"loss\": 1.0, \"k{i}\": 1}}\n"))
        .collect();
    write(dir.path(), "keys.jsonl", &text);
    let err = one_line_error(&bounded(
        dir.path(),
        &["check", "--no-timings", "--log", "keys.jsonl"],
        60,
    ));
    assert!(
        err.contains("keys.jsonl:4095: column `k4094` would be column 4097 of the log; trainlint reads at most 4096 columns"),
        "{err}"
    );
}

#[test]
fn a_log_whose_columns_each_fill_a_few_rows_is_stored_sparsely() {
    // 4 000 columns over 100 000 rows, one value each row besides the loss: 3.2 GB as full-length
    // columns, a few MB as the values written.
    let dir = tempfile::tempdir().unwrap();
    let text: String = (0..100_000)
        .map(|i| {
            format!(
                "{{\"step\": {i}, \"loss\": {}, \"m{}\": 1}}\n",
                1.0 / (1.0 + i as f64),
                i % 4000
            )
        })
        .collect();
    write(dir.path(), "sparse.jsonl", &text);
    ran(&bounded(
        dir.path(),
        &["check", "--no-timings", "--log", "sparse.jsonl"],
        120,
    ));
}

#[test]
fn a_log_line_past_the_line_limit_is_refused_with_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let long = "9".repeat(2 << 20);
    write(
        d,
        "long.jsonl",
        &format!("{{\"loss\": 1.0}}\n{{\"loss\": 1.0, \"x\": [{long}]}}\n"),
    );
    write(d, "long.csv", &format!("step,loss\n0,1.0\n1,{long}\n"));
    write(
        d,
        "quoted.csv",
        &format!("step,loss\n0,\"{}\"\n", "1\n".repeat(1 << 20)),
    );
    for (name, line) in [("long.jsonl", 2), ("long.csv", 3), ("quoted.csv", 2)] {
        let err = one_line_error(&bounded(d, &["check", "--no-timings", "--log", name], 60));
        assert!(
            err.contains(&format!(
                "{name}:{line}: the line is longer than 1 MiB, the most trainlint reads in one line of a log"
            )),
            "{err}"
        );
    }
}

#[test]
fn a_csv_header_with_a_hundred_thousand_columns_is_refused_quickly() {
    // The duplicate-name check compared every column with every other: minutes for 200 000.
    let dir = tempfile::tempdir().unwrap();
    let header: Vec<String> = (0..100_000).map(|i| format!("c{i}")).collect();
    write(
        dir.path(),
        "wide.csv",
        &format!("{},loss\n", header.join(",")),
    );
    let err = one_line_error(&bounded(
        dir.path(),
        &["check", "--no-timings", "--log", "wide.csv"],
        30,
    ));
    assert!(
        err.contains("wide.csv:1: the header has 100001 columns; trainlint reads at most 4096"),
        "{err}"
    );
}

#[test]
fn a_non_numeric_log_cell_is_echoed_cut_short() {
    let dir = tempfile::tempdir().unwrap();
    let cell = "x".repeat(100_000);
    write(
        dir.path(),
        "cell.csv",
        &format!("step,loss\n0,1.0\n1,{cell}\n"),
    );
    let err = one_line_error(&bounded(
        dir.path(),
        &["check", "--no-timings", "--log", "cell.csv"],
        60,
    ));
    assert!(
        err.contains(&format!(
            "cell.csv:3: column `loss`: \"{}… (100000 bytes)\" is not a number",
            "x".repeat(40)
        )),
        "{err}"
    );
    assert!(err.len() < 300, "{} bytes: {err}", err.len());
}

// ---- 19: a log whose loss is never finite ----

#[test]
fn a_log_whose_loss_is_never_finite_is_an_error_whatever_checks_run() {
    // With only the log checks selected, nonfinite (which reports NaN losses) does not run, and
    // loss-oscillation skipped: an all-NaN log passed with no finding.
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(d, "nan.csv", "step,loss\n0,nan\n1,NaN\n2,inf\n3,\n");
    write(
        d,
        "nan.jsonl",
        "{\"step\": 0, \"loss\": NaN}\n{\"step\": 1, \"loss\": null}\n",
    );
    for name in ["nan.csv", "nan.jsonl"] {
        for select in ["loss-oscillation,loss-scale", "nonfinite"] {
            let err = one_line_error(&bounded(
                d,
                &["check", "--no-timings", "--log", name, "--select", select],
                60,
            ));
            assert!(
                err.contains("column `loss` has no finite value")
                    && err.contains("the run diverged before its first logged step"),
                "{name} {select}: {err}"
            );
        }
    }
}

// ---- 12: the sample is bounded as converted, not only as read ----

/// An `.npz` of `rows` samples of 1 MiB of zeros each, of dtype `descr`, and float targets.
fn small_int_npz(descr: &str, rows: usize) -> Vec<u8> {
    let header = npy(descr, &format!("({rows}, 1024, 1024)"), &[]);
    let targets = npy("<f4", &format!("({rows},)"), &vec![0; rows * 4]);
    let size = header.len() as u64 + ((rows as u64) << 20);
    zip(&[
        Member {
            name: "inputs.npy",
            method: 8,
            compressed: deflated_zeros(&header, rows),
            size,
            local_size: size,
            crc: 0, // not verified: the member is larger than what is inflated to verify it
        },
        Member::deflated("targets.npy", &targets),
    ])
}

#[test]
fn a_small_uint8_or_int8_npz_is_refused_before_it_widens_past_the_budget() {
    // 256 MiB of uint8 zeros in about 250 KB: 1 GiB more as float32; as int8, 2 GiB as int64.
    let dir = tempfile::tempdir().unwrap();
    for (descr, total, to) in [
        ("|u1", "1.3 GiB", "1 GiB as float32"),
        ("|i1", "2.3 GiB", "2 GiB as int64"),
    ] {
        let p = file(dir.path(), "small.npz", &small_int_npz(descr, 300));
        assert!(std::fs::metadata(&p).unwrap().len() < 1 << 20);
        let err = one_line_error(&check_data(dir.path(), "small.npz"));
        assert!(
            err.contains(&format!(
                "array `inputs` in small.npz needs {total} in memory for its first 256 samples (256 MiB as read ({descr}), {to}), over the limit of 1 GiB"
            )),
            "{descr}: {err}"
        );
    }
}

// ---- 13: bounded safetensors headers ----

#[test]
fn a_safetensors_header_with_too_many_entries_is_refused_with_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let entries: Vec<String> = (0..70_000)
        .map(|i| format!("\"t{i}\":{{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}"))
        .collect();
    file(
        dir.path(),
        "many.safetensors",
        &safetensors(&format!("{{{}}}", entries.join(",")), &[0; 4]),
    );
    let err = one_line_error(&check_data(dir.path(), "many.safetensors"));
    assert!(
        err.contains("not a .safetensors file: the header lists more than 65536 tensors, the most trainlint reads"),
        "{err}"
    );
    // A header past 16 MiB, however well formed.
    let pad = " ".repeat(17 << 20);
    file(
        dir.path(),
        "big.safetensors",
        &safetensors(&format!("{{{pad}}}"), &[]),
    );
    let err = one_line_error(&check_data(dir.path(), "big.safetensors"));
    assert!(
        err.contains("(the most trainlint reads is 16 MiB)"),
        "{err}"
    );
}

// ---- 16: one key, two members ----

#[test]
fn an_npz_with_x_npy_and_a_bare_x_member_is_refused_as_ambiguous() {
    // numpy 2.4 maps both `inputs.npy` and `inputs` to the key `inputs`, and np.load returns the bare
    // member (checked with the fixtures venv): trainlint read the other one.
    let dir = tempfile::tempdir().unwrap();
    file(
        dir.path(),
        "two.npz",
        &zip(&[
            Member::stored("inputs.npy", npy("<f4", "(4, 3)", &f32_bytes(12))),
            Member::stored("inputs", npy("<f4", "(4, 3)", &[0; 48])),
            Member::stored("targets.npy", good_targets()),
        ]),
    );
    let err = one_line_error(&check_data(dir.path(), "two.npz"));
    assert!(
        err.contains("two.npz: array `inputs` is stored twice, as `inputs.npy` and `inputs`"),
        "{err}"
    );
}

// ---- 19 and b: zip headers that lie, data that does not match them ----

#[test]
fn npz_members_whose_sizes_or_crc_lie_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let inputs = || npy("<f4", "(4, 3)", &f32_bytes(12));
    let cases: Vec<(&str, Member, &str)> = vec![
        (
            "a zip64 size of 1 TiB on a stored member",
            Member {
                size: 1 << 40,
                local_size: 1 << 40,
                ..Member::stored("inputs.npy", inputs())
            },
            "stored uncompressed but declares 1099511627776 bytes",
        ),
        (
            "local and central sizes disagree",
            Member {
                local_size: 1 << 33,
                ..Member::deflated("inputs.npy", &inputs())
            },
            "the central directory gives size 176, the local header 8589934592",
        ),
        (
            "a declared size other than the array's",
            {
                let mut data = inputs();
                data.extend([0; 8]);
                let mut m = Member::deflated("inputs.npy", &data);
                m.size -= 8;
                m.local_size -= 8;
                m
            },
            "its zip entry declares 176 bytes, but more inflate from it",
        ),
        (
            "a wrong CRC-32",
            Member {
                crc: 0x1234_5678,
                ..Member::stored("inputs.npy", inputs())
            },
            "its data does not match its CRC-32",
        ),
    ];
    for (what, member, words) in cases {
        file(
            dir.path(),
            "lies.npz",
            &zip(&[member, Member::stored("targets.npy", good_targets())]),
        );
        let err = one_line_error(&check_data(dir.path(), "lies.npz"));
        assert!(
            err.contains("array `inputs`") && err.contains(words),
            "{what}: {err}"
        );
    }
}

// ---- c: only the siblings the run needs are read ----

#[test]
fn a_broken_unrelated_sibling_npy_does_not_fail_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    file(d, "inputs.npy", &npy("<f4", "(4, 3)", &f32_bytes(12)));
    file(d, "targets.npy", &good_targets());
    file(d, "junk.npy", b"not an array at all");
    fifo(d, "pipe.npy");
    ran(&check_data(d, "inputs.npy"));
    // A broken sibling that is needed still fails, naming it.
    file(d, "targets.npy", b"broken");
    let err = one_line_error(&check_data(d, "inputs.npy"));
    assert!(
        err.contains("targets.npy") && err.contains("not an .npy array"),
        "{err}"
    );
}
