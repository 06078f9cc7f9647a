"""trainlint-export on real models and loaders, audited by the real `trainlint check`.

Run with `./dev python` (or: TRAINLINT=target/debug/trainlint python -m unittest discover python/tests).
The binary comes from $TRAINLINT; without it the tests that audit are skipped, the others run.
"""
from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import tempfile
import tomllib
import unittest
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, IterableDataset, TensorDataset
from torch.utils.data.distributed import DistributedSampler

from trainlint_export import ExportError, ExportWarning, export

TRAINLINT = os.environ.get("TRAINLINT")
# The format of the folders the binary audits: the exporter's default (a .pt2, TorchScript where
# torch.export cannot export the model).
AUDITED = "auto"


def audit(folder, *args):
    """`trainlint check FOLDER --output-format json`: the exit code and the parsed report."""
    if not TRAINLINT:
        raise unittest.SkipTest("set TRAINLINT to the trainlint binary to audit")
    p = subprocess.run(
        [TRAINLINT, "check", str(folder), "--output-format", "json", "--quiet", "--threads", "1", *args],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert p.returncode in (0, 1), f"trainlint check exited {p.returncode}: {p.stderr.strip()}"
    return p.returncode, json.loads(p.stdout)


def checks(report) -> dict:
    return {c["id"]: c for c in report["checks"]}


def kinds(report) -> set:
    return {f["kind"] for c in report["checks"] for f in c.get("findings", [])}


def read_setup(folder) -> dict:
    with open(Path(folder) / "trainlint.toml", "rb") as f:
        return tomllib.load(f)


class Mlp(nn.Module):
    def __init__(self, d_in=8, d_out=3, bn=False, final=None):
        super().__init__()
        self.fc1 = nn.Linear(d_in, 32)
        self.bn = nn.BatchNorm1d(32) if bn else nn.Identity()
        self.fc2 = nn.Linear(32, d_out)
        self.final = final if final is not None else nn.Identity()

    def forward(self, x):
        return self.final(self.fc2(torch.relu(self.bn(self.fc1(x)))))


def classification_data(n=96, d=8, classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    y = torch.randint(0, classes, (n,), generator=g)
    return TensorDataset(x, y)


class Tmp(unittest.TestCase):
    def setUp(self):
        self._tmp = tempfile.TemporaryDirectory()
        self.tmp = Path(self._tmp.name)
        torch.manual_seed(0)

    def tearDown(self):
        self._tmp.cleanup()


class SetupFromObjects(Tmp):
    def test_shuffle_from_the_sampler_and_the_audit_reads_it(self):
        # Sorted labels: trainlint's sequential-data must fire when the loader does not shuffle (read
        # from its SequentialSampler) and pass when it does (RandomSampler).
        x = torch.randn(128, 8)
        y = torch.arange(128) // 32
        ds = TensorDataset(x, y)
        for shuffle in (False, True):
            out = self.tmp / f"shuffle-{shuffle}"
            export(Mlp(), DataLoader(ds, batch_size=16, shuffle=shuffle), out, nn.CrossEntropyLoss(),
                   torch.optim.SGD(Mlp().parameters(), lr=0.01), format=AUDITED)
            setup = read_setup(out)["setup"]
            self.assertIs(setup["shuffle"], shuffle)
            self.assertEqual(setup["batch_size"], 16)
            code, report = audit(out, "--select", "sequential-data")
            status = checks(report)["sequential-data"]["status"]
            self.assertEqual(status, "passed" if shuffle else "findings", report)
            self.assertEqual(code, 0 if shuffle else 1)

    def test_distributed_sampler_shuffle_flag(self):
        ds = classification_data()
        for shuffle in (False, True):
            sampler = DistributedSampler(ds, num_replicas=2, rank=0, shuffle=shuffle)
            out = self.tmp / f"ddp-{shuffle}"
            export(Mlp(), DataLoader(ds, batch_size=8, sampler=sampler), out)
            self.assertIs(read_setup(out)["setup"]["shuffle"], shuffle)

    def test_sgd_momentum_and_weight_decay(self):
        model = Mlp()
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.7, weight_decay=5e-4)
        export(model, DataLoader(classification_data(), batch_size=12), self.tmp, nn.CrossEntropyLoss(), opt,
               format=AUDITED)
        setup = read_setup(self.tmp)["setup"]
        self.assertEqual(
            {k: setup[k] for k in ("optimizer", "lr", "momentum", "weight_decay", "batch_size", "shuffle")},
            {"optimizer": "sgd", "lr": 0.05, "momentum": 0.7, "weight_decay": 5e-4, "batch_size": 12,
             "shuffle": False},
        )
        self.assertEqual(setup["task"], "classification")
        self.assertEqual(setup["loss"], "cross_entropy")
        audit(self.tmp)

    def test_sgd_without_momentum_says_zero(self):
        model = Mlp()
        export(model, DataLoader(classification_data(), batch_size=8), self.tmp,
               optimizer=torch.optim.SGD(model.parameters(), lr=0.1))
        self.assertEqual(read_setup(self.tmp)["setup"]["momentum"], 0.0)

    def test_adam_and_adamw(self):
        for cls, name in ((torch.optim.Adam, "adam"), (torch.optim.AdamW, "adamw")):
            model = Mlp()
            out = self.tmp / name
            export(model, DataLoader(classification_data(), batch_size=8, shuffle=True), out,
                   nn.CrossEntropyLoss(), cls(model.parameters(), lr=3e-4, weight_decay=0.01), format=AUDITED)
            setup = read_setup(out)["setup"]
            self.assertEqual((setup["optimizer"], setup["lr"], setup["weight_decay"]), (name, 3e-4, 0.01))
            self.assertNotIn("momentum", setup)  # trainlint's momentum is SGD's
        audit(self.tmp / "adamw")

    def test_param_groups_that_differ_take_the_largest_and_warn(self):
        model = Mlp()
        opt = torch.optim.SGD(
            [{"params": [model.fc1.weight, model.fc2.weight], "weight_decay": 1e-4},
             {"params": [model.fc1.bias, model.fc2.bias], "weight_decay": 0.0}],
            lr=0.02, momentum=0.9,
        )
        with self.assertWarnsRegex(ExportWarning, "param groups differ in weight_decay"):
            export(model, DataLoader(classification_data(), batch_size=8), self.tmp, optimizer=opt)
        self.assertEqual(read_setup(self.tmp)["setup"]["weight_decay"], 1e-4)

    def test_each_supported_loss_is_named_and_audits(self):
        n = 64
        g = torch.Generator().manual_seed(1)
        x = torch.randn(n, 8, generator=g)
        ints = torch.randint(0, 3, (n,), generator=g)
        binary = (torch.rand(n, 1, generator=g) > 0.5).float()
        reals = torch.randn(n, 2, generator=g)
        cases = [
            (nn.MSELoss(), Mlp(d_out=2), reals, "mse", "regression"),
            (nn.L1Loss(), Mlp(d_out=2), reals, "l1", "regression"),
            (nn.SmoothL1Loss(), Mlp(d_out=2), reals, "smooth_l1", "regression"),
            (nn.BCELoss(), Mlp(d_out=1, final=nn.Sigmoid()), binary, "bce", "regression"),
            (nn.BCEWithLogitsLoss(), Mlp(d_out=1), binary, "bce_with_logits", "regression"),
            (nn.CrossEntropyLoss(), Mlp(d_out=3), ints, "cross_entropy", "classification"),
            (nn.NLLLoss(), Mlp(d_out=3, final=nn.LogSoftmax(dim=1)), ints, "nll", "classification"),
        ]
        for loss_fn, model, y, name, task in cases:
            with self.subTest(loss=name):
                out = self.tmp / name
                opt = torch.optim.Adam(model.parameters(), lr=1e-3)
                export(model, DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True), out, loss_fn, opt,
                       format=AUDITED)
                setup = read_setup(out)["setup"]
                self.assertEqual((setup["loss"], setup["task"]), (name, task))
                code, report = audit(out)
                # A healthy setup with the loss that matches the head: no double activation.
                self.assertEqual(checks(report)["double-activation"]["status"], "passed", report)

    def test_functional_losses_and_names(self):
        loader = DataLoader(classification_data(), batch_size=8)
        for fn, name in ((F.cross_entropy, "cross_entropy"), (F.mse_loss, "mse"), ("nll", "nll")):
            out = self.tmp / name
            export(Mlp(), loader, out, fn)
            self.assertEqual(read_setup(out)["setup"]["loss"], name)

    def test_sum_reduction_warns(self):
        with self.assertWarnsRegex(ExportWarning, "reduction='sum'"):
            export(Mlp(), DataLoader(classification_data(), batch_size=8), self.tmp, nn.CrossEntropyLoss(reduction="sum"))
        self.assertEqual(read_setup(self.tmp)["setup"]["loss"], "cross_entropy")

    def test_image_to_image_task_and_a_sample_in_loader_order(self):
        g = torch.Generator().manual_seed(2)
        images = torch.rand(40, 1, 8, 8, generator=g)
        ds = TensorDataset(images, images.clone())
        model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 1, 3, padding=1))
        loader = DataLoader(ds, batch_size=6, shuffle=True, generator=torch.Generator().manual_seed(3))
        export(model, loader, self.tmp, nn.MSELoss(), torch.optim.Adam(model.parameters()), samples=20, format=AUDITED)
        data = np.load(self.tmp / "data.npz")
        self.assertEqual(data["inputs"].shape, (20, 1, 8, 8))
        self.assertEqual(data["inputs"].dtype, np.float32)
        # The loader's own generator was put back: iterating it now yields the same first samples.
        first = torch.cat([b[0] for _, b in zip(range(4), loader)])[:20]
        np.testing.assert_array_equal(data["inputs"], first.numpy())
        setup = read_setup(self.tmp)
        self.assertEqual(setup["setup"]["task"], "image-to-image")
        self.assertEqual(setup["data"]["max_samples"], 20)
        audit(self.tmp, "--select", "identity-overfit,output-range")


