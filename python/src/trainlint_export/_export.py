"""export(): model.pt, data.npz and trainlint.toml from the live objects, without changing them."""
from __future__ import annotations

import contextlib
import copy
import logging
import math
import os
import random
import secrets
import shutil
import warnings
from pathlib import Path

import numpy as np
import torch

from . import _setup
from ._batches import INPUT_KEYS, TARGET_KEYS, as_saved, pick
from ._errors import ExportError, ExportWarning
from ._log import LossLogger

log = logging.getLogger("trainlint_export")

TRACE_WARNING = (
    "torch.jit.script could not compile {model} ({reason}); exported it with torch.jit.trace in train mode "
    "instead. Tracing records the ops that one batch ran through: Python control flow on tensor values and "
    "data-dependent shapes are frozen to that path, and dropout / BatchNorm are recorded in training mode "
    "(.eval() on the traced model no longer switches them), which is the behaviour trainlint's training "
    "checks need. Make forward scriptable to audit every path."
)


@contextlib.contextmanager
def _torchscript_quietly(collected: list):
    """Recent PyTorch warns that torch.jit.script / trace are deprecated. That is a note for trainlint
    (which needs TorchScript, see the README's "TorchScript's future"), not something the user did
    wrong, so the warning is logged here instead of pointing at the user's code. Tracer warnings are
    kept, to be named in the trace fallback's own warning."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    for w in caught:
        text = str(w.message)
        # 2.9-2.14 raise a DeprecationWarning, 2.15 a FutureWarning (which Python shows by default).
        if issubclass(w.category, (DeprecationWarning, PendingDeprecationWarning, FutureWarning)) and "torch.jit" in text:
            log.info("PyTorch: %s (trainlint needs TorchScript for now; see its README)", text)
        elif issubclass(w.category, torch.jit.TracerWarning):
            collected.append(text.split("\n")[0])
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)


def _loader_generators(loader) -> list:
    """The loader's and its samplers' own torch.Generators (DataLoader(generator=...))."""
    found = []
    for obj in (loader, getattr(loader, "sampler", None), getattr(getattr(loader, "batch_sampler", None), "sampler", None)):
        g = getattr(obj, "generator", None)
        if isinstance(g, torch.Generator) and all(g is not h for h in found):
            found.append(g)
    return found


def _private_loader(loader):
    """A loader to draw the sample from that leaves the user's as it is: a DataLoader with
    persistent_workers keeps its first iterator (and the worker processes, their random state and the
    batches they prefetched) for the next epoch, so iterating the user's own would change the training
    that follows. A shallow copy shares the dataset, sampler and generator (put back by _rng_untouched)
    but has its own iterator; a map-style dataset is read in the main process (same samples, same order,
    no workers started)."""
    if not isinstance(loader, torch.utils.data.DataLoader):
        return loader
    twin = copy.copy(loader)
    state = twin.__dict__
    state["_iterator"] = None
    if not isinstance(loader.dataset, torch.utils.data.IterableDataset):
        state["num_workers"] = 0
        state["persistent_workers"] = False
        state["prefetch_factor"] = None
    return twin


@contextlib.contextmanager
def _rng_untouched(loader):
    """Iterating a shuffling loader and tracing with dropout draw random numbers; put every generator
    back so that the training that follows the export is the one that would have run without it."""
    py, np_state, cpu = random.getstate(), np.random.get_state(), torch.random.get_rng_state()
    own = [(g, g.get_state()) for g in _loader_generators(loader)]
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    try:
        yield
    finally:
        random.setstate(py)
        np.random.set_state(np_state)
        torch.random.set_rng_state(cpu)
        for g, state in own:
            g.set_state(state)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)


def _unwrap(model):
    # DataParallel / DistributedDataParallel keep the module in `.module`; torch.compile in `_orig_mod`.
    while True:
        if isinstance(model, (torch.nn.DataParallel, torch.nn.parallel.DistributedDataParallel)):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, torch.nn.Module):
            model = model._orig_mod
        else:
            return model


def _first_samples(loader, n: int, inputs_sel, targets_sel):
    xs, ys, batch_size, count = [], [], None, 0
    for batch in loader:
        x = pick(batch, inputs_sel, "inputs", INPUT_KEYS)
        if batch_size is None:
            batch_size = len(x)
        if targets_sel is None and (
            isinstance(batch, torch.Tensor) or (isinstance(batch, (list, tuple)) and len(batch) == 1)
        ):
            raise ExportError(
                "the loader yields inputs only, and trainlint needs targets; for an autoencoder (the input is "
                "the target) pass targets=lambda batch: batch" + ("" if isinstance(batch, torch.Tensor) else "[0]")
            )
        y = pick(batch, targets_sel, "targets", TARGET_KEYS)
        if len(y) != len(x):
            raise ExportError(f"a batch has {len(x)} inputs but {len(y)} targets; dim 0 must be the sample axis of both")
        xs.append(as_saved(x, "inputs"))
        ys.append(as_saved(y, "targets"))
        count += len(x)
        if count >= n:
            break
    if not xs:
        raise ExportError("the loader yielded no batches")
    for name, parts in (("inputs", xs), ("targets", ys)):
        shapes = {p.shape[1:] for p in parts}
        if len(shapes) > 1:
            raise ExportError(
                f"the loader's {name} change shape between batches ({', '.join(str(tuple(s)) for s in sorted(shapes))}); "
                f"trainlint reads one array per key: pad them to one shape or use a loader that does"
            )
    x = np.concatenate(xs)[:n]
    return x, np.concatenate(ys)[:n], batch_size


def _modes(model):
    return [(m, m.training) for m in model.modules()]


def _first_line(e: BaseException) -> str:
    """The first line of an error, without the ':' that introduces TorchScript's source excerpt."""
    lines = [line for line in str(e).strip().splitlines() if line.strip()]
    # The TorchScript interpreter's errors start with a banner; the user's own error is their last line.
    line = (lines[-1] if lines[0].startswith("The following operation failed") else lines[0]) if lines else type(e).__name__
    return line.strip().rstrip(":").strip()[:300]


