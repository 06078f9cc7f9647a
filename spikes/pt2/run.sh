#!/bin/sh
# Reproduces the whole spike: export with PyTorch 2.13, lower the .pt2 files (stdlib only), build, check, bench.
set -e
cd "$(dirname "$0")"
PY=${PY:-/root/.cache/trainlint/fixtures-venv/bin/python}
nice -n 10 "$PY" export_models.py
for m in mlp convbn probe nograd tiedfrozen autocast cond gru; do
  for v in train train_core eval; do
    python3 lower.py out/$m/$v.pt2 out/$m/low_$v
  done
done
./build.sh
for m in mlp convbn probe nograd tiedfrozen autocast cond gru; do nice -n 10 ./out/interp out/$m "$@"; done