class Batches(Tmp):
    def test_dict_batches_with_default_and_named_keys(self):
        class Dicts(Dataset):
            def __init__(self, keys):
                self.keys, self.x, self.y = keys, torch.randn(32, 8), torch.randint(0, 3, (32,))

            def __len__(self):
                return 32

            def __getitem__(self, i):
                return {self.keys[0]: self.x[i], self.keys[1]: self.y[i], "id": i}

        export(Mlp(), DataLoader(Dicts(("image", "label")), batch_size=4), self.tmp / "a")
        data = np.load(self.tmp / "a" / "data.npz")
        self.assertEqual((data["inputs"].shape, data["targets"].dtype), ((32, 8), np.int64))
        with self.assertRaisesRegex(ExportError, r"keys \['img', 'cls', 'id'\].*inputs=\"key\""):
            export(Mlp(), DataLoader(Dicts(("img", "cls")), batch_size=4), self.tmp / "b")
        export(Mlp(), DataLoader(Dicts(("img", "cls")), batch_size=4), self.tmp / "b", inputs="img", targets="cls",
               format=AUDITED)
        self.assertEqual(read_setup(self.tmp / "b")["setup"]["task"], "classification")
        audit(self.tmp / "b", "--select", "output-range")

    def test_an_autoencoder_loader_names_its_targets(self):
        images = torch.rand(32, 1, 8, 8)
        model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 1, 3, padding=1))
        with self.assertRaisesRegex(ExportError, "inputs only.*targets=lambda batch: batch"):
            export(model, DataLoader(images, batch_size=8), self.tmp)
        export(model, DataLoader(images, batch_size=8), self.tmp, nn.MSELoss(), targets=lambda b: b, format=AUDITED)
        data = np.load(self.tmp / "data.npz")
        np.testing.assert_array_equal(data["inputs"], data["targets"])
        self.assertEqual(read_setup(self.tmp)["setup"]["task"], "image-to-image")
        audit(self.tmp, "--select", "identity-overfit")

    def test_tuple_batches_by_index_and_by_callable(self):
        x, y = torch.randn(24, 8), torch.randint(0, 3, (24,))
        ds = TensorDataset(torch.zeros(24), y, x)  # (weights, targets, inputs)
        export(Mlp(), DataLoader(ds, batch_size=8), self.tmp / "i", inputs=2, targets=1)
        np.testing.assert_array_equal(np.load(self.tmp / "i" / "data.npz")["inputs"], x.numpy())
        export(Mlp(), DataLoader(ds, batch_size=8), self.tmp / "c", inputs=lambda b: b[2], targets=lambda b: b[1])
        np.testing.assert_array_equal(np.load(self.tmp / "c" / "data.npz")["targets"], y.numpy())


