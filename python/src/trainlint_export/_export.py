"""export(): model.pt2 (or model.pt), data.npz and trainlint.toml from the live objects, without changing them."""
from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import math
import os
import random
import secrets
import shutil
import struct
import warnings
import zipfile
import zlib
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
    (which needs TorchScript, see trainlint's docs/torchscript.md), not something the user did
    wrong, so the warning is logged here instead of pointing at the user's code. Tracer warnings are
    kept, to be named in the trace fallback's own warning. Other warnings (torch.export's too, which
    wraps its runs in this) are shown as they would have been; the user's filters are not changed."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    for w in caught:
        text = str(w.message)
        # 2.9-2.14 raise a DeprecationWarning, 2.15 a FutureWarning (which Python shows by default).
        if issubclass(w.category, (DeprecationWarning, PendingDeprecationWarning, FutureWarning)) and "torch.jit" in text:
            log.info("PyTorch: %s (trainlint needs TorchScript for now; see its docs/torchscript.md)", text)
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


def _warn_if_eval(model: torch.nn.Module, warn_eval: bool) -> None:
    if warn_eval and not model.training:
        warnings.warn(
            f"{type(model).__name__} is in eval mode: exported in train mode (dropout and BatchNorm as they train); "
            f"your model is left in eval mode, so call model.train() before training if that is not intended",
            ExportWarning,
            stacklevel=5,
        )


def _work_copy(model: torch.nn.Module, notes: list, warn_eval: bool, file_name: str = "model.pt") -> torch.nn.Module:
    """A float32 CPU copy in train mode; the user's model (its mode, dtype and device) is not touched.
    `file_name` is the file the notes name."""
    try:
        work = copy.deepcopy(model).cpu()
    except Exception as e:  # noqa: BLE001 - any failure to copy is the user's module's
        raise ExportError(f"cannot copy the model to export it ({type(e).__name__}: {e})") from e
    dtypes = sorted({str(t.dtype).replace("torch.", "") for t in list(work.parameters()) + list(work.buffers())
                     if t.is_floating_point() and t.dtype != torch.float32})
    if dtypes:
        # trainlint feeds float32 inputs; a bf16 / fp16 module would fail on its first matmul.
        work = work.float()
        notes.append(("model", f"{file_name} is a float32 copy: the model trains in {', '.join(dtypes)}"))
    if not model.training:
        notes.append(("model", f"the model was in eval mode at export; {file_name} is in train mode, as trainlint "
                               f"audits training"))
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
            f"PyTorch that has it (2.1 to 2.15 are tested; see trainlint's docs/torchscript.md)"
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
    warnings.warn(message, ExportWarning, stacklevel=5)
    notes.append(("model", f"traced, not scripted (torch.jit.script failed: {reason})"))
    return "trace"


FORMATS = ("auto", "pt2", "torchscript")


class Pt2Unsuitable(Exception):
    """torch.export cannot write this model as trainlint reads a .pt2; the message says why. In
    format="auto" the export falls back to TorchScript with this reason as a note."""


def _pt2_tools():
    """torch.export.export and the archive writer of torch.export.save (package_pt2), or Pt2Unsuitable
    when this PyTorch has no such thing (before 2.8 or so)."""
    export_fn = getattr(getattr(torch, "export", None), "export", None)
    try:
        from torch.export.pt2_archive._package import package_pt2  # noqa: PLC0415 - absent from older torch
    except ImportError:
        package_pt2 = None
    if export_fn is None or package_pt2 is None or not hasattr(torch.export, "Dim"):
        raise Pt2Unsuitable(f"this PyTorch ({torch.__version__}) has no torch.export.pt2_archive package_pt2")
    return export_fn, package_pt2


