"""Issue 22: the exporter inside real training scripts. It must never break the user's run and must
read the setup that really trains (warmup schedules, the path training_step trains, bf16, eval mode,
persistent workers). Each test is a script shape users write: a real model, DataLoader, optimizer,
scheduler, and Lightning / Hugging Face where named."""
from __future__ import annotations

import csv
import errno
import math
import os
import stat
import tomllib
import unittest
import warnings
from pathlib import Path
from unittest import mock

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from test_export import AUDITED, REQUIRE, Mlp, Tmp, audit, checks, classification_data, installed, read_setup
from trainlint_export import ExportError, ExportWarning, export


def config_text(folder) -> str:
    return (Path(folder) / "trainlint.toml").read_text()


def log_rows(path) -> list:
    with open(path) as f:
        return list(csv.DictReader(f))


class MaskedClassifier(nn.Module):
    """forward(self, x, mask=None): scripting compiles it, but saving fails ("strides() called on an
    undefined Tensor") since the unannotated default is read as a Tensor."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(8, 32)
        self.fc2 = nn.Linear(32, 3)

    def forward(self, x, mask=None):
        h = torch.relu(self.fc1(x))
        if mask is not None:
            h = h * mask
        return self.fc2(h)


class NeverExports(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        kwargs = {**{"input": x}}  # not scriptable
        raise RuntimeError(f"this forward only runs inside the training framework, not on {kwargs}")


class ScriptOrSaveFailsFallsBackToTrace(Tmp):
    def test_an_unannotated_optional_argument_is_traced_and_audits(self):
        model = MaskedClassifier()
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        with self.assertWarnsRegex(ExportWarning, "torch.jit.trace in train mode") as w:
            result = export(model, DataLoader(classification_data(), batch_size=8, shuffle=True), self.tmp / "audit",
                            nn.CrossEntropyLoss(), opt, format="torchscript")
        self.assertEqual(result.exported_with, "trace")
        # Item 13: the reason is the error's first line, without the ':' that introduced its excerpt.
        self.assertNotRegex(str(w.warning), r":\)")
        self.assertEqual(sorted(os.listdir(self.tmp / "audit")), ["data.npz", "model.pt", "trainlint.toml"])
        self.assertIn("# traced, not scripted", config_text(self.tmp / "audit"))
        audit(self.tmp / "audit", "--select", "double-activation,output-range")

    def test_a_failed_export_leaves_no_folder_behind(self):
        target = self.tmp / "runs" / "today" / "audit"
        with self.assertRaisesRegex(ExportError, "torch.jit.script failed.*torch.jit.trace failed"):
            export(NeverExports(), DataLoader(classification_data(), batch_size=8), target)
        self.assertEqual(os.listdir(self.tmp), [])  # neither the folder, its parents, nor a staging folder

        # Into a folder that exists (a second run): the old files stay as they were, nothing is added.
        export(Mlp(), DataLoader(classification_data(), batch_size=8), target)
        before = {p.name: p.read_bytes() for p in target.iterdir()}
        with self.assertRaises(ExportError):
            export(NeverExports(), DataLoader(classification_data(), batch_size=8), target)
        self.assertEqual({p.name: p.read_bytes() for p in target.iterdir()}, before)
        self.assertEqual(os.listdir(target.parent), ["audit"])

    def test_an_unwritable_folder_is_an_export_error(self):
        (self.tmp / "file").write_text("")
        with self.assertRaisesRegex(ExportError, "cannot write the audit folder .*file/audit"):
            export(Mlp(), DataLoader(classification_data(), batch_size=8), self.tmp / "file" / "audit")
        self.assertEqual(os.listdir(self.tmp), ["file"])
        with mock.patch("numpy.savez", side_effect=OSError(errno.ENOSPC, "No space left on device")):
            with self.assertRaisesRegex(ExportError, "cannot write the audit folder .*No space left"):
                export(Mlp(), DataLoader(classification_data(), batch_size=8), self.tmp / "full" / "audit")
        self.assertEqual(os.listdir(self.tmp), ["file"])

    def test_a_failing_save_of_the_trace_too_leaves_nothing(self):
        full = OSError(errno.ENOSPC, "No space left on device")
        with mock.patch.object(torch.jit.ScriptModule, "save", side_effect=full), \
                mock.patch.object(torch.jit.RecursiveScriptModule, "save", side_effect=full):
            with self.assertRaisesRegex(ExportError, r"script failed \(.*No space left.*trace failed \(.*No space left"):
                export(Mlp(), DataLoader(classification_data(), batch_size=8), self.tmp / "audit", format="torchscript")
        self.assertEqual(os.listdir(self.tmp), [])


class WarmupSchedules(Tmp):
    def loader(self):
        return DataLoader(classification_data(), batch_size=8, shuffle=True)

    def test_a_warmup_from_zero_records_the_peak_lr(self):
        model = Mlp()
        opt = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.01)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, s / 100))
        self.assertEqual(opt.param_groups[0]["lr"], 0.0)
        export(model, self.loader(), self.tmp, nn.CrossEntropyLoss(), opt, format=AUDITED)
        self.assertEqual(read_setup(self.tmp)["setup"]["lr"], 3e-4)
        self.assertRegex(config_text(self.tmp), r"# lr = 0.0003: the peak of the lr schedule.*initial_lr.*was 0")
        audit(self.tmp, "--select", "output-range")
        self.assertEqual(opt.param_groups[0]["lr"], 0.0)  # the schedule itself is untouched
        del sched

    def test_a_linear_warmup_that_starts_low_records_the_peak_not_the_start(self):
        model = Mlp()
        opt = torch.optim.SGD(model.parameters(), lr=5.0, momentum=0.9)
        torch.optim.lr_scheduler.LinearLR(opt, start_factor=0.01, total_iters=50)
        export(model, self.loader(), self.tmp, nn.CrossEntropyLoss(), opt)
        setup = read_setup(self.tmp)["setup"]
        self.assertEqual(setup["lr"], 5.0)
        self.assertIn("At export the optimizer's lr was 0.05", config_text(self.tmp))

    def test_one_cycle_records_max_lr(self):
        model = Mlp()
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.4, total_steps=100)
        export(model, self.loader(), self.tmp, optimizer=opt)
        self.assertEqual(read_setup(self.tmp)["setup"]["lr"], 0.4)
        self.assertIn("OneCycleLR's max_lr", config_text(self.tmp))

    def test_cyclic_lr_records_its_max_lr_when_the_scheduler_is_given(self):
        model = Mlp()
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        sched = torch.optim.lr_scheduler.CyclicLR(opt, base_lr=0.01, max_lr=0.3, step_size_up=20)
        export(model, self.loader(), self.tmp, optimizer=opt, scheduler=sched)
        self.assertEqual(read_setup(self.tmp)["setup"]["lr"], 0.3)
        self.assertIn("CyclicLR's max_lr", config_text(self.tmp))

    def test_a_lambda_that_peaks_above_its_base_with_the_scheduler_and_run_length(self):
        model = Mlp()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(s / 10, 2.0) if s < 30 else 0.5)
        export(model, self.loader(), self.tmp, optimizer=opt, scheduler=sched, total_steps=40)
        self.assertEqual(read_setup(self.tmp)["setup"]["lr"], 0.2)
        self.assertIn("the largest lr of the LambdaLR over 40 steps", config_text(self.tmp))

    def test_a_constant_lr_has_no_note(self):
        model = Mlp()
        export(model, self.loader(), self.tmp, optimizer=torch.optim.SGD(model.parameters(), lr=0.2))
        self.assertNotIn("# lr", config_text(self.tmp))


class ReadmeLoops(Tmp):
    def test_the_python_readme_loop_over_several_epochs(self):
        # python/README.md's loop, with `step` from enumerate(loader) restarting every epoch.
        loader = DataLoader(classification_data(), batch_size=16, shuffle=True)
        model = Mlp()
        loss_fn = nn.CrossEntropyLoss()
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        audit_dir = export(model, loader, self.tmp / "audit", loss_fn=loss_fn, optimizer=opt,
                           log=self.tmp / "logs" / "train_loss.csv", format=AUDITED)
        with self.assertWarnsRegex(ExportWarning, "step 0 does not follow step 5; logged as step 6"):
            for epoch in range(3):
                for step, (x, y) in enumerate(loader):
                    opt.zero_grad()
                    loss = loss_fn(model(x), y)
                    loss.backward()
                    opt.step()
                    audit_dir.log_step(step, loss)
        rows = log_rows(self.tmp / "logs" / "train_loss.csv")
        self.assertEqual([int(r["step"]) for r in rows], list(range(18)))
        self.assertEqual(audit_dir.lost_steps, {})
        self.assertEqual(read_setup(self.tmp / "audit")["log"]["path"], "../logs/train_loss.csv")
        audit(self.tmp / "audit", "--select", "loss-oscillation")


class FailingDisk:
    """open() that raises ENOSPC for one path and works for the others."""

    def __init__(self, path):
        self.path = str(path)
        self.real = open

    def __call__(self, file, *args, **kwargs):
        if str(file).startswith(self.path):
            raise OSError(errno.ENOSPC, "No space left on device", str(file))
        return self.real(file, *args, **kwargs)


class TrainingNeverBreaks(Tmp):
    """The README's promise: after export() returns, nothing it gave the training loop raises into it."""

    def train(self, audit_dir, losses):
        model = Mlp()
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        finished = 0
        for step, extra in enumerate(losses):
            x, y = classification_data(n=8, seed=step)[:]
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            opt.zero_grad()
            audit_dir.log_step(step, loss if extra is ... else extra)
            finished += 1
        return finished

    def test_injected_failures_do_not_stop_the_training_loop(self):
        loader = DataLoader(classification_data(), batch_size=8)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            # Odd loss values: each skipped (warned once per kind), the rest recorded.
            a = export(Mlp(), loader, self.tmp / "values")
            grad = torch.tensor(0.5, requires_grad=True) * 2
            odd = [..., None, grad, float("nan"), "0.3", torch.ones(3), ...]
            self.assertEqual(self.train(a, odd), len(odd))
            rows = log_rows(self.tmp / "values" / "loss.csv")
            self.assertEqual(len(rows), 4)
            self.assertEqual(rows[1]["loss"], "1.0")
            self.assertTrue(math.isnan(float(rows[2]["loss"])))
            self.assertEqual(a.lost_steps, {"value": 3})

            # The disk fills up once training runs.
            b = export(Mlp(), loader, self.tmp / "full")
            with mock.patch("builtins.open", FailingDisk(self.tmp / "full")):
                self.assertEqual(self.train(b, [...] * 5), 5)
            self.assertEqual(b.lost_steps, {"OSError": 5})

            # A log folder that cannot be made (a file is in its way), and log=False then log_step.
            (self.tmp / "blocker").write_text("")
            c = export(Mlp(), loader, self.tmp / "blocked", log=self.tmp / "blocker" / "logs" / "loss.csv")
            self.assertEqual(self.train(c, [...] * 3), 3)
            d = export(Mlp(), loader, self.tmp / "nolog", log=False)
            self.assertEqual(self.train(d, [...] * 2), 2)
        messages = [str(w.message) for w in caught if issubclass(w.category, ExportWarning)]
        self.assertEqual(len([m for m in messages if "not a number" in m or "values; log one" in m]), 1)
        self.assertEqual(len([m for m in messages if "No space left" in m]), 1)
        self.assertEqual(len([m for m in messages if "log=False" in m]), 1)
        self.assertTrue(any("blocker" in m for m in messages), messages)
        self.assertNotIn("log", read_setup(self.tmp / "blocked"))


