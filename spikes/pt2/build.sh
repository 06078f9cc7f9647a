#!/bin/sh
# Compiles the spike interpreter against libtorch 2.13 (CPU). Output: spikes/pt2/out/interp (ignored by nothing
# else: not part of the cargo build). LT overrides the libtorch location. No -ltorch: in this libtorch,
# libtorch.so is a stub that NEEDs libtorch_cuda.so (absent); everything used lives in libtorch_cpu.
set -e
cd "$(dirname "$0")"
LT=${LT:-/root/.cache/trainlint/libtorch-2.13.0-cpu}
mkdir -p out
nice -n 10 g++ -O2 -std=c++17 -Wno-c++20-extensions -o out/interp.new interp.cpp \
  -I"$LT/include" -I"$LT/include/torch/csrc/api/include" \
  -L"$LT/lib" -Wl,--as-needed -ltorch_cpu -lc10 -Wl,-rpath,"$LT/lib"
mv out/interp.new out/interp  # a rename: a running interp keeps its file