def _work_copy(model: torch.nn.Module, notes: list, warn_eval: bool) -> torch.nn.Module:
    """A float32 CPU copy in train mode; the user's model (its mode, dtype and device) is not touched."""
    try:
        work = copy.deepcopy(model).cpu()
    except Exception as e:  # noqa: BLE001 - any failure to copy is the user's module's
        raise ExportError(f"cannot copy the model to export it ({type(e).__name__}: {e})") from e
    dtypes = sorted({str(t.dtype).replace("torch.", "") for t in list(work.parameters()) + list(work.buffers())
                     if t.is_floating_point() and t.dtype != torch.float32})
    if dtypes:
        # trainlint feeds float32 inputs; a bf16 / fp16 module would fail on its first matmul.
        work = work.float()
        notes.append(("model", f"model.pt is a float32 copy: the model trains in {', '.join(dtypes)}"))
    if not model.training:
        notes.append(("model", "the model was in eval mode at export; model.pt is in train mode, as trainlint audits training"))
        if warn_eval:
            warnings.warn(
                f"{type(model).__name__} is in eval mode: exported in train mode (dropout and BatchNorm as they train); "
                f"your model is left in eval mode, so call model.train() before training if that is not intended",
                ExportWarning,
                stacklevel=5,
            )
    # Each module keeps its own flag: a submodule the user froze in eval mode stays so (trainlint's
    # stale-batchnorm reports it); the rest is exported as it trains. Where a trainer switches the whole
    # model to train mode after this (Hugging Face's), every module is.
    if not warn_eval:
        work.train()
    elif not work.training:
        work.train()
    if hasattr(work, "_jit_is_scripting"):
        # A LightningModule, copied without its Trainer: its own to_torchscript sets this flag so that
        # properties such as .trainer do not raise while TorchScript inspects them.
        work._jit_is_scripting = True
    return work


