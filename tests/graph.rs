//! The module graph on real TorchScript fixtures (fixtures/make_graph.py): `trainlint graph` in every
//! format, and the unused-parameters and shared-batchnorm checks, which read the same graph.
mod common;

use common::in_process::check_json;
use common::*;
use serde_json::Value;

fn graph_json(model: &str, data: Option<&str>) -> Value {
    let m = fixture(&format!("models/{model}.pt"));
    let mut args = vec!["graph", "--model", m.as_str(), "--format", "json"];
    let d;
    if let Some(data) = data {
        d = fixture(&format!("data/{data}"));
        args.extend(["--data", d.as_str()]);
    }
    let o = run(&args);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", stdout(&o)))
}

fn node<'a>(g: &'a Value, module: &str) -> Vec<&'a Value> {
    g["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["module"] == module)
        .collect()
}

fn marks(n: &Value) -> Vec<&str> {
    n["marks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap())
        .collect()
}

fn edge<'a>(g: &'a Value, from: &str, to: &str) -> Option<&'a Value> {
    g["edges"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["from"] == from && e["to"] == to)
}

fn id(n: &Value) -> &str {
    n["id"].as_str().unwrap()
}

#[test]
fn each_problem_shows_on_its_node() {
    let g = graph_json("graph_problems", Some("regression.npz"));
    // The shared BatchNorm: two nodes, call 1/2 and 2/2, both marked.
    let bn = node(&g, "bn");
    assert_eq!(bn.len(), 2);
    for (i, n) in bn.iter().enumerate() {
        assert_eq!(n["call"], i + 1);
        assert_eq!(n["calls"], 2);
        assert!(marks(n).contains(&"shared-batchnorm"), "{n}");
        assert_eq!(n["shape"], "[8, 32]");
    }
    // The unused layer: a node of its own, no edges.
    let unused = node(&g, "unused");
    assert_eq!(unused.len(), 1);
    assert_eq!(marks(unused[0]), ["unused"]);
    let uid = id(unused[0]);
    assert!(!g["edges"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["from"] == uid || e["to"] == uid));
    // The detached branch: right -> head is dashed, left -> head is not.
    let (right, left, head) = (
        node(&g, "right")[0],
        node(&g, "left")[0],
        node(&g, "head")[0],
    );
    assert_eq!(edge(&g, id(right), id(head)).unwrap()["detached"], true);
    assert_eq!(edge(&g, id(left), id(head)).unwrap()["detached"], false);
    assert_eq!(edge(&g, id(bn[1]), id(right)).unwrap()["detached"], false);
    // The data flow: input -> stem -> bn (both calls); the final activation feeds the output.
    let stem = node(&g, "stem")[0];
    assert!(edge(&g, "input", id(stem)).is_some());
    assert!(edge(&g, id(stem), id(bn[0])).is_some() && edge(&g, id(stem), id(bn[1])).is_some());
    let act = node(&g, "act")[0];
    assert!(edge(&g, id(act), "output").is_some());
    assert!(marks(act).contains(&"final-activation"));
    assert_eq!(node(&g, "head")[0]["shape"], "[8, 1]");
}

