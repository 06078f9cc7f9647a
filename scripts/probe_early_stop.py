#!/usr/bin/env python3
"""How often would stopping the learning-rate probe at a settled descent change loss-oscillation's verdict?

loss-oscillation's probe stops early (`probe_early_stop`, on by default) once its curve has settled into a
clean descent (`settled_descent` in checks/src/rules/loss_oscillation.rs, mirrored below). A stop can only
remove a finding, never add one: the stopped curve is healthy by construction. This script measures the
false-stop rate: it runs the full 60-step protocol (`probe_early_stop = false`) over a grid of real
models, data, optimizers, learning rates and seeds, and counts the runs where the rule would have stopped
although the full protocol reports a finding. Every `--verify`-th run is repeated with the stop on, to
check that the Rust rule stops where the mirror says and that the findings agree.

Usage: python3 scripts/probe_early_stop.py [--grid full|quick] [--verify 4] [--out results.json]
       python3 scripts/probe_early_stop.py --replay results.json [--verify 0]   (the rule below on recorded
       runs; --verify N runs every N-th stopping run again with the Rust stop on)
Needs a release build (`cargo build --release`); standard library only.
"""
import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
M = REPO / "fixtures" / "models"
D = REPO / "fixtures" / "data"

# (model, data): the fixtures' real setups (untrained, trained, converged; MLP, CNN, ResNet, UNet,
# sequence models) and torchvision's own families, fresh and after 200 steps of training.
SMALL = [
    ("mlp_default.pt", "regression.npz"),
    ("mlp_converged.pt", "digits256.npz"),
    ("cnn_bn.pt", "images.npz"),
    ("bn_trained.pt", "images.npz"),
    ("resnet_bn.pt", "cifar_like.npz"),
    ("unet.pt", "unet64.npz"),
    ("unet_denoiser_trained.pt", "denoise32.npz"),
    ("classifier.pt", "classes4.npz"),
    ("bi_gru.pt", "sequences.npz"),
    ("bi_transformer.pt", "tokens.npz"),
    ("embedding.pt", "tokens.npz"),
    ("tv_vit_tiny.pt", "images32.npz"),
    ("tv_mobilenet_v3_small.pt", "shapes16.npz"),
]
TV = sorted(p.name for p in (M / "tv").glob("*.pt"))

OPTIMIZERS = {
    "adam": {"optimizer": "adam"},
    "adamw": {"optimizer": "adamw", "weight_decay": 0.01},
    "sgd-momentum": {"optimizer": "sgd", "momentum": 0.9},
    "sgd": {"optimizer": "sgd", "momentum": 0.0},
}


def grid(kind):
    lrs_small = [1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0]
    lrs_tv = [1e-4, 1e-3, 1e-2, 0.1, 1.0]
    if kind == "quick":
        lrs_small, lrs_tv = [1e-3, 1e-2, 0.1, 1.0], []
    for model, data in SMALL:
        for opt in OPTIMIZERS:
            for lr in lrs_small:
                for seed in (0, 1):
                    yield model, data, opt, lr, seed
    for model in TV if lrs_tv else []:
        for opt in ("adam", "sgd-momentum"):
            for lr in lrs_tv:
                yield "tv/" + model, "shapes16.npz", opt, lr, 0


# The mirror of `settled_descent` and its constants (SETTLE_FIRST, SETTLE_LOOKBACK), and how often the
# probe asks it (CHECK_EVERY steps, from step SETTLE_FIRST on; it was 10 before 2026-12-06).
SETTLE_FIRST, SETTLE_LOOKBACK, CHECK_EVERY = 20, 10, 1


def settled_descent(curve):
    k = len(curve) - 1
    # A non-finite loss is null in the JSON report.
    if k < SETTLE_FIRST or any(v is None or v != v or v in (float("inf"), float("-inf")) for v in curve):
        return False
    start, last = curve[0], curve[k]
    ups = sum(1 for a, b in zip(curve, curve[1:]) if b > a * 1.01)
    return (start > 0 and last <= 0.5 * start and max(curve) <= 1.5 * start
            and ups <= 0.15 * k and last < curve[k - SETTLE_LOOKBACK])


def stop_step(curve, steps=60):
    for k in range(SETTLE_FIRST, steps, CHECK_EVERY):
        if k < len(curve) and settled_descent(curve[: k + 1]):
            return k
    return None


