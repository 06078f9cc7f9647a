//! `trainlint graph` and the HTML report's graph: the module graph of forward drawn for people.
//!
//! Nodes are the calls of leaf modules (modules that call no other module), in call order, with their
//! type and output shape; edges are the data flowing between them, dashed where `.detach()` cuts the
//! gradient. Runs of identical numbered blocks (`layer1.0` … `layer1.3`, or 8 and more identical single
//! layers) collapse into one node with a count; modules called more than once are marked shared. The
//! findings of the graph checks are painted as marks ([`Marks`]): the modules unused-parameters reports
//! are marked unused (drawn on their own when forward never calls them), the calls of a BatchNorm that
//! shared-batchnorm reports are marked shared-batchnorm; the view decides no verdict itself. Past
//! [`MAX_NODES`] nodes the rest is one node, "N more modules not drawn", so that any model's picture
//! is laid out in bounded time. Layout (SVG) is layout-rs's.
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use serde::Serialize;
use tch::Tensor;
use trainlint_checks::graph::{CallSite, ModuleGraph};
use trainlint_checks::rules::{shared_batchnorm, unused_parameters};
use trainlint_checks::{ModuleInfo, ViolationMetadata};

/// One drawn node.
#[derive(Clone, Debug, Serialize)]
pub struct ViewNode {
    /// `input`, `output`, `c<call>`, `g<group>` (collapsed blocks) or `u<n>` (an unused module).
    pub id: String,
    /// The module path; for a collapsed run, the first block's.
    pub module: String,
    pub kind: String,
    /// Output shape on the sample, when one was given.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub shape: String,
    /// Which call of the module this node is (1-based) and how many calls the module has.
    pub call: usize,
    pub calls: usize,
    /// The call runs in a loop of forward.
    pub in_loop: bool,
    /// For a collapsed run: the blocks it stands for (module paths), in order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub collapsed: Vec<String>,
    /// `unused`, `shared`, `shared-batchnorm`, `final-activation`, and the marks findings paint
    /// (`finding`, `error`, `warning`).
    pub marks: BTreeSet<String>,
    /// Finding messages painted on this node (the first few).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    /// For the node past the drawing limit (`more`): the modules not drawn, and the nodes they would
    /// have taken.
    #[serde(skip_serializing_if = "is_zero")]
    pub omitted: usize,
    #[serde(skip_serializing_if = "is_zero")]
    pub omitted_nodes: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq, PartialOrd, Ord)]
pub struct ViewEdge {
    pub from: String,
    pub to: String,
    /// Every path between the two nodes passes through `.detach()`.
    pub detached: bool,
}

/// The graph as drawn.
#[derive(Clone, Debug, Serialize)]
pub struct View {
    pub nodes: Vec<ViewNode>,
    pub edges: Vec<ViewEdge>,
    /// The modules past the drawing limit, which the `more` node stands for (for painting findings).
    #[serde(skip)]
    pub omitted_modules: Vec<String>,
}

/// What the view is built from besides the graph.
pub struct ViewInputs<'a> {
    pub modules: &'a [ModuleInfo],
    /// Module path -> its trainable parameters forward never reads.
    pub unused: BTreeMap<String, Vec<String>>,
    /// The model's final op (`sigmoid`, `linear`…), shown on the output node.
    pub final_op: Option<String>,
    /// The shape of the model input on the sample.
    pub input_shape: String,
    /// Collapse runs of identical numbered blocks.
    pub collapse: bool,
    /// The calls of the BatchNorm modules that shared-batchnorm's findings name: of each, the calls
    /// that can run in one forward ([`ModuleGraph::largest_concurrent`]).
    pub shared_batchnorm: BTreeSet<usize>,
}

/// Leaf kinds that are an activation, for the final-activation mark.
fn is_activation(kind: &str) -> bool {
    [
        "Sigmoid",
        "Tanh",
        "Softmax",
        "LogSoftmax",
        "ReLU",
        "ReLU6",
        "Softplus",
        "Hardtanh",
        "Hardsigmoid",
        "GELU",
        "SiLU",
        "LeakyReLU",
        "ELU",
    ]
    .contains(&kind)
}

/// At most this many nodes (besides input and output) are drawn; past it one node says how many
/// modules are not drawn. layout-rs's time grows with the square of the nodes it lays out (fillers of
/// long edges included, see [`LAYOUT_BUDGET`]): a 300-node chain takes 0.03 s in a debug build, and
/// within [`LAYOUT_BUDGET`] the worst pictures measured take ~3 s there. A collapsed run counts as one node.
pub const MAX_NODES: usize = 300;

/// Runs of identical single layers collapse from this length on (runs of blocks from 2): a handful of
/// equal layers in a row reads better drawn, thousands do not.
const MIN_LAYER_RUN: usize = 8;

/// Finding notes kept on one node (its marks still take every finding).
const MAX_NOTES: usize = 20;

/// A call's descendants as (path relative to it, kind), in call order: equal for identical blocks.
fn signature(
    graph: &ModuleGraph,
    children: &BTreeMap<usize, Vec<usize>>,
    c: &CallSite,
) -> Vec<(String, String)> {
    let mut out = vec![(String::new(), c.kind.clone())];
    let mut stack: Vec<usize> = children.get(&c.id).cloned().unwrap_or_default();
    stack.reverse();
    while let Some(id) = stack.pop() {
        let d = &graph.calls[id];
        let rel = d
            .module
            .strip_prefix(&c.module)
            .unwrap_or(&d.module)
            .to_string();
        out.push((rel, d.kind.clone()));
        if let Some(k) = children.get(&id) {
            stack.extend(k.iter().rev());
        }
    }
    out
}

/// `prefix` and `N` when the path ends in a number (`layer1.2` -> (`layer1`, 2)).
fn numbered(path: &str) -> Option<(&str, u64)> {
    let (prefix, last) = path.rsplit_once('.').unwrap_or(("", path));
    last.parse().ok().map(|n| (prefix, n))
}