class Export(Tmp):
    def test_scriptable_model_is_scripted_in_train_mode_and_left_unchanged(self):
        model = Mlp(bn=True).eval()
        before = {k: v.clone() for k, v in model.state_dict().items()}
        rng = torch.random.get_rng_state()
        audit_dir = export(model, DataLoader(classification_data(), batch_size=8, shuffle=True), self.tmp,
                           format="torchscript")
        self.assertEqual(audit_dir.exported_with, "script")
        self.assertFalse(model.training)  # the user's module keeps its mode
        for k, v in model.state_dict().items():
            self.assertTrue(torch.equal(v, before[k]), k)
        self.assertTrue(torch.equal(rng, torch.random.get_rng_state()))
        loaded = torch.jit.load(str(self.tmp / "model.pt"))
        self.assertTrue(loaded.training and loaded.bn.training)

    def test_unscriptable_model_is_traced_in_train_mode_with_a_warning(self):
        class Unscriptable(nn.Module):
            def __init__(self):
                super().__init__()
                self.fc = nn.Linear(8, 3)
                self.bn = nn.BatchNorm1d(3)

            def forward(self, x):
                kwargs = {**{"input": x}}  # dict unpacking: TorchScript cannot compile it
                return self.bn(self.fc(kwargs["input"]))

        model = Unscriptable()
        running = model.bn.running_mean.clone()
        with self.assertWarnsRegex(ExportWarning, "torch.jit.trace in train mode.*frozen") as w:
            result = export(model, DataLoader(classification_data(), batch_size=8), self.tmp, nn.CrossEntropyLoss(),
                            format="torchscript")
        # The reason is the error's first line without the ':' that introduced TorchScript's excerpt.
        self.assertIn("(Dict expansion (e.g. `{**dict}`) is not supported); exported", str(w.warning))
        self.assertEqual(result.exported_with, "trace")
        self.assertTrue(torch.equal(model.bn.running_mean, running))  # traced a copy
        loaded = torch.jit.load(str(self.tmp / "model.pt"))
        self.assertIn("batch_norm", loaded.bn.code)
        # batch_norm was recorded with training=True: the audit sees the stats move.
        code, report = audit(self.tmp, "--select", "stale-batchnorm,overfit-batch")
        self.assertNotIn("stale-batchnorm/will-not-update", kinds(report))

    def test_torchscript_deprecation_is_not_shown_to_the_user(self):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            export(Mlp(), DataLoader(classification_data(), batch_size=8), self.tmp, format="torchscript")
        shown = [str(w.message) for w in caught if "deprecated" in str(w.message)]
        self.assertEqual(shown, [])
        # From 2.9 on it is logged instead, for whoever wants to know (logging's INFO level).
        if tuple(int(p) for p in torch.__version__.split("+")[0].split(".")[:2]) >= (2, 9):
            with self.assertLogs("trainlint_export", level="INFO") as logged:
                export(Mlp(), DataLoader(classification_data(), batch_size=8), self.tmp, format="torchscript")
            self.assertRegex("\n".join(logged.output), "torch.jit.script. is deprecated")

    def test_refusals_are_clear(self):
        loader = DataLoader(classification_data(), batch_size=8)
        cases = [
            (dict(model=torch.jit.script(Mlp())), "already TorchScript"),
            (dict(loss_fn=nn.KLDivLoss()), "KLDivLoss, which trainlint cannot model.*loss_fn=\"mse\""),
            (dict(loss_fn="hinge"), "not a loss trainlint knows"),
            (dict(optimizer=torch.optim.RMSprop(Mlp().parameters())), "RMSprop is not one trainlint can probe"),
            (dict(samples=0), "samples must be an integer >= 1"),
            (dict(targets=5), "only 2 entries"),
        ]
        for kwargs, message in cases:
            with self.subTest(message=message):
                args = dict(model=Mlp(), loader=loader, out_dir=self.tmp / "refused")
                args.update(kwargs)
                with self.assertRaisesRegex(ExportError, message):
                    export(**args)
                self.assertFalse((self.tmp / "refused" / "trainlint.toml").exists())

    def test_iterable_dataset_needs_the_shuffle_flag(self):
        class Stream(IterableDataset):
            def __iter__(self):
                for i in range(20):
                    yield torch.randn(8), i % 3

        with self.assertRaisesRegex(ExportError, "IterableDataset.*shuffle=True/False"):
            export(Mlp(), DataLoader(Stream(), batch_size=4), self.tmp)
        export(Mlp(), DataLoader(Stream(), batch_size=4), self.tmp, shuffle=False, samples=12)
        self.assertEqual(np.load(self.tmp / "data.npz")["inputs"].shape, (12, 8))

    def test_ragged_batches_and_several_inputs_are_refused(self):
        seqs = [torch.randn(4 + i % 3, 8) for i in range(12)]

        class Ragged(Dataset):
            def __len__(self):
                return 12

            def __getitem__(self, i):
                return seqs[i], 0

        loader = DataLoader(Ragged(), batch_size=1)
        with self.assertRaisesRegex(ExportError, "change shape between batches.*pad"):
            export(nn.Linear(8, 3), loader, self.tmp)
        pairs = DataLoader(TensorDataset(torch.randn(8, 8), torch.randn(8, 8), torch.zeros(8)), batch_size=4)
        with self.assertRaisesRegex(ExportError, "one input tensor.*wrapper"):
            export(Mlp(), pairs, self.tmp, inputs=lambda b: (b[0], b[1]), targets=2)