def audit(binary, model, data, opt, lr, seed, early_stop):
    with tempfile.TemporaryDirectory() as tmp:
        setup = "".join(f"{k} = {json.dumps(v)}\n" for k, v in OPTIMIZERS[opt].items())
        config = Path(tmp) / "trainlint.toml"
        config.write_text(
            f'[model]\npath = "{M / model}"\n[data]\npath = "{D / data}"\n'
            f"[setup]\n{setup}lr = {lr}\n[run]\nseed = {seed}\n"
            f"[checks.loss-oscillation]\nprobe_early_stop = {'true' if early_stop else 'false'}\n"
        )
        proc = subprocess.run(
            [str(binary), "check", str(config), "--select", "loss-oscillation", "--output-format", "json",
             "--exit-zero", "--quiet", "--threads", "2"],
            capture_output=True, text=True)
    if proc.returncode != 0:
        return None, proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"
    report = json.loads(proc.stdout)
    check = next(c for c in report["checks"] if c["id"] == "loss-oscillation")
    if check["status"] in ("skipped", "check-failed", "error"):
        return None, f"{check['status']}"
    main = next(c for c in check["curves"] if c["name"].startswith("learning-rate probe")
                and "(control)" not in c["name"] and "(warmed up)" not in c["name"])
    stopped = None
    if "stopped at step " in main["name"]:
        stopped = int(main["name"].split("stopped at step ")[1].split()[0])
    return {"findings": sorted(f["kind"] for f in check["findings"]), "curve": main["y"],
            "stopped": stopped}, None


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--grid", choices=["full", "quick"], default="full")
    ap.add_argument("--verify", type=int, default=4, help="repeat every N-th run with the stop on (0: never)")
    ap.add_argument("--out", help="write every run (curve, findings, stop) as JSON")
    ap.add_argument("--binary", default=str(REPO / "target" / "release" / "trainlint"))
    ap.add_argument("--replay", help="judge the runs an --out file holds with this script's rule, "
                    "without running anything (e.g. after changing CHECK_EVERY)")
    a = ap.parse_args()
    runs, errors, mismatches = [], [], []
    binary = Path(a.binary)
    if (not a.replay or a.verify) and not binary.is_file():
        sys.exit("probe_early_stop: no release build; run `cargo build --release` first")
    if a.replay:
        runs = json.loads(Path(a.replay).read_text())
        for r in runs:
            r["would_stop"] = stop_step(r["curve"])
            r.pop("verified", None)
        # With --verify N, every N-th run the rule stops is run again with the stop on.
        for r in [r for r in runs if r["would_stop"] is not None][::a.verify or len(runs) + 1]:
            on, err = audit(binary, r["model"], r["data"], r["optimizer"], r["lr"], r["seed"], early_stop=True)
            if err or on["stopped"] != r["would_stop"] or on["findings"]:
                mismatches.append(f"{r['model']} {r['optimizer']} lr {r['lr']} seed {r['seed']}: mirror "
                                  f"{r['would_stop']}, rust {on and on['stopped']}")
            r["verified"] = True
    cases = [] if a.replay else list(grid(a.grid))
    for i, (model, data, opt, lr, seed) in enumerate(cases):
        full, err = audit(binary, model, data, opt, lr, seed, early_stop=False)
        if err:
            errors.append(f"{model} {data} {opt} lr {lr}: {err}")
            continue
        k = stop_step(full["curve"])
        run = {"model": model, "data": data, "optimizer": opt, "lr": lr, "seed": seed, **full, "would_stop": k}
        if a.verify and i % a.verify == 0:
            on, err = audit(binary, model, data, opt, lr, seed, early_stop=True)
            if err or on["stopped"] != k or (k is None and on["findings"] != full["findings"]) \
                    or (k is not None and on["findings"]):
                mismatches.append(f"{model} {opt} lr {lr} seed {seed}: mirror {k}, rust {on and on['stopped']}")
            run["verified"] = True
        runs.append(run)
        print(f"[{i + 1}/{len(cases)}] {model} {opt} lr {lr} seed {seed}: findings {full['findings'] or '-'}, "
              f"stop {k if k is not None else '-'}", file=sys.stderr, flush=True)
    flagged = [r for r in runs if r["findings"]]
    stopped = [r for r in runs if r["would_stop"] is not None]
    false_stops = [r for r in stopped if r["findings"]]
    steps_full = 60 * len(runs)
    steps_saved = sum(60 - r["would_stop"] for r in stopped)
    print(f"{len(runs)} probe runs ({len(errors)} setups refused), {len(flagged)} with a finding under the full "
          f"60-step protocol")
    print(f"stopped at a settled descent: {len(stopped)} ({100 * len(stopped) / max(len(runs), 1):.0f}%), "
          f"saving {100 * steps_saved / max(steps_full, 1):.0f}% of the main runs' steps")
    print(f"false stops (stopped, but the full protocol reports a finding): {len(false_stops)} of {len(stopped)}")
    for r in false_stops:
        print(f"  {r['model']} {r['optimizer']} lr {r['lr']} seed {r['seed']}: stop {r['would_stop']}, "
              f"{r['findings']}")
    print(f"rule checked against the Rust stop on {sum(1 for r in runs if r.get('verified'))} runs: "
          f"{len(mismatches)} mismatches")
    for m in mismatches:
        print("  " + m)
    for e in errors:
        print("  refused: " + e, file=sys.stderr)
    if a.out:
        Path(a.out).write_text(json.dumps(runs))
    sys.exit(1 if false_stops or mismatches else 0)


if __name__ == "__main__":
    main()
