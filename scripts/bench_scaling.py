#!/usr/bin/env python3
"""How the full default audit's time and peak memory grow with model size and sample size.

Builds MLP classifiers on 3×32×32 inputs (10 classes) with about 1M, 10M and 100M parameters (PyTorch's
default init, saved with torch.jit.script) and random-but-learnable samples in a temporary folder, runs
the release binary's full default audit on each, and prints a table of wall time and peak RSS. The
folder is removed afterwards.

Usage (needs torch, e.g. the venv `./dev fixtures` creates):
  ~/.cache/trainlint/fixtures-venv/bin/python scripts/bench_scaling.py [--threads 2] [--sizes 1,10,100]
"""
import argparse
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
# Hidden widths giving about 1M, 10M and 100M parameters for 3072 -> h -> h -> 10.
WIDTH_FOR_MILLIONS = {1: 300, 10: 2250, 100: 8500}


def mlp(width: int) -> torch.nn.Module:
    return torch.nn.Sequential(
        torch.nn.Flatten(), torch.nn.Linear(3072, width), torch.nn.ReLU(),
        torch.nn.Linear(width, width), torch.nn.ReLU(), torch.nn.Linear(width, 10))


def sample(n: int, path: Path) -> None:
    g = np.random.default_rng(0)
    y = g.integers(0, 10, n)
    centres = g.normal(0, 1, (10, 3072)).astype(np.float32)
    x = centres[y] + g.normal(0, 1, (n, 3072)).astype(np.float32)
    np.savez(path, inputs=x.reshape(n, 3, 32, 32), targets=y)


def audit(binary: Path, model: Path, data: Path, threads: int) -> tuple:
    cmd = [str(binary), "check", "--model", str(model), "--data", str(data), "--threads", str(threads),
           "--output-format", "json", "--exit-zero", "--quiet"]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    err = proc.stderr.read().decode(errors="replace")
    proc.stderr.close()
    if os.waitstatus_to_exitcode(status) not in (0, 1):
        sys.exit(f"bench_scaling: trainlint failed on {model.name}:\n{err[-2000:]}")
    return wall, usage.ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--sizes", default="1,10,100", help="model sizes in millions of parameters")
    ap.add_argument("--samples", default="64,512,4096", help="sample sizes for the 10M model")
    a = ap.parse_args()
    binary = REPO / "target" / "release" / "trainlint"
    if not binary.is_file():
        sys.exit("bench_scaling: no release build; run `cargo build --release` first")
    torch.manual_seed(0)
    print(f"full default audit, MLP classifier on 3×32×32, {a.threads} threads, {os.cpu_count()} CPUs")
    print("| parameters | model file | samples | wall | peak RSS |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="trainlint-scaling-") as tmp:
        tmp = Path(tmp)
        runs = [(int(m), 256) for m in a.sizes.split(",")]
        runs += [(10, int(n)) for n in a.samples.split(",") if int(n) != 256 and "10" in a.sizes.split(",")]
        for millions, n in runs:
            net = mlp(WIDTH_FOR_MILLIONS[millions])
            params = sum(p.numel() for p in net.parameters())
            model = tmp / f"mlp{millions}m.pt"
            if not model.exists():
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # torch.jit.script's deprecation notice
                    torch.jit.script(net).save(str(model))
            data = tmp / f"data{n}.npz"
            if not data.exists():
                sample(n, data)
            wall, rss = audit(binary, model, data, a.threads)
            size = model.stat().st_size / 1e6
            print(f"| {params / 1e6:.1f} M | {size:.0f} MB | {n} | {wall:.1f} s | {rss:.0f} MB |", flush=True)


if __name__ == "__main__":
    main()