class LossLog(Tmp):
    def test_the_three_lines_of_the_readme(self):
        # The README's example, verbatim in spirit: export before training, log in the loop.
        torch.manual_seed(0)
        g = torch.Generator().manual_seed(0)
        x = torch.randn(256, 8, generator=g)
        y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
        loader = DataLoader(TensorDataset(x, y), batch_size=32, shuffle=True)
        model = Mlp()
        loss_fn = nn.CrossEntropyLoss()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)

        audit_dir = export(model, loader, self.tmp, loss_fn=loss_fn, optimizer=optimizer, format=AUDITED)
        step = 0
        for epoch in range(4):
            for xb, yb in loader:
                optimizer.zero_grad()
                loss = loss_fn(model(xb), yb)
                loss.backward()
                optimizer.step()
                audit_dir.log_step(step, loss, ce=loss, l2=1e-3 * sum(p.pow(2).sum() for p in model.parameters()))
                step += 1

        config = read_setup(self.tmp)
        self.assertEqual(config["log"], {"path": "loss.csv"})
        with open(self.tmp / "loss.csv") as f:
            rows = list(csv.DictReader(f))
        self.assertEqual(len(rows), 32)
        self.assertEqual(list(rows[0]), ["step", "loss", "loss_ce", "loss_l2"])
        self.assertLess(float(rows[-1]["loss"]), float(rows[0]["loss"]))
        code, report = audit(self.tmp)
        found = checks(report)
        self.assertEqual(found["loss-scale"]["status"], "findings")  # ce ~0.5 against l2 ~0.01
        self.assertIn(found["loss-oscillation"]["status"], ("passed", "findings"))
        self.assertEqual(found["sequential-data"]["status"], "passed")

    def test_steps_must_increase_and_new_terms_widen_the_header(self):
        a = export(Mlp(), DataLoader(classification_data(), batch_size=8), self.tmp)
        self.assertFalse((self.tmp / "loss.csv").exists())
        self.assertNotIn("log", read_setup(self.tmp))
        a.log_step(0, 1.0)
        a.log_step(1, torch.tensor(0.9), pixel=0.5)
        # Nothing raises into the training loop: a repeated step is logged after the last one, a value
        # that is not one number is left out; each is warned about once.
        with self.assertWarnsRegex(ExportWarning, "step 1 does not follow step 1; logged as step 2.*global step"):
            a.log_step(1, 0.8)
        with self.assertWarnsRegex(ExportWarning, "one number per step.*lost_steps"):
            a.log_step(3, torch.ones(3))
        self.assertEqual(a.lost_steps, {"value": 1})
        with open(self.tmp / "loss.csv") as f:
            self.assertEqual(f.read().splitlines(),
                             ["step,loss,loss_pixel", "0,1.0,", "1,0.8999999761581421,0.5", "2,0.8,"])


