#!/usr/bin/env python3
"""What the audit costs beside the training it precedes (issue 21): per setup, the full default audit's
wall time (median of --runs) next to one epoch of training in PyTorch with the same model, optimizer,
lr, batch size and threads, on the same machine, and the ratio audit / epoch.

The training run compared with is stated, not guessed: ONE EPOCH OF 50,000 SAMPLES (CIFAR-10's training
set) at the setup's batch size, i.e. ceil(50000 / batch) optimizer steps, each timed as the median of
20 steps (after 3 warm-up steps) of `model.train(); opt.zero_grad(); loss(model(x), y).backward();
opt.step()` on batches of the setup's data sample. The goal is a ratio ≤ 0.10.

Setups: the demo (examples/demo), the two bench fixtures of scripts/bench_pair.py, and issue 21's
torchvision resnet18(num_classes=10) at 32×32 (SGD lr 0.05 momentum 0.9, batch 32, 256 samples), made
here in a temporary folder with the fixtures' torchvision; `--corpus` adds the 13 fresh torchvision
families of the false-alarm corpus (fixtures/models/tv, on shapes16.npz).

Usage: python3 scripts/bench_field.py [--runs 3] [--threads 2] [--corpus] [--markdown] [--only NAME]

Needs a release build and the fixtures' venv with torch (and torchvision for resnet18: `./dev fixtures`
installs it), or $TRAINLINT_PYTHON. Standard library only on this side.
"""
import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
EPOCH = 50_000

# Times `steps` training steps of a TorchScript model in PyTorch; prints the median ms per step.
TRAIN_STEP = r"""
import sys, json, time, statistics, numpy as np, torch, torch.nn.functional as F
model, data, opt_kind, lr, momentum, batch, threads = sys.argv[1:8]
torch.set_num_threads(int(threads)); torch.manual_seed(0)
m = torch.jit.load(model); m.train()
d = np.load(data); x = torch.from_numpy(d["inputs"]).float(); y = torch.from_numpy(d["targets"])
cls = not y.is_floating_point()
lossf = (lambda p, t: F.cross_entropy(p, t.long())) if cls else (lambda p, t: F.mse_loss(p, t.float()))
batch, lr = int(batch), float(lr)
if opt_kind == "sgd":
    opt = torch.optim.SGD(m.parameters(), lr=lr, momentum=float(momentum))
elif opt_kind == "adamw":
    opt = torch.optim.AdamW(m.parameters(), lr=lr)
else:
    opt = torch.optim.Adam(m.parameters(), lr=lr)
g = torch.Generator().manual_seed(0)
times = []
for s in range(23):
    idx = torch.randint(0, len(x), (batch,), generator=g)
    t = time.perf_counter()
    opt.zero_grad(); lossf(m(x[idx]), y[idx]).backward(); opt.step()
    if s >= 3:
        times.append(time.perf_counter() - t)
print(json.dumps({"ms_per_step": statistics.median(times) * 1000}))
"""

MAKE_RESNET18 = r"""
import sys, numpy as np, torch, torchvision
out = sys.argv[1]
torch.manual_seed(0)
m = torchvision.models.resnet18(num_classes=10)
torch.jit.script(m).save(f"{out}/model.pt")
np.savez(f"{out}/data.npz", inputs=torch.randn(256, 3, 32, 32).numpy(),
         targets=torch.randint(0, 10, (256,)).numpy())
"""


def cache_root() -> Path:
    if os.environ.get("TRAINLINT_CACHE"):
        return Path(os.environ["TRAINLINT_CACHE"])
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "trainlint"


