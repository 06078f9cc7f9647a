//! batch-independence: models whose forward mixes samples across the batch (made by real PyTorch in
//! fixtures/make_batch_independence.py) are flagged; the same architectures written right, and the
//! healthy fixtures, are not.
mod common;

use common::in_process::check_json;
use common::*;
use serde_json::Value;

fn run_check(model: &str, data: &str) -> Value {
    let mut args: Vec<String> = vec!["--select".into(), "batch-independence".into()];
    args.extend(model_data(model, data));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, report) = check_json(&args);
    assert!(code == 0 || code == 1, "{model}: exit {code}");
    report
}

fn evidence(model: &str, data: &str) -> Value {
    let r = run_check(model, data);
    let f = findings(&r, "batch-independence");
    assert_eq!(f.len(), 1, "{model}: {r}");
    assert_eq!(f[0]["kind"], "batch-independence/samples-mixed");
    assert_eq!(f[0]["severity"], "error", "{model}");
    f[0]["evidence"].clone()
}

#[test]
fn reshape_and_transpose_mistakes_mix_every_pair() {
    // view(T, N, H) for view(N, T, H); transpose(0, 1).reshape(N, -1) for reshape(N, -1).
    for model in ["bi_view_mix", "bi_transpose_mix"] {
        let e = evidence(model, "sequences.npz");
        assert_eq!(e["judged_pairs"], 12, "{model}");
        assert_eq!(e["mixed_pairs"], 12, "{model}");
        assert!(e["worst_leak"].as_f64().unwrap() > 0.1, "{model}: {e}");
        assert_eq!(e["only_later_samples"], false, "{model}");
    }
}

#[test]
fn a_gru_with_batch_first_false_runs_along_the_batch() {
    // Sample i sees samples 0..i: the 6 pairs (j, i > j) of 4 samples, and no other.
    let e = evidence("bi_gru_not_batch_first", "sequences.npz");
    assert_eq!(e["mixed_pairs"], 6);
    assert_eq!(e["judged_pairs"], 12);
    assert_eq!(e["only_later_samples"], true);
    let r = run_check("bi_gru_not_batch_first", "sequences.npz");
    let message = findings(&r, "batch-independence")[0]["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(message.contains("batch_first=False"), "{message}");
}

#[test]
fn a_transformer_with_batch_first_false_attends_across_the_batch_of_token_ids() {
    // Integer token ids cannot take gradients: replacing a sample by another sample's tokens still
    // reveals the mixing, in both directions.
    let e = evidence("bi_transformer_not_batch_first", "tokens.npz");
    assert_eq!(e["mixed_pairs"], 12);
    assert_eq!(e["only_later_samples"], false);
}

#[test]
fn the_same_architectures_written_right_pass() {
    for (model, data) in [
        ("bi_flattened", "sequences.npz"),
        ("bi_gru", "sequences.npz"),
        ("bi_transformer", "tokens.npz"),
        ("bi_noisy_latent", "sequences.npz"),
        ("embedding", "tokens.npz"),
        ("cnn_bn", "images.npz"),
        ("resnet_bn", "images.npz"),
        ("mlp_default", "regression.npz"),
        ("classifier", "classes4.npz"),
    ] {
        let r = run_check(model, data);
        let e = check_entry(&r, "batch-independence");
        assert_eq!(e["status"], "passed", "{model}: {e}");
    }
}

#[test]
fn fresh_torchvision_models_keep_samples_apart_in_eval_mode() {
    // BatchNorm mixes samples in train mode only; eval mode uses the running statistics.
    for model in [
        "tv_resnet_zero_init",
        "tv_mobilenet_v3_small",
        "tv_googlenet_pattern",
    ] {
        let r = run_check(model, "images32.npz");
        let e = check_entry(&r, "batch-independence");
        assert_eq!(e["status"], "passed", "{model}: {e}");
    }
    // ViT's zero-initialised head makes every output 0 whatever the input: nothing to compare, and
    // the check says so instead of passing.
    let r = run_check("tv_vit_tiny", "images32.npz");
    let e = check_entry(&r, "batch-independence");
    assert_eq!(e["status"], "skipped", "{e}");
    assert!(
        e.to_string()
            .contains("no replaced sample changed its own output"),
        "{e}"
    );
}
