//! `torch.export` programs (`.pt2`, issue 25 stage 1): `trainlint check` reads them and refuses them
//! with one line saying what they hold (nothing runs them yet), and a damaged or hostile `.pt2`, built
//! here at run time from the committed fixtures (`fixtures/make_pt2.py`), gets its one-line reason.
mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::archives::{zip, Member};
use common::project::{one_line_error, snapshot};
use common::*;
use serde_json::Value;

/// A zip's members, in order, as (name, bytes).
type Members = Vec<(String, Vec<u8>)>;

/// The fixture's members.
fn members(name: &str) -> Members {
    let file = std::fs::File::open(fixture(&format!("models/pt2/{name}.pt2"))).unwrap();
    let mut archive = ::zip::ZipArchive::new(file).unwrap();
    (0..archive.len())
        .map(|i| {
            let mut entry = archive.by_index(i).unwrap();
            let mut bytes = Vec::new();
            std::io::Read::read_to_end(&mut entry, &mut bytes).unwrap();
            (entry.name().to_string(), bytes)
        })
        .collect()
}

fn member<'a>(members: &'a mut [(String, Vec<u8>)], suffix: &str) -> &'a mut Vec<u8> {
    &mut members
        .iter_mut()
        .find(|(n, _)| n.ends_with(suffix))
        .unwrap_or_else(|| panic!("no member {suffix}"))
        .1
}

/// Parses a JSON member, lets `edit` change it, writes it back.
fn edit_json(members: &mut [(String, Vec<u8>)], suffix: &str, edit: impl FnOnce(&mut Value)) {
    let bytes = member(members, suffix);
    let mut v: Value = serde_json::from_slice(bytes).unwrap();
    edit(&mut v);
    *bytes = serde_json::to_vec(&v).unwrap();
}

fn without(members: Members, suffix: &str) -> Members {
    let before = members.len();
    let kept: Vec<_> = members
        .into_iter()
        .filter(|(n, _)| !n.ends_with(suffix))
        .collect();
    assert_eq!(kept.len() + 1, before, "{suffix} removed once");
    kept
}

/// A zip of `members` (stored); the member ending in `huge`, if any, declares 1 TiB.
fn write_zip(path: &Path, members: &[(String, Vec<u8>)], huge: Option<&str>) {
    let entries: Vec<Member> = members
        .iter()
        .map(|(n, b)| {
            let mut m = Member::stored(n, b.clone());
            if huge.is_some_and(|h| n.ends_with(h)) {
                m.size = 1 << 40;
                m.local_size = 1 << 40;
            }
            m
        })
        .collect();
    std::fs::write(path, zip(&entries)).unwrap();
}

fn check_model(dir: &Path, model: &str) -> Output {
    trainlint()
        .current_dir(dir)
        .args(["check", "--model", model, "--no-timings"])
        .output()
        .expect("trainlint runs")
}

/// Runs `check` on `file` in its folder: exit 2 with one line, nothing written or changed there.
fn refused(dir: &Path, file: &str) -> String {
    let before = snapshot(dir);
    let o = check_model(dir, file);
    let line = one_line_error(&o);
    assert!(stdout(&o).is_empty(), "{file}: nothing is reported");
    assert_eq!(snapshot(dir), before, "{file}: nothing written or changed");
    line
}

fn copy_fixture(dir: &Path, name: &str, to: &str) -> PathBuf {
    let path = dir.join(to);
    std::fs::copy(fixture(&format!("models/pt2/{name}.pt2")), &path).unwrap();
    path
}

/// Runs `check` on `file` in its folder with the JSON report: it is audited (exit 0 or 1, never 2), and
/// nothing is written or changed there.
fn audited(dir: &Path, file: &str) -> Value {
    let before = snapshot(dir);
    let o = trainlint()
        .current_dir(dir)
        .args([
            "check",
            "--model",
            file,
            "--no-timings",
            "--output-format",
            "json",
        ])
        .output()
        .expect("trainlint runs");
    assert!(
        matches!(o.status.code(), Some(0 | 1)),
        "{file}: {:?} {}",
        o.status,
        stderr(&o)
    );
    assert_eq!(snapshot(dir), before, "{file}: nothing written or changed");
    serde_json::from_str(&stdout(&o)).expect("a JSON report")
}

/// The status of check `id` in a JSON report.
fn status<'a>(report: &'a Value, id: &str) -> &'a str {
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == id)
        .and_then(|c| c["status"].as_str())
        .unwrap_or_else(|| panic!("no check {id}"))
}