class _TorchLogsToDebug(logging.Filter):
    """Drops PyTorch's own log records and repeats them on this package's logger at DEBUG: when
    torch.export gives up (on data-dependent control flow, say) it logs warnings and errors that the
    fallback to TorchScript and its note in trainlint.toml already handle. Other records pass, and so
    does PyTorch's structured trace (torch.__trace, written where TORCH_TRACE asks)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not (record.name == "torch" or record.name.startswith("torch.")) or record.name.startswith("torch.__trace"):
            return True
        with contextlib.suppress(Exception):
            log.debug("PyTorch (%s): %s", record.name, record.getMessage())
        return False


@contextlib.contextmanager
def _torch_logs_quietly(stderr: bool = False):
    """torch.export's log lines go to DEBUG while it runs (see _TorchLogsToDebug): a filter on the
    handlers that PyTorch's loggers and the root logger write to, removed afterwards; the loggers, their
    levels and the user's handlers are otherwise left as they are. With `stderr`, what is printed to
    sys.stderr meanwhile (torch.export prints the partial graph of an export that failed) goes to DEBUG
    too."""
    quiet = _TorchLogsToDebug()
    loggers = [logging.getLogger()] + [
        lg for name, lg in list(logging.Logger.manager.loggerDict.items())
        if isinstance(lg, logging.Logger) and (name == "torch" or name.startswith("torch."))
    ]
    handlers = list({id(h): h for lg in loggers for h in lg.handlers}.values())
    for h in handlers:
        h.addFilter(quiet)
    printed = io.StringIO()
    try:
        with contextlib.redirect_stderr(printed) if stderr else contextlib.nullcontext():
            yield
    finally:
        for h in handlers:
            h.removeFilter(quiet)
        if printed.getvalue().strip():
            log.debug("PyTorch printed: %s", printed.getvalue().strip())


def _module_table(work: torch.nn.Module) -> list:
    """trainlint.json's "modules": every module of the work copy, in named_modules() order, with its
    training flag as the copy holds it, which is what the TorchScript file would hold: each module as the
    user left it, except that a model left wholly in eval mode (or one whose trainer switches it to train
    mode after the export: Hugging Face's) is exported in train mode, as it trains."""
    return [{"path": name, "kind": type(m).__name__, "training": m.training} for name, m in work.named_modules()]


def _export_example(example: torch.Tensor, x: np.ndarray) -> torch.Tensor:
    """Two samples to export with: torch.export specialises a batch dim of size 1 to a constant, and the
    example is stored in the archive (data/sample_inputs), so it is kept small."""
    two = torch.from_numpy(x[:2]) if len(x) >= 2 else torch.cat([example[:1]] * 2)
    return two.float() if two.dtype == torch.uint8 else two


def _export_reason(e: BaseException) -> str:
    """_first_line, but for torch.export's "Constraints violated (batch)!" the line under it that says what
    the code did ("You marked batch as dynamic but your code specialized it to be a constant (8)")."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    if lines and lines[0].startswith("Constraints violated"):
        detail = next((line for line in lines[1:] if line.startswith("- ")), None)
        if detail:
            return f"{lines[0].split('!')[0]}: {detail[2:].split('. ')[0]}"[:300]
    return _first_line(e)


def _export_pt2(model: torch.nn.Module, example: torch.Tensor, path: Path, notes: list, warn_eval: bool) -> None:
    """Writes model.pt2, the programs of a float32 CPU copy with the batch dim dynamic (min 1): "model"
    with every module in train mode, "eval" with every module in eval mode and, only when the user's
    modules' flags differ (a BatchNorm frozen in eval mode inside a model that trains), "as_saved" with
    each module's flag as the user left it; and extra/trainlint.json, each module's path, type and
    training flag at export. Raises Pt2Unsuitable when torch.export cannot export a program. Never
    run_decompositions(): trainlint trains the training IR as exported."""
    export_fn, package_pt2 = _pt2_tools()
    work = _work_copy(model, notes, warn_eval, "model.pt2")
    table = _module_table(work)
    flags = [entry["training"] for entry in table]
    modules = [m for _, m in work.named_modules()]
    batch = {0: torch.export.Dim("batch", min=1)}
    # The spatial dims of an image (or volume, or signal) batch as dynamic as the model allows
    # (Dim.AUTO specialises the ones it cannot free): trainlint trains fully convolutional models on
    # crops, a quarter of the work per step, which a program fixed to one size refuses.
    spatial = {d: torch.export.Dim.AUTO for d in range(2, example.dim())} if example.dim() >= 3 and \
        example.is_floating_point() and hasattr(torch.export.Dim, "AUTO") else {}

    def program(name: str):
        last = None
        for dims in ([{**batch, **spatial}] if spatial else []) + [batch]:
            try:
                # Grad mode on: the programs are trained; a user's no_grad around export() must not leak in.
                with torch.enable_grad(), _torch_logs_quietly(stderr=True):
                    return export_fn(work, (example,), dynamic_shapes=(dims,))
            except Exception as e:  # noqa: BLE001 - torch.export raises many types
                last = e
        raise Pt2Unsuitable(f"torch.export failed on the {name!r} program: {_export_reason(last)}") from last

    programs = {}
    with _torchscript_quietly([]), _torch_logs_quietly():
        work.train()
        programs["model"] = program("model")
        work.eval()
        programs["eval"] = program("eval")
        if len(set(flags)) > 1:
            for m, training in zip(modules, flags):
                m.training = training
            programs["as_saved"] = program("as_saved")
        meta = {"version": 1, "modules": table}
        try:
            package_pt2(str(path), exported_programs=programs, extra_files={"trainlint.json": json.dumps(meta)})
        except OSError:
            raise  # a full disk is the folder's error (an ExportError that names it), not torch.export's
        except Exception as e:  # noqa: BLE001 - a program the archive writer cannot serialise
            raise Pt2Unsuitable(f"torch.export's archive writer failed: {_first_line(e)}") from e
    _zero_serialization_id(path)
    frozen = sum(1 for f in flags if not f)
    described = ['"model" (every module in train mode)', '"eval" (every module in eval mode)']
    if "as_saved" in programs:
        described.append(f'"as_saved" (each module in its mode at export: {frozen} of {len(flags)} in eval mode)')
    notes.append(("model", f"model.pt2: torch.export programs {', '.join(described)}, batch dim dynamic; "
                           f"extra/trainlint.json lists each module's training flag at export"))


def _zero_serialization_id(path: Path) -> None:
    """Replaces the random 40-digit `.data/serialization_id` torch.export's archive writer puts in every
    file by zeros, with its CRC-32 in the data descriptor and the central directory, so that the same
    model writes the same bytes. Left as written when the member is not the stored, described layout
    torch writes (the file is valid either way)."""
    with zipfile.ZipFile(path) as z:
        info = next((i for i in z.infolist() if i.filename.endswith(".data/serialization_id")), None)
        central = z.start_dir
    if info is None or info.compress_type != zipfile.ZIP_STORED or not 0 < info.file_size <= 64:
        return
    new = b"0" * info.file_size
    crc = struct.pack("<I", zlib.crc32(new))
    name = info.filename.encode()
    with open(path, "r+b") as f:
        f.seek(info.header_offset)
        header = f.read(30)
        if header[:4] != b"PK\x03\x04":
            return
        name_len, extra_len = struct.unpack_from("<HH", header, 26)
        start = info.header_offset + 30 + name_len + extra_len
        if info.flag_bits & 0x8:
            # Bit 3 (torch sets it): the CRC is in a data descriptor after the data, with or without its
            # optional signature; the local header's is 0.
            f.seek(start + info.file_size)
            crc_at = start + info.file_size + (4 if f.read(4) == b"PK\x07\x08" else 0)
        else:
            crc_at = info.header_offset + 14
        f.seek(central)
        directory = f.read()
        entry = directory.find(b"PK\x01\x02")
        while entry != -1:
            entry_name_len = struct.unpack_from("<H", directory, entry + 28)[0]
            if directory[entry + 46:entry + 46 + entry_name_len] == name:
                break
            entry = directory.find(b"PK\x01\x02", entry + 4)
        if entry == -1:
            return
        f.seek(start)
        f.write(new)
        f.seek(crc_at)
        f.write(crc)
        f.seek(central + entry + 16)
        f.write(crc)


def _checked_output_pt2(path: Path, example: torch.Tensor, output) -> None:
    """_checked_output for model.pt2: runs the written "model" program on the example batch, as trainlint
    will. trainlint runs a .pt2 program whose forward returns one tensor (it refuses `[model] output` for
    one), so a tuple or dict is Pt2Unsuitable: format="auto" writes TorchScript, where `output` selects."""
    try:
        with _torchscript_quietly([]), _torch_logs_quietly(), torch.no_grad():
            result = torch.export.load(str(path)).module()(example.cpu())
    except Exception as e:  # noqa: BLE001
        raise Pt2Unsuitable(f"the exported program fails on a batch of the loader's inputs ({_first_line(e)})") from e
    if not isinstance(result, torch.Tensor):
        raise Pt2Unsuitable(
            f"forward returns a {type(result).__name__}, and trainlint runs a .pt2 program that returns one tensor "
            f"(the prediction)"
        )
    _selected_output(result, output)  # warns that `output` is ignored


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
    return _selected_output(result, output)


def _selected_output(result, output):
    """Checks that `output` names a tensor in what forward returned: an index for a tuple or list, a key
    for a dict. Returns it (the default: the first entry), or None when forward returns one tensor."""
    if isinstance(result, torch.Tensor):
        if output is not None:
            warnings.warn(f"output={output!r} is ignored: forward returns one tensor", ExportWarning, stacklevel=6)
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
    a step it cannot record is warned about (once per reason) and counted in `lost_steps`.
    `exported_with`: "export" (model.pt2, torch.export), "script" or "trace" (model.pt, TorchScript)."""

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
    format: str = "auto",  # noqa: A002 - the user's word for it
) -> Audit:
    """Write a trainlint audit folder for this model, loader, loss and optimizer.

    - model.pt2: `torch.export` programs of a float32 CPU copy, batch dim dynamic: "model" with every
      module in train mode, "eval" with every module in eval mode, and "as_saved" with each module's own
      flag when the model's modules differ (a BatchNorm frozen in eval mode); extra/trainlint.json lists
      every module's path, type and training flag at export.
    - model.pt instead, when torch.export cannot export the model (data-dependent control flow, a forward
      that returns a tuple or dict, a PyTorch without it): `torch.jit.script` of the copy in train mode
      (`torch.jit.trace` in train mode when scripting or saving fails, with an ExportWarning naming what
      tracing freezes), and a note in trainlint.toml that says why.
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
    `format`: "auto" (model.pt2, else model.pt), "pt2" (model.pt2 or an ExportError that says why
    torch.export failed) or "torchscript" (model.pt only, without trying torch.export).
    `log`: None or True writes the loss log to out_dir/loss.csv through `Audit.log_step`, a path puts it
    there (its folder is created), False writes none. The model, loader and random generators are left
    as they were. A refusal (ExportError) or a failure leaves no folder behind: the files are written
    to a temporary sibling folder and moved into `out_dir` at the end.
    """
    return write_audit(model, loader, out_dir, loss_fn=loss_fn, optimizer=optimizer, samples=samples, log=log,
                       inputs=inputs, targets=targets, shuffle=shuffle, temporal=temporal, task=task, output=output,
                       scheduler=scheduler, total_steps=total_steps, format=format)


