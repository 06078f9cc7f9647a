//! The full default audit on the benchmark models, timed per check: `cargo bench --bench audit`
//! (or `./dev bench`). Runs the release binary `RUNS` times (default 3) per model and prints the median
//! duration of each check and of the whole process. A benchmark, not a test: nothing is asserted.
use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let runs: usize = std::env::var("RUNS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(3);
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let cases = [
        ("UNet, 8 × 3×64×64 denoising", "unet.pt", "unet64.npz"),
        (
            "ResNet-style with BatchNorm, 64 × 3×32×32",
            "resnet_bn.pt",
            "cifar_like.npz",
        ),
    ];
    println!("trainlint full default audit, median of {runs} runs, {threads} threads\n");
    for (name, model, data) in cases {
        let mut per_check: Vec<(String, Vec<f64>)> = Vec::new();
        let mut wall = Vec::new();
        for _ in 0..runs {
            let start = Instant::now();
            let out = Command::new(env!("CARGO_BIN_EXE_trainlint"))
                .args(["check", "--output-format", "json", "--exit-zero", "--model"])
                .arg(root.join("fixtures/models").join(model))
                .arg("--data")
                .arg(root.join("fixtures/data").join(data))
                .output()
                .expect("trainlint runs");
            wall.push(start.elapsed().as_secs_f64());
            let report: serde_json::Value =
                serde_json::from_slice(&out.stdout).expect("JSON report");
            for c in report["checks"].as_array().unwrap() {
                let id = c["id"].as_str().unwrap().to_string();
                let status = c["status"].as_str().unwrap();
                let label = format!("{id} ({status})");
                let ms = c["duration_ms"].as_f64().unwrap();
                match per_check.iter_mut().find(|(l, _)| *l == label) {
                    Some((_, v)) => v.push(ms),
                    None => per_check.push((label, vec![ms])),
                }
            }
        }
        println!("{name}");
        for (label, v) in per_check {
            println!("  {label:32} {:>9.1} ms", median(v));
        }
        println!(
            "  {:32} {:>9.1} ms\n",
            "whole process (wall)",
            median(wall) * 1000.0
        );
    }
}