/// The call ids of a call's containers (`ancestors`), without building the call sites' list.
fn ancestor_ids(graph: &ModuleGraph, call: &CallSite) -> Vec<usize> {
    graph.ancestors(call).iter().map(|a| a.id).collect()
}

/// Runs of consecutive numbered sibling calls with the same structure: at least two blocks, or at
/// least [`MIN_LAYER_RUN`] single layers. Each run's call ids; no run lies inside another.
fn repeated_runs(graph: &ModuleGraph) -> Vec<Vec<usize>> {
    let mut children: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for c in &graph.calls {
        if let Some(p) = c.parent {
            children.entry(p).or_default().push(c.id);
        }
    }
    // Siblings: same parent call, same prefix, and both blocks or both single layers.
    let mut siblings: BTreeMap<(Option<usize>, String, bool), Vec<usize>> = BTreeMap::new();
    for c in &graph.calls {
        if let Some((prefix, _)) = numbered(&c.module) {
            siblings
                .entry((c.parent, prefix.to_string(), c.leaf))
                .or_default()
                .push(c.id);
        }
    }
    let mut runs = Vec::new();
    for ((_, _, leaf), ids) in &siblings {
        let shortest = if *leaf { MIN_LAYER_RUN } else { 2 };
        let mut run: Vec<usize> = Vec::new();
        let mut last: Option<(u64, Vec<(String, String)>)> = None;
        for &id in ids {
            let c = &graph.calls[id];
            let n = numbered(&c.module).map_or(0, |(_, n)| n);
            let sig = signature(graph, &children, c);
            let continues = last.as_ref().is_some_and(|(m, s)| n == m + 1 && *s == sig);
            if !continues {
                if run.len() >= shortest {
                    runs.push(std::mem::take(&mut run));
                }
                run.clear();
            }
            run.push(id);
            last = Some((n, sig));
        }
        if run.len() >= shortest {
            runs.push(run);
        }
    }
    // Outer runs first; a run inside another is hidden by it. The blocks of one run share their
    // containers, so the first block's say whether the run lies inside a kept one.
    runs.sort_by_key(|r| graph.ancestors(&graph.calls[r[0]]).len());
    let mut kept = Vec::new();
    let mut in_kept: BTreeSet<usize> = BTreeSet::new();
    for run in runs {
        let inside = ancestor_ids(graph, &graph.calls[run[0]])
            .iter()
            .any(|a| in_kept.contains(a));
        if inside || run.iter().any(|id| in_kept.contains(id)) {
            continue;
        }
        in_kept.extend(run.iter().copied());
        kept.push(run);
    }
    kept
}

