"""Spike for issue 25: export an MLP and a BN conv net with torch.export (train and eval IR), save .pt2,
and write PyTorch reference numbers for the C++ interpreter prototype (interp.cpp).

Run: /root/.cache/trainlint/fixtures-venv/bin/python spikes/pt2/export_models.py  (writes spikes/pt2/out/)
Everything written is small (KBs). Deterministic (seeded).
"""
import copy
import json
import os
import struct
import sys

import torch
import torch.nn as nn

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "out")
os.makedirs(OUT, exist_ok=True)
torch.manual_seed(0)
# One intra-op thread: results are then bitwise reproducible, and interp.cpp (1 thread by default) can be
# compared bit for bit (with 2 threads both sides still agree bitwise; mixing 1 and 2 gives ~1e-7 noise).
torch.set_num_threads(1)


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(8, 16)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(16, 4)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class ConvBN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        x = self.pool(self.relu(self.bn(self.conv(x))))
        return self.fc(torch.flatten(x, 1))


class Probe(nn.Module):
    """More op patterns: in-place relu_, max_pool2d, chunk (a list return), cat (a list argument), a buffer
    and a plain tensor attribute (a tensor constant), LayerNorm, SymInt arithmetic on the batch size
    (`_operator.mul` node), gelu(approximate="tanh") (a string argument), reshape with SymInt lists,
    dropout (RNG), sum.dim_IntList."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.ln = nn.LayerNorm(8)
        self.fc = nn.Linear(8 * 4 * 4 // 2, 5)
        self.drop = nn.Dropout(0.5)
        self.register_buffer("scale", torch.tensor(2.0))
        self.const = torch.linspace(-1, 1, 5)  # not a parameter nor a buffer: a tensor constant

    def forward(self, x):
        x = torch.relu_(self.conv(x))
        x = nn.functional.max_pool2d(x, 2)
        a, b = x.chunk(2, dim=1)
        x = torch.cat([b, a], 1) * self.scale
        x = self.ln(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        x = nn.functional.gelu(x, approximate="tanh")  # a string argument
        n = x.shape[0]
        x = self.drop(x.reshape(n * 2, -1))
        return self.fc(x).reshape(n, 2, 5).sum(1) + self.const


class NoGradBlock(nn.Module):
    """`with torch.no_grad():` inside forward (a teacher / target branch): the training IR holds it as
    torch.ops.higher_order.wrap_with_set_grad_enabled(False, subgraph, ...). t's parameters get no
    gradient."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(8, 16)
        self.t = nn.Linear(16, 16)
        self.b = nn.Linear(16, 4)

    def forward(self, x):
        h = torch.relu(self.a(x))
        with torch.no_grad():
            g = self.t(h)
        return self.b(h * torch.sigmoid(g))  # gated by the teacher, which gets no gradient


class TiedFrozen(nn.Module):
    """A weight shared by two layers (one Parameter, two FQNs: `dec.weight` is `enc.weight`) and a frozen
    layer (requires_grad False). Export makes the tied weight two graph inputs backed by one storage file."""

    def __init__(self):
        super().__init__()
        self.enc = nn.Linear(8, 8)
        self.dec = nn.Linear(8, 8)
        self.dec.weight = self.enc.weight
        self.frozen = nn.Linear(8, 8)
        self.frozen.requires_grad_(False)
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        return self.head(torch.relu(self.frozen(torch.relu(self.dec(torch.relu(self.enc(x)))))))


class AutocastBlock(nn.Module):
    """`with torch.autocast("cpu", dtype=torch.bfloat16):` inside forward: the training IR holds it as
    torch.ops.higher_order.wrap_with_autocast("cpu", bfloat16, True, True, subgraph, ...)."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(8, 16)
        self.m = nn.Linear(16, 16)
        self.b = nn.Linear(16, 4)

    def forward(self, x):
        h = torch.relu(self.a(x))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            h = torch.relu(self.m(h))
        return self.b(h.float())


class CondNet(nn.Module):
    """torch.cond on the batch's mean: the training IR holds torch.ops.higher_order.cond(pred, true_graph,
    false_graph, operands), the parameters of both branches passed as operands."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(8, 8)
        self.b = nn.Linear(8, 8)
        self.h = nn.Linear(8, 4)

    def forward(self, x):
        z = torch.cond(x.mean() > 0, lambda x: torch.relu(self.a(x)), lambda x: torch.tanh(self.b(x)), (x,))
        return self.h(z)


