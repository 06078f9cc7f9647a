//! batch-independence: models whose forward mixes samples across the batch (made by real PyTorch in
//! fixtures/make_batch_independence.py) are flagged; the same architectures written right, and the
//! healthy fixtures, are not. Audited in process, asserted typed.
mod common;

use common::in_process::audit_of;
use common::typed::{num, only, passed, skipped};
use common::*;
use trainlint::audit::Audit;
use trainlint_checks::Severity;

fn run_check(model: &str, data: &str) -> Audit {
    let mut args: Vec<String> = vec!["--select".into(), "batch-independence".into()];
    args.extend(model_data(model, data));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    audit_of(&args)
}

/// The one finding's counts: (judged pairs, mixed pairs, only later samples), after checking its kind
/// and severity.
fn pairs(a: &Audit) -> (f64, f64, bool) {
    let f = only(a, "batch-independence", Severity::Error);
    assert_eq!(f.kind, "batch-independence/samples-mixed");
    let later = f.evidence["only_later_samples"].as_bool().expect("a bool");
    (num(f, "judged_pairs"), num(f, "mixed_pairs"), later)
}

#[test]
fn reshape_and_transpose_mistakes_mix_every_pair() {
    // view(T, N, H) for view(N, T, H); transpose(0, 1).reshape(N, -1) for reshape(N, -1).
    for model in ["bi_view_mix", "bi_transpose_mix"] {
        let a = run_check(model, "sequences.npz");
        assert_eq!(pairs(&a), (12.0, 12.0, false), "{model}");
        let f = only(&a, "batch-independence", Severity::Error);
        assert!(num(f, "worst_leak") > 0.1, "{model}: {f:#?}");
    }
}

#[test]
fn a_gru_with_batch_first_false_runs_along_the_batch() {
    // Sample i sees samples 0..i: the 6 pairs (j, i > j) of 4 samples, and no other.
    let a = run_check("bi_gru_not_batch_first", "sequences.npz");
    assert_eq!(pairs(&a), (12.0, 6.0, true));
    assert_check!(a, "batch-independence");
}

#[test]
fn a_transformer_with_batch_first_false_attends_across_the_batch_of_token_ids() {
    // Integer token ids cannot take gradients: replacing a sample by another sample's tokens still
    // reveals the mixing, in both directions.
    let a = run_check("bi_transformer_not_batch_first", "tokens.npz");
    let (_, mixed, later) = pairs(&a);
    assert_eq!((mixed, later), (12.0, false));
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
        passed(&run_check(model, data), "batch-independence");
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
        passed(&run_check(model, "images32.npz"), "batch-independence");
    }
    // ViT's zero-initialised head makes every output 0 whatever the input: nothing to compare, and
    // the check says so instead of passing.
    let a = run_check("tv_vit_tiny", "images32.npz");
    skipped(&a, "batch-independence");
    assert_check!("vit_zero_head", a, "batch-independence");
}