/// What one node of the view stands for, before the cut at [`MAX_NODES`].
enum Entry<'a> {
    /// A leaf call.
    Call(&'a CallSite),
    /// A collapsed run (index into the runs).
    Run(usize),
    /// A module with unused trainable parameters that forward never calls.
    Unused(&'a str),
}

fn plain_node(id: &str, kind: &str) -> ViewNode {
    ViewNode {
        id: id.into(),
        module: String::new(),
        kind: kind.into(),
        shape: String::new(),
        call: 1,
        calls: 1,
        in_loop: false,
        collapsed: Vec::new(),
        marks: BTreeSet::new(),
        notes: Vec::new(),
        omitted: 0,
        omitted_nodes: 0,
    }
}

impl View {
    pub fn build(graph: &ModuleGraph, inputs: &ViewInputs) -> View {
        let calls_of = graph.calls_by_module();
        // Which call of its module each call is (1-based).
        let mut call_number: BTreeMap<usize, usize> = BTreeMap::new();
        for sites in calls_of.values() {
            for (i, s) in sites.iter().enumerate() {
                call_number.insert(s.id, i + 1);
            }
        }
        let runs = if inputs.collapse {
            repeated_runs(graph)
        } else {
            Vec::new()
        };
        // Call -> the run it lies in (itself a block of it, or under one). A container's call comes
        // before the calls inside it, so one pass in call order sees the container's run first.
        let mut run_of: BTreeMap<usize, usize> = BTreeMap::new();
        for (g, run) in runs.iter().enumerate() {
            for &id in run {
                run_of.insert(id, g);
            }
        }
        for c in &graph.calls {
            if let Some(g) = c.parent.and_then(|p| run_of.get(&p).copied()) {
                run_of.insert(c.id, g);
            }
        }
        // The nodes in call order, then the uncalled modules.
        let mut entries: Vec<Entry> = Vec::new();
        let mut emitted_runs: BTreeSet<usize> = BTreeSet::new();
        for c in &graph.calls {
            if let Some(&g) = run_of.get(&c.id) {
                if emitted_runs.insert(g) {
                    entries.push(Entry::Run(g));
                }
            } else if c.leaf {
                entries.push(Entry::Call(c));
            }
        }
        let called = entries.len();
        entries.extend(
            inputs
                .unused
                .keys()
                .filter(|m| !calls_of.contains_key(m.as_str()))
                .map(|m| Entry::Unused(m.as_str())),
        );
        // The cut: calls first, but uncalled modules (each an error) keep a quarter of the room.
        let uncalled = entries.len() - called;
        let uncalled_kept = uncalled.min((MAX_NODES / 4).max(MAX_NODES.saturating_sub(called)));
        let called_kept = called.min(MAX_NODES - uncalled_kept);
        let kept = |i: usize| {
            if i < called {
                i < called_kept
            } else {
                i - called < uncalled_kept
            }
        };

        let kinds: BTreeMap<&str, &str> = inputs
            .modules
            .iter()
            .map(|m| (m.path.as_str(), m.kind.as_str()))
            .collect();
        let mut input = plain_node("input", "input");
        input.shape = inputs.input_shape.clone();
        let mut nodes: Vec<ViewNode> = vec![input];
        // Leaf call -> node id (through collapsed runs; "more" past the cut).
        let mut node_of: BTreeMap<usize, String> = BTreeMap::new();
        let mut omitted_modules: BTreeSet<String> = BTreeSet::new();
        let mut omitted_nodes = 0;
        let mut drawn_modules: BTreeSet<&str> = BTreeSet::new();
        let mut run_node: BTreeMap<usize, String> = BTreeMap::new();
        for (i, entry) in entries.iter().enumerate() {
            let keep = kept(i);
            if !keep {
                omitted_nodes += 1;
            }
            match entry {
                Entry::Run(g) => {
                    let run = &runs[*g];
                    let id = if keep { format!("g{g}") } else { "more".into() };
                    run_node.insert(*g, id.clone());
                    let blocks = run.iter().map(|&id| graph.calls[id].module.clone());
                    if !keep {
                        omitted_modules.extend(blocks);
                        continue;
                    }
                    let first = &graph.calls[run[0]];
                    let last = &graph.calls[run[run.len() - 1]];
                    drawn_modules.insert(&first.module);
                    let mut n = plain_node(&id, &first.kind);
                    n.module = first.module.clone();
                    n.shape = last.shape.clone();
                    n.in_loop = first.in_loop;
                    n.collapsed = blocks.collect();
                    nodes.push(n);
                }
                Entry::Call(c) => {
                    if !keep {
                        node_of.insert(c.id, "more".into());
                        omitted_modules.insert(c.module.clone());
                        continue;
                    }
                    let siblings = &calls_of[c.module.as_str()];
                    let mut marks = BTreeSet::new();
                    if siblings.len() > 1 {
                        marks.insert("shared".to_string());
                        if inputs.shared_batchnorm.contains(&c.id) {
                            marks.insert("shared-batchnorm".to_string());
                        }
                    }
                    if inputs.unused.contains_key(&c.module) {
                        marks.insert("unused".to_string());
                    }
                    let id = format!("c{}", c.id);
                    node_of.insert(c.id, id.clone());
                    drawn_modules.insert(&c.module);
                    let mut n = plain_node(&id, &c.kind);
                    n.module = c.module.clone();
                    n.shape = c.shape.clone();
                    n.call = call_number.get(&c.id).copied().unwrap_or(1);
                    n.calls = siblings.len();
                    n.in_loop = c.in_loop;
                    n.marks = marks;
                    nodes.push(n);
                }
                Entry::Unused(module) => {
                    if !keep {
                        omitted_modules.insert(module.to_string());
                        continue;
                    }
                    let mut n = plain_node(&format!("u{}", i - called), "");
                    n.module = module.to_string();
                    n.kind = kinds.get(module).copied().unwrap_or_default().to_string();
                    n.call = 0;
                    n.calls = 0;
                    n.marks.insert("unused".to_string());
                    nodes.push(n);
                }
            }
        }
        for c in graph.calls.iter().filter(|c| c.leaf) {
            if let Some(id) = run_of.get(&c.id).and_then(|g| run_node.get(g)) {
                node_of.insert(c.id, id.clone());
            }
        }
        // A module with one call drawn and another past the cut is drawn.
        omitted_modules.retain(|m| !drawn_modules.contains(m.as_str()));
        if omitted_nodes > 0 {
            let mut more = plain_node("more", "more");
            more.omitted = omitted_modules.len();
            more.omitted_nodes = omitted_nodes;
            more.marks.insert("omitted".to_string());
            nodes.push(more);
        }
        let mut output = plain_node("output", "output");
        if let Some(op) = &inputs.final_op {
            output.notes.push(format!("final op: {op}"));
        }
        nodes.push(output);

        let id_of = |end: Option<usize>, fallback: &str| -> Option<String> {
            match end {
                None => Some(fallback.to_string()),
                Some(id) => node_of.get(&id).cloned(),
            }
        };
        let mut edges: BTreeMap<(String, String), bool> = BTreeMap::new();
        for e in &graph.edges {
            let (Some(from), Some(to)) = (id_of(e.from, "input"), id_of(e.to, "output")) else {
                continue;
            };
            if from == to {
                continue;
            }
            edges
                .entry((from, to))
                .and_modify(|d| *d = *d && e.detached)
                .or_insert(e.detached);
        }
        // The final activation: an activation module whose output is the model's output.
        for (from, to) in edges.keys() {
            if to == "output" {
                if let Some(n) = nodes.iter_mut().find(|n| &n.id == from) {
                    if is_activation(&n.kind) {
                        n.marks.insert("final-activation".to_string());
                    }
                }
            }
        }
        let edges = edges
            .into_iter()
            .map(|((from, to), detached)| ViewEdge { from, to, detached })
            .collect();
        View {
            nodes,
            edges,
            omitted_modules: omitted_modules.into_iter().collect(),
        }
    }

    /// The module paths each node stands for (its module, a collapsed run's blocks, the modules past
    /// the drawing limit) -> the nodes, so that painting a path costs lookups, not a scan of the view.
    fn paint_index(&self) -> BTreeMap<String, Vec<usize>> {
        let mut index: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for (i, n) in self.nodes.iter().enumerate() {
            let names: Box<dyn Iterator<Item = &String>> = match n.id.as_str() {
                "input" | "output" => continue,
                "more" => Box::new(self.omitted_modules.iter()),
                _ => Box::new(std::iter::once(&n.module).chain(n.collapsed.iter())),
            };
            for m in names {
                let at = index.entry(m.clone()).or_default();
                if at.last() != Some(&i) {
                    at.push(i);
                }
            }
        }
        index
    }

    /// Paints a finding on the nodes that name `path` (a module or a parameter): the module itself,
    /// one above it (a collapsed block's layers) or one below it. Returns whether a node took it.
    fn paint_indexed(
        &mut self,
        index: &BTreeMap<String, Vec<usize>>,
        path: &str,
        mark: &str,
        note: &str,
    ) -> bool {
        let path = if path == "<root>" { "" } else { path };
        if path.is_empty() {
            return false;
        }
        let mut hit: BTreeSet<usize> = BTreeSet::new();
        let above = std::iter::once("")
            .chain(path.match_indices('.').map(|(i, _)| &path[..i]))
            .chain(std::iter::once(path));
        for m in above {
            hit.extend(index.get(m).into_iter().flatten());
        }
        // Below: the paths that start with `path.` sort between `path.` and `path/` ('/' follows '.').
        let (low, high) = (format!("{path}."), format!("{path}/"));
        for (_, at) in index.range(low..high) {
            hit.extend(at);
        }
        for &i in &hit {
            let n = &mut self.nodes[i];
            n.marks.insert(mark.to_string());
            if !note.is_empty() && n.notes.len() < MAX_NOTES && !n.notes.iter().any(|x| x == note) {
                n.notes.push(note.to_string());
            }
        }
        !hit.is_empty()
    }

    fn label(n: &ViewNode) -> Vec<String> {
        let mut lines = Vec::new();
        match n.id.as_str() {
            "input" | "output" => lines.push(n.kind.clone()),
            "more" => {
                if n.omitted > 0 {
                    lines.push(format!("{} more modules not drawn", n.omitted));
                } else {
                    lines.push(format!("{} more calls not drawn", n.omitted_nodes));
                }
                lines.push(format!("(the graph is drawn up to {MAX_NODES} nodes)"));
            }
            _ if !n.collapsed.is_empty() => {
                lines.push(format!(
                    "{} … {} ×{}",
                    n.collapsed[0],
                    n.collapsed[n.collapsed.len() - 1],
                    n.collapsed.len()
                ));
                lines.push(n.kind.clone());
            }
            _ => {
                lines.push(trainlint_checks::finding::display_module(&n.module));
                let mut kind = n.kind.clone();
                if n.calls > 1 {
                    kind.push_str(&format!(" (call {}/{})", n.call, n.calls));
                }
                if n.in_loop {
                    kind.push_str(" ↻ loop");
                }
                lines.push(kind);
            }
        }
        if !n.shape.is_empty() {
            lines.push(n.shape.clone());
        }
        if n.marks.contains("unused") {
            lines.push("never called".into());
        }
        if n.id == "output" {
            lines.extend(n.notes.iter().cloned());
        }
        lines
    }

    /// Graphviz DOT: `dot -Tsvg`. Marks become the node's `class` (and a colour).
    pub fn to_dot(&self) -> String {
        let esc = |s: &str| s.replace('\\', "\\\\").replace('"', "\\\"");
        let mut out = String::from(
            "digraph model {\n  rankdir=TB;\n  node [shape=box, style=\"rounded,filled\", fillcolor=\"white\", fontname=\"Helvetica\"];\n",
        );
        for n in &self.nodes {
            let label = Self::label(n)
                .iter()
                .map(|l| esc(l))
                .collect::<Vec<_>>()
                .join("\\n");
            let marks: Vec<&str> = n.marks.iter().map(String::as_str).collect();
            let (fill, style) = colours(&n.marks);
            let shape = if n.id == "input" || n.id == "output" {
                ", shape=oval"
            } else {
                ""
            };
            let peripheries = if n.collapsed.is_empty() {
                ""
            } else {
                ", peripheries=2"
            };
            out.push_str(&format!(
                "  {} [label=\"{label}\", class=\"{}\", fillcolor=\"{fill}\", style=\"{style}\"{shape}{peripheries}];\n",
                n.id,
                marks.join(" ")
            ));
        }
        for e in &self.edges {
            if e.detached {
                out.push_str(&format!(
                    "  {} -> {} [style=dashed, label=\"detach\", class=\"detached\"];\n",
                    e.from, e.to
                ));
            } else {
                out.push_str(&format!("  {} -> {};\n", e.from, e.to));
            }
        }
        out.push_str("}\n");
        out
    }

    /// Mermaid flowchart (renders on GitHub and GitLab).
    pub fn to_mermaid(&self) -> String {
        let esc = |s: &str| {
            s.replace('"', "#quot;")
                .replace('<', "#lt;")
                .replace('>', "#gt;")
        };
        let mut out = String::from("flowchart TD\n");
        for n in &self.nodes {
            let label = Self::label(n)
                .iter()
                .map(|l| esc(l))
                .collect::<Vec<_>>()
                .join("<br/>");
            if n.id == "input" || n.id == "output" {
                out.push_str(&format!("  {}([\"{label}\"])\n", n.id));
            } else if n.collapsed.is_empty() {
                out.push_str(&format!("  {}[\"{label}\"]\n", n.id));
            } else {
                out.push_str(&format!("  {}[[\"{label}\"]]\n", n.id));
            }
        }
        for e in &self.edges {
            if e.detached {
                out.push_str(&format!("  {} -.->|detach| {}\n", e.from, e.to));
            } else {
                out.push_str(&format!("  {} --> {}\n", e.from, e.to));
            }
        }
        for (mark, style) in [
            ("unused", "fill:#e6e6e6,stroke:#888,stroke-dasharray:5 5"),
            ("error", "fill:#ffd6d6,stroke:#c00"),
            ("warning", "fill:#fff0c2,stroke:#b80"),
            ("shared", "fill:#fff0c2"),
            ("final-activation", "fill:#d8ecff"),
            ("omitted", "fill:#f4f4f4,stroke:#888,stroke-dasharray:5 5"),
        ] {
            let ids: Vec<&str> = self
                .nodes
                .iter()
                .filter(|n| n.marks.contains(mark))
                .map(|n| n.id.as_str())
                .collect();
            if !ids.is_empty() {
                let class = mark.replace('-', "_");
                out.push_str(&format!(
                    "  classDef {class} {style}\n  class {} {class}\n",
                    ids.join(",")
                ));
            }
        }
        out
    }

    /// SVG laid out by layout-rs. Each node's group carries `id="node-<id>"`, `class="node <marks>"`
    /// and `data-module`, for the HTML report's script.
    pub fn to_svg(&self) -> String {
        use layout::backends::svg::SVGWriter;
        use layout::core::base::Orientation;
        use layout::core::color::Color;
        use layout::core::style::{LineStyleKind, StyleAttr};
        use layout::std_shapes::render::get_shape_size;
        use layout::std_shapes::shapes::{Arrow, Element, LineEndKind, ShapeKind};
        use layout::topo::layout::VisualGraph;

        // Module names are the user's strings: characters XML forbids are written visibly, as in every
        // XML output (layout-rs escapes only `<`, `>` and `&` in labels).
        let attr = |s: &str| {
            super::visible(s)
                .replace('&', "&amp;")
                .replace('"', "&quot;")
                .replace('<', "&lt;")
                .replace('>', "&gt;")
        };
        let mut vg = VisualGraph::new(Orientation::TopToBottom);
        // layout-rs re-checks the whole graph for cycles after each edge by enumerating paths: time
        // exponential in the number of paths (a residual chain of 40 nodes took minutes). The edges go
        // in acyclic and in an order that keeps its own check trivial (below), so the re-check is off.
        vg.dag.set_validate(false);
        let mut handles = BTreeMap::new();
        for n in &self.nodes {
            let label = Self::label(n)
                .iter()
                .map(|line| super::visible(line).into_owned())
                .collect::<Vec<_>>()
                .join("\n");
            let shape = if n.id == "input" || n.id == "output" {
                ShapeKind::new_circle(&label)
            } else {
                ShapeKind::new_box(&label)
            };
            let (fill, _) = colours(&n.marks);
            let line = if n.marks.contains("error") {
                "#cc0000"
            } else if n.marks.contains("unused") || n.marks.contains("omitted") {
                "#888888"
            } else {
                "#333333"
            };
            let width = if n.collapsed.is_empty() { 1 } else { 3 };
            let look = StyleAttr::new(
                Color::new(hex(line)),
                width,
                Some(Color::new(hex(fill))),
                6,
                13,
            );
            let size = get_shape_size(Orientation::LeftToRight, &shape, 13, false);
            let marks: Vec<&str> = n.marks.iter().map(String::as_str).collect();
            let props = format!(
                "id=\"node-{}\" class=\"node {}\" data-module=\"{}\"{}",
                n.id,
                attr(&marks.join(" ")),
                attr(&n.module),
                if n.collapsed.is_empty() {
                    String::new()
                } else {
                    format!(" data-collapsed=\"{}\"", attr(&n.collapsed.join(" ")))
                }
            );
            let elem =
                Element::create_with_properties(shape, look, Orientation::LeftToRight, size, props);
            handles.insert(n.id.clone(), (handles.len(), vg.add_node(elem)));
        }
        // Every edge points forward in node order (call order): a back edge (a loop's recurrence) is
        // turned round with its arrow reversed, as layout-rs would. Added by target, each new edge's
        // target has no successor yet, so layout-rs's cycle test (a path search from the target) ends
        // at once instead of walking every path of the graph.
        let mut ordered = Vec::new();
        for e in &self.edges {
            let (Some(&(i, a)), Some(&(j, b))) = (handles.get(&e.from), handles.get(&e.to)) else {
                continue;
            };
            let arrow = if e.detached {
                let look = StyleAttr::new(Color::new(hex("#cc0000")), 2, None, 0, 12);
                Arrow::new(
                    LineEndKind::None,
                    LineEndKind::Arrow,
                    LineStyleKind::Dashed,
                    "detach",
                    &look,
                    &None,
                    &None,
                )
            } else {
                Arrow::simple("")
            };
            if i < j {
                ordered.push((j, i, arrow, a, b));
            } else {
                ordered.push((i, j, arrow.reverse(), b, a));
            }
        }
        ordered.sort_by_key(|(to, from, ..)| (*to, *from));
        let kept = within_layout_budget(
            self.nodes.len(),
            &ordered.iter().map(|e| (e.1, e.0)).collect::<Vec<_>>(),
        );
        for (k, (_, _, arrow, a, b)) in ordered.into_iter().enumerate() {
            if !kept[k] {
                continue;
            }
            vg.add_edge(arrow, a, b);
        }
        let mut svg = SVGWriter::new();
        vg.do_it(false, false, false, &mut svg);
        stable_styles(svg.finalize())
    }
}

/// Nodes plus the filler nodes of edges that span several ranks that a layout may hold: layout-rs's
/// time grows with the square of that count (it looks a node's rank up by scanning every rank).
const LAYOUT_BUDGET: usize = 1000;

/// Which of the forward edges `(from, to)` (node positions, sorted by target) the layout keeps: all,
/// unless their filler nodes (an edge spanning r ranks of the longest-path ranking, layout-rs's, needs
/// r - 1) push the layout past [`LAYOUT_BUDGET`]; then the longest edges go first. A residual stream
/// drawn with every earlier layer's edge would otherwise need ~N²/2 fillers.
fn within_layout_budget(nodes: usize, edges: &[(usize, usize)]) -> Vec<bool> {
    let mut kept = vec![true; edges.len()];
    for _ in 0..64 {
        let mut rank = vec![0usize; nodes];
        for (k, &(from, to)) in edges.iter().enumerate() {
            if kept[k] {
                rank[to] = rank[to].max(rank[from] + 1);
            }
        }
        let span = |k: usize| rank[edges[k].1].saturating_sub(rank[edges[k].0] + 1);
        let fillers: usize = (0..edges.len()).filter(|&k| kept[k]).map(span).sum();
        if nodes + fillers <= LAYOUT_BUDGET {
            return kept;
        }
        let mut longest: Vec<usize> = (0..edges.len())
            .filter(|&k| kept[k] && span(k) > 0)
            .collect();
        longest.sort_by_key(|&k| (std::cmp::Reverse(span(k)), k));
        let mut excess = nodes + fillers - LAYOUT_BUDGET;
        for k in longest {
            kept[k] = false;
            excess = excess.saturating_sub(span(k));
            if excess == 0 {
                break;
            }
        }
    }
    // Still over (the ranks moved as edges went): only edges between neighbouring ranks.
    let mut rank = vec![0usize; nodes];
    for (k, &(from, to)) in edges.iter().enumerate() {
        if kept[k] {
            rank[to] = rank[to].max(rank[from] + 1);
        }
    }
    for (k, &(from, to)) in edges.iter().enumerate() {
        kept[k] = kept[k] && rank[to] == rank[from] + 1;
    }
    kept
}

/// layout-rs writes its font classes from a hash map, in an order that changes from run to run: sort
/// them, so the same model gives the same bytes.
fn stable_styles(svg: String) -> String {
    let (Some(start), Some(end)) = (svg.find("<style>"), svg.find("</style>")) else {
        return svg;
    };
    let body = &svg[start + "<style>".len()..end];
    let mut lines: Vec<&str> = body.lines().filter(|l| !l.trim().is_empty()).collect();
    lines.sort_unstable();
    format!(
        "{}<style>\n{}\n{}",
        &svg[..start],
        lines.join("\n"),
        &svg[end..]
    )
}

/// Fill colour and DOT style for a node's marks.
fn colours(marks: &BTreeSet<String>) -> (&'static str, &'static str) {
    if marks.contains("omitted") && !marks.contains("error") && !marks.contains("warning") {
        ("#f4f4f4", "rounded,filled,dashed")
    } else if marks.contains("unused") {
        ("#e6e6e6", "rounded,filled,dashed")
    } else if marks.contains("error") {
        ("#ffd6d6", "rounded,filled")
    } else if marks.contains("warning") || marks.contains("shared-batchnorm") {
        ("#fff0c2", "rounded,filled")
    } else if marks.contains("final-activation") {
        ("#d8ecff", "rounded,filled")
    } else {
        ("#ffffff", "rounded,filled")
    }
}

/// `#rrggbb` as layout-rs's RGBA number.
fn hex(s: &str) -> u32 {
    (u32::from_str_radix(s.trim_start_matches('#'), 16).unwrap_or(0) << 8) | 0xff
}

/// The graph drawn twice: with runs of identical blocks collapsed, and in full (None when nothing
/// collapses).
pub struct Views {
    pub collapsed: View,
    pub full: Option<View>,
}

/// The first samples of `data` (at most 8), for the output shapes.
pub fn sample_of(data: Option<&trainlint_checks::Dataset>) -> Result<Option<Tensor>, DrawError> {
    match data {
        Some(d) if !d.is_empty() => Ok(Some(d.inputs.f_narrow(0, 0, d.len().min(8) as i64)?)),
        _ => Ok(None),
    }
}

/// What the graph checks' findings mark on the view: the modules unused-parameters names, with the
/// parameters forward never reads (`unused`), and the BatchNorm modules shared-batchnorm names
/// (`shared-batchnorm`). The view paints these findings; it does not judge the graph itself.
#[derive(Clone, Debug, Default)]
pub struct Marks {
    pub unused: BTreeMap<String, Vec<String>>,
    pub shared_batchnorm: BTreeSet<String>,
}

impl Marks {
    /// The marks of `findings` (a report's, or the graph checks' alone).
    pub fn of<'a>(findings: impl IntoIterator<Item = &'a trainlint_checks::Finding>) -> Marks {
        let mut marks = Marks::default();
        let text = |v: &serde_json::Value| v.as_str().map(String::from);
        for f in findings {
            let Some(module) = f.evidence.get("module").and_then(text) else {
                continue;
            };
            if f.kind == unused_parameters::NeverUsed::KIND.id {
                let names = f.evidence.get("parameters").and_then(|p| p.as_array());
                let names = names.into_iter().flatten().filter_map(text);
                marks.unused.entry(module).or_default().extend(names);
            } else if f.kind == shared_batchnorm::CalledTwice::KIND.id {
                marks.shared_batchnorm.insert(module);
            }
        }
        marks
    }
}