#[test]
fn check_runs_each_exported_program() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["mlp", "convbn", "tied", "nograd"] {
        copy_fixture(dir.path(), name, "model.pt2");
        let report = audited(dir.path(), "model.pt2");
        // With a model alone, the model's own checks judge it.
        assert_eq!(status(&report, "init-std"), "passed", "{name}");
        assert_eq!(report["inputs"]["model"], "model.pt2", "{name}");
    }
}

#[test]
fn an_exported_program_is_recognised_by_content_not_by_name() {
    let dir = tempfile::tempdir().unwrap();
    copy_fixture(dir.path(), "mlp", "model.pt");
    let report = audited(dir.path(), "model.pt");
    assert_eq!(status(&report, "init-std"), "passed");
}

#[test]
fn a_torchscript_model_named_pt2_still_runs() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        fixture("models/ae_bottleneck.pt"),
        dir.path().join("ts.pt2"),
    )
    .unwrap();
    let o = check_model(dir.path(), "ts.pt2");
    assert_ne!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(!stderr(&o).contains("torch.export"), "{}", stderr(&o));
}

/// A hostile variant of a fixture: its members after `edit`, with a declared size of 1 TiB on the
/// member named by `huge`.
struct Case {
    what: &'static str,
    fixture: &'static str,
    edit: fn(Members) -> Members,
    huge: Option<&'static str>,
    says: &'static str,
}

