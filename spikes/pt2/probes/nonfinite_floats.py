# Probe for spikes/pt2/FINDINGS.md (issue 25); run with /root/.cache/trainlint/fixtures-venv/bin/python nonfinite_floats.py
import torch, torch.nn as nn, zipfile, io, json
class M(nn.Module):
    def forward(s, x):
        return torch.nn.functional.hardtanh(x.masked_fill(x > 1, float("-inf")), -float("inf"), 2.0) * float("nan")
ep = torch.export.export(M(), (torch.randn(2, 3),))
buf = io.BytesIO(); torch.export.save(ep, buf); z = zipfile.ZipFile(buf)
raw = z.read("archive/models/model.json").decode()
for n in json.loads(raw)["graph_module"]["graph"]["nodes"]:
    print(n["target"], json.dumps(n["inputs"])[:300])
import re; print(re.findall(r'"as_float": [^,}]*', raw))