def _export_model(model, example, x, stage: Path, notes: list, warn_eval: bool, output, format: str):  # noqa: A002
    """Writes model.pt2 (format "auto" or "pt2") or model.pt (format "torchscript", or "auto" when
    torch.export cannot: the reason becomes a note). Returns how it was exported ("export", "script",
    "trace"), the file's name and the `[model] output` to write."""
    _warn_if_eval(model, warn_eval)
    first_try = list(notes)
    if format != "torchscript":
        path = stage / "model.pt2"
        try:
            _export_pt2(model, _export_example(example, x), path, first_try, warn_eval)
            _checked_output_pt2(path, example, output)
            notes[:] = first_try
            return "export", "model.pt2", None
        except Pt2Unsuitable as e:
            path.unlink(missing_ok=True)
            if format == "pt2":
                raise ExportError(
                    f"cannot export {type(model).__name__} as a .pt2: {e}; pass format=\"auto\" to fall back to "
                    f"TorchScript (model.pt) or format=\"torchscript\""
                ) from e
            log.info("trainlint-export: %s; writing TorchScript (model.pt) instead", e)
            notes.append(("model", f"model.pt is TorchScript, not a .pt2: {e}"))
    how = _script_or_trace(model, example, stage / "model.pt", notes, warn_eval)
    return how, "model.pt", _checked_output(stage / "model.pt", example, output)


