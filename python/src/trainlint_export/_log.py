"""The loss log trainlint reads: CSV with a header, a `step` column, the total in `loss` and each loss
term in a `loss_<name>` column (trainlint reads every `loss_*` column as a term)."""
from __future__ import annotations

import csv
import math
import os
from pathlib import Path

import torch

from ._errors import ExportError


class LogError(ExportError):
    """A step that cannot be recorded; `kind` groups them for Audit's warn-once."""

    def __init__(self, message: str, kind: str):
        super().__init__(message)
        self.kind = kind


def _value(name: str, v) -> float:
    if isinstance(v, torch.Tensor):
        if v.numel() != 1:
            raise LogError(f"{name} is a tensor of {v.numel()} values; log one number per step (e.g. loss.mean())", "value")
        v = v.detach().item()
    if isinstance(v, (str, bytes)) or v is None:
        raise LogError(f"{name} is a {type(v).__name__}, not a number", "value")
    try:
        return float(v)
    except (TypeError, ValueError):
        raise LogError(f"{name} is a {type(v).__name__}, not a number", "value") from None


class LossLogger:
    """Appends one row per `log_step` call; a row is written (and flushed) at once, so a crashed run
    keeps its log. A term that first appears after some rows widens the header (the file is rewritten,
    earlier rows get an empty cell). The log's folder is created with the first row."""

    def __init__(self, path, on_first_row=None, warn_once=None):
        self.path = Path(path)
        self._columns: list[str] = []
        self._last_step = None
        self._offset = 0
        self._rows = 0
        self._on_first_row = on_first_row
        self._warn_once = warn_once
        if self.path.exists():
            # A second run into the same folder starts a new log, as a new training run would.
            self.path.unlink()

    def log_step(self, step, loss, **terms) -> None:
        """Record the total `loss` of training step `step` (an increasing integer: the global step, not
        the batch index within an epoch) and any loss terms by name (`pixel=…` becomes `loss_pixel`).
        A step that does not follow the last one (the batch index of a new epoch) is logged after it:
        the rest of the log is shifted so that the steps keep increasing in the order they were logged."""
        if isinstance(step, torch.Tensor):
            step = step.item()
        if isinstance(step, bool) or not isinstance(step, (int, float)) or not math.isfinite(step):
            raise LogError(f"step must be a number, got {step!r}", "step")
        row = {"step": None, "loss": _value("loss", loss)}
        for name, v in terms.items():
            column = name if name.startswith("loss_") else f"loss_{name}"
            if column in row:
                raise LogError(f"log_step: term {name!r} is given twice", "term")
            row[column] = _value(name, v)
        given = step
        step = step + self._offset
        if self._last_step is not None and step <= self._last_step:
            self._offset += self._last_step + 1 - step
            if self._warn_once is not None:
                self._warn_once(
                    "step",
                    f"log_step: step {given} does not follow step {self._last_step}; logged as step "
                    f"{self._last_step + 1} and the following steps shifted alike (pass a global step, e.g. "
                    f"epoch * len(loader) + batch_index, to keep your own numbering)",
                )
            step = self._last_step + 1
        row["step"] = int(step) if float(step).is_integer() else step
        new = [c for c in row if c not in self._columns]
        if self._rows == 0:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        if new:
            self._widen(self._columns + new)
        with open(self.path, "a", newline="") as f:
            csv.writer(f).writerow([_cell(row.get(c)) for c in self._columns])
        self._last_step = step
        self._rows += 1
        if self._rows == 1 and self._on_first_row is not None:
            self._on_first_row()

    def _widen(self, columns: list[str]) -> None:
        rows = []
        if self.path.exists():
            with open(self.path, newline="") as f:
                rows = list(csv.DictReader(f))
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(columns)
            for r in rows:
                w.writerow([r.get(c, "") for c in columns])
        os.replace(tmp, self.path)
        self._columns = columns


def _cell(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return repr(v)  # shortest round-trip text; nan / inf as trainlint reads them
    return str(v)