/// The views of `model`, from one walk of its graph, with output shapes on `sample` when given (a
/// sample the model rejects draws the graph without shapes and says so on stderr), painted with the
/// graph checks' `marks`.
pub fn views_of_sample(
    model: &dyn trainlint_checks::Model,
    sample: Option<&Tensor>,
    marks: &Marks,
) -> Result<Views, DrawError> {
    let graph = model.module_graph(sample)?;
    if !graph.shape_error.is_empty() {
        eprintln!(
            "warning: no output shapes: the model rejected the sample: {}",
            crate::model::user_message(&graph.shape_error)
        );
    }
    let calls = graph.calls_by_module();
    let shared_batchnorm = marks
        .shared_batchnorm
        .iter()
        .filter_map(|m| calls.get(m.as_str()))
        .flat_map(|calls| ModuleGraph::largest_concurrent(calls))
        .map(|c| c.id)
        .collect();
    let unused = marks.unused.clone();
    let input_shape = sample
        .map(|s| format!("{:?}", s.size()))
        .unwrap_or_default();
    let mut inputs = ViewInputs {
        modules: model.modules(),
        unused,
        final_op: model.output_activation().ok().map(|a| a.op),
        input_shape,
        collapse: true,
        shared_batchnorm,
    };
    let collapsed = View::build(&graph, &inputs);
    let full = if collapsed.nodes.iter().any(|n| !n.collapsed.is_empty()) {
        inputs.collapse = false;
        Some(View::build(&graph, &inputs))
    } else {
        None
    };
    Ok(Views { collapsed, full })
}

