//! Models exported by other PyTorch versions than trainlint's libtorch 2.13: every folder under
//! fixtures/torch_versions/ was written by trainlint-export (python/) with the torch version its name
//! gives (fixtures/make_torch_versions.py), and must load and audit with every check running.
mod common;

use std::collections::BTreeSet;

use common::*;

fn exported_folders() -> Vec<(String, String)> {
    let root = root().join("fixtures/torch_versions");
    let mut out = Vec::new();
    for version in std::fs::read_dir(&root).expect("fixtures/torch_versions") {
        let version = version.unwrap().path();
        for how in ["script", "trace"] {
            let folder = version.join(how);
            assert!(
                folder.join("model.pt").is_file(),
                "{} has no model.pt",
                folder.display()
            );
            let name = version.file_name().unwrap().to_string_lossy().into_owned();
            out.push((name, folder.display().to_string()));
        }
    }
    out.sort();
    out
}

#[test]
fn exports_from_older_and_newer_torch_versions_are_committed() {
    let versions: BTreeSet<String> = exported_folders().into_iter().map(|(v, _)| v).collect();
    // 2.13 is trainlint's own; 2.1 the oldest and 2.15 the newest tested (docs/torchscript.md).
    for needed in ["torch-2.1", "torch-2.13", "torch-2.15"] {
        assert!(
            versions.contains(needed),
            "missing {needed} in {versions:?}"
        );
    }
}

#[test]
fn every_exported_folder_audits_with_every_check_running() {
    for (version, folder) in exported_folders() {
        let stamp = std::fs::read_to_string(format!("{folder}/torch-version.txt")).unwrap();
        let (torch, how) = stamp.trim().split_once('\n').expect("version and method");
        assert!(
            torch.starts_with(&format!("{}.", version.trim_start_matches("torch-"))),
            "{folder} was written by torch {torch}"
        );
        assert_eq!(
            how,
            folder.rsplit('/').next().unwrap(),
            "{folder}: exported with {how}"
        );

        let (code, report) = check_json(&[&folder, "--threads", "1"]);
        assert!(code == 0 || code == 1, "{folder}: exit {code}");
        for c in report["checks"].as_array().unwrap() {
            let (id, status) = (c["id"].as_str().unwrap(), c["status"].as_str().unwrap());
            assert_ne!(status, "failed", "{folder}: {id} failed: {}", c["reason"]);
            // The folder has a model, data, setup and a loss log: only checks that do not apply skip
            // (identity-overfit: a classifier; loss-scale: one loss column; lr-sharpness: the model
            // has BatchNorm, for which the sharpness at init bounds no lr). A model traced in train
            // mode normalises with batch statistics even in eval mode: batch-independence says so and
            // skips, instead of calling BatchNorm's mixing a reshape bug.
            if status == "skipped" {
                let traced_bn = how == "trace"
                    && id == "batch-independence"
                    && c["reason"]
                        .as_str()
                        .unwrap()
                        .contains("traced in train mode");
                assert!(
                    traced_bn || ["identity-overfit", "loss-scale", "lr-sharpness"].contains(&id),
                    "{folder}: {id} skipped: {}",
                    c["reason"]
                );
            }
        }
        let kinds: Vec<&str> = all_findings(&report)
            .iter()
            .map(|f| f["kind"].as_str().unwrap())
            .collect();
        // A healthy model (default init, learnable data, SGD with momentum, shuffled), scripted or
        // traced in train mode (batch_norm recorded with training = true: trainlint's shared
        // eval-mode forward must put the running statistics back, or stale-batchnorm compares the
        // data with statistics one batch old).
        assert!(kinds.is_empty(), "{folder} ({how}): {kinds:?}");
        assert_eq!(code, 0);
    }
}

/// Issue 25: the same network exported as a torch.export archive (`make_torch_versions.py --pt2`) by
/// each PyTorch that can write one (2.13 and 2.15; 2.1's torch.export has no archive writer and the
/// exporter falls back to TorchScript there) audits with the verdicts of the scripted export: every
/// check the same status, the same findings.
#[test]
fn pt2_exports_of_each_torch_version_get_the_scripted_exports_verdicts() {
    let root = root().join("fixtures/torch_versions");
    let mut seen = BTreeSet::new();
    for version in std::fs::read_dir(&root).unwrap() {
        let version = version.unwrap().path();
        let pt2 = version.join("pt2");
        if !pt2.is_dir() {
            continue;
        }
        let name = version.file_name().unwrap().to_string_lossy().into_owned();
        let stamp = std::fs::read_to_string(pt2.join("torch-version.txt")).unwrap();
        assert!(stamp.ends_with("\nexport\n"), "{name}: {stamp}");
        assert!(pt2.join("model.pt2").is_file(), "{name}: no model.pt2");
        let verdicts = |folder: &std::path::Path| {
            let (code, report) = check_json(&[folder.to_str().unwrap(), "--threads", "1"]);
            assert!(code == 0 || code == 1, "{}: exit {code}", folder.display());
            common::verdicts(&report)
        };
        assert_eq!(
            verdicts(&pt2),
            verdicts(&version.join("script")),
            "{name}: pt2 vs script"
        );
        seen.insert(name);
    }
    assert!(
        seen.contains("torch-2.13") && seen.contains("torch-2.15"),
        "{seen:?}"
    );
}
