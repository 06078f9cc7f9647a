//! A project folder of copied fixtures for tests that aim outputs, links and devices at a run, and
//! what they assert: nothing in it changed, and a refusal is one `error:` line.
use std::collections::BTreeMap;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::process::Output;

use sha2::{Digest, Sha256};

use super::{fixture, stderr, stdout, trainlint};

/// A project folder with its own copies of the inputs: model.pt, data.npz, loss.csv and a
/// trainlint.toml naming them, and an empty `sub/` folder.
pub fn project() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let copy = |from: &str, to: &str| {
        std::fs::copy(fixture(from), dir.path().join(to)).unwrap();
    };
    copy("models/mlp_default.pt", "model.pt");
    copy("data/regression.npz", "data.npz");
    copy("logs/sgd_noisy_descent.csv", "loss.csv");
    std::fs::write(
        dir.path().join("trainlint.toml"),
        "[model]\npath = \"model.pt\"\n\n[data]\npath = \"data.npz\"\n\n[log]\npath = \"loss.csv\"\n",
    )
    .unwrap();
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    dir
}

/// `trainlint check . --select init-std -q ARGS` in `dir` (init-std is quick and reads every input).
pub fn check_in(dir: &Path, args: &[&str]) -> Output {
    trainlint()
        .current_dir(dir)
        .args(["check", ".", "--select", "init-std", "-q", "--no-timings"])
        .args(args)
        .output()
        .expect("trainlint runs")
}

/// Every file under `dir` (recursively) with the SHA-256 of its contents; links as their target.
pub fn snapshot(dir: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            let rel = path.strip_prefix(dir).unwrap().to_path_buf();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            if meta.file_type().is_symlink() {
                out.insert(
                    rel,
                    format!("-> {}", std::fs::read_link(&path).unwrap().display()),
                );
            } else if meta.is_dir() {
                out.insert(rel, "dir".into());
                todo.push(path);
            } else if meta.file_type().is_fifo() {
                out.insert(rel, "fifo".into());
            } else {
                let hash = Sha256::digest(std::fs::read(&path).unwrap());
                out.insert(rel, format!("{hash:x}"));
            }
        }
    }
    out
}

/// Exit 2 with exactly one line on stderr, `error: …`; returns that line.
pub fn one_line_error(o: &Output) -> String {
    let err = stderr(o);
    assert_eq!(
        o.status.code(),
        Some(2),
        "stderr: {err}\nstdout: {}",
        stdout(o)
    );
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "one line expected: {err}");
    assert!(lines[0].starts_with("error: "), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    lines[0].to_string()
}