#[test]
fn damaged_or_hostile_programs_give_their_reason_in_one_line() {
    let cases = [
        Case {
            what: "a truncated storage",
            fixture: "mlp",
            edit: |mut m| {
                member(&mut m, "data/weights/weight_0").truncate(8);
                m
            },
            huge: None,
            says: "reaches byte 512 of `data/weights/weight_0`, which holds 8 bytes",
        },
        Case {
            what: "a storage offset past the end",
            fixture: "convbn",
            edit: |mut m| {
                edit_json(&mut m, "model_weights_config.json", |v| {
                    v["config"]["bn.running_mean"]["tensor_meta"]["storage_offset"] =
                        serde_json::json!({"as_int": 1_000_000});
                });
                m
            },
            huge: None,
            says: "tensor bn.running_mean reaches byte 4000032",
        },
        Case {
            what: "a stride that reaches past the end",
            fixture: "mlp",
            edit: |mut m| {
                edit_json(&mut m, "model_weights_config.json", |v| {
                    v["config"]["fc1.weight"]["tensor_meta"]["strides"][0] =
                        serde_json::json!({"as_int": i64::MAX});
                });
                m
            },
            huge: None,
            says: "tensor fc1.weight reaches byte",
        },
        Case {
            what: "a negative size",
            fixture: "mlp",
            edit: |mut m| {
                edit_json(&mut m, "model_weights_config.json", |v| {
                    v["config"]["fc2.bias"]["tensor_meta"]["sizes"][0] =
                        serde_json::json!({"as_int": -4});
                });
                m
            },
            huge: None,
            says: "tensor fc2.bias has a negative size -4",
        },
        Case {
            what: "an empty tensor whose shape overflows",
            fixture: "mlp",
            edit: |mut m| {
                edit_json(&mut m, "model_weights_config.json", |v| {
                    let meta = &mut v["config"]["fc2.bias"]["tensor_meta"];
                    meta["sizes"] = serde_json::json!([{"as_int": 0}, {"as_int": i64::MAX}, {"as_int": 2}]);
                    meta["strides"] = serde_json::json!([{"as_int": 1}, {"as_int": 1}, {"as_int": 1}]);
                });
                m
            },
            huge: None,
            says: "tensor fc2.bias has a shape [0, 9223372036854775807, 2] whose element count overflows 64 bits",
        },
        Case {
            what: "an unknown schema major version",
            fixture: "mlp",
            edit: |mut m| {
                edit_json(&mut m, "models/model.json", |v| {
                    v["schema_version"] = serde_json::json!({"major": 9, "minor": 0});
                });
                m
            },
            huge: None,
            says: "schema version 9.0 is not supported: trainlint reads schema 8.x (PyTorch 2.13 writes 8.20)",
        },
        Case {
            what: "a newer minor version with an unknown argument kind",
            fixture: "mlp",
            edit: |mut m| {
                edit_json(&mut m, "models/model.json", |v| {
                    v["schema_version"]["minor"] = 99.into();
                    v["graph_module"]["graph"]["nodes"][0]["inputs"][0]["arg"] =
                        serde_json::json!({"as_foo": 1});
                });
                m
            },
            huge: None,
            says: "unknown variant `as_foo`",
        },
        Case {
            what: "a node reading a value nothing defines",
            fixture: "mlp",
            edit: |mut m| {
                edit_json(&mut m, "models/model.json", |v| {
                    v["graph_module"]["graph"]["nodes"][1]["inputs"][0]["arg"] =
                        serde_json::json!({"as_tensor": {"name": "nowhere"}});
                });
                m
            },
            huge: None,
            says: "reads `nowhere`, which no earlier node or input defines",
        },
        Case {
            what: "a subgraph node reading a value its subgraph does not define",
            fixture: "nograd",
            edit: |mut m| {
                edit_json(&mut m, "models/model.json", |v| {
                    let hop = &mut v["graph_module"]["graph"]["nodes"][2];
                    assert_eq!(hop["inputs"][1]["name"], "");
                    hop["inputs"][1]["arg"]["as_graph"]["graph"]["nodes"][0]["inputs"][0]["arg"] =
                        serde_json::json!({"as_tensor": {"name": "x"}});
                });
                m
            },
            huge: None,
            says: "reads `x`, which no earlier node or input defines",
        },
        Case {
            what: "a node redefining a value",
            fixture: "mlp",
            edit: |mut m| {
                edit_json(&mut m, "models/model.json", |v| {
                    v["graph_module"]["graph"]["nodes"][1]["outputs"][0] =
                        serde_json::json!({"as_tensor": {"name": "linear"}});
                });
                m
            },
            huge: None,
            says: "defines `linear`, which an earlier node or input already defines",
        },
        Case {
            what: "subgraphs nested 20,000 deep",
            fixture: "mlp",
            edit: |mut m| {
                let json = member(&mut m, "models/model.json");
                let text = String::from_utf8(json.clone()).unwrap();
                let open = r#"{"as_graph": {"name": "g", "graph": {"inputs": [], "outputs": [], "nodes": [{"target": "torch.ops.higher_order.cond", "outputs": [], "inputs": [{"name": "", "arg": "#;
                let close = "}]}]}}}";
                let deep = format!("{}{{\"as_none\": true}}{}", open.repeat(20_000), close.repeat(20_000));
                let first_arg = r#"{"as_tensor": {"name": "x"}}"#;
                assert!(text.contains(first_arg));
                *json = text.replacen(first_arg, &deep, 1).into_bytes();
                m
            },
            huge: None,
            says: "recursion limit exceeded",
        },
        Case {
            what: "a node target outside torch.ops",
            fixture: "mlp",
            edit: |mut m| {
                edit_json(&mut m, "models/model.json", |v| {
                    v["graph_module"]["graph"]["nodes"][0]["target"] = "builtins.eval".into();
                });
                m
            },
            huge: None,
            says: "node target \"builtins.eval\" is not supported yet",
        },
        Case {
            what: "a pickled weight",
            fixture: "mlp",
            edit: |mut m| {
                edit_json(&mut m, "model_weights_config.json", |v| {
                    v["config"]["fc1.bias"]["use_pickle"] = true.into();
                });
                m
            },
            huge: None,
            says: "tensor fc1.bias is stored as a pickle",
        },
        Case {
            what: "the program missing",
            fixture: "mlp",
            edit: |m| without(m, "models/model.json"),
            huge: None,
            says: "expected the program models/model.json, optionally with models/eval.json and models/as_saved.json; found none",
        },
        Case {
            what: "a storage missing",
            fixture: "convbn",
            edit: |m| without(m, "data/weights/weight_1"),
            huge: None,
            says: "member `data/weights/weight_1` is missing",
        },
        Case {
            what: "the weights config missing",
            fixture: "tied",
            edit: |m| without(m, "model_weights_config.json"),
            huge: None,
            says: "member `data/weights/model_weights_config.json` is missing",
        },
        Case {
            what: "the format marker missing (found by the .pt2 name)",
            fixture: "mlp",
            edit: |m| without(m, "/archive_format"),
            huge: None,
            says: "member `archive_format` is missing",
        },
        Case {
            what: "a big-endian archive",
            fixture: "mlp",
            edit: |mut m| {
                *member(&mut m, "/byteorder") = b"big".to_vec();
                m
            },
            huge: None,
            says: "member `byteorder` holds \"big\", expected \"little\"",
        },
        Case {
            what: "a storage declaring 1 TiB",
            fixture: "mlp",
            edit: |m| m,
            huge: Some("data/weights/weight_2"),
            says: "a zip bomb",
        },
        Case {
            what: "a program trainlint does not know",
            fixture: "twins/cnn_bn",
            edit: |mut m| {
                for (name, _) in m.iter_mut() {
                    if name.ends_with("models/eval.json") {
                        *name = name.replace("eval.json", "train.json");
                    }
                }
                m
            },
            huge: None,
            says: "optionally with models/eval.json and models/as_saved.json; found models/model.json, models/train.json",
        },
        Case {
            what: "an eval program reading a weight the main program does not hold",
            fixture: "twins/cnn_bn",
            edit: |mut m| {
                edit_json(&mut m, "models/eval.json", |v| {
                    v["graph_module"]["signature"]["input_specs"][0]["parameter"]["parameter_name"] =
                        "ghost.weight".into();
                });
                edit_json(&mut m, "data/weights/eval_weights_config.json", |v| {
                    let config = v["config"].as_object_mut().unwrap();
                    let meta = config.remove("conv1.weight").unwrap();
                    config.insert("ghost.weight".into(), meta);
                });
                m
            },
            huge: None,
            says: "program `eval` does not match the main program: it reads ghost.weight, which the main program does not hold",
        },
        Case {
            what: "module metadata of another version",
            fixture: "twins/cnn_bn",
            edit: |mut m| {
                edit_json(&mut m, "extra/trainlint.json", |v| v["version"] = 2.into());
                m
            },
            huge: None,
            says: "extra/trainlint.json: version 2 is not supported (trainlint reads version 1)",
        },
        Case {
            what: "module metadata without the root module first",
            fixture: "twins/cnn_bn",
            edit: |mut m| {
                edit_json(&mut m, "extra/trainlint.json", |v| {
                    v["modules"].as_array_mut().unwrap().remove(0);
                });
                m
            },
            huge: None,
            says: "extra/trainlint.json: the module list must start with the root module",
        },
        Case {
            what: "module metadata with a field trainlint does not know",
            fixture: "twins/cnn_bn",
            edit: |mut m| {
                edit_json(&mut m, "extra/trainlint.json", |v| {
                    v["modules"][0]["code"] = "import os".into();
                });
                m
            },
            huge: None,
            says: "member `extra/trainlint.json` cannot be parsed: unknown field `code`",
        },
        Case {
            what: "weights pickled in one file (PyTorch 2.8's layout)",
            fixture: "mlp",
            edit: |m| {
                let mut m = without(m, "data/weights/model_weights_config.json");
                let root = m[0].0.split('/').next().unwrap().to_string();
                m.push((format!("{root}/data/weights/model.pt"), b"PK".to_vec()));
                m
            },
            huge: None,
            says: "data/weights/model.pt (the layout PyTorch 2.8 and older write), which trainlint never unpickles",
        },
        Case {
            what: "members under two folders",
            fixture: "mlp",
            edit: |mut m| {
                m.push(("other/x".into(), b"x".to_vec()));
                m
            },
            huge: None,
            says: "its members must sit under one folder, found 2 top-level entries",
        },
    ];
    let dir = tempfile::tempdir().unwrap();
    for case in cases {
        let m = (case.edit)(members(case.fixture));
        write_zip(&dir.path().join("model.pt2"), &m, case.huge);
        let line = refused(dir.path(), "model.pt2");
        assert!(line.contains(case.says), "{}: {line}", case.what);
        assert!(
            line.starts_with("error: model.pt2 "),
            "{}: {line}",
            case.what
        );
    }
}

