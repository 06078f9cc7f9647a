//! `trainlint graph` and the HTML report's graph: the module graph of forward drawn for people.
//!
//! Nodes are the calls of leaf modules (modules that call no other module), in call order, with their
//! type and output shape; edges are the data flowing between them, dashed where `.detach()` cuts the
//! gradient. Runs of identical numbered blocks (`layer1.0` … `layer1.3`) collapse into one node with a
//! count; modules with trainable parameters that forward never calls appear on their own, marked
//! unused; modules called more than once are marked shared. Layout (SVG) is layout-rs's.
use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use trainlint_checks::graph::{is_under, CallSite, ModuleGraph};
use trainlint_checks::rules::shared_batchnorm::is_batchnorm;
use trainlint_checks::ModuleInfo;

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
    /// Finding messages painted on this node.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
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

/// Runs of at least two consecutive numbered sibling calls with the same structure: each run's call ids.
fn repeated_runs(graph: &ModuleGraph) -> Vec<Vec<usize>> {
    let mut children: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for c in &graph.calls {
        if let Some(p) = c.parent {
            children.entry(p).or_default().push(c.id);
        }
    }
    // Siblings: same parent call and same prefix, non-leaf calls only (blocks, not single layers).
    let mut siblings: BTreeMap<(Option<usize>, String), Vec<usize>> = BTreeMap::new();
    for c in &graph.calls {
        if c.leaf {
            continue;
        }
        if let Some((prefix, _)) = numbered(&c.module) {
            siblings
                .entry((c.parent, prefix.to_string()))
                .or_default()
                .push(c.id);
        }
    }
    let mut runs = Vec::new();
    let mut covered: BTreeSet<usize> = BTreeSet::new();
    for ids in siblings.values() {
        let mut run: Vec<usize> = Vec::new();
        let mut last: Option<(u64, Vec<(String, String)>)> = None;
        for &id in ids {
            let c = &graph.calls[id];
            let n = numbered(&c.module).map_or(0, |(_, n)| n);
            let sig = signature(graph, &children, c);
            let continues = last.as_ref().is_some_and(|(m, s)| n == m + 1 && *s == sig);
            if !continues {
                if run.len() >= 2 {
                    runs.push(std::mem::take(&mut run));
                }
                run.clear();
            }
            run.push(id);
            last = Some((n, sig));
        }
        if run.len() >= 2 {
            runs.push(run);
        }
    }
    // Outer runs first; a run inside another is hidden by it.
    runs.sort_by_key(|r| graph.ancestors(&graph.calls[r[0]]).len());
    let mut kept = Vec::new();
    for run in runs {
        if run.iter().any(|id| covered.contains(id)) {
            continue;
        }
        for &id in &run {
            covered.insert(id);
            for c in &graph.calls {
                if graph.ancestors(c).iter().any(|a| a.id == id) {
                    covered.insert(c.id);
                }
            }
        }
        kept.push(run);
    }
    kept
}

impl View {
    pub fn build(graph: &ModuleGraph, inputs: &ViewInputs) -> View {
        let calls_of = graph.calls_by_module();
        // Leaf call -> node id, through collapsed runs.
        let mut node_of: BTreeMap<usize, String> = BTreeMap::new();
        let mut nodes: Vec<ViewNode> = Vec::new();
        nodes.push(ViewNode {
            id: "input".into(),
            module: String::new(),
            kind: "input".into(),
            shape: inputs.input_shape.clone(),
            call: 1,
            calls: 1,
            in_loop: false,
            collapsed: Vec::new(),
            marks: BTreeSet::new(),
            notes: Vec::new(),
        });
        let runs = if inputs.collapse {
            repeated_runs(graph)
        } else {
            Vec::new()
        };
        let mut run_of: BTreeMap<usize, usize> = BTreeMap::new();
        for (g, run) in runs.iter().enumerate() {
            for c in &graph.calls {
                let inside =
                    run.contains(&c.id) || graph.ancestors(c).iter().any(|a| run.contains(&a.id));
                if inside {
                    run_of.insert(c.id, g);
                }
            }
        }
        let mut emitted_runs: BTreeSet<usize> = BTreeSet::new();
        for c in &graph.calls {
            if let Some(&g) = run_of.get(&c.id) {
                if c.leaf {
                    node_of.insert(c.id, format!("g{g}"));
                }
                if emitted_runs.insert(g) {
                    let run = &runs[g];
                    let first = &graph.calls[run[0]];
                    let last = &graph.calls[run[run.len() - 1]];
                    nodes.push(ViewNode {
                        id: format!("g{g}"),
                        module: first.module.clone(),
                        kind: first.kind.clone(),
                        shape: last.shape.clone(),
                        call: 1,
                        calls: 1,
                        in_loop: first.in_loop,
                        collapsed: run
                            .iter()
                            .map(|&id| graph.calls[id].module.clone())
                            .collect(),
                        marks: BTreeSet::new(),
                        notes: Vec::new(),
                    });
                }
                continue;
            }
            if !c.leaf {
                continue;
            }
            let siblings = &calls_of[c.module.as_str()];
            let call = siblings
                .iter()
                .position(|s| s.id == c.id)
                .map_or(1, |i| i + 1);
            let mut marks = BTreeSet::new();
            if siblings.len() > 1 {
                marks.insert("shared".to_string());
                let together = siblings
                    .iter()
                    .any(|s| s.id != c.id && ModuleGraph::can_run_together(s, c));
                if is_batchnorm(&c.kind) && together {
                    marks.insert("shared-batchnorm".to_string());
                }
            }
            if inputs.unused.contains_key(&c.module) {
                marks.insert("unused".to_string());
            }
            node_of.insert(c.id, format!("c{}", c.id));
            nodes.push(ViewNode {
                id: format!("c{}", c.id),
                module: c.module.clone(),
                kind: c.kind.clone(),
                shape: c.shape.clone(),
                call,
                calls: siblings.len(),
                in_loop: c.in_loop,
                collapsed: Vec::new(),
                marks,
                notes: Vec::new(),
            });
        }
        // Modules with unused trainable parameters that forward never calls: drawn apart.
        for (i, module) in inputs
            .unused
            .keys()
            .filter(|m| !calls_of.contains_key(m.as_str()))
            .enumerate()
        {
            let kind = inputs
                .modules
                .iter()
                .find(|m| &m.path == module)
                .map_or_else(String::new, |m| m.kind.clone());
            nodes.push(ViewNode {
                id: format!("u{i}"),
                module: module.clone(),
                kind,
                shape: String::new(),
                call: 0,
                calls: 0,
                in_loop: false,
                collapsed: Vec::new(),
                marks: ["unused".to_string()].into(),
                notes: Vec::new(),
            });
        }
        let mut output = ViewNode {
            id: "output".into(),
            module: String::new(),
            kind: "output".into(),
            shape: String::new(),
            call: 1,
            calls: 1,
            in_loop: false,
            collapsed: Vec::new(),
            marks: BTreeSet::new(),
            notes: Vec::new(),
        };
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
        View { nodes, edges }
    }

