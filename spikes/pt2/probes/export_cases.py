# Probe for spikes/pt2/FINDINGS.md (issue 25); run with /root/.cache/trainlint/fixtures-venv/bin/python export_cases.py
import torch, torch.nn as nn, json, zipfile, io, torchvision
def show(tag, m, x, **kw):
    try:
        ep = torch.export.export(m, (x,), **kw)
    except Exception as e:
        print(f"== {tag}: EXPORT FAILED {type(e).__name__}: {str(e).splitlines()[0][:200]}"); return
    buf = io.BytesIO(); torch.export.save(ep, buf); z = zipfile.ZipFile(buf)
    root = z.namelist()[0].split("/")[0]
    d = json.loads(z.read(root + "/models/model.json"))
    w = json.loads(z.read(root + "/data/weights/model_weights_config.json"))["config"]
    g = d["graph_module"]["graph"]
    print(f"== {tag}: targets", sorted({n["target"] for n in g["nodes"]}))
    for n in g["nodes"]:
        if "higher_order" in n["target"] or n["target"].startswith("_operator") or "torchvision" in n["target"]:
            print("   node", n["target"], [(a["name"], list(a["arg"].keys())[0]) for a in n["inputs"]], n["outputs"])
    print("   inputs:", [list(s.keys())[0] + ":" + json.dumps(list(s.values())[0])[:90] for s in d["graph_module"]["signature"]["input_specs"]])
    print("   weights:", {k: (v["path_name"], v["tensor_meta"]["requires_grad"]) for k, v in w.items()})
    for k in g:
        if k.startswith("sub") or k == "subgraphs": print(k)
    return d

class NoGrad(nn.Module):
    def __init__(s): super().__init__(); s.a = nn.Linear(4, 4); s.b = nn.Linear(4, 2)
    def forward(s, x):
        with torch.no_grad():
            h = s.a(x)
        return s.b(torch.relu(h))
class Tied(nn.Module):
    def __init__(s): super().__init__(); s.emb = nn.Linear(4, 6, bias=False); s.out = nn.Linear(6, 4, bias=False); s.out.weight = nn.Parameter(s.emb.weight.t().contiguous()); s.dec = nn.Linear(6, 4, bias=False); s.dec.weight = s.out.weight
    def forward(s, x): return s.dec(s.emb(x)) + s.out(s.emb(x))
class Frozen(nn.Module):
    def __init__(s): super().__init__(); s.a = nn.Linear(4, 4); s.a.weight.requires_grad_(False); s.b = nn.Linear(4, 2)
    def forward(s, x): return s.b(s.a(x))
class Cond(nn.Module):
    def __init__(s): super().__init__(); s.a = nn.Linear(4, 4)
    def forward(s, x): return torch.cond(x.sum() > 0, lambda x: s.a(x), lambda x: -x, (x,))
class Auto(nn.Module):
    def __init__(s): super().__init__(); s.a = nn.Linear(4, 4)
    def forward(s, x):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return s.a(x).float()
class Item(nn.Module):
    def __init__(s): super().__init__(); s.a = nn.Linear(4, 4)
    def forward(s, x):
        if x.mean().item() > 0: return s.a(x)
        return x
class Nms(nn.Module):
    def forward(s, x):
        return torchvision.ops.roi_align(x, [torch.tensor([[0., 0., 0., 3., 3.]])[:, 1:]], output_size=2)
x = torch.randn(3, 4)
dyn = {"x": {0: torch.export.Dim("b", min=2)}}
for tag, m in (("no_grad block", NoGrad()), ("tied", Tied()), ("frozen", Frozen()), ("cond", Cond()), ("autocast", Auto()), ("item", Item())):
    m.train(); show(tag, m, x, dynamic_shapes=dyn)
show("roi_align", Nms(), torch.randn(1, 2, 4, 4))
# eval fast path of MHA / TransformerEncoderLayer
enc = nn.TransformerEncoderLayer(8, 2, 16, batch_first=True); enc.eval()
with torch.no_grad():
    show("transformer eval", enc, torch.randn(2, 5, 8))
enc.train(); show("transformer train", enc, torch.randn(2, 5, 8))
# a batch size 1 example with a dynamic dim min=2
show("batch1 example", nn.Linear(4, 2), torch.randn(1, 4), dynamic_shapes={"x": {0: torch.export.Dim("b", min=2)}})
show("batch1 Dim.AUTO", nn.Linear(4, 2), torch.randn(1, 4), dynamic_shapes={"x": {0: torch.export.Dim.AUTO}})