def _script_or_trace(model: torch.nn.Module, example: torch.Tensor, path: Path, notes: list,
                     warn_eval: bool = True) -> str:
    """Saves torch.jit.script of a float32 CPU copy in train mode to `path`; torch.jit.trace (train
    mode) when scripting or saving the scripted module fails. Returns "script" or "trace"."""
    if not (hasattr(torch.jit, "script") and hasattr(torch.jit, "trace")):
        raise ExportError(
            f"this PyTorch ({torch.__version__}) has no TorchScript export, which trainlint reads; export from a "
            f"PyTorch that has it (2.1 to 2.15 are tested; see trainlint's README, \"TorchScript's future\")"
        )
    work = _work_copy(model, notes, warn_eval)
    modes = _modes(work)
    tracer_notes: list = []
    try:
        with _torchscript_quietly(tracer_notes):
            # Saving can fail after scripting did (e.g. an unannotated `mask=None` argument: "strides()
            # called on an undefined Tensor"), so both count as the script attempt.
            torch.jit.script(work).save(str(path))
        return "script"
    except Exception as e:  # noqa: BLE001 - TorchScript raises many types
        reason = _first_line(e)
        script_error = e
    path.unlink(missing_ok=True)
    for m, training in modes:  # as they were before the failed attempt
        m.training = training
    # The traced forward runs in train mode: it moves BatchNorm's running statistics. Put them back, so
    # the file holds the model as it was (a BatchNorm that has seen one batch looks half-trained).
    buffers = {name: b.detach().clone() for name, b in work.named_buffers()}
    try:
        with _torchscript_quietly(tracer_notes), torch.no_grad():
            traced = torch.jit.trace(work, example.cpu(), check_trace=False)
            for name, b in traced.named_buffers():
                if name in buffers:
                    b.copy_(buffers[name])
            traced.save(str(path))
    except Exception as e:  # noqa: BLE001
        raise ExportError(
            f"cannot export {type(model).__name__} as TorchScript: torch.jit.script failed ({reason}) and "
            f"torch.jit.trace failed ({_first_line(e)})"
        ) from script_error
    message = TRACE_WARNING.format(model=type(model).__name__, reason=reason)
    if tracer_notes:
        message += f" The tracer also warned: {'; '.join(dict.fromkeys(tracer_notes))}"
    warnings.warn(message, ExportWarning, stacklevel=4)
    notes.append(("model", f"traced, not scripted (torch.jit.script failed: {reason})"))
    return "trace"


def _checked_output(path: Path, example: torch.Tensor, output):
    """Runs the saved model on the example batch, as trainlint will, and checks that `output` names a
    prediction of what forward returns: an index for a tuple, a key for a dict. Returns the output to
    write (None: forward returns one tensor, or the first entry is meant)."""
    try:
        with _torchscript_quietly([]), torch.no_grad():
            loaded = torch.jit.load(str(path))
            try:
                result = loaded(example.cpu())
            except Exception:  # noqa: BLE001 - e.g. BatchNorm in train mode on a batch of one sample
                result = loaded.eval()(example.cpu())
    except Exception as e:  # noqa: BLE001
        raise ExportError(
            f"the exported model fails on a batch of the loader's inputs of shape {tuple(example.shape)} "
            f"({_first_line(e)}); check inputs= (which entry of a batch forward takes)"
        ) from e
    if isinstance(result, torch.Tensor):
        if output is not None:
            warnings.warn(f"output={output!r} is ignored: forward returns one tensor", ExportWarning, stacklevel=4)
            output = None
        return None
    if isinstance(result, (tuple, list)):
        n = len(result)
        if output is None:
            output = 0
        if not isinstance(output, int) or not -n <= output < n:
            raise ExportError(
                f"output={output!r}: forward returns a {type(result).__name__} of {n}; name the prediction by index "
                f"(0 to {n - 1})"
            )
        picked = result[output]
        output = output % n
    elif isinstance(result, dict):
        keys = list(result)
        if output is None:
            output = keys[0] if keys else None
        if output not in result or not isinstance(output, str):
            raise ExportError(f"output={output!r}: forward returns a dict; name the prediction by key ({keys})")
        picked = result[output]
    else:
        raise ExportError(f"forward returns a {type(result).__name__}; trainlint reads a tensor, a tuple or a dict of tensors")
    if not isinstance(picked, torch.Tensor):
        raise ExportError(f"output={output!r} selects a {type(picked).__name__}, not a tensor")
    return output


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return short_float(v)
    return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'


def short_float(v: float) -> str:
    """The shortest text for v: 0.2 for 0.20000000000000018 (a float computed by a schedule or a sum),
    rounded to 12 significant digits when that is equal within 1e-12 relative, else repr."""
    if not math.isfinite(v):
        return "nan" if v != v else ("inf" if v > 0 else "-inf")
    rounded = float(f"{v:.12g}")
    if rounded == v or abs(rounded - v) <= 1e-12 * abs(v):
        v = rounded
    return repr(v)