def audit(binary, args, threads) -> tuple:
    """Wall seconds of one full default audit, and its findings as check/kind ids."""
    cmd = [str(binary), "check", *args, "--threads", str(threads), "--output-format", "json",
           "--exit-zero", "--quiet"]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"bench_field: {' '.join(cmd)} exited with {proc.returncode}:\n{proc.stderr.decode()[-2000:]}")
    report = json.loads(proc.stdout)
    found = sorted(f["kind"] for c in report["checks"] for f in c["findings"])
    return wall, found


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--corpus", action="store_true")
    p.add_argument("--markdown", action="store_true")
    p.add_argument("--only", help="only the setups whose name contains this (e.g. squeezenet)")
    a = p.parse_args()
    binary = REPO / "target" / "release" / "trainlint"
    if not binary.is_file():
        sys.exit("bench_field: build first: cargo build --release")
    python = os.environ.get("TRAINLINT_PYTHON") or str(cache_root() / "fixtures-venv" / "bin" / "python")
    if subprocess.run([python, "-c", "import torch, numpy"], capture_output=True).returncode != 0:
        print(f"bench_field: skipped: no Python with torch at {python} (run `./dev fixtures` once, "
              "or set TRAINLINT_PYTHON)")
        return
    tmp = tempfile.TemporaryDirectory(prefix="trainlint-bench-field-")
    fx = REPO / "fixtures"
    # (name, trainlint args, model, data, optimizer, lr, momentum, batch)
    cases = [
        ("demo (denoiser, 64 × 3×16×16)", [str(REPO / "examples/demo")], REPO / "examples/demo/model.pt",
         REPO / "examples/demo/data.npz", "adam", 1e-3, 0.9, 16),
        ("UNet fixture, 8 × 3×64×64", ["--model", str(fx / "models/unet.pt"), "--data",
         str(fx / "data/unet64.npz")], fx / "models/unet.pt", fx / "data/unet64.npz", "adam", 1e-3, 0.9, 32),
        ("ResNet fixture, 64 × 3×32×32", ["--model", str(fx / "models/resnet_bn.pt"), "--data",
         str(fx / "data/cifar_like.npz")], fx / "models/resnet_bn.pt", fx / "data/cifar_like.npz",
         "adam", 1e-3, 0.9, 32),
    ]
    made = subprocess.run([python, "-W", "ignore", "-c", MAKE_RESNET18, tmp.name], capture_output=True)
    if made.returncode == 0:
        r18 = Path(tmp.name)
        (r18 / "trainlint.toml").write_text(
            '[model]\npath = "model.pt"\n[data]\npath = "data.npz"\n[setup]\ntask = "classification"\n'
            'loss = "cross_entropy"\noptimizer = "sgd"\nlr = 0.05\nmomentum = 0.9\nbatch_size = 32\n')
        cases.append(("torchvision resnet18, 256 × 3×32×32, SGD 0.05", [str(r18)], r18 / "model.pt",
                      r18 / "data.npz", "sgd", 0.05, 0.9, 32))
    else:
        print("note: no torchvision in the fixtures' venv (`./dev fixtures` installs it): resnet18 left out",
              file=sys.stderr)
    if a.corpus:
        for model in sorted((fx / "models/tv").glob("*.pt")):
            if model.stem.endswith("_trained"):
                continue
            cases.append((f"torchvision {model.stem} (corpus), 64 × 3×16×16", ["--model", str(model), "--data",
                          str(fx / "data/shapes16.npz")], model, fx / "data/shapes16.npz", "adam", 1e-3, 0.9, 32))
    if a.only:
        cases = [c for c in cases if a.only.lower() in c[0].lower()]
    rows = []
    for name, args, model, data, opt, lr, momentum, batch in cases:
        runs = [audit(binary, args, a.threads) for _ in range(a.runs)]
        wall = statistics.median(w for w, _ in runs)
        step = subprocess.run([python, "-W", "ignore", "-c", TRAIN_STEP, str(model), str(data), opt, str(lr),
                               str(momentum), str(batch), str(a.threads)], capture_output=True)
        if step.returncode != 0:
            sys.exit(f"bench_field: timing {name}'s training failed:\n{step.stderr.decode()[-2000:]}")
        ms = json.loads(step.stdout)["ms_per_step"]
        epoch = math.ceil(EPOCH / batch) * ms / 1000
        rows.append((name, wall, runs[0][1], ms, batch, epoch, wall / epoch))
    print(f"full default audit vs one epoch of {EPOCH:,} samples in PyTorch, {a.threads} threads, "
          f"{os.cpu_count()} CPUs, median of {a.runs} audits")
    if a.markdown:
        print("| setup | audit | training step (PyTorch) | one epoch (50,000 samples) | audit / epoch | findings |")
        print("|---|---|---|---|---|---|")
    for name, wall, found, ms, batch, epoch, ratio in rows:
        found = ", ".join(found) or "none"
        if a.markdown:
            print(f"| {name} | {wall:.1f} s | {ms:.0f} ms (batch {batch}) | {epoch:.0f} s | {ratio:.3f} | {found} |")
        else:
            print(f"{name:52} audit {wall:6.2f} s   step {ms:7.1f} ms (batch {batch:3})   epoch {epoch:7.0f} s"
                  f"   ratio {ratio:.3f}   findings: {found}")


if __name__ == "__main__":
    main()
