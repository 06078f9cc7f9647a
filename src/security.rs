//! A TorchScript file is code: before a model runs, trainlint reads what loading it would do and what
//! its graphs can do, and refuses a model with side effects unless the user passes `--trust-model`.
//!
//! The decisions live here; `model` lists what the archive holds (its records, read by libtorch's own
//! reader without running anything) and every node of every graph with the method and module it sits
//! in, and `model::policy` says which ops and custom classes run without trust (below).
//!
//! Before libtorch loads the archive (`model::archive::inspect`):
//! - always, `--trust-model` or not: records whose names libtorch cannot tell apart (it compares them
//!   case-insensitively), tensor records shorter than the storage their pickle declares (libtorch
//!   would read past them) and records that unpack to more than 16× the file (and 64 MiB beyond it: a
//!   zip bomb) refuse the model as damaged;
//! - unless trusted: a `__setstate__` in any source record libtorch could load (`*.py` in any case),
//!   an object of a C++ custom class in a pickle (its native `__setstate__` runs on load; libtorch's
//!   quantized packed parameters excepted, see below) and a pickled
//!   sparse tensor (rebuilt without checking its indices) refuse the model before it is loaded, and so
//!   does a source record or pickle the scan cannot read.
//!
//! After loading, before anything runs, every node of every graph, conservatively:
//! - ops from the namespaces `aten`, `prim` and `quantized` are allowed, except the ones below;
//!   every other namespace (custom ops loaded from a shared library, `c10d`, `profiler`, `cuda`, …) is
//!   refused, since trainlint cannot tell what it does;
//! - within those namespaces, file access (`aten::from_file`, `aten::save`, and any op whose schema
//!   takes a string argument named like a file or a path), printing (`prim::Print`, `aten::_print`)
//!   and remote calls (`prim::rpc_async`, `prim::rpc_sync`, `prim::rpc_remote`) are refused;
//! - ops that skip the invariant checks keeping libtorch inside its memory are refused: sparse
//!   construction, every `_unsafe` / `unsafe_` op, `set_`, the `as_strided` family and nested tensors
//!   viewed from a buffer;
//! - constructing a C++ custom class (`torch.classes.*`) or calling one of its methods is refused: its
//!   methods are native code (one of libtorch's own `dlopen`s a library found on `LD_LIBRARY_PATH`);
//!   libtorch's quantized packed parameters (`torch.classes.quantized.*`) are allowed here and in the
//!   pickles, as the `quantized::` ops that use them are;
//! - allowed on purpose: `prim::RaiseException` (an error, reported as one), `aten::warn` (goes through
//!   libtorch's warning handler, which trainlint silences), in-process state such as
//!   `aten::manual_seed` or `prim::SetAttr` (it touches the model's own in-memory copy only).
use std::path::{Path, PathBuf};

use crate::model::archive;
use crate::model::policy::refused_ops;
pub use crate::model::policy::Refused;
use crate::model::{
    self, GraphNode, LoadPolicy, LoadedModel, ModelError, Refusal, TorchScriptModel,
};

#[derive(Debug, thiserror::Error)]
pub enum UntrustedModel {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("refusing to load {path}: {what}, before trainlint can scan it; a TorchScript model is code: pass --trust-model to load it anyway")]
    RunsOnLoad { path: PathBuf, what: String },
    #[error("refusing to load {path}: the archive is damaged: {reason}")]
    Damaged { path: PathBuf, reason: String },
    #[error("refusing to run {path}: a TorchScript model is code, and this one has side effects: {found}; pass --trust-model to run it anyway")]
    SideEffects { path: PathBuf, found: String },
    #[error("cannot scan {path} for side effects ({reason}); pass --trust-model to run it without the scan")]
    Scan { path: PathBuf, reason: String },
}

