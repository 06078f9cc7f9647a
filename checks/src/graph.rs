//! The module-level dataflow graph of a model's forward: which submodule is called where, what flows
//! between the calls, which attributes forward reads. Served by [`crate::Model::module_graph`]; read by
//! `unused-parameters`, `shared-batchnorm`, `trainlint graph` and the HTML report.
use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// One call of a submodule's method during forward. The same module called from two places (or from
/// two calls of its parent) has two call sites; a call inside a loop is one call site run repeatedly.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CallSite {
    /// Index in [`ModuleGraph::calls`].
    pub id: usize,
    /// The call this one sits in (a container's forward), if any.
    pub parent: Option<usize>,
    /// The module's dotted path, e.g. `layer1.0.bn1`.
    pub module: String,
    /// The module's type name without mangling, e.g. `BatchNorm2d`.
    pub kind: String,
    /// The method called, usually `forward`.
    pub method: String,
    /// `file:line:column` of the call in the user's code, when the archive says.
    pub source: String,
    /// The enclosing `if` branches, as `if-id:branch` joined by `/`; empty outside any `if`.
    pub branch: String,
    /// The module calls no other module: a node of the dataflow graph.
    pub leaf: bool,
    /// The call sits in a loop of forward (run once per iteration).
    pub in_loop: bool,
    /// The output shape on the sample, e.g. `[8, 64, 16, 16]`; empty when unknown.
    pub shape: String,
}

impl CallSite {
    /// Call `id` of `module`'s forward (a `kind`) inside call `parent`: a leaf, outside any branch or
    /// loop, with no source or shape known yet.
    pub fn leaf(id: usize, parent: Option<usize>, module: &str, kind: &str) -> CallSite {
        CallSite {
            id,
            parent,
            module: module.into(),
            kind: kind.into(),
            method: "forward".into(),
            source: String::new(),
            branch: String::new(),
            leaf: true,
            in_loop: false,
            shape: String::new(),
        }
    }
}

/// Data flowing from one leaf call (None: the model input) to another (None: the model output).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Edge {
    pub from: Option<usize>,
    pub to: Option<usize>,
    /// Every path between the two passes through `.detach()`: no gradient flows back along it.
    pub detached: bool,
}

/// The module-level dataflow graph of forward.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ModuleGraph {
    pub calls: Vec<CallSite>,
    pub edges: Vec<Edge>,
    /// Attributes (parameters, buffers, constants) read on any path of forward, by full dotted name.
    pub reads: BTreeSet<String>,
    /// Modules that read a list or tuple attribute (RNNs read their weights as `_flat_weights`).
    pub list_reads: BTreeSet<String>,
    /// Modules used in ways the graph cannot follow (interfaces, containers indexed at run time):
    /// everything under them counts as used.
    pub opaque: BTreeSet<String>,
    /// Why the graph may miss calls, when it does (then nothing counts as unused).
    pub unresolved: Vec<String>,
    /// Why the output shapes are missing, when a sample was given and the forward failed.
    #[serde(default)]
    pub shape_error: String,
}

impl ModuleGraph {
    /// The forward graph of `model` (walked once, without shapes), or a skip saying why it cannot be
    /// read: what the checks that judge the graph start from.
    pub fn of(model: &dyn crate::Model) -> Result<ModuleGraph, crate::CheckError> {
        model.module_graph(None).map_err(|e| match e {
            crate::CheckError::Model(why) => {
                crate::CheckError::Skip(format!("the forward graph cannot be read ({why})"))
            }
            other => other,
        })
    }

    /// The call sites of each module, by path.
    pub fn calls_by_module(&self) -> BTreeMap<&str, Vec<&CallSite>> {
        let mut out: BTreeMap<&str, Vec<&CallSite>> = BTreeMap::new();
        for c in &self.calls {
            out.entry(c.module.as_str()).or_default().push(c);
        }
        out
    }

    /// Whether forward may use the parameter (or buffer) `name`: read as an attribute on some path,
    /// owned by a module that reads its tensors as a list, or under a module the graph cannot follow.
    pub fn may_use(&self, name: &str) -> bool {
        let owner = name.rsplit_once('.').map_or("", |(m, _)| m);
        self.reads.contains(name) || self.list_reads.contains(owner) || self.opaque_above(name)
    }

