# Probe for spikes/pt2/FINDINGS.md (issue 25); run with /root/.cache/trainlint/fixtures-venv/bin/python batch_one.py
import torch, torch.nn as nn
for tag, ds in (("Dim min=2", {"input": {0: torch.export.Dim("b", min=2)}}), ("Dim.AUTO", {"input": {0: torch.export.Dim.AUTO}}), ("none", None)):
    try:
        ep = torch.export.export(nn.Linear(4, 2), (torch.randn(1, 4),), dynamic_shapes=ds)
        print(tag, "ok: input", ep.graph_module.graph.find_nodes(op="placeholder")[-1].meta["val"].shape, "ranges", ep.range_constraints)
    except Exception as e:
        print(tag, "FAILED", type(e).__name__, str(e).splitlines()[0][:200])
m = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
ep = torch.export.export(m.train(), (torch.randn(3, 4),), dynamic_shapes={"input": {0: torch.export.Dim("b", min=2)}})
try:
    ep.module()(torch.randn(3, 5))
except Exception as e:
    print("wrong static dim through ep.module():", type(e).__name__, str(e).splitlines()[0][:200])
try:
    ep.module()(torch.randn(1, 4))
except Exception as e:
    print("batch 1 (< min 2) through ep.module():", type(e).__name__, str(e).splitlines()[0][:200])