    /// Paints a finding on the nodes its location names: a module (or a module above a collapsed
    /// block's layers) or a parameter's module. Returns whether a node took it.
    pub fn paint(&mut self, path: &str, mark: &str, note: &str) -> bool {
        let path = if path == "<root>" { "" } else { path };
        let mut hit = false;
        for n in &mut self.nodes {
            if n.id == "input" || n.id == "output" {
                continue;
            }
            let named = !path.is_empty()
                && (n.module == path
                    || is_under(&n.module, path)
                    || is_under(path, &n.module)
                    || n.collapsed
                        .iter()
                        .any(|m| is_under(path, m) || is_under(m, path)));
            if named {
                n.marks.insert(mark.to_string());
                if !note.is_empty() && !n.notes.iter().any(|x| x == note) {
                    n.notes.push(note.to_string());
                }
                hit = true;
            }
        }
        hit
    }

    fn label(n: &ViewNode) -> Vec<String> {
        let mut lines = Vec::new();
        match n.id.as_str() {
            "input" | "output" => lines.push(n.kind.clone()),
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

        let attr = |s: &str| {
            s.replace('&', "&amp;")
                .replace('"', "&quot;")
                .replace('<', "&lt;")
                .replace('>', "&gt;")
        };
        let mut vg = VisualGraph::new(Orientation::TopToBottom);
        let mut handles = BTreeMap::new();
        for n in &self.nodes {
            let label = Self::label(n).join("\n");
            let shape = if n.id == "input" || n.id == "output" {
                ShapeKind::new_circle(&label)
            } else {
                ShapeKind::new_box(&label)
            };
            let (fill, _) = colours(&n.marks);
            let line = if n.marks.contains("error") {
                "#cc0000"
            } else if n.marks.contains("unused") {
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
            handles.insert(n.id.clone(), vg.add_node(elem));
        }
        for e in &self.edges {
            let (Some(&a), Some(&b)) = (handles.get(&e.from), handles.get(&e.to)) else {
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
            vg.add_edge(arrow, a, b);
        }
        let mut svg = SVGWriter::new();
        vg.do_it(false, false, false, &mut svg);
        stable_styles(svg.finalize())
    }
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
    if marks.contains("unused") {
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

/// The views of `model`, from one walk of its graph, with output shapes on the first samples of
/// `data` when given (a sample the model rejects draws the graph without shapes and says so on
/// stderr).
pub fn views_of(
    model: &dyn trainlint_checks::Model,
    data: Option<&trainlint_checks::Dataset>,
) -> Result<Views, String> {
    let sample = match data {
        Some(d) if !d.is_empty() => Some(
            d.inputs
                .f_narrow(0, 0, d.len().min(8) as i64)
                .map_err(|e| e.to_string())?,
        ),
        _ => None,
    };
    let graph = model
        .module_graph(sample.as_ref())
        .map_err(|e| e.to_string())?;
    if !graph.shape_error.is_empty() {
        eprintln!(
            "warning: no output shapes: the model rejected the sample: {}",
            crate::model::user_message(&graph.shape_error)
        );
    }
    let params = model.parameters().map_err(|e| e.to_string())?;
    let unused = trainlint_checks::rules::unused_parameters::unused_trainable(&graph, &params)
        .into_iter()
        .map(|(m, ps)| (m, ps.into_iter().map(|(n, _)| n).collect()))
        .collect();
    let input_shape = sample
        .as_ref()
        .map(|s| format!("{:?}", s.size()))
        .unwrap_or_default();
    let mut inputs = ViewInputs {
        modules: model.modules(),
        unused,
        final_op: model.output_activation().ok().map(|a| a.op),
        input_shape,
        collapse: true,
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

/// Paints every finding of the report on the nodes its paths name.
pub fn paint_findings(view: &mut View, report: &crate::report::Report) {
    for run in &report.checks {
        for f in &run.findings {
            let mark = match f.severity {
                trainlint_checks::Severity::Error => "error",
                _ => "warning",
            };
            let note = format!("{}: {}", f.kind, f.message);
            for p in finding_paths(f) {
                view.paint(&p, mark, &note);
            }
        }
    }
}