class Audit:
    """The folder `export` wrote. `log_step(step, loss, **terms)` appends to its loss log; the first
    row adds the `[log]` table to its trainlint.toml. Nothing it does raises into the training loop:
    a step it cannot record is warned about (once per reason) and counted in `lost_steps`."""

    def __init__(self, out_dir: Path, config: dict, log_path: Path | None, how: str, notes: list | None = None):
        self.out_dir = out_dir
        self.config = config
        self.notes = list(notes or [])
        self.exported_with = how
        self.lost_steps: dict = {}
        self._warned: set = set()
        self._log_path = log_path
        self._logger = None
        if log_path is not None:
            try:
                self._logger = LossLogger(log_path, self._add_log_table, self._warn_once)
            except Exception as e:  # noqa: BLE001 - never into the training loop
                self._lose("log", f"the loss log {log_path} cannot be started ({type(e).__name__}: {e})")

    @property
    def config_path(self) -> Path:
        return self.out_dir / "trainlint.toml"

    @property
    def last_step(self):
        """The step of the last `log_step`, None before the first."""
        return None if self._logger is None else self._logger._last_step

    def log_step(self, step, loss, **terms) -> None:
        """Appends a row; never raises (see the class)."""
        if self._logger is None:
            self._lose("no-log", "export(..., log=False) writes no loss log" if self._log_path is None
                       else "the loss log could not be started")
            return
        try:
            self._logger.log_step(step, loss, **terms)
        except Exception as e:  # noqa: BLE001 - never into the training loop
            kind = getattr(e, "kind", None) or type(e).__name__
            self._lose(kind, f"log_step({step!r}, ...) was not recorded ({type(e).__name__}: {e})")

    def _lose(self, kind: str, message: str) -> None:
        self.lost_steps[kind] = self.lost_steps.get(kind, 0) + 1
        self._warn_once(kind, f"{message}; training goes on, and further steps lost this way are counted in "
                              f"audit.lost_steps[{kind!r}]")

    def _warn_once(self, kind: str, message: str) -> None:
        if kind not in self._warned:
            self._warned.add(kind)
            warnings.warn(f"trainlint-export: {message}", ExportWarning, stacklevel=4)

    def _add_log_table(self) -> None:
        self.config["log"] = {"path": os.path.relpath(self._log_path, self.out_dir)}
        _write_config(self.config_path, self.config, self.notes)


def _write_config(path: Path, config: dict, notes: list = ()) -> None:
    lines = [
        "# Written by trainlint-export from the live training objects; `trainlint check` on this folder",
        "# audits the setup that trains. `trainlint schema --markdown` documents every key.",
    ]
    for table, values in config.items():
        lines.append(f"\n[{table}]")
        lines.extend(f"# {text}" for t, text in notes if t == table)
        lines.extend(f"{k} = {_toml_value(v)}" for k, v in values.items())
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, path)


def export(
    model,
    loader,
    out_dir,
    loss_fn=None,
    optimizer=None,
    samples: int = 256,
    log=None,
    *,
    inputs=None,
    targets=None,
    shuffle: bool | None = None,
    temporal: bool | None = None,
    task: str | None = None,
    output=None,
    scheduler=None,
    total_steps: int | None = None,
) -> Audit:
    """Write a trainlint audit folder for this model, loader, loss and optimizer.

    - model.pt: `torch.jit.script` of a float32 CPU copy in train mode (`torch.jit.trace` in train mode
      when scripting or saving fails, with an ExportWarning naming what tracing freezes).
    - data.npz: `inputs` and `targets`, the first `samples` samples in the order the loader yields them.
    - trainlint.toml: [model], [data] and [setup] read from the objects, with a comment where what is
      written differs from the live objects (the peak lr of a warmup, a cast, a model in eval mode).

    `inputs` / `targets` say which entry of a batch is which: an index for tuple / list batches
    (default 0 and 1), a key for dict batches (default: the first of "inputs", "input", "x", "image",
    "images", "pixel_values", "input_ids", ... / "targets", "target", "y", "label", "labels", ...), or a
    callable(batch) -> tensor. `shuffle`, `temporal` and `task` override what is read from the objects;
    `output` names the prediction when forward returns a tuple (an index) or a dict (a key), checked on
    a batch. `scheduler` (and `total_steps`, the run's length) help find the peak lr of a schedule; the
    param groups' `initial_lr` / `max_lr` are read without them.
    `log`: None or True writes the loss log to out_dir/loss.csv through `Audit.log_step`, a path puts it
    there (its folder is created), False writes none. The model, loader and random generators are left
    as they were. A refusal (ExportError) or a failure leaves no folder behind: the files are written
    to a temporary sibling folder and moved into `out_dir` at the end.
    """
    return write_audit(model, loader, out_dir, loss_fn=loss_fn, optimizer=optimizer, samples=samples, log=log,
                       inputs=inputs, targets=targets, shuffle=shuffle, temporal=temporal, task=task, output=output,
                       scheduler=scheduler, total_steps=total_steps)


