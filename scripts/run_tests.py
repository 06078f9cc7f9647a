#!/usr/bin/env python3
"""`./dev test`: builds the workspace's tests, then runs the test binaries side by side, one per core.

`cargo test` runs its test binaries one after another. Most of ours hold a few tests that audit models
in process, one at a time (libtorch's thread count and random generator belong to the process), so a
binary keeps one core busy and a 2-core machine sat half idle for minutes. Here every binary runs as
`cargo test` would run it (from its package's folder, with the same arguments), at most one per core
at a time, the longest first (as the last run on this machine measured them, in
target/test-times.json; on a fresh clone, as scripts/test-times.json has them: the longest two alone are
half the suite, and started last they would run on after the rest); each binary's output is printed
whole when it ends, and the run fails when any binary fails. The doc-tests run last, through cargo.

Usage: scripts/run_tests.py [-j N] [-- ARGS for every test binary]
"""
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMES = os.path.join(ROOT, "target", "test-times.json")
HINTS = os.path.join(ROOT, "scripts", "test-times.json")


def test_binaries():
    """(name, executable, package folder) of every test target, built by `cargo test --no-run`."""
    out = subprocess.run(
        ["cargo", "test", "--workspace", "--no-run", "--message-format=json-render-diagnostics"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    if out.returncode != 0:
        sys.exit(out.returncode)
    found = []
    for line in out.stdout.splitlines():
        try:
            msg = json.loads(line)
        except json.JSONDecodeError:
            continue
        if msg.get("reason") != "compiler-artifact" or not msg.get("executable"):
            continue
        if not msg["profile"].get("test"):
            continue
        target = msg["target"]
        # As cargo names them: `tests/cli.rs`, `unittests checks/src/lib.rs`.
        src = os.path.relpath(target["src_path"], ROOT)
        name = src if "test" in target["kind"] else f"unittests {src}"
        found.append((name, msg["executable"], os.path.dirname(msg["manifest_path"])))
    return found


def library_path():
    """LD_LIBRARY_PATH as cargo sets it for tests: with the toolchain's libraries (a proc-macro crate's
    tests link libstd dynamically)."""
    rustc = lambda *a: subprocess.run(
        ["rustc", *a], stdout=subprocess.PIPE, text=True, check=True
    ).stdout
    sysroot = rustc("--print", "sysroot").strip()
    host = next(l.split()[1] for l in rustc("-vV").splitlines() if l.startswith("host:"))
    paths = [
        os.path.join(sysroot, "lib", "rustlib", host, "lib"),
        os.environ.get("LD_LIBRARY_PATH", ""),
    ]
    return os.pathsep.join(p for p in paths if p)


def usable_cpus():
    """The CPUs this process may use: its affinity mask, less a cgroup CPU quota (a CI container on a
    large host sees every host CPU in os.cpu_count(), and each binary loads libtorch and its models)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        with open("/sys/fs/cgroup/cpu.max") as f:
            quota, period = f.read().split()[:2]
        if quota != "max":
            cpus = min(cpus, max(1, -(-int(quota) // int(period))))
    except (OSError, ValueError):
        pass
    return cpus


def run_one(binary, args, env):
    name, exe, folder = binary
    started = time.monotonic()
    out = subprocess.run(
        [exe, *args],
        cwd=folder,
        env={**env, "CARGO_MANIFEST_DIR": folder},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    return name, exe, out.returncode, out.stdout.decode("utf-8", "replace"), time.monotonic() - started


def main():
    argv = sys.argv[1:]
    jobs = usable_cpus()
    if len(argv) >= 2 and argv[0] == "-j":
        jobs, argv = int(argv[1]), argv[2:]
    if argv[:1] == ["--"]:
        argv = argv[1:]
    times = {}
    for path in (HINTS, TIMES):
        try:
            with open(path) as f:
                times.update(json.load(f))
        except (OSError, ValueError):
            pass
    binaries = sorted(test_binaries(), key=lambda b: -times.get(b[0], 0.0))
    env = {**os.environ, "LD_LIBRARY_PATH": library_path()}
    started = time.monotonic()
    failed = []
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        futures = [pool.submit(run_one, b, argv, env) for b in binaries]
        for future in as_completed(futures):
            name, exe, code, output, seconds = future.result()
            times[name] = round(seconds, 2)
            print(f"     Ran {name} ({os.path.relpath(exe, ROOT)}) in {seconds:.1f} s", flush=True)
            sys.stdout.write(output)
            sys.stdout.flush()
            if code != 0:
                failed.append(f"{name} (exit {code})")
    os.makedirs(os.path.dirname(TIMES), exist_ok=True)
    with open(TIMES, "w") as f:
        json.dump(times, f, indent=1, sort_keys=True)
    print(
        f"{len(binaries)} test binaries in {time.monotonic() - started:.0f} s, {jobs} at a time",
        flush=True,
    )
    if failed:
        print("failed: " + ", ".join(failed), file=sys.stderr)
        sys.exit(101)
    doc = subprocess.run(["cargo", "test", "--workspace", "--doc", "--quiet"], cwd=ROOT)
    sys.exit(doc.returncode)


if __name__ == "__main__":
    main()
