//! Hostile or careless invocations: outputs aimed at inputs, outputs that cannot be written, absurd
//! thread counts, and models whose code has side effects (file access, printing, code run on load).
mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::project::{check_in, one_line_error, project, snapshot};
use common::*;

#[test]
fn an_output_aimed_at_an_input_is_refused_before_anything_runs() {
    let dir = project();
    let p = dir.path();
    std::os::unix::fs::symlink("model.pt", p.join("link.json")).unwrap();
    std::fs::hard_link(p.join("data.npz"), p.join("alias.json")).unwrap();
    let baseline = r#"{"version": 1, "entries": []}"#;
    std::fs::write(p.join("b.json"), baseline).unwrap();
    let data_abs = p.join("data.npz").display().to_string();
    let cases: Vec<(Vec<&str>, [&str; 2])> = vec![
        (vec!["-o", "model.pt"], ["--output-file", "the model"]),
        (vec!["-o", "data.npz"], ["--output-file", "the data"]),
        (vec!["-o", &data_abs], ["--output-file", "the data"]),
        (vec!["-o", "sub/../data.npz"], ["--output-file", "the data"]),
        (
            vec!["-o", "trainlint.toml"],
            ["--output-file", "the config file"],
        ),
        (vec!["--report", "loss.csv"], ["--report", "the loss log"]),
        (
            vec!["--write-baseline", "model.pt"],
            ["--write-baseline", "the model"],
        ),
        (vec!["-o", "link.json"], ["--output-file", "the model"]),
        (vec!["-o", "alias.json"], ["--output-file", "the data"]),
        (
            vec!["-o", "out.json", "--report", "out.json"],
            ["--report", "--output-file"],
        ),
        (
            vec!["-o", "out.json", "--report", "sub/../out.json"],
            ["--report", "--output-file"],
        ),
        (
            vec!["--write-baseline", "b.json", "--baseline", "b.json"],
            ["--write-baseline", "--baseline"],
        ),
    ];
    let before = snapshot(p);
    for (args, [output_role, input_role]) in cases {
        let o = check_in(p, &args);
        let line = one_line_error(&o);
        assert!(
            line.contains(output_role) && line.contains(input_role),
            "{args:?}: {line}"
        );
        assert!(
            stdout(&o).is_empty(),
            "{args:?}: nothing judged, nothing reported"
        );
        assert_eq!(snapshot(p), before, "{args:?} changed the folder");
    }
}

#[test]
fn a_run_that_fails_leaves_no_output_behind() {
    let dir = project();
    let p = dir.path();
    std::fs::write(p.join("corrupt.json"), "{ not a baseline").unwrap();
    std::fs::copy(fixture("data/images.npz"), p.join("images.npz")).unwrap();
    let before = snapshot(p);
    let cases: Vec<(Vec<&str>, &str)> = vec![
        // The last output cannot be written: the first must not be written either.
        (vec!["-o", "out.json", "--report", "nodir/x.html"], "nodir"),
        (vec!["-o", "out.json", "--report", "sub"], "folder"),
        (
            vec!["-o", "out.json", "--report", "model.pt/x.html"],
            "--report",
        ),
        // An input that fails to read, after the checks today: no baseline written first.
        (
            vec!["--write-baseline", "new.json", "--baseline", "corrupt.json"],
            "corrupt.json",
        ),
        (
            vec!["--write-baseline", "new.json", "--baseline", "missing.json"],
            "missing.json",
        ),
        // The model rejects the data.
        (vec!["-o", "out.json", "--data", "images.npz"], "rejected"),
    ];
    for (args, says) in cases {
        let o = check_in(p, &args);
        let line = one_line_error(&o);
        assert!(line.contains(says), "{args:?}: {line}");
        assert_eq!(snapshot(p), before, "{args:?} left something behind");
    }
}

