//! A TorchScript file is code: before a model runs, its graphs are scanned for ops with side effects
//! (file access, printing, network, ops from namespaces trainlint does not know), and a model that has
//! any is refused unless the user passes `--trust-model`.
//!
//! The policy lives here; `model` only lists what the archive holds (its source records, and every node
//! of every graph with the method and module it sits in), without running any of it.
//!
//! The policy, conservatively:
//! - ops from the namespaces `aten`, `prim` and `quantized` are allowed, except the ones below;
//!   every other namespace (custom ops loaded from a shared library, `c10d`, `profiler`, `cuda`, …) is
//!   refused, since trainlint cannot tell what it does;
//! - within those namespaces, file access (`aten::from_file`, `aten::save`, and any op whose schema
//!   takes a string argument named like a file or a path), printing (`prim::Print`, `aten::_print`)
//!   and remote calls (`prim::rpc_async`, `prim::rpc_sync`, `prim::rpc_remote`) are refused;
//! - allowed on purpose: `prim::RaiseException` (an error, reported as one), `aten::warn` (goes through
//!   libtorch's warning handler, which trainlint silences), in-process state such as
//!   `aten::manual_seed` or `prim::SetAttr` (it touches the model's own in-memory copy only);
//! - a `__setstate__` method anywhere in the archive refuses the model *before* it is loaded:
//!   `torch::jit::load` runs it while loading, so it cannot be scanned first.
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use crate::model::{self, GraphNode, ModelError, TorchScriptModel};

/// Namespaces whose ops compute on tensors and values only (minus [`SIDE_EFFECT_OPS`]).
const PURE_NAMESPACES: &[&str] = &["aten", "prim", "quantized"];

/// Ops in [`PURE_NAMESPACES`] that reach outside the process, with what they do.
const SIDE_EFFECT_OPS: &[(&str, &str)] = &[
    ("aten::from_file", "file access"),
    ("aten::save", "file access"),
    ("prim::Print", "printing"),
    ("aten::_print", "printing"),
    ("prim::rpc_async", "a remote call"),
    ("prim::rpc_sync", "a remote call"),
    ("prim::rpc_remote", "a remote call"),
];

#[derive(Debug, thiserror::Error)]
pub enum UntrustedModel {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("refusing to load {path}: it defines __setstate__ (in {record}), which libtorch runs while loading the model, before trainlint can scan it; a TorchScript model is code: pass --trust-model to load it anyway")]
    SetState { path: PathBuf, record: String },
    #[error("refusing to run {path}: a TorchScript model is code, and this one has side effects: {found}; pass --trust-model to run it anyway")]
    SideEffects { path: PathBuf, found: String },
    #[error("cannot scan the graphs of {path} for side effects ({reason}); pass --trust-model to run it without the scan")]
    Scan { path: PathBuf, reason: String },
}

/// An op the policy refuses, where it sits, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Refused {
    pub op: String,
    pub why: String,
    pub method: String,
    pub module: String,
}

/// Loads the model; unless `trust`, refuses one whose archive defines `__setstate__` (before loading)
/// or whose graphs hold an op with side effects (after loading, before anything runs).
pub fn load_model(
    path: &Path,
    device: &str,
    output: &str,
    trust: bool,
) -> Result<TorchScriptModel, UntrustedModel> {
    if !trust {
        vet_archive(path)?;
    }
    let mut loaded = TorchScriptModel::load(path, device, output)?;
    if !trust {
        let nodes = loaded
            .graph_nodes()
            .map_err(|reason| UntrustedModel::Scan {
                path: path.to_path_buf(),
                reason,
            })?;
        vet_graph(path, &nodes)?;
        loaded.scan_when_loaded_again();
    }
    Ok(loaded)
}

