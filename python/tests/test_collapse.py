"""Issue 22, 7: a collapsed run must fail the gate. A digits-style MLP on raw-scale pixels (0..16) trained
with SGD at lr 5, logged with the exporter as the README shows: the loss blows up, the ReLUs die, and the
rest of the run sits at ln 10. trainlint must call that an error (loss-oscillation/log-collapsed), with
the optimizer passed or not, and must say which setup values it assumed when none was passed."""
from __future__ import annotations

import unittest

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from test_export import AUDITED, Tmp, audit, checks, kinds
from trainlint_export import export


def digits(n=256, seed=0):
    """10 classes of 8×8 blob patterns at raw pixel scale (0..16, as sklearn's digits), flattened."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 10
    centres = torch.rand(10, 64, generator=g) * 16
    x = (centres[y] + 2 * torch.randn(n, 64, generator=g)).clamp(0, 16)
    return TensorDataset(x, y)


def mlp():
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))


class CollapsedRun(Tmp):
    def train(self, lr, pass_optimizer=True, steps=300):
        model = mlp()
        loader = DataLoader(digits(), batch_size=32, shuffle=True)
        opt = torch.optim.SGD(model.parameters(), lr=lr)
        audit_dir = export(model, loader, self.tmp / "audit", nn.CrossEntropyLoss(),
                           opt if pass_optimizer else None, log=self.tmp / "audit" / "loss.csv", format=AUDITED)
        step = 0
        while step < steps:
            for x, y in loader:
                loss = F.cross_entropy(model(x), y)
                opt.zero_grad()
                loss.backward()
                opt.step()
                audit_dir.log_step(step, loss)
                step += 1
                if step == steps:
                    break
        return model

    def test_sgd_at_lr_5_collapses_and_fails_the_gate(self):
        model = self.train(5.0)
        with torch.no_grad():
            x, y = digits()[:]
            final = F.cross_entropy(model(x), y).item()
        # The run really collapsed: the model predicts (nearly) the class prior.
        self.assertAlmostEqual(final, torch.log(torch.tensor(10.0)).item(), delta=0.1)
        code, report = audit(self.tmp / "audit", "--select", "loss-oscillation")
        self.assertEqual(code, 1)
        self.assertIn("loss-oscillation/log-collapsed", kinds(report))
        errors = [f for f in checks(report)["loss-oscillation"]["findings"] if f["severity"] == "error"]
        self.assertTrue(any(f["kind"] == "loss-oscillation/log-collapsed" for f in errors), errors)

    def test_without_the_optimizer_the_collapse_still_fails_and_the_setup_is_assumed_aloud(self):
        self.train(5.0, pass_optimizer=False)
        code, report = audit(self.tmp / "audit", "--select", "loss-oscillation")
        self.assertEqual(code, 1)
        self.assertIn("loss-oscillation/log-collapsed", kinds(report))
        config = [w["message"] for w in report.get("warnings", []) if w["input"] == "config"]
        self.assertEqual(len(config), 1, report.get("warnings"))
        self.assertIn("does not set optimizer, lr", config[0])
        self.assertIn("assumed optimizer = adam, lr = 0.001", config[0])

    def test_a_sane_lr_is_not_a_collapse(self):
        self.train(0.05)
        code, report = audit(self.tmp / "audit", "--select", "loss-oscillation")
        self.assertNotIn("loss-oscillation/log-collapsed", kinds(report))


class ShortLog(Tmp):
    def test_a_short_log_beside_the_probe_is_said_to_be_unjudged(self):
        # Issue 22, 9: Hugging Face's logging_steps make short logs common: 24 rows < min_points 30.
        # The probe's verdict stands; the report says the log was not judged, and how many rows it had.
        model = mlp()
        loader = DataLoader(digits(), batch_size=32, shuffle=True)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        audit_dir = export(model, loader, self.tmp / "audit", nn.CrossEntropyLoss(), opt,
                           log=self.tmp / "audit" / "loss.csv", format=AUDITED)
        step = 0
        for _ in range(3):
            for x, y in loader:
                loss = F.cross_entropy(model(x), y)
                opt.zero_grad()
                loss.backward()
                opt.step()
                audit_dir.log_step(step, loss)
                step += 1
        self.assertEqual(step, 24)
        code, report = audit(self.tmp / "audit", "--select", "loss-oscillation")
        entry = checks(report)["loss-oscillation"]
        self.assertEqual(entry["status"], "passed", entry)
        self.assertEqual(entry["note"], "the loss log was not judged: 24 finite rows, needs min_points = 30; "
                                        "the learning-rate probe ran")


if __name__ == "__main__":
    unittest.main()
