"""Reading inputs and targets out of whatever a loader yields: tensors, tuples, lists, dicts."""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from ._errors import ExportError

INPUT_KEYS = ("inputs", "input", "x", "image", "images", "pixel_values", "input_ids", "data", "features")
TARGET_KEYS = ("targets", "target", "y", "label", "labels", "mask", "masks")


def pick(batch, selector, role: str, defaults: tuple):
    """The entry of `batch` that `selector` names: an index (tuple / list batch), a key (dict batch), a
    callable(batch) -> tensor, or None for the default (index 0 / 1, or the first of `defaults`)."""
    if callable(selector) and not isinstance(selector, (str, int)):
        return _tensor(selector(batch), role, f"{role}=<callable>")
    if isinstance(batch, Mapping):
        keys = list(batch.keys())
        if selector is None:
            selector = next((k for k in defaults if k in batch), None)
            if selector is None:
                raise ExportError(
                    f"the loader yields dicts with keys {keys}; say which holds the {role} with "
                    f"export(..., {role}=\"key\")"
                )
        if selector not in batch:
            raise ExportError(f"{role}={selector!r} is not a key of the loader's batches (keys: {keys})")
        return _tensor(batch[selector], role, f"{role}={selector!r}")
    if isinstance(batch, Sequence) and not isinstance(batch, (str, bytes)):
        if selector is None:
            selector = 0 if role == "inputs" else 1
        if not isinstance(selector, int):
            raise ExportError(
                f"{role}={selector!r}: the loader yields {type(batch).__name__}s of {len(batch)} entries; "
                f"name the {role} by index"
            )
        if not -len(batch) <= selector < len(batch):
            raise ExportError(
                f"{role}={selector}: the loader's batches have only {len(batch)} entr{'y' if len(batch) == 1 else 'ies'}"
                + ("; a loader of inputs alone needs targets for most checks: yield (inputs, targets)" if role == "targets" else "")
            )
        return _tensor(batch[selector], role, f"{role}={selector}")
    if isinstance(batch, torch.Tensor) and role == "inputs" and selector is None:
        return batch
    raise ExportError(
        f"the loader yields {type(batch).__name__} batches; expected tensors, tuples/lists or dicts of tensors, "
        f"or pass {role}=callable(batch) -> tensor"
    )


def _tensor(value, role: str, how: str) -> torch.Tensor:
    if isinstance(value, np.ndarray):
        value = torch.from_numpy(value)
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (Mapping, Sequence)) and not isinstance(value, (str, bytes)):
        raise ExportError(
            f"{how} selects a {type(value).__name__}, but a trainlint model takes one input tensor and one target "
            f"tensor; for a model with several inputs, export a wrapper module whose forward takes one tensor"
        )
    raise ExportError(f"{how} selects a {type(value).__name__}, not a tensor")


def as_saved(t: torch.Tensor, role: str) -> np.ndarray:
    """The dtype trainlint reads: float32 for floats (inputs and targets), int64 for class indices and
    token ids, uint8 images kept as they are (trainlint feeds them as float, never rescaled)."""
    t = t.detach().cpu()
    if t.is_complex():
        raise ExportError(f"the {role} are complex ({t.dtype}); trainlint reads real arrays only")
    if t.dtype == torch.bool:
        t = t.float()
    elif t.is_floating_point():
        t = t.float()
    elif t.dtype != torch.uint8 or role == "targets":
        t = t.long()
    if t.dim() == 0:
        raise ExportError(f"the {role} of a batch are a scalar; dim 0 must be the sample axis")
    return t.numpy()