class Package(unittest.TestCase):
    def test_pip_installs_it_with_torch_and_numpy_only(self):
        root = Path(__file__).resolve().parents[1]
        with tempfile.TemporaryDirectory() as tmp:
            # A copy, so that the build's by-products (build/, *.egg-info) stay out of the checkout.
            source = Path(tmp) / "python"
            shutil.copytree(root, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
            target = str(Path(tmp) / "site")
            subprocess.run(
                # As the README says (pip install ./python): an isolated build, which fetches setuptools.
                [os.sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", target, str(source)],
                check=True, capture_output=True, timeout=600,
            )
            dist = next(Path(target).glob("trainlint_export-*.dist-info"))
            meta = (dist / "METADATA").read_text()
            required = [line.split(":", 1)[1].strip() for line in meta.splitlines()
                        if line.startswith("Requires-Dist:") and "extra ==" not in line]
            self.assertEqual(sorted(r.split(">")[0].split("=")[0] for r in required), ["numpy", "torch"])
            p = subprocess.run(
                [os.sys.executable, "-c", "import trainlint_export, sys; print(trainlint_export.__file__)"],
                env={**os.environ, "PYTHONPATH": target}, capture_output=True, text=True, check=True,
            )
            self.assertTrue(p.stdout.startswith(target))



def installed(module: str) -> bool:
    try:
        __import__(module)
        return True
    except ImportError:
        return False


REQUIRE = os.environ.get("TRAINLINT_REQUIRE_INTEGRATIONS") == "1"


@unittest.skipUnless(REQUIRE or installed("pytorch_lightning") or installed("lightning"), "Lightning not installed")
class LightningCallback(Tmp):
    def test_exports_at_train_start_and_logs_every_step(self):
        try:
            import lightning.pytorch as pl
        except ImportError:
            import pytorch_lightning as pl
        from trainlint_export.lightning import TrainlintCallback

        class Module(pl.LightningModule):
            def __init__(self):
                super().__init__()
                self.net = Mlp()
                self.loss_fn = nn.CrossEntropyLoss()

            def forward(self, x):
                return self.net(x)

            def training_step(self, batch, batch_idx):
                x, y = batch
                return self.loss_fn(self(x), y)

            def configure_optimizers(self):
                return torch.optim.SGD(self.parameters(), lr=0.03, momentum=0.5, weight_decay=1e-3)

        callback = TrainlintCallback(self.tmp, samples=64, format=AUDITED)
        trainer = pl.Trainer(max_steps=10, accelerator="cpu", logger=False, enable_checkpointing=False,
                             enable_progress_bar=False, enable_model_summary=False, callbacks=[callback])
        trainer.fit(Module(), DataLoader(classification_data(), batch_size=8, shuffle=True))
        setup = read_setup(self.tmp)["setup"]
        self.assertEqual(
            {k: setup[k] for k in ("optimizer", "lr", "momentum", "weight_decay", "batch_size", "shuffle", "loss")},
            {"optimizer": "sgd", "lr": 0.03, "momentum": 0.5, "weight_decay": 1e-3, "batch_size": 8,
             "shuffle": True, "loss": "cross_entropy"},
        )
        with open(self.tmp / "loss.csv") as f:
            steps = [int(r["step"]) for r in csv.DictReader(f)]
        self.assertEqual(steps, list(range(1, 11)))
        self.assertEqual(np.load(self.tmp / "data.npz")["inputs"].shape, (64, 8))
        audit(self.tmp, "--select", "overfit-batch,loss-oscillation")


@unittest.skipUnless(REQUIRE or installed("transformers"), "transformers not installed")
class HuggingFaceCallback(Tmp):
    def test_exports_at_train_begin_and_logs_the_trainer_loss(self):
        from transformers import Trainer, TrainingArguments

        from trainlint_export.huggingface import TrainlintCallback

        class Classifier(nn.Module):
            """A model in transformers' style: dict in, a dict with the loss out when labels are given."""

            def __init__(self):
                super().__init__()
                self.net = Mlp()

            def forward(self, pixel_values, labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
                logits = self.net(pixel_values)
                if labels is None:
                    return {"logits": logits}
                return {"loss": F.cross_entropy(logits, labels), "logits": logits}

        class Examples(Dataset):
            def __init__(self):
                self.ds = classification_data(n=64)

            def __len__(self):
                return len(self.ds)

            def __getitem__(self, i):
                x, y = self.ds[i]
                return {"pixel_values": x, "labels": y}

        args = TrainingArguments(output_dir=str(self.tmp / "hf"), max_steps=6, per_device_train_batch_size=8,
                                 learning_rate=2e-3, weight_decay=0.01, logging_steps=1, report_to=[],
                                 save_strategy="no", use_cpu=True, disable_tqdm=True)
        callback = TrainlintCallback(self.tmp / "audit", loss_fn=nn.CrossEntropyLoss(), output="logits", format=AUDITED)
        Trainer(model=Classifier(), args=args, train_dataset=Examples(), callbacks=[callback]).train()
        config = read_setup(self.tmp / "audit")
        setup = config["setup"]
        # The callback exports a wrapper whose forward returns the selected output, a tensor.
        self.assertNotIn("output", config["model"])
        self.assertIn("Classifier called as model(pixel_values=inputs), its output 'logits'",
                      (self.tmp / "audit" / "trainlint.toml").read_text())
        self.assertEqual((setup["optimizer"], setup["lr"], setup["batch_size"], setup["shuffle"], setup["task"]),
                         ("adamw", 2e-3, 8, True, "classification"))
        self.assertEqual(setup["weight_decay"], 0.01)
        with open(self.tmp / "audit" / "loss.csv") as f:
            self.assertEqual([int(r["step"]) for r in csv.DictReader(f)], list(range(1, 7)))
        audit(self.tmp / "audit", "--select", "output-range,double-activation,overfit-batch")


if __name__ == "__main__":
    unittest.main()
