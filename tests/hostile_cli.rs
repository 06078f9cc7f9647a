//! Hostile or careless invocations, round 2 (issue 20): outputs aimed at devices and pipes, configs
//! that are links or devices, standard output that cannot take the report, absurd numbers on the
//! command line, and user strings (exception texts, column names, file names) that would break a
//! terminal, an XML document or a URI.
mod common;

use std::collections::BTreeMap;
use std::ffi::{c_char, c_int, OsStr};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use common::project::{check_in, one_line_error, project, snapshot};
use common::*;

extern "C" {
    fn mkfifo(path: *const c_char, mode: u32) -> c_int;
}

fn make_fifo(path: &Path) {
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: a NUL-terminated path that lives across the call.
    assert_eq!(unsafe { mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo {path:?}");
}

/// The real binary as a `std::process::Command` (for plumbing stdout by hand), set up like
/// `common::trainlint`.
fn trainlint_std() -> std::process::Command {
    let mut c = std::process::Command::new(assert_cmd::cargo::cargo_bin("trainlint"));
    c.env_remove("NO_COLOR")
        .env("CI", "true")
        .current_dir(root());
    c
}

#[test]
fn an_output_onto_a_pipe_or_a_character_device_is_written_into_never_replaced() {
    let dir = project();
    let p = dir.path();
    let fifo = p.join("report.fifo");
    make_fifo(&fifo);
    let (tx, rx) = std::sync::mpsc::channel();
    let reader_end = fifo.clone();
    // Without the fix the pipe is renamed over and this reader waits forever: it is left behind (the
    // test process ends it), and the assertions below fail first.
    std::thread::spawn(move || tx.send(std::fs::read(&reader_end)));
    let o = check_in(p, &["--output-format", "json", "-o", "report.fifo"]);
    let kind = std::fs::symlink_metadata(&fifo).unwrap().file_type();
    assert!(
        kind.is_fifo(),
        "the pipe was replaced by {kind:?}; stderr: {}",
        stderr(&o)
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let read = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the reader got the report")
        .unwrap();
    let report: serde_json::Value = serde_json::from_slice(&read).expect("the report is JSON");
    assert_eq!(report["checks"][0]["id"], "init-std");
    // Nothing left next to it: no temporary file, no probe.
    let names: Vec<String> = std::fs::read_dir(p)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(names.is_empty(), "{names:?}");

    // A character device: only now that a pipe is known to be written in place is /dev/null safe
    // to aim at (without the fix, root would replace it for the whole system).
    let null = Path::new("/dev/null");
    if std::fs::metadata(null).is_ok_and(|m| m.file_type().is_char_device()) {
        let before = std::fs::metadata(null).unwrap();
        let o = check_in(p, &["-o", "/dev/null", "--report", "/dev/null"]);
        // Two outputs on one file are refused as ever; one is written into.
        assert!(one_line_error(&o).contains("also where"));
        let o = check_in(p, &["-o", "/dev/null"]);
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        let after = std::fs::metadata(null).unwrap();
        assert!(after.file_type().is_char_device());
        use std::os::unix::fs::MetadataExt;
        assert_eq!((before.ino(), before.rdev()), (after.ino(), after.rdev()));
    }
}

#[test]
fn sockets_and_block_devices_are_refused_as_outputs() {
    let dir = project();
    let p = dir.path();
    let _listener = std::os::unix::net::UnixListener::bind(p.join("report.sock")).unwrap();
    let before = snapshot_kinds(p);
    let line = one_line_error(&check_in(p, &["-o", "report.sock"]));
    assert!(
        line.contains("--output-file report.sock is a socket; trainlint writes reports to files"),
        "{line}"
    );
    assert_eq!(snapshot_kinds(p), before);
    // A block device (a disk): only now that a socket is known to be refused before anything is
    // written is one safe to aim at.
    let disk = std::fs::read_dir("/dev")
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| std::fs::metadata(p).is_ok_and(|m| m.file_type().is_block_device()));
    if let Some(disk) = disk {
        let line = one_line_error(&check_in(p, &["-o", disk.to_str().unwrap()]));
        assert!(line.contains("is a block device"), "{line}");
        assert!(std::fs::metadata(&disk)
            .unwrap()
            .file_type()
            .is_block_device());
    }
}

/// Every entry of `dir` with its file type (sockets and pipes included, which `snapshot` cannot hash).
fn snapshot_kinds(dir: &Path) -> BTreeMap<PathBuf, String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                PathBuf::from(e.file_name()),
                format!("{:?}", e.file_type().unwrap()),
            )
        })
        .collect()
}