/// Whether a drawing that ran past its time limit may still be running on its worker thread (inside
/// libtorch): the process must then end with `_exit`, as after a check that timed out.
static LEFT_RUNNING: AtomicBool = AtomicBool::new(false);

pub fn drawing_left_running() -> bool {
    LEFT_RUNNING.load(Ordering::SeqCst)
}

/// Why a drawing gave no picture.
#[derive(Debug)]
pub enum Stopped {
    /// It ran past the time limit (the worker is left to run).
    TimedOut(Duration),
    /// It failed, or panicked.
    Failed(DrawError),
}

/// Why the graph could not be drawn (within the time limit, see [`Stopped`]).
#[derive(Debug, thiserror::Error)]
pub enum DrawError {
    /// The sample could not be cut from the data.
    #[error("{0}")]
    Sample(#[from] tch::TchError),
    /// The model could not give its graph, parameters or buffers.
    #[error("{0}")]
    Model(#[from] trainlint_checks::CheckError),
    /// An internal error, with the panic's message.
    #[error("internal error: {0}")]
    Panicked(String),
    #[error("cannot start a thread: {0}")]
    Thread(#[source] std::io::Error),
    #[error("the drawing's thread ended without a result")]
    ThreadEnded,
}

/// `work`, a panic in it turned into [`Stopped::Failed`].
fn guarded<T>(work: impl FnOnce() -> Result<T, DrawError>) -> Result<T, Stopped> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(work)) {
        Ok(out) => out.map_err(Stopped::Failed),
        Err(payload) => {
            let message = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "panic".into());
            Err(Stopped::Failed(DrawError::Panicked(message)))
        }
    }
}