    /// Whether `name` is an opaque module or sits under one: its own path and each path above it looked
    /// up, so that 10,000 parameters against 10,000 opaque modules cost 10,000 lookups, not 10⁸.
    fn opaque_above(&self, name: &str) -> bool {
        self.opaque.contains("")
            || self.opaque.contains(name)
            || name
                .match_indices('.')
                .any(|(i, _)| self.opaque.contains(&name[..i]))
    }

    /// Whether the walk followed every call (no module value it could not name).
    pub fn complete(&self) -> bool {
        self.unresolved.is_empty()
    }

    /// Whether a call sits in the branch of an `if` whose condition was fixed when the model was saved
    /// (a bool attribute such as `self.concat`) and that therefore never runs.
    fn is_dead(c: &CallSite) -> bool {
        c.branch.split('/').any(|s| s.ends_with(":dead"))
    }

    /// The largest set of `calls` (a module's call sites) that can all run in one forward, in call
    /// order: each live call as a seed, then every call that can run with all chosen so far (the first
    /// call may sit in the branch that is not taken twice: `if concat: bn(a); bn(b) else: bn(c)`).
    pub fn largest_concurrent<'g>(calls: &[&'g CallSite]) -> Vec<&'g CallSite> {
        let mut together: Vec<&CallSite> = Vec::new();
        for seed in calls.iter().filter(|c| !Self::is_dead(c)) {
            let mut set: Vec<&CallSite> = vec![seed];
            for c in calls {
                if c.id != seed.id && set.iter().all(|t| Self::can_run_together(t, c)) {
                    set.push(c);
                }
            }
            if set.len() > together.len() {
                set.sort_by_key(|c| c.id);
                together = set;
            }
        }
        together
    }

    /// Whether two call sites can both run in one forward: neither in a branch that never runs, and
    /// not in different branches of the same `if`.
    fn can_run_together(a: &CallSite, b: &CallSite) -> bool {
        if Self::is_dead(a) || Self::is_dead(b) {
            return false;
        }
        let branches = |c: &CallSite| -> BTreeMap<String, String> {
            c.branch
                .split('/')
                .filter_map(|s| s.split_once(':'))
                .map(|(i, b)| (i.to_string(), b.to_string()))
                .collect()
        };
        let (x, y) = (branches(a), branches(b));
        x.iter().all(|(i, bx)| y.get(i).is_none_or(|by| by == bx))
    }

    /// The call sites that run before this one, outermost first (its containers).
    pub fn ancestors(&self, call: &CallSite) -> Vec<&CallSite> {
        let mut out = Vec::new();
        let mut at = call.parent;
        while let Some(id) = at {
            let Some(c) = self.calls.get(id) else { break };
            out.push(c);
            at = c.parent;
        }
        out.reverse();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(id: usize, module: &str, branch: &str) -> CallSite {
        CallSite {
            branch: branch.into(),
            ..CallSite::leaf(id, None, module, "BatchNorm2d")
        }
    }

    #[test]
    fn calls_in_the_two_branches_of_one_if_never_run_together() {
        let a = call(0, "bn", "0:0");
        let b = call(1, "bn", "0:1");
        let c = call(2, "bn", "");
        let d = call(3, "bn", "1:0/0:0");
        assert!(!ModuleGraph::can_run_together(&a, &b));
        assert!(ModuleGraph::can_run_together(&a, &c));
        assert!(ModuleGraph::can_run_together(&a, &d));
        assert!(!ModuleGraph::can_run_together(&b, &d));
        // A branch that a fixed condition rules out runs with nothing, not even its own calls.
        let e = call(4, "bn", "2:dead");
        let f = call(5, "bn", "2:dead");
        assert!(!ModuleGraph::can_run_together(&e, &f));
        assert!(!ModuleGraph::can_run_together(&c, &e));
    }

    #[test]
    fn used_means_read_listed_or_opaque() {
        let mut g = ModuleGraph::default();
        g.reads.insert("fc.weight".into());
        g.list_reads.insert("rnn".into());
        g.opaque.insert("blocks".into());
        assert!(g.may_use("fc.weight"));
        assert!(!g.may_use("fc.bias"));
        assert!(g.may_use("rnn.weight_ih_l0"));
        assert!(g.may_use("blocks.3.weight"));
        assert!(!g.may_use("blocks_extra.weight"));
    }
}
