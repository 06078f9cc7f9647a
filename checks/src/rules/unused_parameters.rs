//! unused-parameters: every trainable parameter is read somewhere in forward.
use std::collections::BTreeMap;

use super::prelude::*;
use crate::graph::ModuleGraph;

pub struct UnusedParameters;

static INFO: CheckInfo = CheckInfo {
    id: "unused-parameters",
    group: Group::Model,
    default_level: Level::Deny,
    summary: "Every trainable parameter is read by forward",
    docs: Docs {
        what: "Walks forward's TorchScript graph with every submodule call followed (both branches of \
every `if`, every loop body) and lists the trainable parameters that no path reads as an attribute: usually a \
module that is never called, sometimes a module that is called but never reads one of its own \
parameters. A module that reads a list of tensors (an RNN's `_flat_weights`) counts as reading all its \
parameters. Frozen parameters (requires_grad = false) are not judged. \
Parameters that forward reads but whose gradient is cut (`.detach()`, a multiplication by 0) are \
`gradient-flow`'s findings, not this check's; gradient-flow leaves the parameters reported here to it.",
        why: "A layer defined in `__init__` but never called in forward never trains, costs memory and \
optimizer state, makes DistributedDataParallel fail (`find_unused_parameters`), and usually means the \
forward is not the network the author meant.",
        details: include_str!("unused_parameters.md"),
    },
    kinds: &[&NeverUsed::KIND],
    ..CheckInfo::PLAIN
};

/// Options of unused-parameters.
#[derive(Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct UnusedParametersOptions {
    /// Modules or parameters unused on purpose, by dotted name (`*` matches any run of characters)
    pub allow: Vec<String>,
}

/// Trainable parameters that forward never uses: a layer defined but never called
///
/// # Why
/// A parameter forward never reads never trains: a layer defined in __init__ and forgotten in forward, a head
/// replaced without deleting the old one, a typo that calls another layer twice. It also makes
/// DistributedDataParallel fail unless find_unused_parameters is set.
///
/// # How
/// Error for each module whose trainable parameters no path of forward reads (any branch of an `if` counts as
/// read), from the TorchScript graph with every submodule call followed; the module is named with its type
/// and parameter count. Modules listed in `allow` are skipped; so are modules the graph cannot follow
/// (interfaces, containers indexed at run time), and the whole check when a call cannot be resolved.
///
/// # Fix
/// Call the layer in forward, delete it, or (when it is used only outside forward on purpose) list it in
/// `[checks.unused-parameters] allow` or an `[[ignore]]` entry with its module as location.
#[derive(Serialize, ViolationMetadata)]
#[kind(id = "unused-parameters/never-used", grade = error)]
#[kind(example(args = "--model fixtures/models/unused_layer.pt", severity = error, message = "module aux (Linear) is never called in forward: its 2 trainable parameters (4160 values) never train: aux.weight, aux.bias"))]
pub struct NeverUsed {
    pub module: String,
    /// The module's type, e.g. `Linear`.
    pub kind: String,
    pub parameters: Vec<String>,
    pub elements: i64,
    /// The module is never called (rather than called without reading these parameters).
    pub never_called: bool,
}

impl Violation for NeverUsed {
    fn message(&self) -> String {
        let what = if self.never_called {
            format!(
                "module {} ({}) is never called in forward",
                crate::finding::display_module(&self.module),
                self.kind
            )
        } else {
            format!(
                "module {} ({}) never reads these parameters in forward",
                crate::finding::display_module(&self.module),
                self.kind
            )
        };
        format!(
            "{what}: its {} trainable parameters ({} values) never train: {}",
            self.parameters.len(),
            self.elements,
            crate::finding::first_of(&self.parameters, 8)
        )
    }
    fn help(&self) -> String {
        format!(
            "call {} in forward or delete it; if it is unused on purpose, add it to \
[checks.unused-parameters] allow",
            crate::finding::display_module(&self.module)
        )
    }
}