/// Runs `work` under the checks' time limit (`--timeout`): on a worker thread, waited for at most
/// `limit`; without a limit, here.
pub fn within_limit<T: Send + 'static>(
    limit: Option<Duration>,
    threads: usize,
    work: impl FnOnce() -> Result<T, DrawError> + Send + 'static,
) -> Result<T, Stopped> {
    let Some(limit) = limit else {
        return guarded(work);
    };
    let (tx, rx) = mpsc::channel();
    let worker = std::thread::Builder::new()
        .name("graph".into())
        // The TorchScript interpreter recurses (the shapes' forward): as the checks' workers.
        .stack_size(64 << 20)
        .spawn(move || {
            // Thread-local in libtorch: the OpenMP thread count and the warning handler.
            tch::set_num_threads(threads as i32);
            crate::model::silence_libtorch_warnings();
            let _ = tx.send(guarded(work));
        });
    let worker = match worker {
        Ok(w) => w,
        Err(e) => return Err(Stopped::Failed(DrawError::Thread(e))),
    };
    match rx.recv_timeout(limit) {
        Ok(out) => {
            let _ = worker.join();
            out
        }
        Err(mpsc::RecvTimeoutError::Timeout) => {
            LEFT_RUNNING.store(true, Ordering::SeqCst);
            Err(Stopped::TimedOut(limit))
        }
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            let _ = worker.join();
            Err(Stopped::Failed(DrawError::ThreadEnded))
        }
    }
}