def write_audit(model, loader, out_dir, *, loss_fn=None, optimizer=None, samples=256, log=None, inputs=None,
                targets=None, shuffle=None, temporal=None, task=None, output=None, scheduler=None,
                total_steps=None, notes=(), warn_eval=True, format="auto") -> Audit:  # noqa: A002
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
    if format not in FORMATS:
        raise ExportError(f"format={format!r}; use one of {', '.join(map(repr, FORMATS))}")
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
            how, model_file, output = _export_model(model, example, x, stage, notes, warn_eval, output, format)
        setup["task"] = task or _setup.task_of(torch.from_numpy(x), torch.from_numpy(y), loss)
        if loss is not None:
            setup["loss"] = loss
        if temporal is not None:
            setup["temporal"] = bool(temporal)
        np.savez(stage / "data.npz", inputs=x, targets=y)

        order = ("task", "loss", "optimizer", "lr", "momentum", "weight_decay", "batch_size", "shuffle", "temporal")
        config = {
            "model": {"path": model_file} if output is None else {"path": model_file, "output": output},
            "data": {"path": "data.npz", "inputs": "inputs", "targets": "targets", "max_samples": len(x)},
            "setup": {k: setup[k] for k in order if k in setup},
        }
        _write_config(stage / "trainlint.toml", config, notes)
        if out.is_dir():
            for name in (model_file, "data.npz", "trainlint.toml"):
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