#[test]
fn outputs_are_written_whole_with_no_temporary_file_left() {
    let dir = project();
    let p = dir.path();
    let elsewhere = tempfile::tempdir().unwrap();
    let real = elsewhere.path().join("report.json");
    std::fs::write(&real, "old").unwrap();
    std::os::unix::fs::symlink(&real, p.join("sub/latest.json")).unwrap();
    let before = snapshot(p);
    let o = check_in(
        p,
        &[
            "--output-format",
            "json",
            "-o",
            "sub/latest.json",
            "--report",
            "report.html",
            "--write-baseline",
            "baseline.json",
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    // A link to a file that is no input is followed, and stays a link.
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&real).unwrap()).unwrap();
    assert!(report.is_object());
    let after = snapshot(p);
    let new: Vec<&PathBuf> = after.keys().filter(|k| !before.contains_key(*k)).collect();
    assert_eq!(
        new,
        [Path::new("baseline.json"), Path::new("report.html")],
        "{after:?}"
    );
    assert_eq!(
        after[Path::new("sub/latest.json")],
        before[Path::new("sub/latest.json")]
    );
    // And the baseline just written can be read back.
    let o = check_in(p, &["--baseline", "baseline.json"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
}

#[test]
fn thread_counts_out_of_range_are_refused_in_words() {
    let dir = project();
    for (value, says) in [
        ("4294967296", "at most 1024"),
        ("18446744073709551616", "at most 1024"),
        ("1025", "at most 1024"),
        ("-1", "≥ 0"),
        ("two", "whole number"),
    ] {
        let o = check_in(dir.path(), &["--threads", value]);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "--threads {value}: {err}");
        assert!(
            err.contains(says) && !err.contains("panicked"),
            "--threads {value}: {err}"
        );
    }
    let o = check_in(dir.path(), &["--threads", "2"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
}

/// `trainlint check --model fixtures/untrusted/NAME.pt --data regression.npz` in a fresh folder, which
/// is returned too: models that touch files do it in the working folder.
fn untrusted(name: &str, extra: &[&str]) -> (Output, tempfile::TempDir) {
    let cwd = tempfile::tempdir().unwrap();
    let model = fixture(&format!("untrusted/{name}.pt"));
    let data = fixture("data/regression.npz");
    let o = trainlint()
        .current_dir(cwd.path())
        .args(["check", "--model", &model, "--data", &data, "-q"])
        .args(["--select", "init-std", "--no-timings"])
        .args(extra)
        .output()
        .expect("trainlint runs");
    (o, cwd)
}

const PROBE: &str = "trainlint_untrusted_probe.bin";

#[test]
fn a_model_that_reads_files_is_refused_unless_trusted() {
    let (o, cwd) = untrusted("reads_file", &[]);
    let line = one_line_error(&o);
    for part in [
        "aten::from_file",
        "file access",
        "`forward` of module `body.probe`",
        "--trust-model",
    ] {
        assert!(line.contains(part), "{part}: {line}");
    }
    assert!(!cwd.path().join(PROBE).exists(), "the model ran");

    // Trusted, it runs, and does what the scan warned about: the file appears.
    let (o, cwd) = untrusted("reads_file", &["--trust-model"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(cwd.path().join(PROBE).exists());
}

#[test]
fn a_printing_model_is_refused_and_trusted_it_prints_to_stderr_only() {
    let (o, _cwd) = untrusted("prints", &[]);
    let line = one_line_error(&o);
    assert!(
        line.contains("prim::Print (printing) in `forward` of the root module"),
        "{line}"
    );

    let (o, _cwd) = untrusted("prints", &["--trust-model", "--output-format", "json"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let report: Result<serde_json::Value, _> = serde_json::from_slice(&o.stdout);
    assert!(report.is_ok(), "stdout is not JSON: {}", stdout(&o));
    assert!(
        stderr(&o).contains("hello from the model"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn a_model_with_code_that_runs_on_load_is_refused_before_loading() {
    let (o, _cwd) = untrusted("prints_on_load", &[]);
    let line = one_line_error(&o);
    assert!(
        line.contains("__setstate__") && line.contains("--trust-model"),
        "{line}"
    );
    assert!(!stderr(&o).contains("setstate ran") && !stdout(&o).contains("setstate ran"));

    let (o, _cwd) = untrusted(
        "prints_on_load",
        &["--trust-model", "--output-format", "json"],
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(
        serde_json::from_slice::<serde_json::Value>(&o.stdout).is_ok(),
        "{}",
        stdout(&o)
    );
    assert!(stderr(&o).contains("setstate ran on load"));
}

#[test]
fn healthy_models_pass_the_scan() {
    // Every fixtures/models/*.pt is scanned by the unit test in src/security.rs; here, the CLI path
    // on a scripted and a traced model.
    for model in ["mlp_default", "head_sigmoid_traced"] {
        let model = fixture(&format!("models/{model}.pt"));
        let o = run(&["check", "--model", &model, "--select", "init-std", "-q"]);
        assert_ne!(o.status.code(), Some(2), "{}", stderr(&o));
    }
}

/// Issue 20, 1: libtorch finds source records case-insensitively, so a `__setstate__` stored as
/// `code/__torch__.PY` ran on load (creating the probe file) before the scan refused the model.
#[test]
fn setstate_in_a_source_record_of_any_case_is_refused_before_loading() {
    let (o, cwd) = untrusted("setstate_upper_py", &[]);
    let line = one_line_error(&o);
    assert!(
        line.contains("__setstate__ (in code/__torch__.PY)") && line.contains("--trust-model"),
        "{line}"
    );
    assert!(!cwd.path().join(PROBE).exists(), "__setstate__ ran on load");

    // `trainlint graph` reads the model through the same gate.
    let cwd = tempfile::tempdir().unwrap();
    let o = trainlint()
        .current_dir(cwd.path())
        .args([
            "graph",
            "--model",
            &fixture("untrusted/setstate_upper_py.pt"),
        ])
        .output()
        .unwrap();
    assert!(one_line_error(&o).contains("code/__torch__.PY"));
    assert!(!cwd.path().join(PROBE).exists(), "__setstate__ ran on load");

    // Trusted, libtorch runs it: the fixture really is the attack.
    let (o, cwd) = untrusted("setstate_upper_py", &["--trust-model"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(cwd.path().join(PROBE).exists());
}

/// Issue 20, 2: constructing a C++ custom class and calling its methods (native code; this one
/// dlopens a library from LD_LIBRARY_PATH) passed the scan.
#[test]
fn a_custom_class_construction_or_method_call_is_refused() {
    let (o, _cwd) = untrusted("custom_class", &[]);
    let line = one_line_error(&o);
    for part in [
        "torch.classes._nnapi.Compilation.__init__",
        "torch.classes._nnapi.Compilation.init",
        "C++ custom class `torch.classes._nnapi.Compilation`",
        "`forward` of the root module",
        "--trust-model",
    ] {
        assert!(line.contains(part), "{part}: {line}");
    }
    // Trusted, it runs (the branch that calls `init` is never taken for a non-empty batch).
    let (o, _cwd) = untrusted("custom_class", &["--trust-model"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
}

/// Issue 20, 3: allowed aten ops alone crashed the process (SIGSEGV): a sparse COO tensor with an
/// out-of-range index, densified.
#[test]
fn ops_that_skip_their_invariant_checks_are_refused() {
    let (o, _cwd) = untrusted("sparse_oob", &["--select", "output-range"]);
    let line = one_line_error(&o);
    assert!(
        line.contains("aten::sparse_coo_tensor (unchecked memory: it builds a sparse tensor without checking its indices) in `forward` of the root module"),
        "{line}"
    );
}

/// Issue 20, 4: a tensor record shorter than its storage's declared bytes loaded, and init-std read
/// the rest from the heap (a std of 1e37 that changed from run to run). Refused before libtorch reads
/// it, naming the record, with --trust-model too: trust covers the model's code, not a damaged file.
#[test]
fn a_record_shorter_than_its_storage_is_refused_even_when_trusted() {
    for extra in [&[][..], &["--trust-model"]] {
        let (o, _cwd) = untrusted("short_record", extra);
        let line = one_line_error(&o);
        assert!(
            line.contains("the archive is damaged: record `data/0` holds 64 bytes, but data.pkl declares a storage of 128 bytes (32 × float32) in it"),
            "{line}"
        );
    }
}

/// A model archive whose records claim to unpack to far more than the file (a zip bomb) is refused
/// before libtorch allocates for it: here a deflated record that declares 3.75 GB.
#[test]
fn an_archive_that_unpacks_to_far_more_than_its_file_is_refused() {
    use std::io::{Read, Write};
    let mut source =
        zip::ZipArchive::new(std::fs::File::open(fixture("models/mlp_default.pt")).unwrap())
            .unwrap();
    let mut out = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let stored =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for i in 0..source.len() {
        let mut entry = source.by_index(i).unwrap();
        let name = entry.name().to_string();
        let mut bytes = Vec::new();
        entry.read_to_end(&mut bytes).unwrap();
        out.start_file(name, stored).unwrap();
        out.write_all(&bytes).unwrap();
    }
    let deflated = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    out.start_file("mlp_default/extra/bomb", deflated).unwrap();
    out.write_all(&[0u8; 4096]).unwrap();
    let mut bytes = out.finish().unwrap().into_inner();
    // Declare 0xF000_0000 bytes unpacked, in the local header (offset 22) and the central one (24).
    let name = b"mlp_default/extra/bomb";
    let mut patched = 0;
    for at in 0..bytes.len().saturating_sub(50) {
        let (signature, field) = match &bytes[at..at + 4] {
            b"PK\x03\x04" => (30, 22),
            b"PK\x01\x02" => (46, 24),
            _ => continue,
        };
        if bytes[at + signature..].starts_with(name) {
            bytes[at + field..at + field + 4].copy_from_slice(&0xF000_0000u32.to_le_bytes());
            patched += 1;
        }
    }
    assert_eq!(patched, 2);
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("bomb.pt");
    std::fs::write(&model, &bytes).unwrap();
    for extra in [&[][..], &["--trust-model"]] {
        let o = trainlint()
            .current_dir(dir.path())
            .args([
                "check",
                "--model",
                model.to_str().unwrap(),
                "--select",
                "init-std",
                "-q",
            ])
            .args(extra)
            .output()
            .unwrap();
        let line = one_line_error(&o);
        assert!(
            line.contains("its records unpack to 4026") && line.contains("(a zip bomb)"),
            "{line}"
        );
    }
}

/// Issue 24, 6: a model whose top module has no `forward` (its method renamed in the archive's code)
/// is refused at load with libtorch's reason in one line. The output check used to take any error
/// other than a wrong `model.output` for success and leave it to a later step.
#[test]
fn a_model_without_forward_is_refused_at_load_in_one_line() {
    use std::io::{Read, Write};
    let mut source =
        zip::ZipArchive::new(std::fs::File::open(fixture("models/mlp_default.pt")).unwrap())
            .unwrap();
    let mut out = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let stored =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    let mut renamed = false;
    for i in 0..source.len() {
        let mut entry = source.by_index(i).unwrap();
        let name = entry.name().to_string();
        let mut bytes = Vec::new();
        entry.read_to_end(&mut bytes).unwrap();
        if name == "mlp_default/code/__torch__.py" {
            let code = String::from_utf8(bytes).unwrap();
            assert!(code.contains("def forward("));
            bytes = code
                .replacen("def forward(", "def forwarx(", 1)
                .into_bytes();
            renamed = true;
        }
        out.start_file(name, stored).unwrap();
        out.write_all(&bytes).unwrap();
    }
    assert!(renamed);
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("noforward.pt");
    std::fs::write(&model, out.finish().unwrap().into_inner()).unwrap();
    let data = fixture("data/regression.npz");
    let o = trainlint()
        .current_dir(dir.path())
        .args(["check", "--model", "noforward.pt", "--data", &data])
        .output()
        .unwrap();
    let line = one_line_error(&o);
    assert!(
        line.starts_with("error: cannot load noforward.pt: ")
            && line.contains("Method 'forward' is not defined"),
        "{line}"
    );
}