class GRUNet(nn.Module):
    """A bidirectional GRU over a (batch, time, features) sequence, then a linear head on the last step:
    aten.gru.input with a list of weight tensors and two outputs, and a zero initial state made inside
    the graph (aten.zeros with dtype/layout/device arguments)."""

    def __init__(self):
        super().__init__()
        self.gru = nn.GRU(5, 8, batch_first=True, bidirectional=True)
        self.fc = nn.Linear(16, 3)

    def forward(self, x):
        out, _ = self.gru(x)
        return self.fc(out[:, -1])


def write_tensor(path, t):
    """Raw little-endian f32 with a tiny header: ndim(u32), dims(i64 each), then data. The real reader
    reads the .pt2 data/weights/* raw storages directly (see FINDINGS.md); this is only for the references."""
    t = t.detach().contiguous().to(torch.float32)
    with open(path, "wb") as f:
        f.write(struct.pack("<I", t.dim()))
        for d in t.shape:
            f.write(struct.pack("<q", d))
        f.write(t.numpy().tobytes())


def loss_fn(out, y):
    return nn.functional.cross_entropy(out, y)


def export_one(name, model, x, y, root=OUT):
    d = os.path.join(root, name)
    os.makedirs(d, exist_ok=True)
    batch = torch.export.Dim("batch", min=2, max=1024)
    dyn = {"x": {0: batch}}

    # Keep the initial state so every reference below starts from the same weights.
    init_state = copy.deepcopy(model.state_dict())  # keeps _metadata (MNASNet checks its version)

    # --- train-mode export (the training IR: torch.export.export returns it; no run_decompositions)
    model.train()
    ep_train = torch.export.export(model, (x,), dynamic_shapes=dyn)
    torch.export.save(ep_train, os.path.join(d, "train.pt2"))
    # the same program decomposed to the core ATen IR, for the findings (what run_decompositions changes)
    ep_train_core = ep_train.run_decompositions()
    torch.export.save(ep_train_core, os.path.join(d, "train_core.pt2"))
    model.load_state_dict(init_state)  # export does not mutate, but be safe

    # --- eval-mode export
    model.eval()
    ep_eval = torch.export.export(model, (x,), dynamic_shapes=dyn)
    torch.export.save(ep_eval, os.path.join(d, "eval.pt2"))
    model.load_state_dict(init_state)

    # --- TorchScript twin for the speed comparison
    model.train()
    try:
        ts = torch.jit.script(model)
        ts.save(os.path.join(d, "model_ts.pt"))
    except Exception as e:  # e.g. torch.cond's lambdas: exportable, not scriptable
        print(f"{name}: no TorchScript twin: {type(e).__name__}: {str(e).splitlines()[0]}")

    with open(os.path.join(d, "graphs.txt"), "w") as f:
        for tag, ep in (("train", ep_train), ("train_core", ep_train_core), ("eval", ep_eval)):
            f.write(f"===== {tag}\n{ep.graph_module.code}\n{ep.graph_signature}\n\n")

    ref = {"torch": torch.__version__, "params": [], "buffers": []}
    write_tensor(os.path.join(d, "x.bin"), x)
    write_tensor(os.path.join(d, "y.bin"), y.to(torch.float32))

    # forward + grads in train mode on the eager module
    model.load_state_dict(init_state)
    model.train()
    # named_parameters() lists a tied weight once (under its first FQN); frozen ones get no gradient
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    torch.manual_seed(123)
    out = model(x)
    loss = loss_fn(out, y)
    grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
    ref["no_grad_params"] = [pn for pn, g in zip(params, grads) if g is None]
    grads = [torch.zeros_like(p) if g is None else g for p, g in zip(params.values(), grads)]
    write_tensor(os.path.join(d, "ref_out_train.bin"), out)
    ref["loss_train"] = loss.item()
    for (pn, p), g in zip(params.items(), grads):
        ref["params"].append(pn)
        write_tensor(os.path.join(d, f"ref_grad.{pn}.bin"), g)
    for bn, b in model.named_buffers():
        ref["buffers"].append(bn)
        write_tensor(os.path.join(d, f"ref_buf_after.{bn}.bin"), b.to(torch.float32))

    # the same grads through the exported program's module (the spec of what the interpreter must match)
    model.load_state_dict(init_state)
    m2 = ep_train.module()
    torch.manual_seed(123)
    out2 = m2(x)
    p2 = {n: p for n, p in m2.named_parameters() if p.requires_grad}
    g2 = torch.autograd.grad(loss_fn(out2, y), list(p2.values()), allow_unused=True)
    g2 = {n: torch.zeros_like(p) if g is None else g for (n, p), g in zip(p2.items(), g2)}
    ref["ep_module_params"] = list(p2)
    ref["ep_module_vs_eager_max_grad_diff"] = max((g - g2[n]).abs().max().item() for n, g in zip(params, grads))

    # eval-mode forward
    model.load_state_dict(init_state)
    model.eval()
    with torch.no_grad():
        write_tensor(os.path.join(d, "ref_out_eval.bin"), model(x))

    # 8 Adam steps (lr 1e-2), train mode, same batch each step; loss recorded before each step
    model.load_state_dict(init_state)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    curve = []
    torch.manual_seed(123)
    for _ in range(8):
        opt.zero_grad()
        l = loss_fn(model(x), y)
        l.backward()
        opt.step()
        curve.append(l.item())
    ref["adam_curve"] = curve
    model.load_state_dict(init_state)
    with open(os.path.join(d, "ref.json"), "w") as f:
        json.dump(ref, f, indent=1)
    print(name, "exported; loss", ref["loss_train"], "curve", [round(c, 5) for c in curve])


