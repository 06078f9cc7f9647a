//! shared-batchnorm: no BatchNorm module normalises two streams in one forward.
use super::prelude::*;
use crate::graph::{CallSite, ModuleGraph};
use crate::norm::Norm;

pub struct SharedBatchnorm;

static INFO: CheckInfo = CheckInfo {
    id: "shared-batchnorm",
    group: Group::Batchnorm,
    default_level: Level::Warn,
    summary: "No BatchNorm module is applied to two streams in one forward",
    docs: Docs {
        what: "Lists the call sites of every BatchNorm module (that tracks running statistics) in forward's \
TorchScript graph, with every submodule call followed. A module reached from two places in one forward \
(two calls in forward, or one call inside a container that forward calls twice) is applied to two \
streams. Calls in the two branches of one `if` never run together and count once, and calls in the same \
branch count apart; an `if` on a bool attribute that forward never assigns (`if self.concat:`) runs the \
branch its saved value picks, and calls in the other never run. A single call inside \
a loop (the same block applied N times, a recurrence) is one call site and is not reported: the loop is \
taken as deliberate weight sharing; a ModuleList iterated in forward holds different modules and is \
not sharing at all.",
        why: "Each call updates the running mean and variance with its own batch: two streams through one \
BatchNorm (siamese branches, real and fake images through one discriminator call chain, source and \
target domains) leave running statistics that average both, which match neither at eval time, and in \
training each stream is normalised with its own batch statistics while eval uses the mixture.",
        details: include_str!("shared_batchnorm.md"),
    },
    kinds: &[&CalledTwice::KIND],
    ..CheckInfo::PLAIN
};

/// One BatchNorm module is called on two streams in one forward, mixing their statistics
///
/// # Why
/// The running statistics average every stream the module sees: at eval time they match none of them. Siamese
/// encoders and GAN discriminators that see real and fake batches separately are the usual cases.
///
/// # How
/// Warning for each BatchNorm module (kind *BatchNorm*, with running_mean / running_var buffers) that has two
/// or more call sites in forward's graph that can run in the same forward, named with the call in forward
/// that reaches each one.
///
/// # Fix
/// Give each stream its own BatchNorm (or use one forward on the concatenated batch if mixing is intended),
/// or replace BatchNorm by GroupNorm / LayerNorm in the shared part.
#[derive(Serialize, ViolationMetadata)]
#[kind(id = "shared-batchnorm/called-twice", grade = warning)]
#[kind(example(args = "--model fixtures/models/graph_siamese_bn.pt", severity = warning, message = "BatchNorm1d encoder.1 is called 2 times in one forward (via encoder at make_graph.py:57:36, encoder at make_graph.py:57:56): its running statistics mix both streams"))]
pub struct CalledTwice {
    pub module: String,
    pub kind: String,
    /// Where each call comes from: the call in the model's own forward that reaches it.
    pub call_sites: Vec<String>,
}

impl Violation for CalledTwice {
    fn message(&self) -> String {
        format!(
            "{} {} is called {} times in one forward (via {}): its running statistics mix both streams",
            self.kind,
            crate::finding::display_module(&self.module),
            self.call_sites.len(),
            self.call_sites.join(", ")
        )
    }
    fn help(&self) -> String {
        "give each stream its own BatchNorm, or replace it by GroupNorm / LayerNorm in the shared part"
            .to_string()
    }
}

/// The call in the model's own forward that leads to `call` (itself when forward calls it directly),
/// as `module at file:line:column`, or `module call N` when the graph has no source lines.
fn describe_call(graph: &ModuleGraph, call: &CallSite) -> String {
    let top = graph.ancestors(call).first().copied().unwrap_or(call);
    let module = crate::finding::display_module(&top.module);
    if top.source.is_empty() {
        let n = graph
            .calls
            .iter()
            .filter(|c| c.module == top.module && c.id <= top.id)
            .count();
        format!("{module} call {n}")
    } else {
        format!("{module} at {}", top.source)
    }
}

/// Whether a module kind is a BatchNorm that tracks statistics (not torchvision's FrozenBatchNorm2d).
fn is_batchnorm(kind: &str) -> bool {
    Norm::of(kind).is_some_and(Norm::uses_batch_statistics)
}

/// The BatchNorm modules that run on two streams in one forward, each with the largest set of its
/// calls that can all run in one forward (two or more): what the check reports. `buffers` names the
/// model's buffers: a BatchNorm without running statistics (`track_running_stats=False`) has none to
/// mix.
fn called_together<'g>(
    graph: &'g ModuleGraph,
    buffers: &std::collections::BTreeSet<String>,
) -> Vec<(&'g str, Vec<&'g CallSite>)> {
    let mut out = Vec::new();
    for (module, calls) in graph.calls_by_module() {
        let kind = &calls[0].kind;
        let running = |stat: &str| {
            let name = if module.is_empty() {
                stat.to_string()
            } else {
                format!("{module}.{stat}")
            };
            buffers.contains(&name)
        };
        if !is_batchnorm(kind) || !running("running_mean") {
            continue;
        }
        let together = ModuleGraph::largest_concurrent(&calls);
        if together.len() < 2 {
            continue;
        }
        out.push((module, together));
    }
    out
}

impl Check for SharedBatchnorm {
    type Options = NoOptions;

    const INFO: &'static CheckInfo = &INFO;

    fn run(&self, ctx: &Context, _options: &NoOptions) -> CheckOutput {
        let model = ctx.model()?;
        if !model.modules().iter().any(|m| is_batchnorm(&m.kind)) {
            return Err(CheckError::skip("the model has no BatchNorm layer"));
        }
        let graph = ModuleGraph::of(model)?;
        let buffers: std::collections::BTreeSet<String> =
            model.buffers()?.into_iter().map(|(n, _)| n).collect();
        let mut findings = Vec::new();
        for (module, together) in called_together(&graph, &buffers) {
            let kind = &together[0].kind;
            let v = CalledTwice {
                module: module.to_string(),
                kind: kind.clone(),
                call_sites: together.iter().map(|c| describe_call(&graph, c)).collect(),
            };
            let at = Location {
                module: Some(crate::finding::display_module(module)),
                ..Location::default()
            };
            findings.push(Finding::new(&v, at));
        }
        Ok(CheckResult::with_findings(findings))
    }
}
