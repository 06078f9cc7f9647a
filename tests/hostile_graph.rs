//! The module graph under hostile or unusual structure (issue 20, items 14 and 17), on real TorchScript
//! fixtures (fixtures/make_hostile_graph.py): a 10,000-layer model draws a bounded picture and the
//! drawing obeys --timeout; a head run through torch.jit.fork / torch.jit.wait counts as used.
mod common;

use common::*;
use serde_json::Value;
use trainlint::audit::graph_marks;
use trainlint::report::graph::{views_of_sample, View, Views};
use trainlint::security::load_model;

/// The drawing limit of src/report/graph.rs (MAX_NODES): nodes besides input, output and `more`.
const MAX_NODES: usize = 300;

/// What `trainlint graph --model models/MODEL.pt` draws, in process (marked with the graph checks'
/// findings): the collapsed view and the full
/// one (`--no-collapse`, when something collapsed). Loading a 10,000-layer model takes seconds; one
/// load serves every view and format a test asserts on. The command itself (its output file, the
/// time limit) is tested on the same model below and in tests/graph.rs.
fn views(model: &str) -> Views {
    let path = root().join(format!("fixtures/models/{model}.pt"));
    let loaded = load_model(&path, "cpu", "", false).expect("the fixture loads");
    let marks = graph_marks(&loaded, &trainlint::config::Settings::default());
    views_of_sample(&loaded, None, &marks).expect("the graph is drawn")
}

/// A view as `graph --format json` writes it.
fn json(view: &View) -> Value {
    serde_json::to_value(view).expect("the view serialises")
}

fn nodes(g: &Value) -> &Vec<Value> {
    g["nodes"].as_array().unwrap()
}

fn node<'a>(g: &'a Value, module: &str) -> Vec<&'a Value> {
    nodes(g).iter().filter(|n| n["module"] == module).collect()
}

fn has_edge(g: &Value, from: &str, to: &str) -> bool {
    g["edges"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["from"] == from && e["to"] == to)
}

