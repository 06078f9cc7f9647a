"""Class-probability (soft) targets with CrossEntropyLoss (issue 22, 4): one-hot float rows, label
smoothing and mixup written by a real loader are exported as classification with cross_entropy, and
the real `trainlint check` audits them without a failed check.

Run with `./dev python`, or alone:
    PYTHONPATH=python/src TRAINLINT=target/debug/trainlint python -m unittest python/tests/test_soft_targets.py
"""
from __future__ import annotations

import unittest
import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from test_export import AUDITED, Mlp, Tmp, audit, checks, kinds, read_setup
from trainlint_export import ExportWarning, export
from trainlint_export._setup import task_of


def soft_data(kind: str, n=96, d=8, classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    y = torch.randint(0, classes, (n,), generator=g)
    hot = F.one_hot(y, classes).float()
    if kind == "one-hot":
        return TensorDataset(x, hot)
    if kind == "smoothed":
        return TensorDataset(x, 0.9 * hot + 0.1 / classes)
    # mixup with a random partner, λ ~ Beta(0.4, 0.4): inputs and targets mixed alike.
    lam = torch.distributions.Beta(0.4, 0.4).sample((n, 1))
    partner = torch.randperm(n, generator=g)
    return TensorDataset(lam * x + (1 - lam) * x[partner], lam * hot + (1 - lam) * hot[partner])


class SoftTargets(Tmp):
    def test_probability_rows_with_cross_entropy_are_classification_and_audit_clean(self):
        for kind in ("one-hot", "smoothed", "mixup"):
            with self.subTest(targets=kind):
                out = self.tmp / kind
                model = Mlp()
                opt = torch.optim.Adam(model.parameters(), lr=1e-3)
                with warnings.catch_warnings():
                    warnings.simplefilter("error", ExportWarning)
                    export(model, DataLoader(soft_data(kind), batch_size=16, shuffle=True), out,
                           nn.CrossEntropyLoss(), opt, format=AUDITED)
                setup = read_setup(out)["setup"]
                self.assertEqual((setup["task"], setup["loss"]), ("classification", "cross_entropy"))
                code, report = audit(out)
                by_id = checks(report)
                failed = {i: c.get("reason") for i, c in by_id.items() if c["status"] == "failed"}
                self.assertEqual(failed, {})
                self.assertEqual(kinds(report), set(), report)
                for check in ("overfit-batch", "initial-loss", "gradient-flow"):
                    self.assertEqual(by_id[check]["status"], "passed", (check, by_id[check]))
                self.assertEqual(code, 0)

    def test_probability_rows_without_a_loss_are_classification(self):
        export(Mlp(), DataLoader(soft_data("smoothed"), batch_size=16, shuffle=True), self.tmp)
        setup = read_setup(self.tmp)["setup"]
        self.assertEqual(setup["task"], "classification")
        self.assertNotIn("loss", setup)

    def test_float_rows_that_are_not_probabilities_stay_regression_or_warn_with_cross_entropy(self):
        g = torch.Generator().manual_seed(1)
        x, y = torch.randn(64, 8, generator=g), torch.rand(64, 3, generator=g)
        export(Mlp(), DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True), self.tmp / "mse", nn.MSELoss())
        self.assertEqual(read_setup(self.tmp / "mse")["setup"]["task"], "regression")
        with self.assertWarnsRegex(ExportWarning, "class probabilities, but a sample's probabilities sum to"):
            export(Mlp(), DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True), self.tmp / "ce",
                   nn.CrossEntropyLoss(), format=AUDITED)
        setup = read_setup(self.tmp / "ce")["setup"]
        self.assertEqual((setup["task"], setup["loss"]), ("classification", "cross_entropy"))
        code, report = audit(self.tmp / "ce")
        overfit = checks(report)["overfit-batch"]
        self.assertEqual(overfit["status"], "skipped", overfit)
        self.assertIn("read them as class probabilities, but", overfit["reason"])
        self.assertFalse([c for c in report["checks"] if c["status"] == "failed"], report)

    def test_the_auto_rule(self):
        x = torch.randn(4, 8)
        hot = F.one_hot(torch.tensor([0, 1, 2, 1]), 3).float()
        self.assertEqual(task_of(x, hot), "classification")
        self.assertEqual(task_of(x, hot, "bce_with_logits"), "regression")
        self.assertEqual(task_of(x, torch.tensor([0.0, 2.0, 1.0, 1.0]), "cross_entropy"), "classification")
        self.assertEqual(task_of(x, torch.tensor([0.0, 2.0, 1.0, 1.0])), "regression")
        self.assertEqual(task_of(x, torch.rand(4, 3)), "regression")
        self.assertEqual(task_of(x, torch.rand(4, 1).round()), "regression")
        images = torch.rand(4, 3, 8, 8)
        self.assertEqual(task_of(images, images), "image-to-image")
        soft_masks = F.one_hot(torch.randint(0, 3, (4, 8, 8)), 3).permute(0, 3, 1, 2).float()
        self.assertEqual(task_of(images, soft_masks), "classification")


if __name__ == "__main__":
    unittest.main()