#[test]
fn an_output_named_dev_stdout_or_dev_stderr_goes_to_that_stream_in_place() {
    use std::os::unix::fs::MetadataExt;
    let dir = project();
    let p = dir.path();
    let args = [
        "check",
        ".",
        "--select",
        "init-std",
        "-q",
        "--output-format",
        "json",
        "-o",
    ];
    // A pipe: while the checks run fd 1 is stderr, yet the report reaches the real stdout.
    let o = trainlint_std()
        .current_dir(p)
        .args(args)
        .arg("/dev/stdout")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("{e}: {} / {}", stdout(&o), stderr(&o)));
    assert_eq!(report["checks"][0]["id"], "init-std");
    // Redirected files: written where the stream stands, never renamed over (what was there stays,
    // and the stream still writes into the same file).
    for stream in ["/dev/stdout", "/dev/stderr"] {
        let logs = tempfile::tempdir().unwrap();
        let (out, err) = (logs.path().join("out.txt"), logs.path().join("err.txt"));
        std::fs::write(&out, "earlier output\n").unwrap();
        std::fs::write(&err, "earlier errors\n").unwrap();
        let inodes = || {
            (
                std::fs::metadata(&out).unwrap().ino(),
                std::fs::metadata(&err).unwrap().ino(),
            )
        };
        let before = inodes();
        let append = |path: &Path| std::fs::OpenOptions::new().append(true).open(path).unwrap();
        let status = trainlint_std()
            .current_dir(p)
            .args(args)
            .arg(stream)
            .stdout(append(&out))
            .stderr(append(&err))
            .status()
            .unwrap();
        let (out_text, err_text) = (
            std::fs::read_to_string(&out).unwrap(),
            std::fs::read_to_string(&err).unwrap(),
        );
        assert_eq!(status.code(), Some(0), "{stream}: {err_text}");
        assert_eq!(inodes(), before, "{stream} was replaced");
        let (written, other) = if stream == "/dev/stdout" {
            (&out_text, &err_text)
        } else {
            (&err_text, &out_text)
        };
        let (earlier, rest) = written.split_once('\n').unwrap();
        assert!(earlier.starts_with("earlier"), "{stream}: {written}");
        assert!(rest.contains("\"checks\""), "{stream}: {written}");
        assert!(other.starts_with("earlier"), "{stream}: {other}");
    }
}