class ModelsAsTheyTrain(Tmp):
    def test_a_bf16_model_is_exported_as_a_float32_copy(self):
        model = Mlp().to(torch.bfloat16)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        export(model, DataLoader(classification_data(), batch_size=8), self.tmp, nn.CrossEntropyLoss(), opt,
               format="torchscript")
        self.assertEqual(model.fc1.weight.dtype, torch.bfloat16)  # the user's model is untouched
        loaded = torch.jit.load(str(self.tmp / "model.pt"))
        self.assertEqual(loaded.fc1.weight.dtype, torch.float32)
        self.assertIn("float32 copy: the model trains in bfloat16", config_text(self.tmp))
        audit(self.tmp, "--select", "double-activation,output-range")

    def test_a_model_left_in_eval_mode_warns_and_stays_in_eval_mode(self):
        model = Mlp(bn=True).eval()
        with self.assertWarnsRegex(ExportWarning, "Mlp is in eval mode.*call model.train"):
            export(model, DataLoader(classification_data(), batch_size=8), self.tmp)
        self.assertFalse(model.training or model.bn.training)
        self.assertIn("was in eval mode at export", config_text(self.tmp))
        with warnings.catch_warnings():
            warnings.simplefilter("error", ExportWarning)
            export(Mlp(bn=True), DataLoader(classification_data(), batch_size=8), self.tmp / "train")
        self.assertNotIn("was in eval mode", config_text(self.tmp / "train"))

    def test_the_output_check_accepts_batchnorm_with_batches_of_one(self):
        # The check runs the saved model; BatchNorm in train mode refuses one sample, eval mode does not.
        # torch.export is given two samples (it would make a batch dim of 1 a constant).
        model = nn.Sequential(nn.Linear(8, 4), nn.BatchNorm1d(4), nn.Linear(4, 3))
        loader = DataLoader(classification_data(), batch_size=1)
        self.assertEqual(export(model, loader, self.tmp / "ts", format="torchscript").exported_with, "script")
        self.assertEqual(export(model, loader, self.tmp / "pt2").exported_with, "export")

    def test_output_is_checked_against_what_forward_returns(self):
        class Pair(nn.Module):
            def __init__(self):
                super().__init__()
                self.fc = nn.Linear(8, 3)

            def forward(self, x):
                return (self.fc(x),)

        class Named(Pair):
            def forward(self, x):
                return {"logits": self.fc(x)}

        loader = DataLoader(classification_data(), batch_size=8)
        with self.assertRaisesRegex(ExportError, r"output='logits': forward returns a tuple of 1.*index \(0 to 0\)"):
            export(Pair(), loader, self.tmp / "a", output="logits")
        self.assertFalse((self.tmp / "a").exists())
        export(Pair(), loader, self.tmp / "a", output=0)
        with self.assertRaisesRegex(ExportError, r"output='scores': forward returns a dict.*\['logits'\]"):
            export(Named(), loader, self.tmp / "b", output="scores")
        export(Named(), loader, self.tmp / "b", output="logits")
        # A forward that returns a tuple or dict is TorchScript (a .pt2 that trainlint runs returns one tensor).
        self.assertEqual(read_setup(self.tmp / "b")["model"], {"path": "model.pt", "output": "logits"})
        audit(self.tmp / "a", "--select", "output-range")
        audit(self.tmp / "b", "--select", "output-range")


