//! What a model's ops may do without `--trust-model`: the op policy that [`crate::security`] applies
//! to a TorchScript model's graphs after loading, that the `.pt2` interpreter applies to a program's
//! nodes before it compiles them, and that the archive scan applies to pickled custom classes. Pure
//! functions of the graph's nodes, below both the loaders and the load decisions.
use std::collections::BTreeSet;

use super::GraphNode;

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

/// An op the policy refuses, where it sits, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Refused {
    pub op: String,
    pub why: String,
    pub method: String,
    pub module: String,
}

/// Whether objects of the C++ custom class `torch.classes.<namespace>.…` may be loaded and called
/// without `--trust-model`: libtorch's own quantized packed parameters (`quantized.LinearPackedParamsBase`
/// and its kin, what every quantized model holds) run the same kernels as the `quantized::` ops the
/// policy allows.
pub fn allowed_custom_class(namespace_and_class: &str) -> bool {
    namespace_and_class.starts_with("quantized.")
}

/// Why the policy refuses `node`, or None when it allows it.
fn side_effect(node: &GraphNode) -> Option<String> {
    if let Some(class) = node.op.strip_prefix("torch.classes.") {
        let class = class.rsplit_once('.').map_or(class, |(class, _)| class);
        if allowed_custom_class(class) {
            return None;
        }
        return Some(format!(
            "a method of the C++ custom class `torch.classes.{class}`, which runs native code"
        ));
    }
    if let Some(why) = node.op.strip_prefix("aten::").and_then(unchecked) {
        return Some(why.to_string());
    }
    let namespace = node.op.split("::").next().unwrap_or_default();
    if !PURE_NAMESPACES.contains(&namespace) {
        return Some(format!("an op from the unknown namespace `{namespace}`"));
    }
    if let Some((_, why)) = SIDE_EFFECT_OPS.iter().find(|(op, _)| *op == node.op) {
        return Some(why.to_string());
    }
    path_argument(&node.schema).map(|arg| format!("file access: it takes a path `{arg}`"))
}

/// Why an aten op (`name` without the namespace) is refused for skipping the invariant checks that
/// keep libtorch inside its memory: a sparse tensor with an out-of-range index, a view past its storage
/// or offsets into a foreign buffer crash the process or read its heap.
fn unchecked(name: &str) -> Option<&'static str> {
    let sparse_construction = name.contains("sparse")
        && (name.ends_with("_tensor") || name.contains("_tensor_") || name.contains("resize"));
    if sparse_construction {
        return Some("unchecked memory: it builds a sparse tensor without checking its indices");
    }
    if name.contains("unsafe") {
        return Some("unchecked memory: an `unsafe` op skips its checks");
    }
    if matches!(
        name,
        "set_" | "as_strided" | "as_strided_" | "as_strided_scatter" | "as_strided_copy"
    ) || name.starts_with("_nested_view_from")
    {
        return Some("unchecked memory: it points a tensor at storage it does not check");
    }
    None
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
