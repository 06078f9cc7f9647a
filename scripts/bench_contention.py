#!/usr/bin/env python3
"""The audit on a busy machine: the demo's full default audit alone, then beside N CPU-bound processes
(busy loops, one per process) on the same cores, as on a shared CI runner or a laptop that is also
training. Alternates idle and busy runs so that drift hits both alike; prints the median of each and
the ratio busy / idle (issue 21's goal: at most 5).

Usage: python3 scripts/bench_contention.py [--runs 3] [--hogs 4] [--binary target/release/trainlint]
       [--case examples/demo] [--markdown] [-- EXTRA trainlint ARGS]

Needs a release build (`cargo build --release`). Standard library only. To see what OpenMP's spinning
costs, compare with `--env OMP_WAIT_POLICY=active --env GOMP_SPINCOUNT=300000000` (a policy or spin count
you set replaces trainlint's, 30,000 spins then sleep).
"""
import argparse
import multiprocessing
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def hog(stop):
    x = 0
    while not stop.is_set():
        for _ in range(100000):
            x = (x * 1103515245 + 12345) & 0xFFFFFFFF


def audit(cmd, env) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    wall = time.perf_counter() - start
    if proc.returncode not in (0, 1):
        sys.exit(f"bench_contention: {cmd[0]} exited with {proc.returncode}:\n{proc.stderr.decode()[-2000:]}")
    return wall


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--hogs", type=int, default=4)
    p.add_argument("--binary", default=str(REPO / "target/release/trainlint"))
    p.add_argument("--case", default=str(REPO / "examples/demo"))
    p.add_argument("--env", action="append", default=[], help="NAME=VALUE for trainlint's environment")
    p.add_argument("--markdown", action="store_true")
    p.add_argument("extra", nargs="*")
    a = p.parse_args()
    if not Path(a.binary).is_file():
        sys.exit(f"bench_contention: no binary at {a.binary} (cargo build --release)")
    env = dict(os.environ)
    for pair in a.env:
        name, _, value = pair.partition("=")
        env[name] = value
    # Without --no-timings: a reproducible report keeps the thread count the load would lower.
    cmd = [a.binary, "check", a.case, "-q", *a.extra]
    idle, busy = [], []
    for _ in range(a.runs):
        idle.append(audit(cmd, env))
        stop = multiprocessing.Event()
        hogs = [multiprocessing.Process(target=hog, args=(stop,), daemon=True) for _ in range(a.hogs)]
        for h in hogs:
            h.start()
        time.sleep(1.0)  # let the load settle
        busy.append(audit(cmd, env))
        stop.set()
        for h in hogs:
            h.join()
    i, b = statistics.median(idle), statistics.median(busy)
    cores = len(os.sched_getaffinity(0))
    label = " ".join(f"{k}" for k in a.env) or "default environment"
    if a.markdown:
        print("| case | environment | idle | beside %d CPU-bound processes | busy / idle |" % a.hogs)
        print("|---|---|---|---|---|")
        print(f"| `{Path(a.case).name}` | {label} | {i:.1f} s | {b:.1f} s | {b / i:.1f}× |")
    else:
        print(f"{Path(a.case).name} on {cores} cores ({label}), median of {a.runs}:")
        print(f"  idle                         {i:6.1f} s")
        print(f"  beside {a.hogs} CPU-bound processes  {b:6.1f} s   ({b / i:.1f}× idle)")


if __name__ == "__main__":
    main()
