"""export(): model.pt, data.npz and trainlint.toml from the live objects, without changing them."""
from __future__ import annotations

import contextlib
import copy
import logging
import os
import random
import tempfile
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


def _script_or_trace(model: torch.nn.Module, example: torch.Tensor) -> tuple[torch.jit.ScriptModule, str]:
    """torch.jit.script of a CPU copy in train mode; torch.jit.trace (train mode) when scripting fails."""
    if not (hasattr(torch.jit, "script") and hasattr(torch.jit, "trace")):
        raise ExportError(
            f"this PyTorch ({torch.__version__}) has no TorchScript export, which trainlint reads; export from a "
            f"PyTorch that has it (2.1 to 2.15 are tested; see trainlint's README, \"TorchScript's future\")"
        )
    try:
        work = copy.deepcopy(model).cpu()
    except Exception as e:  # noqa: BLE001 - any failure to copy is the user's module's
        raise ExportError(f"cannot copy the model to export it ({type(e).__name__}: {e})") from e
    # Each module keeps its own flag: a submodule the user froze in eval mode stays so (trainlint's
    # stale-batchnorm reports it); the rest is exported as it trains.
    if not work.training:
        work.train()
    if hasattr(work, "_jit_is_scripting"):
        # A LightningModule, copied without its Trainer: its own to_torchscript sets this flag so that
        # properties such as .trainer do not raise while TorchScript inspects them.
        work._jit_is_scripting = True
    modes = _modes(work)
    tracer_notes: list = []
    try:
        with _torchscript_quietly(tracer_notes):
            return torch.jit.script(work), "script"
    except Exception as e:  # noqa: BLE001 - TorchScript raises many types
        reason = str(e).strip().split("\n")[0][:300]
        script_error = e
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
    except Exception as e:  # noqa: BLE001
        raise ExportError(
            f"cannot export {type(model).__name__} as TorchScript: torch.jit.script failed ({reason}) and "
            f"torch.jit.trace failed ({str(e).strip().splitlines()[0][:300]})"
        ) from script_error
    message = TRACE_WARNING.format(model=type(model).__name__, reason=reason)
    if tracer_notes:
        message += f" The tracer also warned: {'; '.join(dict.fromkeys(tracer_notes))}"
    warnings.warn(message, ExportWarning, stacklevel=3)
    return traced, "trace"


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return repr(v)
    return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'


class Audit:
    """The folder `export` wrote. `log_step(step, loss, **terms)` appends to its loss log; the first
    row adds the `[log]` table to its trainlint.toml."""

    def __init__(self, out_dir: Path, config: dict, log_path: Path | None, how: str):
        self.out_dir = out_dir
        self.config = config
        self.exported_with = how
        self._logger = LossLogger(log_path, self._add_log_table) if log_path is not None else None
        self._log_path = log_path

    @property
    def config_path(self) -> Path:
        return self.out_dir / "trainlint.toml"

    @property
    def last_step(self):
        """The step of the last `log_step`, None before the first."""
        return None if self._logger is None else self._logger._last_step

    def log_step(self, step, loss, **terms) -> None:
        if self._logger is None:
            raise ExportError("export(..., log=False) writes no loss log")
        self._logger.log_step(step, loss, **terms)

    def _add_log_table(self) -> None:
        self.config["log"] = {"path": os.path.relpath(self._log_path, self.out_dir)}
        _write_config(self.config_path, self.config)


def _write_config(path: Path, config: dict) -> None:
    lines = [
        "# Written by trainlint-export from the live training objects; `trainlint check` on this folder",
        "# audits the setup that trains. `trainlint schema --markdown` documents every key.",
    ]
    for table, values in config.items():
        lines.append(f"\n[{table}]")
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
) -> Audit:
    """Write a trainlint audit folder for this model, loader, loss and optimizer.

    - model.pt: `torch.jit.script` of a CPU copy in train mode (`torch.jit.trace` in train mode when
      scripting fails, with an ExportWarning naming what tracing freezes).
    - data.npz: `inputs` and `targets`, the first `samples` samples in the order the loader yields them.
    - trainlint.toml: [model], [data] and [setup] read from the objects.

    `inputs` / `targets` say which entry of a batch is which: an index for tuple / list batches
    (default 0 and 1), a key for dict batches (default: the first of "inputs", "input", "x", "image",
    "images", "pixel_values", "input_ids", ... / "targets", "target", "y", "label", "labels", ...), or a
    callable(batch) -> tensor. `shuffle`, `temporal` and `task` override what is read from the objects;
    `output` names the prediction when forward returns a tuple (an index) or a dict (a key).
    `log`: None or True writes the loss log to out_dir/loss.csv through `Audit.log_step`, a path puts it
    there, False writes none. The model, loader and random generators are left as they were.
    """
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
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    # Everything the objects can refuse is checked before a file is written.
    setup: dict = {}
    loss = _setup.loss_name(loss_fn)
    setup.update(_setup.optimizer_setup(optimizer))
    setup.update(_setup.loader_setup(loader, shuffle))
    with _rng_untouched(loader):
        x, y, first_batch = _first_samples(loader, samples, inputs, targets)
        if "batch_size" not in setup and first_batch:
            setup["batch_size"] = int(first_batch)
        example = torch.from_numpy(x[: max(1, min(len(x), setup.get("batch_size", 1)))])
        if example.dtype == torch.uint8:
            example = example.float()
        scripted, how = _script_or_trace(model, example)
    setup["task"] = task or _setup.task_of(torch.from_numpy(x), torch.from_numpy(y))
    if loss is not None:
        setup["loss"] = loss
    if temporal is not None:
        setup["temporal"] = bool(temporal)

    with tempfile.NamedTemporaryFile(dir=out, suffix=".pt.tmp", delete=False) as f:
        tmp_model = Path(f.name)
    try:
        scripted.save(str(tmp_model))
        os.replace(tmp_model, out / "model.pt")
    finally:
        tmp_model.unlink(missing_ok=True)
    np.savez(out / "data.npz.tmp.npz", inputs=x, targets=y)
    os.replace(out / "data.npz.tmp.npz", out / "data.npz")

    order = ("task", "loss", "optimizer", "lr", "momentum", "weight_decay", "batch_size", "shuffle", "temporal")
    config = {
        "model": {"path": "model.pt"} if output is None else {"path": "model.pt", "output": output},
        "data": {"path": "data.npz", "inputs": "inputs", "targets": "targets", "max_samples": len(x)},
        "setup": {k: setup[k] for k in order if k in setup},
    }
    log_path = None
    if log is None or log is True:
        log_path = out / "loss.csv"
    elif log is not False:
        log_path = Path(log)
    _write_config(out / "trainlint.toml", config)
    return Audit(out, config, log_path, how)