/// `*` matches any run of characters (dots included); everything else matches itself.
fn glob_match(pattern: &str, name: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == name;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !name.starts_with(first) || name.len() < first.len() + last.len() || !name.ends_with(last) {
        return false;
    }
    let mut rest = &name[first.len()..name.len() - last.len()];
    for mid in &parts[1..parts.len() - 1] {
        match rest.find(mid) {
            Some(i) => rest = &rest[i + mid.len()..],
            None => return false,
        }
    }
    true
}

/// Whether `name` (a module or parameter path) is allowed by a pattern, itself or through a module
/// above it.
fn allowed(allow: &[String], name: &str) -> bool {
    let mut prefixes = vec![name];
    prefixes.extend(name.match_indices('.').map(|(i, _)| &name[..i]));
    allow
        .iter()
        .any(|p| prefixes.iter().any(|n| glob_match(p, n)))
}

/// The trainable parameters forward never reads, by owning module, from a complete graph.
pub fn unused_trainable(
    graph: &ModuleGraph,
    params: &[NamedTensor],
) -> BTreeMap<String, Vec<(String, i64)>> {
    let mut out: BTreeMap<String, Vec<(String, i64)>> = BTreeMap::new();
    if !graph.complete() {
        return out;
    }
    for (name, p) in params {
        if p.requires_grad() && !graph.may_use(name) {
            let module = name.rsplit_once('.').map_or("", |(m, _)| m).to_string();
            out.entry(module)
                .or_default()
                .push((name.clone(), p.numel() as i64));
        }
    }
    out
}

impl Check for UnusedParameters {
    type Options = UnusedParametersOptions;

    const INFO: &'static CheckInfo = &INFO;

    fn run(&self, ctx: &Context, options: &UnusedParametersOptions) -> CheckOutput {
        let model = ctx.model()?;
        let graph = ModuleGraph::of(model)?;
        if !graph.complete() {
            return Err(CheckError::skip(format!(
                "the forward graph cannot be followed everywhere ({})",
                graph.unresolved.join("; ")
            )));
        }
        let params = model.parameters()?;
        if !params.iter().any(|(_, p)| p.requires_grad()) {
            return Err(CheckError::skip("the model has no trainable parameters"));
        }
        let called = graph.calls_by_module();
        let kinds: BTreeMap<&str, &str> = model
            .modules()
            .iter()
            .map(|m| (m.path.as_str(), m.kind.as_str()))
            .collect();
        let mut findings = Vec::new();
        for (module, unused) in unused_trainable(&graph, &params) {
            let names: Vec<String> = unused
                .iter()
                .map(|(n, _)| n.clone())
                .filter(|n| !allowed(&options.allow, n))
                .collect();
            if names.is_empty() {
                continue;
            }
            let kind = kinds.get(module.as_str()).copied().unwrap_or_default();
            let elements = unused
                .iter()
                .filter(|(n, _)| !allowed(&options.allow, n))
                .map(|(_, k)| k)
                .sum();
            let v = NeverUsed {
                never_called: !called.contains_key(module.as_str()),
                module: module.clone(),
                kind: kind.to_string(),
                parameters: names,
                elements,
            };
            let mut at = Location::parameter(&v.parameters[0]);
            at.module = Some(crate::finding::display_module(&module));
            findings.push(Finding::new(&v, at));
        }
        Ok(CheckResult::with_findings(findings))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_whole_names_and_modules_above() {
        assert!(glob_match("aux*", "aux_head"));
        assert!(glob_match("*.bias", "head.0.bias"));
        assert!(glob_match("a*c*e", "abcde"));
        assert!(!glob_match("a*c*e", "abde"));
        assert!(!glob_match("aux", "aux_head"));
        let allow = vec!["heads.aux".to_string()];
        assert!(allowed(&allow, "heads.aux.weight"));
        assert!(!allowed(&allow, "heads.auxiliary.weight"));
    }
}