#[test]
fn a_pt2_that_is_no_zip_says_so() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("model.pt2"), b"not a zip at all").unwrap();
    let line = refused(dir.path(), "model.pt2");
    assert!(
        line.starts_with(
            "error: model.pt2 cannot be read as a torch.export program: it is not a readable zip archive"
        ),
        "{line}"
    );
}

#[test]
fn a_configured_model_path_and_the_graph_command_read_it_too() {
    let dir = tempfile::tempdir().unwrap();
    copy_fixture(dir.path(), "tied", "m.pt2");
    write(dir.path(), "trainlint.toml", "[model]\npath = \"m.pt2\"\n");
    let before = snapshot(dir.path());
    let o = trainlint()
        .current_dir(dir.path())
        .args(["check", "--no-timings", "--output-format", "json"])
        .output()
        .unwrap();
    assert!(matches!(o.status.code(), Some(0 | 1)), "{}", stderr(&o));
    let o = trainlint()
        .current_dir(dir.path())
        .args(["graph", "--model", "m.pt2", "--format", "json"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let view: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert!(view.to_string().contains("Linear"), "{view}");
    assert_eq!(snapshot(dir.path()), before);
}

#[test]
fn a_zip_directory_larger_than_a_program_needs_is_refused_before_it_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.pt2");
    write_zip(&path, &members("mlp"), None);
    let mut bytes = std::fs::read(&path).unwrap();
    let end = bytes.len() - 22;
    assert_eq!(&bytes[end..end + 4], b"PK\x05\x06");
    bytes[end + 12..end + 16].copy_from_slice(&(32u32 << 20).to_le_bytes());
    std::fs::write(&path, bytes).unwrap();
    let line = refused(dir.path(), "model.pt2");
    assert!(
        line.contains("its zip directory lists 13 members in 33554432 bytes; a program needs at most 65536 members in 16777216 bytes"),
        "{line}"
    );
}