#[test]
fn the_dot_form_marks_the_same_nodes() {
    let m = fixture("models/graph_problems.pt");
    let o = run(&["graph", "--model", &m, "--format", "dot"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let dot = stdout(&o);
    assert!(dot.starts_with("digraph model {"), "{dot}");
    let line = |module: &str| -> Vec<String> {
        dot.lines()
            .filter(|l| l.contains(&format!("label=\"{module}\\n")))
            .map(String::from)
            .collect()
    };
    let bn = line("bn");
    assert_eq!(bn.len(), 2, "{dot}");
    assert!(bn[0].contains("BatchNorm1d (call 1/2)") && bn[0].contains("shared-batchnorm"));
    let unused = line("unused");
    assert_eq!(unused.len(), 1);
    assert!(unused[0].contains("class=\"unused\"") && unused[0].contains("never called"));
    assert_eq!(
        dot.lines()
            .filter(|l| l.contains("style=dashed, label=\"detach\""))
            .count(),
        1,
        "{dot}"
    );
    // Mermaid carries the same structure.
    let o = run(&["graph", "--model", &m, "--format", "mermaid"]);
    let mmd = stdout(&o);
    assert!(mmd.starts_with("flowchart TD"));
    assert_eq!(mmd.matches("-.->|detach|").count(), 1, "{mmd}");
    assert!(mmd.contains("class u0 unused"), "{mmd}");
}

#[test]
fn repeated_blocks_collapse_with_a_count_and_svg_is_laid_out() {
    let g = graph_json("graph_resnet34_tiny", Some("images32.npz"));
    let collapsed: Vec<&Value> = g["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["collapsed"].is_array())
        .collect();
    // layer1.1-2, layer2.1-3, layer3.1-5, layer4.1-2: the first block of each stage has a downsample
    // (at 1/16 width even layer1's), so it differs from the rest.
    let runs: Vec<(String, usize)> = collapsed
        .iter()
        .map(|n| {
            let c = n["collapsed"].as_array().unwrap();
            (c[0].as_str().unwrap().to_string(), c.len())
        })
        .collect();
    assert_eq!(
        runs,
        [
            ("layer1.1".to_string(), 2),
            ("layer2.1".to_string(), 3),
            ("layer3.1".to_string(), 5),
            ("layer4.1".to_string(), 2)
        ]
    );
    assert_eq!(node(&g, "fc")[0]["shape"], "[8, 10]");
    // BasicBlock calls its one ReLU twice: shared, but not a BatchNorm problem.
    let relu = node(&g, "layer2.0.relu");
    assert_eq!(relu.len(), 2);
    assert!(!marks(relu[0]).contains(&"shared-batchnorm"));

    let m = fixture("models/graph_resnet34_tiny.pt");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("resnet.svg");
    let o = run(&["graph", "--model", &m, "-o", out.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let svg = std::fs::read_to_string(&out).unwrap();
    assert!(svg.contains("<svg") && svg.trim_end().ends_with("</svg>"));
    assert_eq!(
        svg.matches("class=\"node").count(),
        g["nodes"].as_array().unwrap().len()
    );
    let again = run(&["graph", "--model", &m, "--format", "svg"]);
    assert!(stdout(&again) == svg, "the layout is deterministic");
}

#[test]
fn graph_input_errors_are_one_line() {
    let o = run(&["graph", "--model", "fixtures/models/missing.pt"]);
    assert_input_error(&o);
    let o = run(&["graph", "--data", &fixture("data/regression.npz")]);
    let e = assert_input_error(&o);
    assert!(e.contains("graph needs a model"), "{e}");
    // The output may not overwrite the model.
    let m = fixture("models/graph_problems.pt");
    let o = run(&["graph", "--model", &m, "-o", &m]);
    assert_input_error(&o);
    // A sample the model rejects: the graph without shapes, and a warning.
    let o = run(&[
        "graph",
        "--model",
        &m,
        "--data",
        &fixture("data/images.npz"),
        "--format",
        "json",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("warning: no output shapes"),
        "{}",
        stderr(&o)
    );
}

fn check(select: &str, model: &str, data: Option<&str>) -> Value {
    let m = fixture(&format!("models/{model}.pt"));
    let mut args = vec!["--select", select, "--model", m.as_str()];
    let d;
    if let Some(data) = data {
        d = fixture(&format!("data/{data}"));
        args.extend(["--data", d.as_str()]);
    }
    let (code, report) = check_json(&args);
    assert!(code == 0 || code == 1, "exit {code}: {report}");
    report
}

#[test]
fn unused_parameters_names_the_uncalled_layer_and_gradient_flow_does_not_repeat_it() {
    let r = check(
        "unused-parameters,gradient-flow",
        "unused_layer",
        Some("regression.npz"),
    );
    let f = findings(&r, "unused-parameters");
    assert_eq!(f.len(), 1);
    assert_eq!(f[0]["location"]["module"], "aux");
    assert_eq!(
        f[0]["evidence"]["parameters"],
        serde_json::json!(["aux.weight", "aux.bias"])
    );
    assert_eq!(f[0]["evidence"]["elements"], 64 * 64 + 64);
    assert_eq!(f[0]["evidence"]["never_called"], true);
    assert_eq!(check_entry(&r, "gradient-flow")["status"], "passed");

    // Detached and unused in one model: each check reports its own cause.
    let r = check(
        "unused-parameters,gradient-flow",
        "graph_problems",
        Some("regression.npz"),
    );
    let f = findings(&r, "unused-parameters");
    assert_eq!(f.len(), 1);
    assert_eq!(f[0]["location"]["module"], "unused");
    let g = findings(&r, "gradient-flow");
    assert_eq!(g.len(), 1);
    assert_eq!(
        g[0]["evidence"]["no_gradient"],
        serde_json::json!(["right.weight", "right.bias"])
    );

    // A detached body is read by forward: gradient-flow's, not unused-parameters'.
    let r = check("unused-parameters", "partly_detached", None);
    assert_eq!(check_entry(&r, "unused-parameters")["status"], "passed");
}

#[test]
fn a_deliberately_unused_head_can_be_allowed_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(
        dir.path(),
        "trainlint.toml",
        "[checks.unused-parameters]\nallow = [\"au*\"]\n",
    );
    let m = fixture("models/unused_layer.pt");
    let (code, r) = check_json(&[
        cfg.to_str().unwrap(),
        "--select",
        "unused-parameters",
        "--model",
        &m,
    ]);
    assert_eq!(code, 0, "{r}");
    assert_eq!(check_entry(&r, "unused-parameters")["status"], "passed");
    let cfg = write(
        dir.path(),
        "trainlint.toml",
        "[[ignore]]\ncheck = \"unused-parameters\"\nlocation = \"aux\"\nreason = \"auxiliary head, used in training code only\"\n",
    );
    let (code, r) = check_json(&[
        cfg.to_str().unwrap(),
        "--select",
        "unused-parameters",
        "--model",
        &m,
    ]);
    assert_eq!(code, 0, "{r}");
    assert_eq!(check_entry(&r, "unused-parameters")["ignored"], 1);
}

/// torchvision's ViT and Swin: inlining their calls frees values whose addresses come back for new
/// ones, and an output traced by address once ended at a `layer_norm` function constant, which no
/// run can return: the shapes were lost ("the model rejected the sample: unordered_map::at") on most
/// runs. Traced by graph and unique, every call at forward's top level has its shape.
#[test]
fn vit_and_swin_get_their_shapes() {
    for (model, module, shape) in [
        (
            "tv/vit",
            "encoder.layers.encoder_layer_0.ln_1",
            "[8, 17, 32]",
        ),
        ("tv/swin", "features.0.0", "[8, 16, 8, 8]"),
    ] {
        let m = fixture(&format!("models/{model}.pt"));
        let d = fixture("data/shapes16.npz");
        let o = run(&["graph", "--model", &m, "--data", &d, "--format", "json"]);
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        assert!(stderr(&o).is_empty(), "{model}: {}", stderr(&o));
        let g: Value = serde_json::from_slice(&o.stdout).expect("the graph's JSON");
        assert_eq!(node(&g, module)[0]["shape"], shape, "{model}");
    }
}

/// The graph paints the graph checks' findings; it does not judge the graph itself: the uncalled
/// head is drawn and marked unused while unused-parameters reports it, and not once the config allows
/// it (or a `[[ignore]]` entry silences it).
#[test]
fn the_graph_marks_what_the_checks_find() {
    let m = fixture("models/unused_layer.pt");
    let dir = tempfile::tempdir().unwrap();
    let graph_with = |config: &str| -> Value {
        let cfg = write(dir.path(), "trainlint.toml", config);
        let cfg = cfg.display().to_string();
        let o = run(&["graph", &cfg, "--model", &m, "--format", "json"]);
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        serde_json::from_slice(&o.stdout).expect("the graph's JSON")
    };
    let unused = |g: &Value| -> Vec<String> {
        let nodes = g["nodes"].as_array().unwrap().iter();
        let marked = nodes.filter(|n| n["marks"].as_array().unwrap().iter().any(|k| k == "unused"));
        marked
            .map(|n| n["module"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(unused(&graph_with("")), ["aux"]);
    let allowed = graph_with("[checks.unused-parameters]\nallow = [\"au*\"]\n");
    assert!(unused(&allowed).is_empty(), "{allowed}");
    assert!(node(&allowed, "aux").is_empty(), "{allowed}");
    let ignored = graph_with(
        "[[ignore]]\ncheck = \"unused-parameters\"\nlocation = \"aux\"\nreason = \"used in training code only\"\n",
    );
    assert!(unused(&ignored).is_empty(), "{ignored}");
}

#[test]
fn shared_batchnorm_names_the_module_and_both_call_sites() {
    for model in ["graph_siamese_bn", "graph_siamese_bn_traced"] {
        let r = check("shared-batchnorm", model, None);
        let f = findings(&r, "shared-batchnorm");
        assert_eq!(f.len(), 1, "{model}: {r}");
        assert_eq!(f[0]["location"]["module"], "encoder.1");
        assert_eq!(f[0]["severity"], "warning");
        let sites = f[0]["evidence"]["call_sites"].as_array().unwrap();
        assert_eq!(sites.len(), 2);
        assert!(
            sites
                .iter()
                .all(|s| s.as_str().unwrap().starts_with("encoder ")),
            "{sites:?}"
        );
        assert_ne!(sites[0], sites[1]);
    }
    let r = check("shared-batchnorm", "graph_problems", None);
    let f = findings(&r, "shared-batchnorm");
    assert_eq!(f.len(), 1);
    assert_eq!(f[0]["location"]["module"], "bn");
}

/// Issue 24: the graph view marks `shared-batchnorm` on exactly the modules the check reports, from
/// the check's own decision, on models that share a BatchNorm and models that only look as if they
/// did (exclusive branches, a loop, a recurrence).
#[test]
fn the_graph_marks_shared_batchnorm_where_the_check_reports_it() {
    for model in [
        "graph_siamese_bn",
        "graph_siamese_bn_traced",
        "graph_problems",
        "graph_branches",
        "graph_loops",
        "graph_bn_branch_attr_on",
        "graph_bn_branch_attr_off",
        "graph_bn_branch_runtime",
        "cnn_bn",
    ] {
        let r = check("shared-batchnorm", model, None);
        let reported: std::collections::BTreeSet<String> = findings(&r, "shared-batchnorm")
            .iter()
            .map(|f| f["location"]["module"].as_str().unwrap().to_string())
            .collect();
        let g = graph_json(model, None);
        let marked: std::collections::BTreeSet<String> = g["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|n| marks(n).contains(&"shared-batchnorm"))
            .map(|n| n["module"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(marked, reported, "{model}");
    }
}

#[test]
fn the_graph_checks_stay_silent_on_healthy_models() {
    // if-branches (both read; exclusive calls), ModuleList loops and a recurrence, weight tying, an
    // LSTM, a frozen unused head, and torchvision's own models.
    for model in [
        "graph_branches",
        "graph_loops",
        "graph_tied",
        "graph_resnet34_tiny",
        "tv_resnet_zero_init",
        "tv_mobilenet_v3_small",
        "tv_vit_tiny",
        "tv_googlenet_pattern",
        "resnet_bn",
        "unet",
        "cnn_bn",
        "cnn_bn_traced",
        "dict_heads",
        "tuple_heads",
        "embedding",
        "mlp_default",
        "bn_submodule_eval",
        "classifier",
        "detached",
        "partly_detached",
    ] {
        let r = check("unused-parameters,shared-batchnorm", model, None);
        let f = all_findings(&r);
        assert!(f.is_empty(), "{model}: {f:?}");
        let unused = check_entry(&r, "unused-parameters");
        assert_eq!(unused["status"], "passed", "{model}: {unused}");
    }
}

#[test]
fn the_html_report_paints_findings_on_the_graph() {
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("report.html");
    let m = fixture("models/graph_problems.pt");
    let d = fixture("data/regression.npz");
    let o = run(&[
        "check",
        "--model",
        &m,
        "--data",
        &d,
        "--select",
        "unused-parameters,shared-batchnorm,gradient-flow",
        "--report",
        page.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let html = std::fs::read_to_string(&page).unwrap();
    assert!(html.contains("<section class=\"graph\""));
    let node = |module: &str| -> Vec<&str> {
        html.split("<g ")
            .filter(|g| g.contains(&format!("data-module=\"{module}\"")))
            .map(|g| g.split('>').next().unwrap())
            .collect()
    };
    assert!(node("unused")[0].contains("unused") && node("unused")[0].contains("error"));
    assert!(node("right")[0].contains("error"), "{:?}", node("right"));
    assert!(node("bn").iter().all(|g| g.contains("warning")));
    assert!(!node("left")[0].contains("error"));
    assert!(html.contains("data-modules=\"unused unused.weight unused.bias\""));
}

#[test]
fn calls_in_exclusive_branches_are_not_a_shared_batchnorm() {
    let g = graph_json("graph_branches", None);
    let bn = node(&g, "bn");
    assert_eq!(bn.len(), 2);
    assert!(bn.iter().all(|n| marks(n) == ["shared"]), "{bn:?}");
    // The loop: the recurrent block's layers are one call each, marked as looping.
    let g = graph_json("graph_loops", None);
    let refine = node(&g, "refine.bn");
    assert_eq!(refine.len(), 1);
    assert_eq!(refine[0]["in_loop"], true);
    assert_eq!(refine[0]["calls"], 1);
}

/// Issue 23, 5: calls in the same branch of an `if` count apart, whichever branch comes first; an `if`
/// on a bool attribute that forward never assigns runs the branch its saved value picks.
#[test]
fn two_calls_in_one_branch_are_a_shared_batchnorm_and_fixed_conditions_pick_their_branch() {
    for model in ["graph_bn_branch_runtime", "graph_bn_branch_attr_on"] {
        let r = check("shared-batchnorm", model, None);
        let f = findings(&r, "shared-batchnorm");
        assert_eq!(f.len(), 1, "{model}: {r}");
        assert_eq!(
            f[0]["evidence"]["call_sites"].as_array().unwrap().len(),
            2,
            "{model}"
        );
        let message = f[0]["message"].as_str().unwrap();
        assert!(
            message.starts_with("BatchNorm1d bn is called 2 times in one forward"),
            "{message}"
        );
    }
    // concat = False: the branch with two calls never runs, and nothing else is lost: every layer is
    // still read (no unused parameter).
    let r = check(
        "shared-batchnorm,unused-parameters",
        "graph_bn_branch_attr_off",
        None,
    );
    assert!(findings(&r, "shared-batchnorm").is_empty(), "{r}");
    assert!(findings(&r, "unused-parameters").is_empty(), "{r}");
    let g = graph_json("graph_bn_branch_attr_off", None);
    let bn = node(&g, "bn");
    assert!(
        bn.iter().all(|n| !marks(n).contains(&"shared-batchnorm")),
        "{bn:?}"
    );
}
