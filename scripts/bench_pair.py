#!/usr/bin/env python3
"""trainlint against the yardstick, side by side: the full default audit and the same heavy work written
by hand in PyTorch (`py_equiv.py`, from the project's shared bench folder), alternated pair by pair so
that drift on a shared machine hits both alike. Prints, per model, the median wall time of each, the
median of the per-pair ratios (trainlint / yardstick) and each one's peak RSS.

Usage: python3 scripts/bench_pair.py [--pairs 3] [--threads 2] [--markdown]

Needs a release build (`cargo build --release`). The yardstick needs Python with torch 2.13 and numpy:
by default the venv that `./dev fixtures` creates ($TRAINLINT_CACHE/fixtures-venv), or $TRAINLINT_PYTHON.
It is looked for at $TRAINLINT_YARDSTICK, then ../shared/bench/py_equiv.py next to the repository.
Without either, only trainlint is timed, and the script says why. Standard library only.
"""
import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CASES = [
    ("UNet, 8 × 3×64×64 denoising", "unet.pt", "unet64.npz", "image2image"),
    ("ResNet-style with BatchNorm, 64 × 3×32×32", "resnet_bn.pt", "cifar_like.npz", "classification"),
]


def cache_root() -> Path:
    if os.environ.get("TRAINLINT_CACHE"):
        return Path(os.environ["TRAINLINT_CACHE"])
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "trainlint"


def run(cmd: list) -> tuple:
    """Wall seconds and peak RSS (MB) of one child process; its output is discarded."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    stderr = proc.stderr.read().decode(errors="replace")
    proc.stderr.close()
    code = os.waitstatus_to_exitcode(status)
    if code not in (0, 1):
        sys.exit(f"bench_pair: {cmd[0]} exited with {code}:\n{stderr[-2000:]}")
    return wall, usage.ru_maxrss / 1024


def yardstick() -> tuple:
    """(python, py_equiv.py) or a note saying why the yardstick cannot run."""
    script = os.environ.get("TRAINLINT_YARDSTICK")
    script = Path(script) if script else REPO.parent / "shared" / "bench" / "py_equiv.py"
    python = os.environ.get("TRAINLINT_PYTHON") or str(cache_root() / "fixtures-venv" / "bin" / "python")
    if not script.is_file():
        return None, f"no yardstick at {script} (set TRAINLINT_YARDSTICK)"
    if not Path(python).is_file():
        return None, f"no Python with torch at {python} (run `./dev fixtures` once, or set TRAINLINT_PYTHON)"
    probe = subprocess.run([python, "-c", "import torch, numpy"], capture_output=True)
    if probe.returncode != 0:
        return None, f"{python} cannot import torch and numpy"
    return (python, str(script)), None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2, help="libtorch threads for both (the yardstick uses 2)")
    ap.add_argument("--markdown", action="store_true", help="print table rows for docs/performance.md")
    a = ap.parse_args()
    binary = REPO / "target" / "release" / "trainlint"
    if not binary.is_file():
        sys.exit("bench_pair: no release build; run `cargo build --release` first")
    ys, note = yardstick()
    if note:
        print(f"note: timing trainlint alone: {note}", file=sys.stderr)
    rows = []
    for name, model, data, task in CASES:
        m = REPO / "fixtures" / "models" / model
        d = REPO / "fixtures" / "data" / data
        ours_cmd = [str(binary), "check", "--model", str(m), "--data", str(d), "--threads", str(a.threads),
                    "--output-format", "json", "--exit-zero", "--quiet"]
        theirs_cmd = ys and [ys[0], ys[1], str(m), str(d), "--task", task]
        ours, theirs = [], []
        for i in range(a.pairs):
            # Alternate which goes first, so a slow phase of the machine is shared.
            order = [("ours", ours_cmd), ("theirs", theirs_cmd)] if i % 2 == 0 else \
                [("theirs", theirs_cmd), ("ours", ours_cmd)]
            for who, cmd in order:
                if cmd:
                    (ours if who == "ours" else theirs).append(run(cmd))
        wall = statistics.median(w for w, _ in ours)
        rss = max(r for _, r in ours)
        row = {"name": name, "ours": wall, "ours_rss": rss}
        if theirs:
            row["theirs"] = statistics.median(w for w, _ in theirs)
            row["theirs_rss"] = max(r for _, r in theirs)
            row["ratio"] = statistics.median(o[0] / t[0] for o, t in zip(ours, theirs))
        rows.append(row)
    print(f"full default audit vs the yardstick, {a.pairs} alternating pairs, {a.threads} threads, "
          f"{os.cpu_count()} CPUs")
    if a.markdown:
        print("| model | trainlint | Python yardstick | ratio (median of pairs) | peak RSS trainlint / Python |")
        print("|---|---|---|---|---|")
    for r in rows:
        if a.markdown:
            t = f"{r['theirs']:.1f} s" if "theirs" in r else "–"
            ratio = f"{r['ratio']:.2f}" if "ratio" in r else "–"
            trss = f"{r['theirs_rss']:.0f}" if "theirs_rss" in r else "–"
            print(f"| {r['name']} | {r['ours']:.1f} s | {t} | {ratio} | {r['ours_rss']:.0f} / {trss} MB |")
        else:
            line = f"{r['name']:44} trainlint {r['ours']:6.2f} s  {r['ours_rss']:5.0f} MB"
            if "theirs" in r:
                line += f"   yardstick {r['theirs']:6.2f} s  {r['theirs_rss']:5.0f} MB   ratio {r['ratio']:.2f}"
            print(line)


if __name__ == "__main__":
    main()
