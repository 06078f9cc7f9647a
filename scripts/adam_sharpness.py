#!/usr/bin/env python3
"""Why lr-sharpness skips Adam: Adam's preconditioned sharpness λ(P⁻¹H), P = diag(√v̂ + ε), against its
stability bound 38/lr (β1 = 0.9; Cohen et al. 2022, "Adaptive Gradient Methods at the Edge of Stability"),
with v̂ from 1, 5 and 20 real Adam steps (minibatches of 32) at each lr, next to what PyTorch's own Adam
does at that lr in 200 steps. Runs in the fixtures venv:

    ~/.cache/trainlint/fixtures-venv/bin/python scripts/adam_sharpness.py mlp_default.pt regression.npz 1e-3,1e-2,0.1,1
    ~/.cache/trainlint/fixtures-venv/bin/python scripts/adam_sharpness.py classifier.pt classes4.npz 1e-3,1e-2,0.1,1

Measured (torch 2.13, CPU): on the MLP, lr 0.01 trains to MSE 1e-10 with λ(P⁻¹H) 60-200× the bound; on
the classifier, lr 1 (loss up to 115, ending above its start) is 200× the bound after 1 step and 0.04×
after 20. No factor over the bound separates healthy from diverging lrs, so the check skips Adam.
"""
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

torch.set_num_threads(1)
R = str(Path(__file__).resolve().parent.parent / "fixtures") + "/"


def load(model, data):
    d = np.load(R + "data/" + data)
    return torch.jit.load(R + "models/" + model), torch.tensor(d["inputs"]), torch.tensor(d["targets"])


def loss_of(out, y):
    return F.cross_entropy(out, y) if y.dtype == torch.int64 else F.mse_loss(out, y)


def preconditioned_sharpness(model, x, y, lr, steps, batch=32, iters=20, b1=0.9, b2=0.999, eps=1e-8):
    """λ(P⁻¹H) on the first batch after `steps` Adam steps at `lr` (power iteration on
    P^-1/2 H P^-1/2 by double backward)."""
    model.train()
    ps = [p for p in model.parameters() if p.requires_grad]
    m = [torch.zeros_like(p) for p in ps]
    v = [torch.zeros_like(p) for p in ps]
    for t in range(1, steps + 1):
        i = ((t - 1) * batch) % len(x)
        g = torch.autograd.grad(loss_of(model(x[i:i + batch]), y[i:i + batch]), ps)
        with torch.no_grad():
            for p, gi, mi, vi in zip(ps, g, m, v):
                mi.mul_(b1).add_(gi, alpha=1 - b1)
                vi.mul_(b2).addcmul_(gi, gi, value=1 - b2)
                p.sub_(lr * (mi / (1 - b1**t)) / ((vi / (1 - b2**t)).sqrt() + eps))
    P = [(vi / (1 - b2**steps)).sqrt() + eps for vi in v]
    g = torch.autograd.grad(loss_of(model(x[:batch]), y[:batch]), ps, create_graph=True)
    torch.manual_seed(0)
    u = [torch.randn_like(p) for p in ps]
    lam = 0.0
    for _ in range(iters):
        norm = torch.sqrt(sum((a * a).sum() for a in u))
        u = [a / norm for a in u]
        w = [a / pi.sqrt() for a, pi in zip(u, P)]
        hv = torch.autograd.grad(sum((gi * a).sum() for gi, a in zip(g, w)), ps, retain_graph=True)
        hv = [h / pi.sqrt() for h, pi in zip(hv, P)]
        lam = sum((a * b).sum() for a, b in zip(hv, u)).item()
        u = hv
    return lam


def train(model, x, y, lr, steps=200, batch=32):
    """PyTorch's Adam at `lr`: the loss of every step."""
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    for s in range(steps):
        i = (s * batch) % len(x)
        opt.zero_grad()
        loss = loss_of(model(x[i:i + batch]), y[i:i + batch])
        losses.append(loss.item())
        loss.backward()
        opt.step()
    return np.array(losses)


def main():
    model, data = sys.argv[1], sys.argv[2]
    for lr in [float(a) for a in sys.argv[3].split(",")]:
        lam = [preconditioned_sharpness(*load(model, data), lr, steps) for steps in [1, 5, 20]]
        L = train(*load(model, data), lr)
        print(
            f"lr={lr:g} 38/lr={38 / lr:.3g} λ(P⁻¹H) after 1/5/20 steps={[f'{x:.3g}' for x in lam]} "
            f"(× bound {[f'{x * lr / 38:.2g}' for x in lam]}) loss: first {L[0]:.3g}, "
            f"min {np.nanmin(L):.3g}, last 20 {np.mean(L[-20:]):.3g}, max {np.max(L):.3g}",
            flush=True,
        )


if __name__ == "__main__":
    main()