def main():
    torch.manual_seed(0)
    mlp = MLP()
    x = torch.randn(6, 8)
    y = torch.randint(0, 4, (6,))
    export_one("mlp", mlp, x, y)

    torch.manual_seed(1)
    cnn = ConvBN()
    x = torch.randn(4, 3, 8, 8)
    y = torch.randint(0, 5, (4,))
    export_one("convbn", cnn, x, y)

    torch.manual_seed(2)
    probe = Probe()
    x = torch.randn(4, 3, 8, 8)
    y = torch.randint(0, 5, (4,))
    export_one("probe", probe, x, y)

    torch.manual_seed(3)
    ng = NoGradBlock()
    x = torch.randn(6, 8)
    y = torch.randint(0, 4, (6,))
    export_one("nograd", ng, x, y)

    torch.manual_seed(4)
    tf = TiedFrozen()
    x = torch.randn(6, 8)
    y = torch.randint(0, 4, (6,))
    export_one("tiedfrozen", tf, x, y)

    torch.manual_seed(5)
    ac = AutocastBlock()
    x = torch.randn(6, 8)
    y = torch.randint(0, 4, (6,))
    export_one("autocast", ac, x, y)

    # the true branch on the reference input (mean > 0); interp's extra batch-7 input is random
    torch.manual_seed(6)
    cn = CondNet()
    x = torch.randn(6, 8) + 0.5
    y = torch.randint(0, 4, (6,))
    export_one("cond", cn, x, y)

    torch.manual_seed(7)
    gn = GRUNet()
    x = torch.randn(4, 6, 5)
    y = torch.randint(0, 3, (4,))
    export_one("gru", gn, x, y)


if __name__ == "__main__":
    sys.exit(main())
