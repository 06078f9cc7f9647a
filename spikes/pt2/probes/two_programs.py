# Probe for spikes/pt2/FINDINGS.md (issue 25); run with /root/.cache/trainlint/fixtures-venv/bin/python two_programs.py
import torch, torch.nn as nn, zipfile, inspect
from torch.export.pt2_archive._package import package_pt2, load_pt2
print(inspect.signature(package_pt2))
m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(2) if False else nn.Identity())
x = torch.randn(2, 3, 5, 5)
ds = ({0: torch.export.Dim("b", min=2)},)
ept = torch.export.export(m.train(), (x,), dynamic_shapes=ds)
epe = torch.export.export(m.eval(), (x,), dynamic_shapes=ds)
package_pt2("/tmp/two.pt2", exported_programs={"train": ept, "eval": epe})
z = zipfile.ZipFile("/tmp/two.pt2")
for i in z.infolist(): print(i.filename, i.file_size)
lp = load_pt2("/tmp/two.pt2")
print(type(lp), getattr(lp, "exported_programs", {}).keys())
try:
    print(torch.export.load("/tmp/two.pt2"))
except Exception as e:
    print("torch.export.load on two-model archive:", type(e).__name__, str(e)[:200])
