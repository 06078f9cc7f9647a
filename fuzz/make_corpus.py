"""Seed corpus for trainlint's proptest fuzz targets (`cargo test --bin trainlint fuzz_`).

Run with the fixtures venv (numpy 2.x, PyTorch 2.13, safetensors):
    /root/.cache/trainlint/fixtures-venv/bin/python fuzz/make_corpus.py
Each file is small (a few hundred bytes): the fuzz targets mutate them (bit flips, truncation,
inserted bytes, corrupted length and size fields) and read the result. The logs and the baseline
are written as the tools that make them write them (pandas-less: csv and json from the standard
library, Python's json.dumps with its bare NaN).
"""
import io
import json
import math
import os
import zipfile

import numpy as np
import torch
from safetensors.numpy import save_file as save_numpy
from safetensors.torch import save_file as save_torch

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")


def path(kind, name):
    folder = os.path.join(ROOT, kind)
    os.makedirs(folder, exist_ok=True)
    return os.path.join(folder, name)


rng = np.random.default_rng(0)
inputs = rng.standard_normal((4, 3)).astype(np.float32)
targets = np.arange(4, dtype=np.int64)

# npy: the dtypes trainlint reads, both byte orders, Fortran order, format version 2.0.
np.save(path("npy", "f4_2d.npy"), inputs)
np.save(path("npy", "u1_images.npy"), rng.integers(0, 255, (2, 1, 3, 3), dtype=np.uint8))
np.save(path("npy", "i8_fortran.npy"), np.asfortranarray(np.arange(6, dtype=np.int64).reshape(2, 3)))
np.save(path("npy", "f8_big_endian.npy"), np.arange(5, dtype=">f8"))
np.save(path("npy", "bool.npy"), np.array([True, False, True]))
np.save(path("npy", "f2_scalar.npy"), np.float16(1.5))
with open(path("npy", "v2_header.npy"), "wb") as f:
    np.lib.format.write_array(f, inputs, version=(2, 0))

# npz: np.savez (stored) and np.savez_compressed (deflated), as trainlint reads them.
np.savez(path("npz", "stored.npz"), inputs=inputs, targets=targets)
np.savez_compressed(path("npz", "deflated.npz"), inputs=inputs, targets=targets.astype(np.float32))
np.savez(path("npz", "three_u1.npz"), inputs=rng.integers(0, 255, (4, 2, 2), dtype=np.uint8),
         targets=targets, extra=np.zeros(2))
# Written to a stream that cannot seek: zipfile then puts sizes and CRC in data descriptors.
class Unseekable(io.RawIOBase):
    def __init__(self):
        self.data = bytearray()
    def writable(self):
        return True
    def write(self, b):
        self.data += b
        return len(b)
stream = Unseekable()
np.savez(stream, inputs=inputs, targets=targets)
with open(path("npz", "data_descriptors.npz"), "wb") as f:
    f.write(stream.data)

# safetensors: from PyTorch and from numpy, with metadata.
save_torch({"inputs": torch.from_numpy(inputs), "targets": torch.from_numpy(targets)},
           path("safetensors", "torch.safetensors"), metadata={"format": "pt"})
save_numpy({"inputs": inputs.astype(np.float16), "targets": targets.astype(np.int32)},
           path("safetensors", "numpy_f16.safetensors"))
save_torch({"inputs": torch.zeros(2, 3, dtype=torch.bfloat16), "targets": torch.ones(2, dtype=torch.bool)},
           path("safetensors", "bf16_bool.safetensors"))

# CSV / TSV logs: steps, terms, missing cells, NaN, Lightning's train and validation rows.
with open(path("csv", "terms.csv"), "w") as f:
    f.write("step,loss,loss_mse,loss_feat,lr\n0,2.5,0.5,2.0,0.1\n10,1.5,0.25,1.25,0.1\n20,nan,,inf,0.05\n")
with open(path("csv", "lightning.csv"), "w") as f:
    f.write("epoch,step,train_loss,val_loss\n0,0,1.5,\n0,0,,1.7\n0,1,1.2,\n0,1,,1.4\n")
with open(path("csv", "quoted.csv"), "w") as f:
    f.write('"step","loss","loss_b"\n0,1.0,"2.5"\n1,0.5," 3 "\n')
with open(path("csv", "no_steps.tsv"), "w") as f:
    f.write("loss\tacc\n1.0\t0.1\n0.5\t0.2\n")

# JSONL logs, as Python's json.dumps writes them (bare NaN and Infinity).
rows = [{"step": 0, "loss": 1.5, "phase": "train"}, {"step": 1, "loss": float("nan")},
        {"step": 2, "loss": 0.9, "loss_a": 0.4, "loss_b": None}, {"step": 3, "loss": float("inf")}]
with open(path("jsonl", "python.jsonl"), "w") as f:
    f.write("".join(json.dumps(r) + "\n" for r in rows))
with open(path("jsonl", "no_steps.jsonl"), "w") as f:
    f.write('{"loss": 1.0}\n\n{"loss": 0.5, "lr": 0.1}\n')
with open(path("jsonl", "nested.jsonl"), "w") as f:
    f.write('{"step": 0, "loss": 1.0, "cfg": {"a": [1, 2, {"b": null}]}, "s": "NaN"}\n')

# Baselines: the format `trainlint check --write-baseline` writes (version 2).
baseline = {"version": 2, "entries": [
    {"kind": "loss-oscillation/oscillating", "location": "loss.csv: steps 0–40", "count": 1},
    {"kind": "check-failed:init-std", "location": "", "count": 2},
]}
with open(path("baseline", "two_entries.json"), "w") as f:
    f.write(json.dumps(baseline, indent=2) + "\n")
with open(path("baseline", "empty.json"), "w") as f:
    f.write(json.dumps({"version": 2, "entries": []}, indent=2) + "\n")
with open(path("baseline", "version1.json"), "w") as f:
    f.write(json.dumps({"version": 1, "entries": [{"kind": "x", "location": "", "count": 1}]}) + "\n")
print("corpus written to", ROOT)
