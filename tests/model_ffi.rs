//! The TorchScript adapter seen from the CLI: `model.output` picks one head for the forward pass and for
//! the graph's final op alike, a wrong `model.output` is a one-line input error, and no libtorch C++
//! stack reaches the user.
mod common;

use std::process::Output;

use common::*;
use serde_json::Value;

/// `trainlint check` with `[model] output = <output>` (a TOML value, written as is) and `[setup] loss`.
fn run_with_output(model: &str, data: &str, output: &str, loss: &str, extra: &[&str]) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(
        dir.path(),
        "trainlint.toml",
        &format!("[model]\noutput = {output}\n\n[setup]\nloss = \"{loss}\"\n"),
    );
    let md = model_data(model, data);
    let mut args: Vec<&str> = vec!["check", cfg.to_str().unwrap(), "--no-timings"];
    args.extend(md.iter().map(String::as_str));
    args.extend_from_slice(extra);
    run(&args)
}

/// The JSON report of output-range and double-activation on one head of a multi-head model.
fn report_for(model: &str, data: &str, output: &str, loss: &str) -> Value {
    let o = run_with_output(
        model,
        data,
        output,
        loss,
        &[
            "--select",
            "output-range,double-activation",
            "--output-format",
            "json",
        ],
    );
    let code = o.status.code().expect("exit code");
    assert!(code == 0 || code == 1, "exit {code}: {}", stderr(&o));
    let report: Value = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", stdout(&o)));
    for id in ["output-range", "double-activation"] {
        assert_ne!(check_entry(&report, id)["status"], "failed", "{report}");
    }
    report
}

fn messages(report: &Value, check: &str) -> Vec<String> {
    findings(report, check)
        .iter()
        .map(|f| f["message"].as_str().unwrap().to_string())
        .collect()
}

fn mentions_sigmoid(report: &Value, check: &str) -> bool {
    messages(report, check)
        .iter()
        .any(|m| m.contains("sigmoid"))
}

// ---------------------------------------------------------------- one head for forward and graph
#[test]
fn dict_output_judges_the_selected_head() {
    // targets_normal: unbounded targets. The "pred" head is linear and fits them; "aux" ends in sigmoid.
    let pred = report_for("dict_heads", "targets_normal.npz", "\"pred\"", "mse");
    assert_eq!(
        check_entry(&pred, "output-range")["status"],
        "passed",
        "{pred}"
    );
    assert!(!mentions_sigmoid(&pred, "output-range"), "{pred}");

    let aux = report_for("dict_heads", "targets_normal.npz", "\"aux\"", "mse");
    let m = messages(&aux, "output-range");
    assert!(
        m.iter()
            .any(|m| m.starts_with("sigmoid output lies in [0, 1]")),
        "{aux}"
    );

    // No model.output: the first entry, as the forward pass takes it.
    let first = report_for("dict_heads", "targets_normal.npz", "\"\"", "mse");
    assert_eq!(
        messages(&first, "output-range"),
        m,
        "the default is the first entry"
    );
}

#[test]
fn dict_output_double_activation_sees_the_selected_head() {
    let pred = report_for(
        "dict_heads",
        "targets_01.npz",
        "\"pred\"",
        "bce_with_logits",
    );
    assert_eq!(
        check_entry(&pred, "double-activation")["status"],
        "passed",
        "{pred}"
    );
    let aux = report_for("dict_heads", "targets_01.npz", "\"aux\"", "bce_with_logits");
    assert!(
        messages(&aux, "double-activation")
            .iter()
            .any(|m| m.contains("ends in sigmoid but the loss is bce_with_logits")),
        "{aux}"
    );
}

#[test]
fn tuple_output_judges_the_selected_head() {
    let linear = report_for("tuple_heads", "targets_normal.npz", "\"1\"", "mse");
    assert_eq!(
        check_entry(&linear, "output-range")["status"],
        "passed",
        "{linear}"
    );
    assert!(!mentions_sigmoid(&linear, "output-range"), "{linear}");
    // An integer in TOML selects the same head as its string.
    let linear_int = report_for("tuple_heads", "targets_normal.npz", "1", "mse");
    assert_eq!(linear_int["checks"], linear["checks"]);
    for first in ["\"0\"", "\"\""] {
        let r = report_for("tuple_heads", "targets_normal.npz", first, "mse");
        assert!(
            messages(&r, "output-range")
                .iter()
                .any(|m| m.starts_with("sigmoid output lies in [0, 1]")),
            "{first}: {r}"
        );
    }
}