#[test]
fn init_force_never_writes_through_a_link_into_an_input() {
    let dir = project();
    let p = dir.path();
    let init = |args: &[&str]| {
        trainlint()
            .current_dir(p)
            .arg("init")
            .args(args)
            .output()
            .expect("trainlint runs")
    };
    std::fs::remove_file(p.join("trainlint.toml")).unwrap();
    std::os::unix::fs::symlink("model.pt", p.join("trainlint.toml")).unwrap();
    let before = snapshot(p);
    // The template names the model: the link leads to it.
    let line = one_line_error(&init(&["--force", "--model", "model.pt"]));
    assert!(
        line.contains("trainlint.toml is the model") && line.contains("never overwrites"),
        "{line}"
    );
    assert_eq!(snapshot(p), before);
    // A hard link to the data is the data.
    std::fs::remove_file(p.join("trainlint.toml")).unwrap();
    std::fs::hard_link(p.join("data.npz"), p.join("trainlint.toml")).unwrap();
    let before = snapshot(p);
    let line = one_line_error(&init(&["--force", "--data", "data.npz"]));
    assert!(line.contains("is the data"), "{line}");
    assert_eq!(snapshot(p), before);

    // A link to a file the template does not name: the link itself is replaced, its target kept.
    std::fs::remove_file(p.join("trainlint.toml")).unwrap();
    std::os::unix::fs::symlink("model.pt", p.join("trainlint.toml")).unwrap();
    let model = std::fs::read(p.join("model.pt")).unwrap();
    let o = init(&["--force"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(std::fs::read(p.join("model.pt")).unwrap(), model);
    let meta = std::fs::symlink_metadata(p.join("trainlint.toml")).unwrap();
    assert!(meta.is_file(), "{meta:?}");
    assert!(std::fs::read_to_string(p.join("trainlint.toml"))
        .unwrap()
        .contains("[setup]"));

    // A dangling link is there: without --force it is not written through.
    std::fs::remove_file(p.join("trainlint.toml")).unwrap();
    std::os::unix::fs::symlink("sub/elsewhere.toml", p.join("trainlint.toml")).unwrap();
    let line = one_line_error(&init(&[]));
    assert!(line.contains("exists"), "{line}");
    assert!(!p.join("sub/elsewhere.toml").exists());
}

/// Every command that prints, with arguments that make it print (in the crate root).
fn printing_commands(init_dir: &Path) -> Vec<Vec<String>> {
    let model = fixture("models/mlp_default.pt");
    let data = fixture("data/regression.npz");
    let strs = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<String>>();
    vec![
        strs(&["rules"]),
        strs(&["rules", "--markdown"]),
        strs(&["explain", "init-std"]),
        strs(&["explain", "init-std/std-out-of-band"]),
        strs(&["schema"]),
        strs(&["schema", "--markdown"]),
        strs(&["completions", "bash"]),
        strs(&["--help"]),
        strs(&["check", "--help"]),
        strs(&["--version"]),
        strs(&["init", init_dir.to_str().unwrap()]),
        strs(&[
            "check", "--model", &model, "--data", &data, "--select", "init-std", "-q",
        ]),
        strs(&[
            "check",
            "--model",
            &model,
            "--data",
            &data,
            "--select",
            "init-std",
            "-q",
            "--output-format",
            "sarif",
        ]),
        strs(&["graph", "--model", &model, "--format", "json"]),
    ]
}

#[test]
fn output_that_cannot_reach_stdout_exits_2_in_one_line_for_every_command() {
    let Ok(full) = std::fs::OpenOptions::new().write(true).open("/dev/full") else {
        eprintln!("no /dev/full here; skipped");
        return;
    };
    let init_dir = tempfile::tempdir().unwrap();
    for args in printing_commands(init_dir.path()) {
        let o = trainlint_std()
            .args(&args)
            .stdout(full.try_clone().unwrap())
            .output()
            .unwrap();
        let line = one_line_error(&o);
        assert!(
            line.contains("cannot write to standard output") && line.contains("No space left"),
            "{args:?}: {line}"
        );
    }
    // A descriptor open for reading only: Rust's own stdout would report success.
    let read_only = std::fs::File::open(fixture("data/regression.npz")).unwrap();
    let model = fixture("models/mlp_default.pt");
    let o = trainlint_std()
        .args(["check", "--model", &model, "--select", "init-std", "-q"])
        .stdout(read_only)
        .output()
        .unwrap();
    let line = one_line_error(&o);
    assert!(line.contains("cannot write to standard output"), "{line}");
}

#[test]
fn a_reader_that_stops_reading_ends_every_command_quietly() {
    let init_dir = tempfile::tempdir().unwrap();
    for args in printing_commands(init_dir.path()) {
        let mut child = trainlint_std()
            .args(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // `| head -0`: the reading end is gone before anything is written.
        drop(child.stdout.take());
        let o = child.wait_with_output().unwrap();
        assert_eq!(o.status.code(), Some(0), "{args:?}: {}", stderr(&o));
        assert_eq!(stderr(&o), "", "{args:?}");
    }
    // A stderr that went away (`2>&1 | head -1` after the report) does not turn into a panic either.
    let dir = project();
    let mut child = trainlint_std()
        .current_dir(dir.path())
        .args(["check", ".", "--select", "init-std", "-q", "-o", "out.txt"])
        .args(["--statistics"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stderr.take());
    assert_eq!(child.wait().unwrap().code(), Some(0));
}

#[test]
fn numbers_out_of_range_on_the_command_line_are_refused_in_words() {
    let dir = project();
    for value in [
        "1e30",
        "18446744073709551616",
        "1.7e19",
        "1e7",
        "nan",
        "inf",
        "-inf",
        "-1",
        "1e-9",
        "soon",
    ] {
        let line = one_line_error(&check_in(dir.path(), &["--timeout", value]));
        assert!(
            line.contains("seconds from 0.001 to 1000000 (0 = no limit)"),
            "--timeout {value}: {line}"
        );
    }
    for value in ["-1", "18446744073709551616", "1.5", "-0x1", "seven"] {
        let line = one_line_error(&check_in(dir.path(), &["--seed", value]));
        assert!(
            line.contains("the seed must be a non-negative whole number"),
            "--seed {value}: {line}"
        );
    }
    // The limits themselves are fine.
    for args in [["--timeout", "600"], ["--seed", "18446744073709551615"]] {
        let o = check_in(dir.path(), &args);
        assert_eq!(o.status.code(), Some(0), "{args:?}: {}", stderr(&o));
    }
}

/// Whether `xml` is a well-formed XML document as far as a report needs: every character allowed by
/// XML 1.0 (and no noncharacter or C1 control, which it discourages), markup balanced, `&` only in
/// references, `<` never in text or attribute values. Returns what is wrong.
fn xml_problems(xml: &str) -> Vec<String> {
    let mut problems = Vec::new();
    for (i, c) in xml.char_indices() {
        let u = c as u32;
        let allowed =
            matches!(u, 0x9 | 0xA | 0xD | 0x20..=0xD7FF | 0xE000..=0xFFFD | 0x10000..=0x10FFFF);
        let discouraged =
            (0x7F..=0x9F).contains(&u) || (0xFDD0..=0xFDEF).contains(&u) || (u & 0xFFFE) == 0xFFFE;
        if !allowed || discouraged {
            problems.push(format!("U+{u:04X} at byte {i}"));
        }
    }
    let references_ok = |text: &str| {
        text.split('&').skip(1).all(|rest| {
            let name = rest.split(';').next().unwrap_or("");
            rest.contains(';')
                && (["amp", "lt", "gt", "quot", "apos"].contains(&name)
                    || (name.starts_with('#') && name.len() > 1))
        })
    };
    let mut stack: Vec<String> = Vec::new();
    let mut rest = xml.trim_start();
    if let Some(after) = rest.strip_prefix("<?xml") {
        rest = &after[after.find("?>").map(|i| i + 2).unwrap_or(after.len())..];
    }
    while !rest.is_empty() {
        let text_end = rest.find('<').unwrap_or(rest.len());
        let text = &rest[..text_end];
        if !references_ok(text) {
            problems.push(format!("bad reference in text {text:?}"));
        }
        if stack.is_empty() && !text.trim().is_empty() {
            problems.push(format!("text outside the root: {text:?}"));
        }
        rest = &rest[text_end..];
        if rest.is_empty() {
            break;
        }
        let Some(tag_end) = rest.find('>') else {
            problems.push("unclosed tag".into());
            break;
        };
        let tag = &rest[1..tag_end];
        rest = &rest[tag_end + 1..];
        if let Some(name) = tag.strip_prefix('/') {
            if stack.pop().as_deref() != Some(name.trim()) {
                problems.push(format!("</{name}> closes nothing open"));
            }
            continue;
        }
        let self_closing = tag.ends_with('/');
        let body = tag.trim_end_matches('/');
        let name = body.split_whitespace().next().unwrap_or("").to_string();
        let attrs = &body[name.len()..];
        // Attribute values: name="value" pairs, no `<`, references only.
        let mut a = attrs.trim();
        while !a.is_empty() {
            let Some(eq) = a.find("=\"") else {
                problems.push(format!("bad attributes in <{tag}>"));
                break;
            };
            let value_and_rest = &a[eq + 2..];
            let Some(close) = value_and_rest.find('"') else {
                problems.push(format!("unclosed attribute in <{tag}>"));
                break;
            };
            let value = &value_and_rest[..close];
            if value.contains('<') || !references_ok(value) {
                problems.push(format!("bad attribute value {value:?}"));
            }
            a = value_and_rest[close + 1..].trim_start();
        }
        if name.is_empty() {
            problems.push(format!("tag without a name: <{tag}>"));
        } else if !self_closing {
            stack.push(name);
        }
    }
    if !stack.is_empty() {
        problems.push(format!("left open: {stack:?}"));
    }
    problems
}

#[test]
fn the_xml_checker_in_these_tests_catches_what_it_should() {
    assert!(
        xml_problems("<?xml version=\"1.0\"?>\n<a b=\"x &amp; y\"><c/>t &lt;</a>\n").is_empty()
    );
    for bad in [
        "<a>\u{ffff}</a>",
        "<a>\u{1b}</a>",
        "<a>\u{fdd0}</a>",
        "<a>\u{1fffe}</a>",
        "<a>x & y</a>",
        "<a b=\"<\"/>",
        "<a><b></a>",
    ] {
        assert!(!xml_problems(bad).is_empty(), "{bad:?}");
    }
}

/// A copy of a two-term loss log whose second term is named with `name`.
fn log_with_term_named(dir: &Path, name: &str) -> PathBuf {
    let text = std::fs::read_to_string(fixture("logs/two_terms_30x.csv")).unwrap();
    assert!(text.starts_with("step,loss,loss_mse,loss_feature\n"));
    let path = dir.join("weird.csv");
    std::fs::write(&path, text.replacen("loss_feature", name, 1)).unwrap();
    path
}

#[test]
fn xml_outputs_stay_well_formed_whatever_a_log_column_is_named() {
    let dir = tempfile::tempdir().unwrap();
    // XML forbids U+FFFE, U+FFFF and C0 controls, discourages the other noncharacters and C1.
    let name =
        "loss_f\u{ffff}\u{fffe}\u{fdd0}\u{fdef}\u{1fffe}\u{10ffff}\u{1b}[31m\u{7f}\u{9b}<&\"'";
    let log = log_with_term_named(dir.path(), name);
    let report = dir.path().join("report.html");
    let o = run(&[
        "check",
        "--log",
        log.to_str().unwrap(),
        "--select",
        "loss-scale",
        "-q",
        "--no-timings",
        "--output-format",
        "junit",
        "--report",
        report.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let junit = stdout(&o);
    assert!(junit.contains("<failure"), "the finding is there: {junit}");
    let problems = xml_problems(&junit);
    assert!(problems.is_empty(), "{problems:?}\n{junit}");
    // What was escaped is still readable.
    assert!(
        junit.contains("loss_f\\u{ffff}\\u{fffe}\\u{fdd0}\\u{fdef}\\u{1fffe}\\u{10ffff}\\x1b[31m\\x7f\\u{9b}&lt;&amp;&quot;&apos;"),
        "{junit}"
    );
    // The HTML report (with its inline SVG plots) is HTML, not XML, but carries the same characters.
    let html = std::fs::read_to_string(&report).unwrap();
    assert!(
        html.contains("loss_f\\u{ffff}"),
        "the name is in the report"
    );
    let bad: Vec<String> = xml_problems(&html)
        .into_iter()
        .filter(|p| p.starts_with("U+"))
        .collect();
    assert!(bad.is_empty(), "{bad:?}");
}

#[test]
fn an_exception_text_with_terminal_escapes_prints_them_visibly_in_every_text_format() {
    let model = fixture("hostile/raises_escapes.pt");
    let data = fixture("data/regression.npz");
    let cause =
        "builtins.ValueError: \\x1b[31mcause in red\\x1b[0m \\x1b]0;retitled\\x07 still here";
    for format in ["text", "github", "junit"] {
        let o = run(&[
            "check",
            "--model",
            &model,
            "--data",
            &data,
            "--select",
            "overfit-batch",
            "-q",
            "--no-timings",
            "--color",
            "never",
            "--output-format",
            format,
        ]);
        assert_eq!(o.status.code(), Some(1), "{format}: {}", stderr(&o));
        let out = stdout(&o);
        assert!(out.contains(cause), "{format}: {out}");
        for raw in [0x1b, 0x07] {
            assert!(
                !o.stdout.contains(&raw) && !o.stderr.contains(&raw),
                "{format}: raw byte {raw:#x}"
            );
        }
    }
    // With colours, the report's own colours are the only escape sequences.
    let o = run(&[
        "check",
        "--model",
        &model,
        "--data",
        &data,
        "--select",
        "overfit-batch",
        "-q",
        "--color",
        "always",
    ]);
    let out = stdout(&o);
    assert!(out.contains(cause), "{out}");
    assert!(
        !out.contains("\u{1b}]0;") && !out.contains('\u{7}'),
        "{out:?}"
    );
    // The same text where the model refuses the data: an input error, in one visible line.
    let images = fixture("data/images.npz");
    let line = one_line_error(&run(&["check", "--model", &model, "--data", &images, "-q"]));
    assert!(
        line.contains("rejected data") && line.contains(cause),
        "{line}"
    );
}

#[test]
fn control_characters_in_the_config_are_named_and_never_printed_raw() {
    let dir = tempfile::tempdir().unwrap();
    let data = fixture("data/regression.npz");
    for (text, line, says) in [
        (
            "# a comment\u{0}\n",
            "1:12",
            "NUL character (U+0000) not allowed",
        ),
        (
            "[setup]\nlr = \"a\u{0}\"\n",
            "2:8",
            "NUL character (U+0000) not allowed",
        ),
        ("\u{0}", "1:1", "NUL character (U+0000) not allowed"),
        (
            "# \u{1b}[2J\n",
            "1:3",
            "control character U+001B not allowed",
        ),
    ] {
        let config = write(dir.path(), "trainlint.toml", text);
        let o = run(&["check", config.to_str().unwrap(), "--data", &data, "-q"]);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{err}");
        let first = err.lines().next().unwrap();
        assert!(
            first.starts_with("error: ")
                && first.contains(&format!("trainlint.toml:{line}: invalid TOML: {says}")),
            "{text:?}: {first}"
        );
        assert!(!first.ends_with(": "), "a reason is given: {first}");
        // The snippet shows the character as its symbol, with the caret under it.
        assert!(err.contains('␀') || err.contains('␛'), "{err}");
        assert!(
            !err.bytes().any(|b| b < 0x20 && b != b'\n'),
            "raw control bytes: {err:?}"
        );
    }
    // A key spelled with escapes reaches the message visibly.
    let config = write(
        dir.path(),
        "trainlint.toml",
        "[setup]\n\"\\u001b[31mlr\" = 1\n",
    );
    let o = run(&["check", config.to_str().unwrap(), "--data", &data, "-q"]);
    let err = stderr(&o);
    assert!(err.contains("unknown key `\\x1b[31mlr`"), "{err}");
    assert!(!err.contains('\u{1b}'), "{err:?}");
}

#[test]
fn an_empty_selection_is_said_on_stderr() {
    let dir = project();
    let p = dir.path();
    let warning = "warning: no check is selected";
    std::fs::write(
        p.join("trainlint.toml"),
        "[model]\npath = \"model.pt\"\n[run]\nselect = []\n",
    )
    .unwrap();
    let o = trainlint()
        .current_dir(p)
        .args(["check", ".", "-q", "--no-timings"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let lines: Vec<String> = stderr(&o).lines().map(String::from).collect();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].starts_with(warning), "{lines:?}");
    // Selected and then ignored, or every selected check at allow: nothing runs either.
    let dir = project();
    let o = check_in(dir.path(), &["--ignore", "init-std"]);
    assert!(stderr(&o).starts_with(warning), "{}", stderr(&o));
    // A selection that runs something says nothing.
    let o = check_in(dir.path(), &[]);
    assert_eq!(stderr(&o), "");
    // `--select ''` is a usage error, as in ruff, and says why.
    let line = one_line_error(&check_in(dir.path(), &["--select", ""]));
    assert!(line.contains("--select: an empty selector"), "{line}");
}

#[test]
fn a_config_path_that_is_no_regular_file_is_named_for_what_it_is() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("trainlint.toml");
    make_fifo(&fifo);
    let data = fixture("data/regression.npz");
    for config in ["/dev/zero", "/dev/null", fifo.to_str().unwrap()] {
        if !Path::new(config).exists() {
            continue;
        }
        let line = one_line_error(&run(&["check", config, "--data", &data, "-q"]));
        assert!(
            line.contains(&format!(
                "{config} is not a regular file (a device, a pipe or a socket)"
            )),
            "{line}"
        );
    }
    // Found by the upward search, it is refused too (reading a pipe would wait forever).
    let line = one_line_error(&run(&[
        "check",
        dir.path().to_str().unwrap(),
        "--data",
        &data,
        "-q",
    ]));
    assert!(line.contains("is not a regular file"), "{line}");
}

#[test]
fn sarif_uris_carry_the_raw_bytes_of_a_file_name() {
    let dir = tempfile::tempdir().unwrap();
    let log = log_with_term_named(dir.path(), "loss_feature");
    let name = OsStr::from_bytes(b"loss \xff%:\xc3\xa9.csv");
    let renamed = dir.path().join(name);
    std::fs::rename(&log, &renamed).unwrap();
    let o = trainlint()
        .current_dir(dir.path())
        .arg("check")
        .arg("--log")
        .arg(name)
        .args(["--select", "loss-scale", "-q", "--output-format", "sarif"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let sarif: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let uri = sarif["runs"][0]["results"][0]["locations"][0]["physicalLocation"]
        ["artifactLocation"]["uri"]
        .as_str()
        .unwrap_or_else(|| panic!("{sarif:#}"));
    assert_eq!(uri, "loss%20%FF%25%3A%C3%A9.csv");
}
