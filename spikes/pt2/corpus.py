"""Spike for issue 25, wider: runs export_models.export_one on the 13 torchvision families of trainlint's
false-alarm corpus (fixtures/make_trust.py corpus_models) and torchvision resnet18(num_classes=10) (the bench
model), writing to spikes/pt2/out/tv/ (git-ignored: resnet18 alone is 45 MB). Then lower.py + interp check
each, as run.sh does for the committed models:

  /root/.cache/trainlint/fixtures-venv/bin/python spikes/pt2/corpus.py
  for d in spikes/pt2/out/tv/*/; do for v in train train_core eval; do python3 spikes/pt2/lower.py $d/$v.pt2 $d/low_$v; done; done
  for d in spikes/pt2/out/tv/*/; do INTERP_THREADS=2 spikes/pt2/out/interp $d; done
"""
import os
import sys
import traceback

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "fixtures"))
sys.path.insert(0, HERE)
from export_models import export_one  # noqa: E402
from make_trust import corpus_models  # noqa: E402
import torchvision  # noqa: E402

ROOT = os.path.join(HERE, "out", "tv")
only = set(sys.argv[1:])
models = [(n, f) for n, f, _ in corpus_models()]
models.append(("resnet18", lambda: torchvision.models.resnet18(num_classes=10)))
for i, (name, make) in enumerate(models):
    if only and name not in only:
        continue
    torch.manual_seed(810 + i)
    m = make()
    size = 32 if name == "resnet18" else 16
    x = torch.randn(4, 3, size, size)
    y = torch.randint(0, 10, (4,))
    try:
        export_one(name, m, x, y, root=ROOT)
    except Exception as e:  # record and go on: which families fail to export is a finding
        print(f"{name}: EXPORT FAILED: {type(e).__name__}: {str(e).splitlines()[0][:300]}")
        traceback.print_exc(limit=3)
