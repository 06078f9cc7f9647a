#!/usr/bin/env python3
"""Provide the CPU libtorch 2.13.0 that tch 0.26 needs, from PyPI, cached outside the repository.

The usual libtorch zip host is often unreachable, while PyPI is not. The CUDA wheel of torch 2.13.0 holds
everything a CPU libtorch needs: torch/include and, in torch/lib, libtorch_cpu, libtorch, libc10 and
libgomp. libtorch_cpu.so also links libcudart.so.13 and libcupti.so.13, which come from two small NVIDIA
wheels and load fine on machines without a GPU.

The result lands in $TRAINLINT_CACHE (default: $XDG_CACHE_HOME/trainlint or ~/.cache/trainlint) as
libtorch-2.13.0-cpu/{include,lib}, and `.libtorch` in the repository points at it; .cargo/config.toml sets
LIBTORCH to `.libtorch` unless the user has set LIBTORCH (or LIBTORCH_USE_PYTORCH=1) themselves.

Usage: python3 scripts/fetch_libtorch.py [--print-path]
"""
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

TORCH_VERSION = "2.13.0"
WHEELS = [f"torch=={TORCH_VERSION}", "nvidia-cuda-runtime==13.0.96.*", "nvidia-cuda-cupti==13.0.85.*"]
TORCH_LIBS = ["libtorch_cpu.so", "libtorch.so", "libc10.so", "libgomp.so.1"]
NVIDIA_LIBS = ["libcudart.so.13", "libcupti.so.13"]
REPO = Path(__file__).resolve().parent.parent


def cache_root() -> Path:
    if os.environ.get("TRAINLINT_CACHE"):
        return Path(os.environ["TRAINLINT_CACHE"])
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "trainlint"


def fail(msg: str) -> None:
    print(f"fetch_libtorch: error: {msg}", file=sys.stderr)
    sys.exit(2)


def download(dest: Path) -> None:
    # Pin the wheel's platform and Python tag so every local Python gets the same files.
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--python-version", "3.11", "--implementation", "cp",
           "--platform", "manylinux_2_28_x86_64", "--platform", "manylinux_2_25_x86_64",
           "--platform", "manylinux_2_17_x86_64", "--platform", "manylinux2014_x86_64",
           "-d", str(dest), *WHEELS]
    print(f"fetch_libtorch: downloading {', '.join(WHEELS)} from PyPI (about 540 MB, once)", file=sys.stderr)
    if subprocess.call(cmd) != 0:
        fail("pip download failed; set LIBTORCH to an existing libtorch 2.13.0 or LIBTORCH_USE_PYTORCH=1")


def extract(wheels: Path, staging: Path) -> None:
    (staging / "lib").mkdir(parents=True)
    torch_whl = next(wheels.glob(f"torch-{TORCH_VERSION}-*.whl"))
    with zipfile.ZipFile(torch_whl) as z:
        for name in z.namelist():
            if name.startswith("torch/include/") and not name.endswith("/"):
                z.extract(name, staging / "_t")
        for lib in TORCH_LIBS:
            with z.open(f"torch/lib/{lib}") as src, open(staging / "lib" / lib, "wb") as dst:
                shutil.copyfileobj(src, dst)
    (staging / "_t" / "torch" / "include").rename(staging / "include")
    shutil.rmtree(staging / "_t")
    for whl in wheels.glob("nvidia_*.whl"):
        with zipfile.ZipFile(whl) as z:
            for name in z.namelist():
                base = name.rsplit("/", 1)[-1]
                if base in NVIDIA_LIBS:
                    with z.open(name) as src, open(staging / "lib" / base, "wb") as dst:
                        shutil.copyfileobj(src, dst)
    missing = [lib for lib in TORCH_LIBS + NVIDIA_LIBS if not (staging / "lib" / lib).exists()]
    if missing:
        fail(f"the wheels lacked {', '.join(missing)}")
    (staging / "build-version").write_text(TORCH_VERSION + "\n")


def ensure() -> Path:
    if sys.platform != "linux" or platform.machine() != "x86_64":
        fail(f"the PyPI route supports Linux x86_64 only (this is {sys.platform} {platform.machine()}); "
             "set LIBTORCH to a libtorch 2.13.0 for this platform, or LIBTORCH_USE_PYTORCH=1")
    root = cache_root()
    target = root / f"libtorch-{TORCH_VERSION}-cpu"
    if not (target / ".complete").exists():
        root.mkdir(parents=True, exist_ok=True)
        wheels = root / "wheels"
        wheels.mkdir(exist_ok=True)
        if not list(wheels.glob(f"torch-{TORCH_VERSION}-*.whl")) or len(list(wheels.glob("nvidia_*.whl"))) < 2:
            download(wheels)
        staging = Path(tempfile.mkdtemp(prefix="libtorch-", dir=root))
        os.chmod(staging, 0o755)
        extract(wheels, staging)
        (staging / ".complete").touch()
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
        shutil.rmtree(wheels)  # 540 MB that the extracted tree no longer needs
    link = REPO / ".libtorch"
    if link.is_symlink() or link.exists():
        if link.resolve() != target.resolve():
            link.unlink()
    if not link.exists():
        link.symlink_to(target)
    return target


if __name__ == "__main__":
    path = ensure()
    if "--print-path" in sys.argv:
        print(path)