class Augmented(Dataset):
    """A dataset with random augmentation, read by worker processes (module level: workers import it)."""

    def __init__(self):
        self.x = torch.randn(48, 8, generator=torch.Generator().manual_seed(0))

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i] + 0.1 * torch.randn(8), i % 3


class Stream(torch.utils.data.IterableDataset):
    def __iter__(self):
        g = torch.Generator().manual_seed(1)
        for i in range(40):
            yield torch.randn(8, generator=g), i % 3


class LoaderStateLeftAlone(Tmp):
    def test_a_stream_read_by_persistent_workers_is_left_without_an_iterator(self):
        loader = DataLoader(Stream(), batch_size=8, num_workers=1, persistent_workers=True)
        export(Mlp(), loader, self.tmp, shuffle=False, samples=16)
        self.assertIsNone(loader._iterator)
        self.assertEqual(sum(len(x) for x, _ in loader), 40)

    def epochs(self, loader, n=2):
        return [torch.cat([x for x, _ in loader]) for _ in range(n)]

    def test_persistent_workers_see_the_training_they_would_have_seen(self):
        def make():
            torch.manual_seed(7)
            return DataLoader(Augmented(), batch_size=8, shuffle=True, num_workers=1, persistent_workers=True)

        model = Mlp()
        plain = make()
        expected = self.epochs(plain)
        del plain
        loader = make()
        export(model, loader, self.tmp, samples=16)
        kept = loader._iterator  # no worker started or kept by the export
        got = self.epochs(loader)
        for e, g in zip(expected, got):
            torch.testing.assert_close(g, e)
        self.assertIsNone(kept)
        del loader