def write_audit(model, loader, out_dir, *, loss_fn=None, optimizer=None, samples=256, log=None, inputs=None,
                targets=None, shuffle=None, temporal=None, task=None, output=None, scheduler=None,
                total_steps=None, notes=(), warn_eval=True) -> Audit:
    """export() with what the callbacks add: `notes` ((table, text) comment lines for trainlint.toml)
    and `warn_eval` (False where the trainer switches the whole model to train mode itself: no warning
    for a model in eval mode, and every submodule is exported in train mode)."""
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ExportError(f"samples must be an integer >= 1, got {samples!r}")
    if not isinstance(model, torch.nn.Module):
        raise ExportError(
            f"model is a {type(model).__name__}; export takes the torch.nn.Module that trains"
            + (" (already TorchScript: save it with .save() and write the folder by hand)"
               if isinstance(model, torch.jit.ScriptModule) else "")
        )
    if isinstance(model, torch.jit.ScriptModule):
        raise ExportError("model is already TorchScript; pass the torch.nn.Module that trains")
    if output is not None and (isinstance(output, bool) or not isinstance(output, (int, str))):
        raise ExportError(f"output={output!r}: name the prediction by index (tuple) or key (dict)")
    if task is not None and task not in _setup.TASKS:
        raise ExportError(f"task={task!r}; use one of {', '.join(_setup.TASKS)}")
    model = _unwrap(model)
    notes = list(notes)
    out = Path(out_dir)

    # Everything the objects can refuse is checked before a file is written.
    setup: dict = {}
    loss = _setup.loss_name(loss_fn)
    opt_setup, lr_note = _setup.optimizer_setup(optimizer, scheduler, total_steps)
    setup.update(opt_setup)
    if lr_note:
        notes.append(("setup", lr_note))
    setup.update(_setup.loader_setup(loader, shuffle))

    # Staged in a sibling folder: a refusal or a crash part-way leaves nothing half-written.
    made = []
    parent = out.parent
    while not parent.exists():
        made.append(parent)
        parent = parent.parent
    stage = out.parent / f".{out.name}.trainlint-export-{secrets.token_hex(4)}"
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        stage.mkdir()
        with _rng_untouched(loader):
            twin = _private_loader(loader)
            try:
                x, y, first_batch = _first_samples(twin, samples, inputs, targets)
            finally:
                # The copy of a loader of an IterableDataset keeps its workers; stop them now.
                kept = twin.__dict__.get("_iterator") if twin is not loader else None
                if kept is not None and hasattr(kept, "_shutdown_workers"):
                    kept._shutdown_workers()
            if "batch_size" not in setup and first_batch:
                setup["batch_size"] = int(first_batch)
            example = torch.from_numpy(x[: max(1, min(len(x), setup.get("batch_size", 1)))])
            if example.dtype == torch.uint8:
                example = example.float()
            how = _script_or_trace(model, example, stage / "model.pt", notes, warn_eval)
            output = _checked_output(stage / "model.pt", example, output)
        setup["task"] = task or _setup.task_of(torch.from_numpy(x), torch.from_numpy(y), loss)
        if loss is not None:
            setup["loss"] = loss
        if temporal is not None:
            setup["temporal"] = bool(temporal)
        np.savez(stage / "data.npz", inputs=x, targets=y)

        order = ("task", "loss", "optimizer", "lr", "momentum", "weight_decay", "batch_size", "shuffle", "temporal")
        config = {
            "model": {"path": "model.pt"} if output is None else {"path": "model.pt", "output": output},
            "data": {"path": "data.npz", "inputs": "inputs", "targets": "targets", "max_samples": len(x)},
            "setup": {k: setup[k] for k in order if k in setup},
        }
        _write_config(stage / "trainlint.toml", config, notes)
        if out.is_dir():
            for name in ("model.pt", "data.npz", "trainlint.toml"):
                os.replace(stage / name, out / name)
            stage.rmdir()
        else:
            os.rename(stage, out)
    except BaseException as e:
        shutil.rmtree(stage, ignore_errors=True)
        for folder in made:
            with contextlib.suppress(OSError):
                folder.rmdir()
        if isinstance(e, OSError):
            raise ExportError(f"cannot write the audit folder {out} ({type(e).__name__}: {e})") from e
        raise

    log_path = None
    if log is None or log is True:
        log_path = out / "loss.csv"
    elif log is not False:
        log_path = Path(log)
    return Audit(out, config, log_path, how, notes)
