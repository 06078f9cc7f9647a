"""Spike for issue 25: is a gap between the interpreter's 8-step Adam curve and PyTorch's due to the
interpreter, or to the optimizer? Runs the exported program's module (bitwise equal to eager; see ref.json
ep_module_vs_eager_max_grad_diff) with (a) torch.optim.Adam and (b) the update libtorch's C++
torch::optim::Adam does (exp_avg.mul_(b1).add_(g, 1-b1) where Python does exp_avg.lerp_(g, 1-b1)).
Usage: python adam_check.py MODELDIR [threads]
"""
import json
import math
import struct
import sys

import numpy as np
import torch
import torch.nn.functional as F


def rd(p):
    b = open(p, "rb").read()
    nd = struct.unpack("<I", b[:4])[0]
    dims = struct.unpack("<" + "q" * nd, b[4:4 + 8 * nd])
    return torch.from_numpy(np.frombuffer(b[4 + 8 * nd:], dtype=np.float32).reshape(dims).copy())


d = sys.argv[1]
torch.set_num_threads(int(sys.argv[2]) if len(sys.argv) > 2 else 1)
x, y = rd(d + "/x.bin"), rd(d + "/y.bin").long()
ref = json.load(open(d + "/ref.json"))["adam_curve"]


def run(cpp_style):
    m = torch.export.load(d + "/train.pt2").module()
    ps = [p for p in m.parameters()]
    if not cpp_style:
        opt = torch.optim.Adam(ps, lr=1e-2)
    st = [(torch.zeros_like(p), torch.zeros_like(p)) for p in ps]
    curve = []
    torch.manual_seed(123)
    for step in range(1, 9):
        loss = F.cross_entropy(m(x), y)
        gs = torch.autograd.grad(loss, ps)
        curve.append(loss.item())
        with torch.no_grad():
            if not cpp_style:
                for p, g in zip(ps, gs):
                    p.grad = g
                opt.step()
                continue
            # torch/csrc/api/src/optim/adam.cpp
            bc1, bc2 = 1 - 0.9 ** step, 1 - 0.999 ** step
            for p, g, (ea, eas) in zip(ps, gs, st):
                ea.mul_(0.9).add_(g, alpha=1 - 0.9)
                eas.mul_(0.999).addcmul_(g, g, value=1 - 0.999)
                denom = (eas.sqrt() / math.sqrt(bc2)).add_(1e-8)
                p.addcdiv_(ea, denom, value=-(1e-2 / bc1))
    return curve


for name, c in (("torch.optim.Adam", run(False)), ("C++ Adam update", run(True))):
    print(f"{d}: {name:18s}", " ".join(f"{v:.6f}" for v in c), f" max|diff vs ref| {max(abs(a - b) for a, b in zip(c, ref)):.3e}")