class Cosmetics(Tmp):
    def test_file_modes_and_short_floats(self):
        model = Mlp()
        opt = torch.optim.SGD(model.parameters(), lr=0.1 + 0.1 + 1.7e-16, momentum=0.9)
        opt.param_groups[0]["lr"] = 0.20000000000000018
        old = os.umask(0o022)
        try:
            export(model, DataLoader(classification_data(), batch_size=8), self.tmp / "audit", optimizer=opt)
        finally:
            os.umask(old)
        for name in ("model.pt2", "data.npz", "trainlint.toml"):
            self.assertEqual(stat.S_IMODE(os.stat(self.tmp / "audit" / name).st_mode), 0o644, name)
        self.assertEqual(stat.S_IMODE(os.stat(self.tmp / "audit").st_mode), 0o755)
        self.assertIn("\nlr = 0.2\n", config_text(self.tmp / "audit"))
        with open(self.tmp / "audit" / "trainlint.toml", "rb") as f:
            self.assertEqual(tomllib.load(f)["setup"]["lr"], 0.2)


def lightning():
    try:
        import lightning.pytorch as pl
    except ImportError:
        import pytorch_lightning as pl
    return pl


def fit(pl, module, callback, loader, steps=6):
    trainer = pl.Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=[callback])
    trainer.fit(module, loader)
    return trainer


