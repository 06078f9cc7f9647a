#!/usr/bin/env python3
"""How the full default audit's time and peak memory grow with model size and sample size.

Builds MLP classifiers on 3×32×32 inputs (10 classes) with about 1M, 10M and 100M parameters (PyTorch's
default init, saved with torch.jit.script) and random-but-learnable samples in a temporary folder, runs
the release binary's full default audit on each, and prints a table of wall time and peak RSS. The
folder is removed afterwards.

Usage: python3 scripts/bench_scaling.py [--threads 2] [--sizes 1,10,100] [--samples 64,512,4096]

The models and samples are made by a Python with torch (the venv `./dev fixtures` creates, or
$TRAINLINT_PYTHON) in a child process; this process never imports torch, because a child's peak RSS
counts the memory of the process it was forked from.
"""
import argparse
import os
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))
from bench_pair import cache_root, run  # noqa: E402  (one way to time a child and read its peak RSS)

# Hidden widths giving about 1M, 10M and 100M parameters for 3072 -> h -> h -> 10.
WIDTH_FOR_MILLIONS = {1: 300, 10: 2250, 100: 8500}


def mlp(width: int):
    import torch

    return torch.nn.Sequential(
        torch.nn.Flatten(), torch.nn.Linear(3072, width), torch.nn.ReLU(),
        torch.nn.Linear(width, width), torch.nn.ReLU(), torch.nn.Linear(width, 10))


def sample(n: int, path: Path) -> None:
    import numpy as np

    g = np.random.default_rng(0)
    y = g.integers(0, 10, n)
    centres = g.normal(0, 1, (10, 3072)).astype(np.float32)
    x = centres[y] + g.normal(0, 1, (n, 3072)).astype(np.float32)
    np.savez(path, inputs=x.reshape(n, 3, 32, 32), targets=y)


def audit(binary: Path, model: Path, data: Path, threads: int) -> tuple:
    return run([str(binary), "check", "--model", str(model), "--data", str(data), "--threads", str(threads),
                "--output-format", "json", "--exit-zero", "--quiet"])


def make(folder: Path, runs: list) -> None:
    """Writes mlp{M}m.pt and data{N}.npz for each (M, N) in runs (in the child with torch)."""
    import torch

    torch.manual_seed(0)
    for millions, n in runs:
        model = folder / f"mlp{millions}m.pt"
        if not model.exists():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # torch.jit.script's deprecation notice
                torch.jit.script(mlp(WIDTH_FOR_MILLIONS[millions])).save(str(model))
        data = folder / f"data{n}.npz"
        if not data.exists():
            sample(n, data)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--sizes", default="1,10,100", help="model sizes in millions of parameters")
    ap.add_argument("--samples", default="64,512,4096", help="sample sizes for the 10M model")
    ap.add_argument("--make", help=argparse.SUPPRESS)
    a = ap.parse_args()
    sizes = [int(m) for m in a.sizes.split(",")]
    runs = [(m, 256) for m in sizes]
    if 10 in sizes:
        runs += [(10, int(n)) for n in a.samples.split(",") if int(n) != 256]
    if a.make:
        make(Path(a.make), runs)
        return
    binary = REPO / "target" / "release" / "trainlint"
    if not binary.is_file():
        sys.exit("bench_scaling: no release build; run `cargo build --release` first")
    python = os.environ.get("TRAINLINT_PYTHON") or str(cache_root() / "fixtures-venv" / "bin" / "python")
    if not Path(python).is_file():
        sys.exit(f"bench_scaling: no Python with torch at {python} (run `./dev fixtures`, or set TRAINLINT_PYTHON)")
    print(f"full default audit, MLP classifier on 3×32×32, {a.threads} threads, {os.cpu_count()} CPUs")
    print("| parameters | model file | samples | wall | peak RSS |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="trainlint-scaling-") as tmp:
        tmp = Path(tmp)
        subprocess.run([python, __file__, "--make", str(tmp), "--sizes", a.sizes, "--samples", a.samples],
                       check=True)
        for millions, n in runs:
            model = tmp / f"mlp{millions}m.pt"
            wall, rss = audit(binary, model, tmp / f"data{n}.npz", a.threads)
            size = model.stat().st_size / 1e6
            w = WIDTH_FOR_MILLIONS[millions]
            params = (w * w + 3084 * w + 10) / 1e6  # 3072·w + w, w·w + w, 10·w + 10
            print(f"| {params:.1f} M | {size:.0f} MB | {n} | {wall:.1f} s | {rss:.0f} MB |", flush=True)


if __name__ == "__main__":
    main()
