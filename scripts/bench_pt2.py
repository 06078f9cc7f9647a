#!/usr/bin/env python3
"""The .pt2 interpreter against the TorchScript path (issue 25's goal: at most 1.2x): the bench models of
scripts/bench_pair.py (the UNet and the ResNet-style model with BatchNorm) exported twice from the same
module and weights by fixtures/make_pt2_twins.py's make_twin (into a temporary folder; the spatial dims
dynamic, as the exporter writes them), then trainlint's
full default audit of each twin on the bench data, alternated, --runs times; the median wall times and
their ratio, and the audit's per-step training time (ms_per_step of the JSON report's `training` runs).
It stops with an error when the two twins' verdicts (status and finding kinds of every check) differ.

Usage: python3 scripts/bench_pt2.py [--runs 3] [--threads 2] [--markdown]
Needs a release build and the fixtures' venv (torch 2.13; re-runs itself there), or $TRAINLINT_PYTHON.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CASES = [
    # name, family (fixtures/models/FAMILY.pt), class in make_fixtures, bench data, task
    ("UNet, 8 × 3×64×64 denoising", "unet", "UNet", "unet64.npz", "image-to-image"),
    ("ResNet-style with BatchNorm, 64 × 3×32×32", "resnet_bn", "ResNetSmall", "cifar_like.npz", "classification"),
]


def venv_python() -> str:
    if os.environ.get("TRAINLINT_PYTHON"):
        return os.environ["TRAINLINT_PYTHON"]
    xdg = os.environ.get("XDG_CACHE_HOME")
    cache = Path(os.environ.get("TRAINLINT_CACHE") or (Path(xdg) if xdg else Path.home() / ".cache") / "trainlint")
    return str(cache / "fixtures-venv" / "bin" / "python")


def make_twins(out: Path) -> None:
    """Runs in the fixtures' venv: writes NAME.pt2 and NAME.pt for each case into `out`."""
    sys.path.insert(0, str(REPO / "fixtures"))
    import torch
    import make_pt2_twins as twins  # re-execs itself with PYTHONHASHSEED=0 at import if needed
    import make_fixtures as mf

    def export(m, x, batch_min):
        # as trainlint's exporter does: the spatial dims as dynamic as the model allows (for crops)
        dims = {0: torch.export.Dim("batch", min=batch_min)}
        dims.update({d: torch.export.Dim.AUTO for d in range(2, x.dim())})
        return torch.export.export(m, (x,), dynamic_shapes=(dims,))

    twins.export = export
    for _, family, cls, data, _ in CASES:
        twins.make_twin(out, family, family, getattr(mf, cls), data, [], False)


def audit(binary: Path, model: Path, data: Path, task: str, threads: int) -> tuple:
    cmd = [str(binary), "check", "--model", str(model), "--data", str(data), "--task", task,
           "--threads", str(threads), "--output-format", "json", "--exit-zero", "--quiet"]
    start = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if p.returncode != 0:
        sys.exit(f"bench_pt2: {model.name}: exit {p.returncode}: {p.stderr[-500:]}")
    report = json.loads(p.stdout)
    steps = [t["ms_per_step"] for c in report["checks"] for t in c.get("training", []) if t.get("ms_per_step")]
    verdict = sorted((c["id"], c["status"], sorted(f["kind"] for f in c.get("findings", [])))
                     for c in report["checks"])
    return wall, steps, verdict


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--make":
        make_twins(Path(sys.argv[2]))
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--markdown", action="store_true")
    a = ap.parse_args()
    binary = REPO / "target" / "release" / "trainlint"
    if not binary.is_file():
        sys.exit("bench_pt2: no release build; run `cargo build --release` first")
    python = venv_python()
    if not Path(python).is_file():
        print(f"bench_pt2: skipped: no torch venv at {python} (./dev fixtures makes it)")
        return
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        subprocess.run([python, str(Path(__file__).resolve()), "--make", str(out)], check=True,
                       stdout=subprocess.DEVNULL)
        rows = []
        for name, family, _, data, task in CASES:
            d = REPO / "fixtures" / "data" / data
            ts, pt2, ts_steps, pt2_steps, verdicts = [], [], [], [], {}
            for i in range(a.runs):
                order = [("pt", ts, ts_steps), ("pt2", pt2, pt2_steps)]
                for ext, walls, steps in (order if i % 2 == 0 else order[::-1]):
                    wall, s, verdict = audit(binary, out / f"{family}.{ext}", d, task, a.threads)
                    verdicts.setdefault(ext, verdict)
                    walls.append(wall)
                    steps.append(s)
            if verdicts["pt"] != verdicts["pt2"]:
                sys.exit(f"bench_pt2: {name}: the twins' verdicts differ: {verdicts}")
            rows.append((name, statistics.median(ts), statistics.median(pt2),
                         statistics.median(p / t for p, t in zip(pt2, ts)),
                         statistics.median(sum(s) for s in ts_steps), statistics.median(sum(s) for s in pt2_steps)))
    print(f"full default audit, TorchScript twin vs .pt2 twin, {a.runs} alternated runs, {a.threads} threads")
    if a.markdown:
        print("| model | TorchScript | .pt2 | ratio (median of pairs) | Σ ms per step, TorchScript / .pt2 |")
        print("|---|---|---|---|---|")
    for name, t, p, r, ts_ms, pt2_ms in rows:
        if a.markdown:
            print(f"| {name} | {t:.2f} s | {p:.2f} s | {r:.2f} | {ts_ms:.1f} / {pt2_ms:.1f} |")
        else:
            print(f"{name:44} TorchScript {t:6.2f} s   .pt2 {p:6.2f} s   ratio {r:.2f}   "
                  f"Σ ms/step {ts_ms:.1f} / {pt2_ms:.1f}")


if __name__ == "__main__":
    main()