@unittest.skipUnless(REQUIRE or installed("pytorch_lightning") or installed("lightning"), "Lightning not installed")
class LightningScripts(Tmp):
    def test_a_warmup_scheduler_records_the_peak(self):
        pl = lightning()
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
                opt = torch.optim.AdamW(self.parameters(), lr=1e-3)
                warmup = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, s / 4))
                return {"optimizer": opt, "lr_scheduler": {"scheduler": warmup, "interval": "step"}}

        callback = TrainlintCallback(self.tmp, samples=32)
        fit(pl, Module(), callback, DataLoader(classification_data(), batch_size=8, shuffle=True))
        self.assertIsNone(callback.error)
        self.assertEqual(read_setup(self.tmp)["setup"]["lr"], 1e-3)
        self.assertEqual(len(log_rows(self.tmp / "loss.csv")), 6)

    def test_the_quickstart_autoencoder_without_forward_trains_on(self):
        pl = lightning()
        from trainlint_export.lightning import TrainlintCallback

        class LitAutoEncoder(pl.LightningModule):  # Lightning's README quickstart
            def __init__(self):
                super().__init__()
                self.encoder = nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 2))
                self.decoder = nn.Sequential(nn.Linear(2, 4), nn.ReLU(), nn.Linear(4, 8))

            def training_step(self, batch, batch_idx):
                x, _ = batch
                z = self.encoder(x)
                x_hat = self.decoder(z)
                return F.mse_loss(x_hat, x)

            def configure_optimizers(self):
                return torch.optim.Adam(self.parameters(), lr=1e-3)

        callback = TrainlintCallback(self.tmp / "audit")
        module = LitAutoEncoder()
        with self.assertWarnsRegex(ExportWarning, "no audit folder was written.*several modules.*model=lambda"):
            trainer = fit(pl, module, callback, DataLoader(classification_data(), batch_size=8))
        self.assertEqual(trainer.global_step, 6)
        self.assertFalse((self.tmp / "audit").exists())

        # Named, it exports.
        callback = TrainlintCallback(self.tmp / "named", model=lambda m: nn.Sequential(m.encoder, m.decoder),
                                     targets=lambda b: b[0])
        fit(pl, LitAutoEncoder(), callback, DataLoader(classification_data(), batch_size=8))
        self.assertIsNone(callback.error)
        self.assertIn("the module passed as model=", config_text(self.tmp / "named"))
        self.assertEqual(read_setup(self.tmp / "named")["setup"]["task"], "image-to-image")

    def test_a_forward_training_step_may_bypass_is_exported_with_a_warning_and_a_note(self):
        pl = lightning()
        from trainlint_export.lightning import TrainlintCallback

        class TwoStage(pl.LightningModule):
            def __init__(self):
                super().__init__()
                self.backbone = nn.Sequential(nn.Linear(8, 16), nn.ReLU())
                self.head = nn.Linear(16, 3)

            def forward(self, x):
                return self.head(self.backbone(x))

            def training_step(self, batch, batch_idx):
                x, y = batch
                return F.cross_entropy(self.head(self.backbone(x)), y)

            def configure_optimizers(self):
                return torch.optim.SGD(self.parameters(), lr=0.05)

        callback = TrainlintCallback(self.tmp)
        with self.assertWarnsRegex(ExportWarning, "exported TwoStage.forward, which may not be what trains.*several modules .self.head, self.backbone."):
            fit(pl, TwoStage(), callback, DataLoader(classification_data(), batch_size=8))
        self.assertRegex(config_text(self.tmp), r"# exported: TwoStage.forward, which may not be what trains")

    def test_the_training_path_is_audited_not_the_inference_forward(self):
        pl = lightning()
        from trainlint_export.lightning import TrainlintCallback

        class Module(pl.LightningModule):
            def __init__(self):
                super().__init__()
                self.net = Mlp()
                self.loss_fn = nn.CrossEntropyLoss()

            def forward(self, x):  # for inference: probabilities
                return torch.softmax(self.net(x), dim=1)

            def training_step(self, batch, batch_idx):
                x, y = batch
                logits = self.net(x)
                return self.loss_fn(logits, y)

            def configure_optimizers(self):
                return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)

        callback = TrainlintCallback(self.tmp, format=AUDITED)
        fit(pl, Module(), callback, DataLoader(classification_data(), batch_size=8, shuffle=True))
        code, report = audit(self.tmp, "--select", "double-activation")
        self.assertEqual(checks(report)["double-activation"]["status"], "passed", report)
        self.assertIn("self.net, the module Module.training_step calls", config_text(self.tmp))