/// The HTML report's graph: the views with the findings painted, laid out.
pub struct Drawn {
    pub collapsed_svg: String,
    pub full_svg: Option<String>,
}

/// What the HTML report shows of the model graph.
pub enum ReportGraph {
    Drawn(Box<Drawn>),
    /// Walking, painting and laying out the graph ran past the time limit.
    TimedOut(Duration),
}

/// The report's graph of `model`: walked, marked and painted with the report's findings (`marks`,
/// `paints`) and laid out within `limit` (the checks' `--timeout`); None when the graph cannot be read.
pub fn draw_for_report(
    model: &crate::model::LoadedModel,
    data: Option<&trainlint_checks::Dataset>,
    marks: Marks,
    paints: Vec<Paint>,
    limit: Option<Duration>,
    threads: usize,
) -> Option<ReportGraph> {
    let sample = sample_of(data).ok()?;
    let draw = move |model: &dyn trainlint_checks::Model| -> Result<Drawn, DrawError> {
        let mut views = views_of_sample(model, sample.as_ref(), &marks)?;
        paint_all(&mut views.collapsed, &paints);
        if let Some(full) = views.full.as_mut() {
            paint_all(full, &paints);
        }
        Ok(Drawn {
            collapsed_svg: views.collapsed.to_svg(),
            full_svg: views.full.as_ref().map(View::to_svg),
        })
    };
    let drawn = match limit {
        None => guarded(|| draw(model)),
        Some(_) => {
            // The worker gets a model of its own: one left running never touches this one.
            let copy = model.independent_copy().ok()?;
            within_limit(limit, threads, move || draw(&copy))
        }
    };
    match drawn {
        Ok(d) => Some(ReportGraph::Drawn(Box::new(d))),
        Err(Stopped::TimedOut(limit)) => Some(ReportGraph::TimedOut(limit)),
        // As before the time limit: a graph that cannot be read leaves the section out.
        Err(Stopped::Failed(_)) => None,
    }
}

/// The module and parameter paths a finding names: its location and its evidence's lists of names.
pub fn finding_paths(f: &trainlint_checks::Finding) -> Vec<String> {
    let l = &f.location;
    let mut paths: Vec<String> = Vec::new();
    paths.extend(l.module.iter().filter(|m| *m != "<root>").cloned());
    paths.extend(l.parameter.iter().cloned());
    paths.extend(l.buffer.iter().cloned());
    for v in f.evidence.values() {
        if let serde_json::Value::Array(items) = v {
            paths.extend(
                items
                    .iter()
                    .filter_map(|i| i.as_str())
                    .filter(|s| !s.is_empty() && !s.contains(' '))
                    .map(String::from),
            );
        }
    }
    let mut seen = BTreeSet::new();
    paths.retain(|p| seen.insert(p.clone()));
    paths
}

/// A finding as the graph paints it: the paths it names, its mark and its note.
#[derive(Clone, Debug)]
pub struct Paint {
    pub paths: Vec<String>,
    pub mark: &'static str,
    pub note: String,
}