#[test]
fn ten_thousand_layers_draw_a_bounded_graph_with_a_note() {
    // ReLU and Tanh alternate on a residual stream: nothing collapses, and every layer's input carries
    // data from every earlier layer.
    let views = views("graph_10k_residual");
    assert!(views.full.is_none(), "nothing collapses");
    let g = json(&views.collapsed);
    assert_eq!(
        nodes(&g).len(),
        MAX_NODES + 3,
        "input, 300 layers, more, output"
    );
    let more = &node(&g, "")
        .into_iter()
        .find(|n| n["id"] == "more")
        .unwrap();
    assert_eq!(more["omitted"], 10_000 - MAX_NODES);
    assert_eq!(more["marks"], serde_json::json!(["omitted"]));
    assert_eq!(node(&g, "layers.0")[0]["kind"], "ReLU");
    assert_eq!(node(&g, "layers.299")[0]["kind"], "Tanh");
    assert!(node(&g, "layers.300").is_empty());
    // The cut keeps the data flow: the last drawn layer feeds the rest, which feeds the output.
    let last = node(&g, "layers.299")[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(has_edge(&g, &last, "more") && has_edge(&g, "more", "output"));
    // Each drawn layer has at most 32 inputs (the shim's cap), not one per earlier layer.
    let edges = g["edges"].as_array().unwrap().len();
    assert!(edges <= 32 * (MAX_NODES + 2), "{edges} edges");

    // Drawn as SVG: every node laid out, the note visible.
    let svg = views.collapsed.to_svg();
    assert!(svg.trim_end().ends_with("</svg>"));
    assert_eq!(svg.matches("class=\"node").count(), MAX_NODES + 3);
    assert!(svg.contains("9700 more modules not drawn"), "the note");
}

#[test]
fn ten_thousand_identical_layers_collapse_into_one_node() {
    let views = views("graph_10k_sequential");
    let g = json(&views.collapsed);
    let ids: Vec<&str> = nodes(&g)
        .iter()
        .map(|n| n["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["input", "g0", "output"]);
    let run = &nodes(&g)[1];
    assert_eq!(run["kind"], "ReLU");
    assert_eq!(run["collapsed"].as_array().unwrap().len(), 10_000);
    assert_eq!(run["collapsed"][9_999], "layers.9999");
    // --no-collapse draws every layer, up to the limit.
    let g = json(views.full.as_ref().expect("a view without the collapse"));
    assert_eq!(nodes(&g).len(), MAX_NODES + 3);
    let more = nodes(&g).iter().find(|n| n["id"] == "more").unwrap();
    assert_eq!(more["omitted"], 10_000 - MAX_NODES);
}

#[test]
fn the_report_of_a_ten_thousand_layer_model_carries_the_cut_graph() {
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("report.html");
    let m = fixture("models/graph_10k_residual.pt");
    let o = run(&[
        "check",
        "--model",
        &m,
        "--select",
        "unused-parameters",
        "--report",
        page.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let html = std::fs::read_to_string(&page).unwrap();
    assert!(html.contains("<section class=\"graph\""));
    assert!(html.contains("9700 more modules not drawn"));
    assert_eq!(
        html.matches("class=\"node").count(),
        MAX_NODES + 3,
        "one view: nothing collapses"
    );
}

#[test]
fn drawing_the_graph_obeys_the_timeout() {
    // No walk of 10,000 layers ends within a millisecond.
    let m = fixture("models/graph_10k_residual.pt");
    let o = run(&["graph", "--model", &m, "--timeout", "0.001"]);
    let e = assert_input_error(&o);
    assert!(e.contains("timed out after 0.001 s"), "{e}");
    assert!(stdout(&o).is_empty());

    // The report: the checks' verdicts, and the graph section says why it has no picture.
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("report.html");
    let o = run(&[
        "check",
        "--model",
        &m,
        "--select",
        "unused-parameters",
        "--timeout",
        "0.001",
        "--report",
        page.to_str().unwrap(),
    ]);
    assert!(matches!(o.status.code(), Some(0 | 1)), "{}", stderr(&o));
    assert!(
        stderr(&o).contains(
            "warning: the model graph is not in the report: timed out after 0.001 s (--timeout)"
        ),
        "{}",
        stderr(&o)
    );
    let html = std::fs::read_to_string(&page).unwrap();
    assert!(html.contains("Not drawn: timed out after 0.001 s (--timeout)."));
    assert!(!html.contains("id=\"graph-collapsed\""));
}

fn check(model: &str) -> Value {
    let m = fixture(&format!("models/{model}.pt"));
    let (code, report) = in_process::check_json(&["--select", "unused-parameters", "--model", &m]);
    assert!(code == 0 || code == 1, "exit {code}: {report}");
    report
}

#[test]
fn a_forked_head_is_used() {
    for model in [
        "graph_fork_head",
        "graph_fork_head_traced",
        "graph_fork_heads_list",
    ] {
        let r = check(model);
        assert_eq!(
            check_entry(&r, "unused-parameters")["status"],
            "passed",
            "{model}: {r}"
        );
    }
    // The control: the forked head is used, the spare layer really is not.
    let r = check("graph_fork_unused");
    let f = findings(&r, "unused-parameters");
    assert_eq!(f.len(), 1, "{r}");
    assert_eq!(f[0]["location"]["module"], "spare");
    assert_eq!(f[0]["evidence"]["never_called"], true);
}

#[test]
fn the_graph_shows_the_forked_call_and_its_data_flow() {
    for model in ["graph_fork_head", "graph_fork_head_traced"] {
        let g = json(&views(model).collapsed);
        let (body, head) = (node(&g, "body"), node(&g, "head"));
        assert_eq!(head.len(), 1, "{model}: {g}");
        assert!(
            head[0]["marks"].as_array().unwrap().is_empty(),
            "{model}: {g}"
        );
        let (body, head) = (
            body[0]["id"].as_str().unwrap(),
            head[0]["id"].as_str().unwrap(),
        );
        assert!(has_edge(&g, "input", body), "{model}: {g}");
        assert!(has_edge(&g, body, head), "{model}: {g}");
        assert!(has_edge(&g, head, "output"), "{model}: {g}");
    }
    // Two heads forked into a list of futures: both fed by the body, both reaching the output.
    let g = json(&views("graph_fork_heads_list").collapsed);
    let body = node(&g, "body")[0]["id"].as_str().unwrap();
    for head in ["head_a", "head_b"] {
        let id = node(&g, head)[0]["id"].as_str().unwrap();
        assert!(has_edge(&g, body, id) && has_edge(&g, id, "output"), "{g}");
    }
}