/// Refuses an archive that defines `__setstate__` (code that runs while libtorch loads it).
pub fn vet_archive(path: &Path) -> Result<(), UntrustedModel> {
    let sources = model::archive_sources(path)?;
    if let Some(record) = sources.iter().find(|r| r.text.contains("__setstate__")) {
        return Err(UntrustedModel::SetState {
            path: path.to_path_buf(),
            record: record.name.clone(),
        });
    }
    Ok(())
}

/// Refuses a loaded model whose graphs hold an op with side effects.
pub fn vet_graph(path: &Path, nodes: &[GraphNode]) -> Result<(), UntrustedModel> {
    let refused = refused_ops(nodes);
    if !refused.is_empty() {
        return Err(UntrustedModel::SideEffects {
            path: path.to_path_buf(),
            found: describe(&refused),
        });
    }
    Ok(())
}

/// Why the policy refuses `node`, or None when it allows it.
fn side_effect(node: &GraphNode) -> Option<String> {
    let namespace = node.op.split("::").next().unwrap_or_default();
    if !PURE_NAMESPACES.contains(&namespace) {
        return Some(format!("an op from the unknown namespace `{namespace}`"));
    }
    if let Some((_, why)) = SIDE_EFFECT_OPS.iter().find(|(op, _)| *op == node.op) {
        return Some(why.to_string());
    }
    path_argument(&node.schema).map(|arg| format!("file access: it takes a path `{arg}`"))
}

/// The first string argument of `schema` named like a file or a path (`str filename`, `str? path`).
fn path_argument(schema: &str) -> Option<&str> {
    let args = schema.split_once('(')?.1;
    let mut rest = args;
    while let Some(at) = rest.find("str") {
        let before = rest[..at].chars().last();
        let after = &rest[at + 3..];
        rest = after;
        if !matches!(before, None | Some('(' | ' ')) {
            continue;
        }
        let Some(named) = after.strip_prefix("? ").or_else(|| after.strip_prefix(' ')) else {
            continue;
        };
        let name = named
            .split(|c: char| !(c.is_alphanumeric() || c == '_'))
            .next()
            .unwrap_or_default();
        let lower = name.to_ascii_lowercase();
        if ["file", "path", "dir"].iter().any(|w| lower.contains(w)) {
            return Some(name);
        }
    }
    None
}

/// Every refused op with the first place it sits, in graph order, each op once per place.
pub fn refused_ops(nodes: &[GraphNode]) -> Vec<Refused> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for node in nodes {
        let Some(why) = side_effect(node) else {
            continue;
        };
        if seen.insert((node.op.clone(), node.method.clone(), node.module.clone())) {
            out.push(Refused {
                op: node.op.clone(),
                why,
                method: node.method.clone(),
                module: node.module.clone(),
            });
        }
    }
    out
}