/// Loads the model: a `torch.export` program (no code; its ops go through the same policy, applied
/// when it is compiled: see `model::pt2_run::refused_op`), or a TorchScript model after
/// [`vet_archive`]; unless `trust`, refuses one whose graphs hold an op with side effects (after
/// loading, before anything runs).
pub fn load_model(
    path: &Path,
    device: &str,
    output: &str,
    trust: bool,
) -> Result<LoadedModel, UntrustedModel> {
    if model::is_exported_program(path) {
        return Ok(LoadedModel::Exported(model::load_exported(
            path, device, output, trust,
        )?));
    }
    load_torchscript(path, device, output, trust).map(LoadedModel::TorchScript)
}

/// [`load_model`] for a TorchScript file.
fn load_torchscript(
    path: &Path,
    device: &str,
    output: &str,
    trust: bool,
) -> Result<TorchScriptModel, UntrustedModel> {
    vet_archive(path, trust)?;
    let mut loaded = TorchScriptModel::load(path, device, output)?;
    if !trust {
        let nodes = loaded
            .graph_nodes()
            .map_err(|reason| UntrustedModel::Scan {
                path: path.to_path_buf(),
                reason: reason.to_string(),
            })?;
        vet_graph(path, &nodes)?;
    }
    // A large model's copies load the file again: the same vetting, passed in.
    fn archive_trusted(path: &Path) -> Result<(), Refusal> {
        Ok(vet_archive(path, true)?)
    }
    fn archive_untrusted(path: &Path) -> Result<(), Refusal> {
        Ok(vet_archive(path, false)?)
    }
    fn graph(path: &Path, nodes: &[GraphNode]) -> Result<(), Refusal> {
        Ok(vet_graph(path, nodes)?)
    }
    loaded.vet_when_loaded_again(if trust {
        LoadPolicy {
            archive: archive_trusted,
            graph: None,
        }
    } else {
        LoadPolicy {
            archive: archive_untrusted,
            graph: Some(graph),
        }
    });
    Ok(loaded)
}

/// Reads the archive before libtorch loads it: refuses damage whatever `trust` says, and unless
/// `trust`, code that would run while loading and parts the scan cannot read.
fn vet_archive(path: &Path, trust: bool) -> Result<(), UntrustedModel> {
    let records = model::archive_records(path)?;
    let file_bytes = std::fs::metadata(path).map_or(0, |m| m.len());
    let found = archive::inspect(&records, file_bytes);
    if let Some(reason) = found.damaged.into_iter().next() {
        return Err(UntrustedModel::Damaged {
            path: path.to_path_buf(),
            reason,
        });
    }
    if trust {
        return Ok(());
    }
    if let Some(code) = found.runs_on_load.first() {
        return Err(UntrustedModel::RunsOnLoad {
            path: path.to_path_buf(),
            what: code.describe(),
        });
    }
    if let Some(reason) = found.unscanned.into_iter().next() {
        return Err(UntrustedModel::Scan {
            path: path.to_path_buf(),
            reason,
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
            node("aten::to_dense", "", "forward", ""),
            node("aten::to_sparse", "", "forward", ""),
            node("aten::chunk", "", "forward", ""),
            node("aten::view", "", "forward", ""),
            node("prim::CreateObject", "", "forward", ""),
            node("prim::CallMethod", "", "forward", ""),
        ];
        assert_eq!(refused_ops(&allowed), vec![]);
        let unchecked = [
            "aten::sparse_coo_tensor",
            "aten::_sparse_coo_tensor_unsafe",
            "aten::_sparse_coo_tensor_with_dims_and_tensors",
            "aten::sparse_csr_tensor",
            "aten::sparse_compressed_tensor",
            "aten::sparse_resize_",
            "aten::_unsafe_index",
            "aten::unsafe_split",
            "aten::set_",
            "aten::as_strided",
            "aten::as_strided_",
            "aten::_nested_view_from_buffer",
        ];
        for op in unchecked {
            let found = refused_ops(&[node(op, "", "forward", "")]);
            assert!(
                found.len() == 1 && found[0].why.starts_with("unchecked memory"),
                "{op}: {found:?}"
            );
        }
        let custom = refused_ops(&[node(
            "torch.classes._nnapi.Compilation.init",
            "",
            "forward",
            "",
        )]);
        assert_eq!(
            custom[0].why,
            "a method of the C++ custom class `torch.classes._nnapi.Compilation`, which runs native code"
        );
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