@unittest.skipUnless(REQUIRE or installed("transformers"), "transformers not installed")
class HuggingFaceScripts(Tmp):
    def tiny_bert(self):
        from transformers import BertConfig, BertForSequenceClassification

        torch.manual_seed(0)
        config = BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                            intermediate_size=32, max_position_embeddings=32, num_labels=3)
        return BertForSequenceClassification(config)

    def dataset(self):
        g = torch.Generator().manual_seed(0)
        ids = torch.randint(1, 64, (48, 12), generator=g)
        labels = torch.randint(0, 3, (48,), generator=g)

        class Tokens(Dataset):
            def __len__(self):
                return len(ids)

            def __getitem__(self, i):
                return {"input_ids": ids[i], "labels": labels[i]}

        return Tokens()

    def args(self, **kw):
        from transformers import TrainingArguments

        return TrainingArguments(output_dir=str(self.tmp / "hf"), max_steps=4, per_device_train_batch_size=8,
                                 learning_rate=5e-4, logging_steps=1, report_to=[], save_strategy="no",
                                 use_cpu=True, disable_tqdm=True, **kw)

    def test_a_transformers_5_model_from_a_config_exports_its_logits(self):
        from transformers import Trainer

        from trainlint_export.huggingface import TrainlintCallback

        model = self.tiny_bert()
        callback = TrainlintCallback(self.tmp / "audit", loss_fn=nn.CrossEntropyLoss(), format="torchscript")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            Trainer(model=model, args=self.args(warmup_steps=2), train_dataset=self.dataset(),
                    callbacks=[callback]).train()
        self.assertIsNone(callback.error)
        config = read_setup(self.tmp / "audit")
        self.assertNotIn("output", config["model"])  # the wrapper returns the logits tensor
        self.assertEqual((config["setup"]["lr"], config["setup"]["task"]), (5e-4, "classification"))
        text = config_text(self.tmp / "audit")
        self.assertIn("BertForSequenceClassification called as model(input_ids=inputs)", text)
        self.assertIn("# lr = 0.0005: the peak", text)
        loaded = torch.jit.load(str(self.tmp / "audit" / "model.pt"))
        ids = torch.from_numpy(np.load(self.tmp / "audit" / "data.npz")["inputs"][:4])
        self.assertEqual(tuple(loaded(ids).shape), (4, 3))
        self.assertEqual(len(log_rows(self.tmp / "audit" / "loss.csv")), 4)
        audit(self.tmp / "audit", "--select", "output-range,double-activation")

    def test_a_model_that_cannot_be_exported_does_not_stop_training(self):
        from transformers import Trainer

        from trainlint_export.huggingface import TrainlintCallback

        callback = TrainlintCallback(self.tmp / "audit", output="scores")
        with self.assertWarnsRegex(ExportWarning, "no audit folder was written.*scores"):
            trainer = Trainer(model=self.tiny_bert(), args=self.args(), train_dataset=self.dataset(),
                              callbacks=[callback])
            trainer.train()
        self.assertEqual(trainer.state.global_step, 4)
        self.assertFalse((self.tmp / "audit").exists())

    def test_the_extra_installs_accelerate(self):
        with open(Path(__file__).resolve().parents[1] / "pyproject.toml", "rb") as f:
            extras = tomllib.load(f)["project"]["optional-dependencies"]
        self.assertTrue(any(r.startswith("accelerate") for r in extras["huggingface"]), extras)


if __name__ == "__main__":
    unittest.main()