/// "aten::from_file (file access) in `forward` of module `body.reader`; prim::Print (printing) in …",
/// each op once, at its first place, with a count of the other places. A function that a module method
/// calls is reported at that method; only ops that no module method reaches are named by function.
fn describe(refused: &[Refused]) -> String {
    let mut ops: Vec<&str> = Vec::new();
    for r in refused {
        if !ops.contains(&r.op.as_str()) {
            ops.push(&r.op);
        }
    }
    ops.iter()
        .map(|op| {
            let all: Vec<&Refused> = refused.iter().filter(|r| r.op == *op).collect();
            let in_modules: Vec<&Refused> =
                all.iter().copied().filter(|r| !is_function(r)).collect();
            let places = if in_modules.is_empty() {
                all
            } else {
                in_modules
            };
            let first = places[0];
            let more = match places.len() - 1 {
                0 => String::new(),
                n => format!(" (and {n} more place{})", if n == 1 { "" } else { "s" }),
            };
            format!("{op} ({}) in {}{more}", first.why, location(first))
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// A place named by a compilation unit function's qualified name (`__torch__.helper`), not a module's
/// method (method names have no dots).
fn is_function(r: &Refused) -> bool {
    r.module.is_empty() && r.method.contains('.')
}

fn location(r: &Refused) -> String {
    if is_function(r) {
        return format!("function `{}`", r.method);
    }
    match r.module.as_str() {
        "" => format!("`{}` of the root module", r.method),
        module => format!("`{}` of module `{module}`", r.method),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(op: &str, schema: &str, method: &str, module: &str) -> GraphNode {
        GraphNode {
            op: op.into(),
            schema: schema.into(),
            method: method.into(),
            module: module.into(),
        }
    }

    #[test]
    fn the_policy_allows_pure_namespaces_and_refuses_the_rest() {
        let allowed = [
            node(
                "aten::linear",
                "aten::linear(Tensor input, Tensor weight, Tensor? bias=None) -> Tensor",
                "forward",
                "",
            ),
            node("prim::RaiseException", "", "forward", ""),
            node(
                "aten::warn",
                "aten::warn(str message, int stacklevel=2) -> ()",
                "forward",
                "",
            ),
            node("prim::If", "", "forward", ""),
            node(
                "aten::format",
                "aten::format(str self, ...) -> str",
                "forward",
                "",
            ),
            node(
                "aten::__getitem__",
                "aten::__getitem__.Dict_str(Dict(str, t) self, str key) -> t(*)",
                "forward",
                "",
            ),
            node("quantized::linear", "", "forward", ""),
        ];
        assert_eq!(refused_ops(&allowed), vec![]);
        let refused = [
            node("aten::from_file", "aten::from_file(str filename, bool? shared=None, int? size=0, *, ScalarType? dtype=None) -> Tensor", "forward", "body.reader"),
            node("prim::Print", "", "forward", ""),
            node("myops::exfiltrate", "", "helper", "head"),
            node("aten::future_op", "aten::future_op(Tensor self, str? log_path) -> Tensor", "forward", ""),
        ];
        let found = refused_ops(&refused);
        assert_eq!(found.len(), 4, "{found:?}");
        assert_eq!(found[3].why, "file access: it takes a path `log_path`");
        let text = describe(&found);
        assert!(text.starts_with("aten::from_file (file access) in `forward` of module `body.reader`; prim::Print (printing) in `forward` of the root module"), "{text}");
        assert!(text.contains("myops::exfiltrate (an op from the unknown namespace `myops`) in `helper` of module `head`"), "{text}");
    }

    #[test]
    fn each_op_is_named_once_with_a_count_of_its_other_places() {
        let nodes = [
            node("prim::Print", "", "forward", "a"),
            node("prim::Print", "", "forward", "a"),
            node("prim::Print", "", "forward", "b"),
            node("prim::Print", "", "__torch__.helper", ""),
        ];
        assert_eq!(
            describe(&refused_ops(&nodes)),
            "prim::Print (printing) in `forward` of module `a` (and 1 more place)"
        );
        let only_in_a_function = [node("aten::save", "", "__torch__.Saver.save", "")];
        assert_eq!(
            describe(&refused_ops(&only_in_a_function)),
            "aten::save (file access) in function `__torch__.Saver.save`"
        );
        assert_eq!(
            location(&refused_ops(&nodes)[2]),
            "function `__torch__.helper`"
        );
    }

    #[test]
    fn every_healthy_fixture_passes_the_scan() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut scanned = 0;
        let models = std::fs::read_dir(root.join("fixtures/models"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .chain([root.join("examples/demo/model.pt")]);
        for path in models {
            if path.extension().is_none_or(|e| e != "pt") {
                continue;
            }
            match load_model(&path, "cpu", "", false) {
                Ok(_) => scanned += 1,
                // Not a TorchScript model at all (state_dict.pt): refused as before, not by the scan.
                Err(UntrustedModel::Model(_)) => {}
                Err(e) => panic!("{}: {e}", path.display()),
            }
        }
        assert!(scanned >= 30, "only {scanned} models scanned");
    }
}