// ---------------------------------------------------------------- a wrong model.output
fn output_error(model: &str, output: &str) -> String {
    let o = run_with_output(model, "targets_normal.npz", output, "mse", &[]);
    assert_input_error(&o)
}

#[test]
fn non_numeric_output_on_a_tuple_names_the_valid_indices() {
    let err = output_error("tuple_heads", "\"x\"");
    assert_eq!(
        err.trim_end(),
        "error: model.output = \"x\": forward returns a tuple of 2; use an index 0..1"
    );
}

#[test]
fn negative_or_out_of_range_index_is_refused_with_the_valid_range() {
    for bad in ["-1", "2", "18446744073709551615", "99999999999999999999999"] {
        let err = output_error("tuple_heads", &format!("\"{bad}\""));
        assert!(
            err.contains(&format!("model.output = \"{bad}\"")) && err.contains("0..1"),
            "{bad}: {err}"
        );
    }
}

#[test]
fn minus_one_is_not_read_as_a_huge_index() {
    let err = output_error("tuple_heads", "\"-1\"");
    assert!(!err.contains("18446744073709551615"), "{err}");
}

#[test]
fn missing_dict_key_lists_the_keys() {
    let err = output_error("dict_heads", "\"logits\"");
    assert!(err.contains("model.output = \"logits\""), "{err}");
    assert!(err.contains("\"aux\", \"pred\""), "{err}");
}

#[test]
fn nul_byte_in_output_is_an_input_error_not_a_panic() {
    // TOML's \u0000 escape puts a NUL byte into the string.
    let err = output_error("dict_heads", "\"pr\\u0000ed\"");
    assert_eq!(err.trim_end(), "error: model.output contains a NUL byte");
}

// ---------------------------------------------------------------- libtorch's messages
#[test]
fn no_cpp_backtrace_reaches_the_user() {
    // With TORCH_SHOW_CPP_STACKTRACES libtorch appends "Exception raised from ..." and "frame #N" lines;
    // head_linear takes 16 features, regression.npz holds 32.
    let md = model_data("head_linear", "regression.npz");
    let mut args = vec!["check", "--select", "output-range"];
    args.extend(md.iter().map(String::as_str));
    let o = trainlint()
        .env("TORCH_SHOW_CPP_STACKTRACES", "1")
        .args(&args)
        .output()
        .unwrap();
    let err = assert_input_error(&o);
    assert!(
        err.contains("mat1 and mat2 shapes cannot be multiplied (64x32 and 16x32)"),
        "{err}"
    );
    assert!(
        !err.contains("Exception raised from") && !err.contains("frame #"),
        "{err}"
    );
}

// ---------------------------------------------------------------- predict leaves the module as saved
#[test]
fn shared_prediction_leaves_submodule_training_flags_as_saved() {
    // The shared eval-mode prediction runs on the user's module before stale-batchnorm's train-mode
    // probe copies it. Were the flags left in eval mode (or reset to train recursively), the trained
    // model would look frozen, or the submodule saved in eval mode would look healthy.
    let (_, clean) = check_json(
        &[
            &["--select", "stale-batchnorm"][..],
            &model_data("bn_trained", "images.npz")
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>(),
        ]
        .concat(),
    );
    assert_eq!(
        check_entry(&clean, "stale-batchnorm")["status"],
        "passed",
        "{clean}"
    );
    let (_, stuck) = check_json(
        &[
            &["--select", "stale-batchnorm"][..],
            &model_data("bn_submodule_eval", "images.npz")
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>(),
        ]
        .concat(),
    );
    let f = findings(&stuck, "stale-batchnorm");
    assert_eq!(f.len(), 1, "{stuck}");
    assert_eq!(f[0]["location"]["module"], "features.4", "{stuck}");
}