/// The paint of every finding of the report.
pub fn paints_of(report: &super::Report) -> Vec<Paint> {
    let mut out = Vec::new();
    for run in &report.checks {
        for f in &run.findings {
            let mark = match f.severity {
                trainlint_checks::Severity::Error => "error",
                _ => "warning",
            };
            out.push(Paint {
                paths: finding_paths(f),
                mark,
                note: format!("{}: {}", f.kind, f.message),
            });
        }
    }
    out
}

/// Paints findings on the view, the view indexed once.
fn paint_all(view: &mut View, paints: &[Paint]) {
    let index = view.paint_index();
    for p in paints {
        for path in &p.paths {
            view.paint_indexed(&index, path, p.mark, &p.note);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use trainlint_checks::graph::Edge;

    /// A forward that calls `kinds.len()` single layers `layers.0`, `layers.1`… in a chain.
    fn chain(kinds: &[&str]) -> ModuleGraph {
        let mut g = ModuleGraph::default();
        for (i, kind) in kinds.iter().enumerate() {
            g.calls
                .push(CallSite::leaf(i, None, &format!("layers.{i}"), kind));
            g.edges.push(Edge {
                from: i.checked_sub(1),
                to: Some(i),
                detached: false,
            });
        }
        g.edges.push(Edge {
            from: Some(kinds.len() - 1),
            to: None,
            detached: false,
        });
        g
    }

    fn inputs(collapse: bool) -> ViewInputs<'static> {
        ViewInputs {
            modules: &[],
            unused: BTreeMap::new(),
            final_op: None,
            input_shape: String::new(),
            collapse,
            shared_batchnorm: BTreeSet::new(),
        }
    }

    #[test]
    fn past_the_limit_one_node_counts_the_rest_and_takes_their_findings() {
        let kinds: Vec<&str> = (0..1000).map(|i| ["ReLU", "Tanh"][i % 2]).collect();
        let mut view = View::build(&chain(&kinds), &inputs(true));
        assert_eq!(view.nodes.len(), MAX_NODES + 3);
        let more = view.nodes.iter().find(|n| n.id == "more").unwrap();
        assert_eq!((more.omitted, more.omitted_nodes), (700, 700));
        assert_eq!(View::label(more)[0], "700 more modules not drawn");
        let last = format!("c{}", MAX_NODES - 1);
        assert!(view.edges.iter().any(|e| e.from == last && e.to == "more"));
        assert!(view
            .edges
            .iter()
            .any(|e| e.from == "more" && e.to == "output"));
        // A finding on a module past the limit paints the note's node; one above all paints all.
        paint_all(
            &mut view,
            &[Paint {
                paths: vec!["layers.900.weight".into()],
                mark: "error",
                note: "x".into(),
            }],
        );
        let painted: Vec<&str> = view
            .nodes
            .iter()
            .filter(|n| n.marks.contains("error"))
            .map(|n| n.id.as_str())
            .collect();
        assert_eq!(painted, ["more"]);
        let notes: Vec<Paint> = (0..50)
            .map(|i| Paint {
                paths: vec!["layers".into()],
                mark: "warning",
                note: format!("note {i}"),
            })
            .collect();
        paint_all(&mut view, &notes);
        let warned = view.nodes.iter().filter(|n| n.marks.contains("warning"));
        assert_eq!(warned.clone().count(), MAX_NODES + 1);
        assert!(warned.clone().all(|n| n.notes.len() <= MAX_NOTES));
    }

    #[test]
    fn module_names_with_characters_xml_forbids_give_well_formed_svg() {
        let mut graph = chain(&["ReLU", "Tanh"]);
        graph.calls[0].module = "bad\u{ffff}\u{1b}[2J<&>".into();
        graph.calls[1].kind = "Odd\u{fdd0}Kind".into();
        let svg = View::build(&graph, &inputs(false)).to_svg();
        let hidden: Vec<char> = svg
            .chars()
            .filter(|c| crate::report::is_hidden_char(*c) && *c != '\r')
            .collect();
        assert!(hidden.is_empty(), "{hidden:?}");
        assert!(svg.contains("bad\\u{ffff}\\x1b[2J&lt;&amp;&gt;"), "{svg}");
    }

    #[test]
    fn runs_of_identical_layers_collapse_from_eight_on() {
        let view = View::build(&chain(&["ReLU"; 7]), &inputs(true));
        assert!(view.nodes.iter().all(|n| n.collapsed.is_empty()));
        let view = View::build(&chain(&["ReLU"; 8]), &inputs(true));
        assert_eq!(view.nodes.len(), 3);
        assert_eq!(view.nodes[1].collapsed.len(), 8);
        assert_eq!(view.edges.len(), 2, "input -> run -> output");
    }

    #[test]
    fn the_layout_keeps_its_filler_nodes_within_budget() {
        // 300 nodes, each fed by the 32 before it (a residual stream): ~150,000 fillers in full.
        let nodes: usize = 300;
        let mut edges = Vec::new();
        for to in 1..nodes {
            for from in to.saturating_sub(32)..to {
                edges.push((from, to));
            }
        }
        let kept = within_layout_budget(nodes, &edges);
        let mut rank = vec![0usize; nodes];
        for (k, &(from, to)) in edges.iter().enumerate() {
            if kept[k] {
                rank[to] = rank[to].max(rank[from] + 1);
            }
        }
        let fillers: usize = edges
            .iter()
            .enumerate()
            .filter(|(k, _)| kept[*k])
            .map(|(_, &(from, to))| rank[to] - rank[from] - 1)
            .sum();
        assert!(nodes + fillers <= LAYOUT_BUDGET, "{fillers} fillers");
        // The chain itself stays.
        assert!(edges
            .iter()
            .enumerate()
            .all(|(k, &(from, to))| to != from + 1 || kept[k]));
        // A small graph keeps every edge.
        assert!(
            within_layout_budget(4, &[(0, 1), (1, 2), (0, 2), (2, 3), (0, 3)])
                .iter()
                .all(|k| *k)
        );
    }
}
