"""Issue 25: the exporter writes model.pt2 (torch.export programs "model", "eval" and, for a model whose
modules' modes differ, "as_saved", with extra/trainlint.json listing every module's training flag), and
falls back to TorchScript (model.pt, with a note that says why) when torch.export cannot export the model.

Run with `./dev python`, or alone:
    PYTHONPATH=python/src TRAINLINT=target/debug/trainlint python -m unittest python/tests/test_pt2.py
"""
from __future__ import annotations

import contextlib
import copy
import errno
import io
import json
import logging
import os
import random
import re
import signal
import struct
import subprocess
import sys
import unittest
import warnings
import zipfile
import zlib
from pathlib import Path
from unittest import mock

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset

from test_export import REQUIRE, TRAINLINT, Mlp, Tmp, checks, classification_data, installed, read_setup
from trainlint_export import ExportError, export


class ConvBN(nn.Module):
    def __init__(self):
        super().__init__()
        self.enc = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        return self.head(torch.flatten(self.pool(self.enc(x)), 1))


class DataDependent(nn.Module):
    """Python control flow on a tensor's value: TorchScript compiles it, torch.export cannot."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        if x.sum() > 0:
            return self.fc(x)
        return -self.fc(x)


class Pair(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        y = self.fc(x)
        return y, y.pow(2).mean()


def image_data(n=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(n, 3, 8, 8, generator=g), torch.randint(0, 4, (n,), generator=g))


def members(path) -> list:
    """The archive's member names without the folder torch puts them in (the file's stem)."""
    with zipfile.ZipFile(path) as z:
        return sorted(n.split("/", 1)[1] for n in z.namelist())


def module_table(path) -> dict:
    with zipfile.ZipFile(path) as z:
        name = next(n for n in z.namelist() if n.endswith("/extra/trainlint.json"))
        return json.loads(z.read(name))


def programs(path) -> dict:
    """Every program in the archive, by name (torch.export.load returns "model" alone)."""
    from torch.export.pt2_archive._package import load_pt2

    return load_pt2(str(path)).exported_programs


def rng_states():
    return random.getstate(), np.random.get_state()[1].copy(), torch.random.get_rng_state()


class Pt2Programs(Tmp):
    def assert_untouched(self, model, before, modes, rng):
        self.assertEqual([m.training for m in model.modules()], modes)
        for k, v in model.state_dict().items():
            self.assertTrue(torch.equal(v, before[k]), k)
        py, np_state, cpu = rng_states()
        self.assertEqual(py, rng[0])
        np.testing.assert_array_equal(np_state, rng[1])
        self.assertTrue(torch.equal(cpu, rng[2]))

    def test_a_conv_bn_model_is_three_members_whose_forward_is_the_eager_train_forward(self):
        model = ConvBN()
        before = copy.deepcopy(model.state_dict())
        modes, rng = [m.training for m in model.modules()], rng_states()
        result = export(model, DataLoader(image_data(), batch_size=8, shuffle=True), self.tmp, nn.CrossEntropyLoss())
        self.assertEqual(result.exported_with, "export")
        self.assertEqual(sorted(os.listdir(self.tmp)), ["data.npz", "model.pt2", "trainlint.toml"])
        self.assertEqual(read_setup(self.tmp)["model"], {"path": "model.pt2"})
        # Exporting (and running the written program to check it) moved no BatchNorm statistic of the
        # user's model and drew from no random generator of theirs.
        self.assert_untouched(model, before, modes, rng)

        path = self.tmp / "model.pt2"
        names = members(path)
        for member in ("models/model.json", "models/eval.json", "extra/trainlint.json"):
            self.assertIn(member, names)
        self.assertNotIn("models/as_saved.json", names)  # every module trains
        self.assertEqual(module_table(path), {"version": 1, "modules": [
            {"path": "", "kind": "ConvBN", "training": True},
            {"path": "enc", "kind": "Sequential", "training": True},
            {"path": "enc.0", "kind": "Conv2d", "training": True},
            {"path": "enc.1", "kind": "BatchNorm2d", "training": True},
            {"path": "enc.2", "kind": "ReLU", "training": True},
            {"path": "pool", "kind": "AdaptiveAvgPool2d", "training": True},
            {"path": "head", "kind": "Linear", "training": True},
        ]})

        loaded = torch.export.load(str(path))  # the "model" program
        for k, v in loaded.state_dict.items():  # the weights and statistics as they were
            self.assertTrue(torch.equal(v, before[k]), k)
        x = torch.randn(5, 3, 8, 8)
        eager = copy.deepcopy(model).train()
        program = loaded.module()
        torch.testing.assert_close(program(x), eager(x), rtol=0, atol=0)
        # It is the training forward: batch statistics, and the running ones move as in eager mode.
        torch.testing.assert_close(program.state_dict()["enc.1.running_mean"], eager.enc[1].running_mean,
                                   rtol=0, atol=0)
        # The batch dim is dynamic from 1 (Dim("batch", min=1)).
        self.assertEqual(tuple(program(x[:1]).shape), (1, 4))
        self.assertEqual(tuple(program(torch.randn(33, 3, 8, 8)).shape), (33, 4))
        # The spatial dims are free too (Dim.AUTO: this net takes any size), so trainlint can train a
        # fully convolutional model on crops.
        self.assertEqual(tuple(program(torch.randn(2, 3, 5, 7)).shape), (2, 4))

        evaluated = programs(path)["eval"].module()
        torch.testing.assert_close(evaluated(x), copy.deepcopy(model).eval()(x), rtol=0, atol=0)
        text = (self.tmp / "trainlint.toml").read_text()
        self.assertIn('# model.pt2: torch.export programs "model" (every module in train mode), "eval"', text)

    def test_a_model_fixed_to_its_input_size_keeps_the_spatial_dims_static(self):
        # flatten into a Linear of 8·8·8 features: torch.export specialises H and W (Dim.AUTO), and the
        # program refuses another size rather than the export failing.
        model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Flatten(), nn.Linear(8 * 8 * 8, 4))
        export(model, DataLoader(image_data(), batch_size=8), self.tmp)
        program = torch.export.load(str(self.tmp / "model.pt2")).module()
        self.assertEqual(tuple(program(torch.randn(3, 3, 8, 8)).shape), (3, 4))
        with self.assertRaises(Exception):
            program(torch.randn(3, 3, 6, 6))

    def test_an_mlp_with_batchnorm_and_dropout(self):
        model = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 3))
        before, rng = copy.deepcopy(model.state_dict()), rng_states()
        export(model, DataLoader(classification_data(), batch_size=8), self.tmp)
        self.assert_untouched(model, before, [True] * 6, rng)
        graph = str(torch.export.load(str(self.tmp / "model.pt2")).graph)
        self.assertIn("dropout", graph)
        self.assertIn("batch_norm", graph)
        self.assertEqual([m["kind"] for m in module_table(self.tmp / "model.pt2")["modules"]],
                         ["Sequential", "Linear", "BatchNorm1d", "ReLU", "Dropout", "Linear"])
        # Without dropout in the way, the written program equals the eager forward.
        plain = Mlp(bn=True)
        export(plain, DataLoader(classification_data(), batch_size=8), self.tmp / "plain")
        x = torch.randn(6, 8)
        got = torch.export.load(str(self.tmp / "plain" / "model.pt2")).module()(x)
        torch.testing.assert_close(got, copy.deepcopy(plain).train()(x), rtol=0, atol=0)

    def test_a_frozen_batchnorm_in_eval_mode_adds_the_as_saved_program(self):
        model = Mlp(bn=True)
        model.bn.eval()  # frozen statistics inside a model that trains
        before, rng = copy.deepcopy(model.state_dict()), rng_states()
        export(model, DataLoader(classification_data(), batch_size=8), self.tmp)
        self.assert_untouched(model, before, [True, True, False, True, True], rng)
        path = self.tmp / "model.pt2"
        self.assertIn("models/as_saved.json", members(path))
        flags = {m["path"]: m["training"] for m in module_table(path)["modules"]}
        self.assertEqual(flags, {"": True, "fc1": True, "bn": False, "fc2": True, "final": True})
        found = programs(path)
        self.assertEqual(sorted(found), ["as_saved", "eval", "model"])
        x = torch.randn(6, 8)
        every_train = copy.deepcopy(model).train()
        as_saved = copy.deepcopy(model)  # bn in eval mode, the rest training
        torch.testing.assert_close(found["as_saved"].module()(x), as_saved(x), rtol=0, atol=0)
        torch.testing.assert_close(found["model"].module()(x), every_train(x), rtol=0, atol=0)
        self.assertFalse(torch.allclose(as_saved(x), every_train(x)))  # the programs differ
        self.assertIn('"as_saved" (each module in its mode at export: 1 of 5 in eval mode)',
                      (self.tmp / "trainlint.toml").read_text())

    def test_a_model_in_eval_mode_records_its_flags_and_warns_once(self):
        model = Mlp(bn=True).eval()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            export(model, DataLoader(classification_data(), batch_size=8), self.tmp)
        self.assertEqual(len([w for w in caught if "is in eval mode" in str(w.message)]), 1)
        self.assertFalse(model.training)
        # Exported in train mode, as the TorchScript file would be (a model left in eval mode trains);
        # not mixed, so no as_saved program.
        self.assertEqual({m["training"] for m in module_table(self.tmp / "model.pt2")["modules"]}, {True})
        self.assertNotIn("models/as_saved.json", members(self.tmp / "model.pt2"))
        self.assertIn("model.pt2 is in train mode", (self.tmp / "trainlint.toml").read_text())

    def test_a_bf16_model_is_written_as_float32(self):
        model = Mlp().to(torch.bfloat16)
        export(model, DataLoader(classification_data(), batch_size=8), self.tmp)
        self.assertEqual(model.fc1.weight.dtype, torch.bfloat16)
        weights = torch.export.load(str(self.tmp / "model.pt2")).state_dict
        self.assertEqual({t.dtype for t in weights.values()}, {torch.float32})
        self.assertIn("model.pt2 is a float32 copy: the model trains in bfloat16",
                      (self.tmp / "trainlint.toml").read_text())

    def test_the_same_model_writes_the_same_bytes(self):
        paths = []
        for name in ("a", "b"):
            torch.manual_seed(3)
            export(ConvBN(), DataLoader(image_data(), batch_size=8), self.tmp / name)
            paths.append(self.tmp / name / "model.pt2")
        self.assertEqual(paths[0].read_bytes(), paths[1].read_bytes())
        with zipfile.ZipFile(paths[0]) as z:
            self.assertIsNone(z.testzip())  # every CRC matches
            info = next(i for i in z.infolist() if i.filename.endswith(".data/serialization_id"))
            self.assertEqual(z.read(info), b"0" * info.file_size)
        if info.flag_bits & 0x8:
            # The data descriptor after the member carries the new CRC too.
            data = paths[0].read_bytes()
            name_len, extra_len = struct.unpack_from("<HH", data, info.header_offset + 26)
            end = info.header_offset + 30 + name_len + extra_len + info.file_size
            at = end + 4 if data[end:end + 4] == b"PK\x07\x08" else end
            self.assertEqual(struct.unpack_from("<I", data, at)[0], zlib.crc32(b"0" * info.file_size))

    def test_no_warning_print_or_torch_log_line_reaches_the_user(self):
        class Shown(logging.Handler):
            def __init__(self):
                super().__init__()
                self.lines = []

            def emit(self, record):
                if not record.name.startswith("torch.__trace"):  # PyTorch's structured trace, for TORCH_TRACE
                    self.lines.append(f"{record.name}: {record.getMessage()}")

        shown = Shown()
        torch_loggers = [logging.getLogger(name) for name in list(logging.Logger.manager.loggerDict)
                         if name == "torch" or name.startswith("torch.")]
        for lg in torch_loggers:
            lg.addHandler(shown)
        printed = io.StringIO()
        try:
            with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stderr(printed):
                warnings.simplefilter("always")
                export(ConvBN(), DataLoader(image_data(), batch_size=8), self.tmp / "a")
                export(DataDependent(), DataLoader(classification_data(), batch_size=8), self.tmp / "b")
        finally:
            for lg in torch_loggers:
                lg.removeHandler(shown)
        self.assertEqual(read_setup(self.tmp / "b")["model"]["path"], "model.pt")  # it did fall back
        self.assertEqual([str(w.message) for w in caught], [])
        # torch.export logs a warning and prints the partial graph of a failed export; both go to the
        # trainlint_export logger at DEBUG instead. The filter that did it is gone.
        self.assertEqual(shown.lines, [])
        self.assertEqual(printed.getvalue(), "")
        self.assertEqual([f for lg in torch_loggers for h in lg.handlers for f in h.filters], [])


class Pt2Fallback(Tmp):
    def test_data_dependent_control_flow_falls_back_to_torchscript_with_a_note(self):
        with self.assertLogs("trainlint_export", level="INFO") as logged:
            result = export(DataDependent(), DataLoader(classification_data(), batch_size=8), self.tmp)
        self.assertEqual(result.exported_with, "script")
        self.assertEqual(sorted(os.listdir(self.tmp)), ["data.npz", "model.pt", "trainlint.toml"])
        self.assertEqual(read_setup(self.tmp)["model"], {"path": "model.pt"})
        note = re.search(r"# model.pt is TorchScript, not a .pt2: torch.export failed on the 'model' program: (.*)",
                         (self.tmp / "trainlint.toml").read_text())
        self.assertIsNotNone(note)
        self.assertIn("data-dependent", note.group(1))
        self.assertNotIn("\n", note.group(1))
        self.assertRegex("\n".join(logged.output), "writing TorchScript .model.pt. instead")
        torch.jit.load(str(self.tmp / "model.pt"))

    def test_format_pt2_refuses_what_torch_export_cannot_and_leaves_nothing(self):
        target = self.tmp / "runs" / "audit"
        with self.assertRaisesRegex(ExportError, r"cannot export DataDependent as a .pt2: torch.export failed on the "
                                                 r"'model' program: .*format=\"auto\""):
            export(DataDependent(), DataLoader(classification_data(), batch_size=8), target, format="pt2")
        self.assertFalse((self.tmp / "runs").exists())
        export(ConvBN(), DataLoader(image_data(), batch_size=8), target, format="pt2")
        self.assertEqual(read_setup(target)["model"]["path"], "model.pt2")

    def test_format_torchscript_does_not_try_torch_export(self):
        model = Mlp(bn=True)
        model.bn.eval()
        with mock.patch.object(torch.export, "export", side_effect=AssertionError("not to be called")) as called:
            result = export(model, DataLoader(classification_data(), batch_size=8), self.tmp, format="torchscript")
        called.assert_not_called()
        self.assertEqual(result.exported_with, "script")
        self.assertEqual(sorted(os.listdir(self.tmp)), ["data.npz", "model.pt", "trainlint.toml"])
        self.assertNotIn("not a .pt2", (self.tmp / "trainlint.toml").read_text())
        loaded = torch.jit.load(str(self.tmp / "model.pt"))
        self.assertTrue(loaded.training and not loaded.bn.training)  # TorchScript keeps each module's mode

    def test_a_forward_that_returns_a_tuple_falls_back(self):
        # trainlint runs a .pt2 program that returns one tensor; `output` selects in TorchScript.
        loader = DataLoader(classification_data(), batch_size=8)
        export(Pair(), loader, self.tmp / "a", output=0)
        self.assertEqual(read_setup(self.tmp / "a")["model"], {"path": "model.pt", "output": 0})
        self.assertIn("forward returns a tuple, and trainlint runs a .pt2 program that returns one tensor",
                      (self.tmp / "a" / "trainlint.toml").read_text())
        with self.assertRaisesRegex(ExportError, "as a .pt2: forward returns a tuple"):
            export(Pair(), loader, self.tmp / "b", format="pt2")
        with self.assertRaisesRegex(ExportError, r"format='onnx'; use one of 'auto', 'pt2', 'torchscript'"):
            export(Pair(), loader, self.tmp / "c", format="onnx")

    def test_a_pytorch_without_the_pt2_writer_falls_back(self):
        with mock.patch.dict(sys.modules, {"torch.export.pt2_archive._package": None}):
            result = export(Mlp(), DataLoader(classification_data(), batch_size=8), self.tmp)
        self.assertEqual(result.exported_with, "script")
        self.assertIn(f"not a .pt2: this PyTorch ({torch.__version__}) has no torch.export.pt2_archive package_pt2",
                      (self.tmp / "trainlint.toml").read_text())

    def test_a_full_disk_while_writing_the_archive_is_an_export_error_that_leaves_nothing(self):
        full = OSError(errno.ENOSPC, "No space left on device")
        target = self.tmp / "runs" / "audit"
        with mock.patch("torch.export.pt2_archive._package.package_pt2", side_effect=full):
            with self.assertRaisesRegex(ExportError, "cannot write the audit folder .*No space left"):
                export(Mlp(), DataLoader(classification_data(), batch_size=8), target)
        self.assertFalse((self.tmp / "runs").exists())

    def test_a_fifo_named_model_pt2_is_replaced_not_written_into(self):
        self.tmp.joinpath("audit").mkdir()
        os.mkfifo(self.tmp / "audit" / "model.pt2")
        old = signal.signal(signal.SIGALRM, lambda *_: (_ for _ in ()).throw(TimeoutError("blocked on the FIFO")))
        signal.alarm(120)
        try:
            export(Mlp(), DataLoader(classification_data(), batch_size=8), self.tmp / "audit")
        finally:
            signal.alarm(0)
            signal.signal(signal.SIGALRM, old)
        self.assertTrue((self.tmp / "audit" / "model.pt2").is_file())
        torch.export.load(str(self.tmp / "audit" / "model.pt2"))


@unittest.skipUnless(REQUIRE or installed("pytorch_lightning") or installed("lightning"), "Lightning not installed")
class Pt2Lightning(Tmp):
    def test_the_callback_writes_the_pt2_and_passes_format_through(self):
        try:
            import lightning.pytorch as pl
        except ImportError:
            import pytorch_lightning as pl
        from trainlint_export.lightning import TrainlintCallback

        class Module(pl.LightningModule):
            def __init__(self):
                super().__init__()
                self.net = Mlp(bn=True)
                self.loss_fn = nn.CrossEntropyLoss()

            def forward(self, x):
                return self.net(x)

            def training_step(self, batch, batch_idx):
                x, y = batch
                return self.loss_fn(self(x), y)

            def configure_optimizers(self):
                return torch.optim.SGD(self.parameters(), lr=0.05)

        for fmt, written in (("auto", "model.pt2"), ("torchscript", "model.pt")):
            callback = TrainlintCallback(self.tmp / fmt, format=fmt)
            trainer = pl.Trainer(max_steps=3, accelerator="cpu", logger=False, enable_checkpointing=False,
                                 enable_progress_bar=False, enable_model_summary=False, callbacks=[callback])
            trainer.fit(Module(), DataLoader(classification_data(), batch_size=8))
            self.assertIsNone(callback.error)
            self.assertEqual(read_setup(self.tmp / fmt)["model"]["path"], written)
        table = module_table(self.tmp / "auto" / "model.pt2")["modules"]
        self.assertEqual([(m["path"], m["kind"]) for m in table][:3],
                         [("", "Module"), ("net", "Mlp"), ("net.fc1", "Linear")])
        self.assertIn("loss_fn", [m["path"] for m in table])  # every module of the copy, the loss module too


@unittest.skipUnless(REQUIRE or installed("transformers"), "transformers not installed")
class Pt2HuggingFace(Tmp):
    def test_the_callback_exports_the_logits_wrapper_as_a_pt2_with_every_module_training(self):
        from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainingArguments

        from trainlint_export.huggingface import TrainlintCallback

        torch.manual_seed(0)
        config = BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                            intermediate_size=32, max_position_embeddings=32, num_labels=3)
        model = BertForSequenceClassification(config).eval()  # as from_pretrained leaves it
        g = torch.Generator().manual_seed(0)
        ids, labels = torch.randint(1, 64, (32, 12), generator=g), torch.randint(0, 3, (32,), generator=g)

        class Tokens(torch.utils.data.Dataset):
            def __len__(self):
                return len(ids)

            def __getitem__(self, i):
                return {"input_ids": ids[i], "labels": labels[i]}

        args = TrainingArguments(output_dir=str(self.tmp / "hf"), max_steps=2, per_device_train_batch_size=8,
                                 learning_rate=5e-4, logging_steps=1, report_to=[], save_strategy="no", use_cpu=True,
                                 disable_tqdm=True)
        callback = TrainlintCallback(self.tmp / "audit", loss_fn=nn.CrossEntropyLoss())
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            Trainer(model=model, args=args, train_dataset=Tokens(), callbacks=[callback]).train()
        self.assertIsNone(callback.error)
        path = self.tmp / "audit" / "model.pt2"
        self.assertEqual(read_setup(self.tmp / "audit")["model"], {"path": "model.pt2"})
        table = module_table(path)["modules"]
        self.assertEqual(table[0], {"path": "", "kind": "Prediction", "training": True})
        # The Trainer switches the whole model to train mode after the callback: every module trains.
        self.assertEqual({m["training"] for m in table}, {True})
        self.assertNotIn("models/as_saved.json", members(path))
        logits = torch.export.load(str(path)).module()(ids[:5])
        self.assertEqual(tuple(logits.shape), (5, 3))


class Pt2Audited(Tmp):
    def check(self, folder):
        p = subprocess.run(
            [TRAINLINT, "check", str(folder), "--output-format", "json", "--quiet", "--threads", "1",
             "--select", "overfit-batch,stale-batchnorm,initial-loss"],
            capture_output=True, text=True, timeout=600,
        )
        return p.returncode, p.stdout, p.stderr.strip()

    def test_trainlint_audits_the_pt2_as_it_audits_the_torchscript(self):
        if not TRAINLINT:
            raise unittest.SkipTest("set TRAINLINT to the trainlint binary to audit")
        loader = DataLoader(image_data(), batch_size=8, shuffle=True)
        for fmt in ("pt2", "torchscript"):
            torch.manual_seed(0)
            export(ConvBN(), loader, self.tmp / fmt, nn.CrossEntropyLoss(),
                   torch.optim.SGD(ConvBN().parameters(), lr=0.05, momentum=0.9), format=fmt)
        code, out, err = self.check(self.tmp / "pt2")
        self.assertIn(code, (0, 1), err)
        ts_code, ts_out, ts_err = self.check(self.tmp / "torchscript")
        self.assertIn(ts_code, (0, 1), ts_err)
        def verdicts(report):
            return {i: (c["status"], sorted((f["kind"], json.dumps(f["location"], sort_keys=True))
                                            for f in c.get("findings", [])))
                    for i, c in checks(json.loads(report)).items()}
        self.assertEqual(verdicts(out), verdicts(ts_out))
        self.assertEqual(code, ts_code)


if __name__ == "__main__":
    unittest.main()
