"""A Hugging Face `TrainerCallback` that writes the audit folder when training starts and logs the
training loss the Trainer reports (every `logging_steps`).

    from trainlint_export.huggingface import TrainlintCallback
    trainer = Trainer(model, args, train_dataset=ds, callbacks=[TrainlintCallback("audit")])

The batches are dicts: `inputs` defaults to the model's first forward argument ("input_ids",
"pixel_values", ...), `targets` to "labels". The model is exported through a wrapper whose forward
takes that one tensor (as a keyword) and returns the prediction, `output=` of what the model returns
(default "logits" for a dict or ModelOutput, 0 for a tuple): a transformers model (4.x or 5.x, which
returns dicts even with torchscript=True) is exported through it (torch.export, else traced).
Importing this module needs `transformers` installed.
"""
from __future__ import annotations

import inspect
import warnings

import torch

try:
    from transformers import TrainerCallback
except ImportError as e:  # pragma: no cover - depends on what is installed
    raise ImportError("trainlint_export.huggingface needs transformers: pip install transformers") from e

from ._batches import INPUT_KEYS
from ._errors import ExportError, ExportWarning
from ._export import write_audit


class Prediction(torch.nn.Module):
    """forward(x) = model(**{key: x})[output]: one tensor in, the prediction tensor out. The loss stays
    out of it (no labels are passed), as trainlint computes its own."""

    def __init__(self, model: torch.nn.Module, key: str, output=None):
        super().__init__()
        self.model = model
        self.key = key
        self.output = output

    def forward(self, x):
        out = self.model(**{self.key: x})
        if isinstance(out, torch.Tensor):
            return out
        if isinstance(out, dict):  # ModelOutput is a dict
            key = "logits" if self.output is None else self.output
            if key not in out:
                raise ExportError(f"output={key!r}: the model returns {type(out).__name__} with keys {list(out.keys())}")
            return out[key]
        if isinstance(out, (tuple, list)):
            index = 0 if self.output is None else self.output
            if not isinstance(index, int) or not -len(out) <= index < len(out):
                raise ExportError(f"output={index!r}: the model returns a tuple of {len(out)}; name the prediction by index")
            return out[index]
        raise ExportError(f"the model returns a {type(out).__name__}, not a tensor, tuple or dict")


def input_key(model: torch.nn.Module, inputs=None) -> str:
    """The keyword the model's forward takes the input tensor by: `inputs` when it is a key, else the
    first forward parameter that is one of the usual input names, else the first parameter."""
    if isinstance(inputs, str):
        return inputs
    try:
        params = [p.name for p in inspect.signature(model.forward).parameters.values()
                  if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    except (TypeError, ValueError):
        params = []
    return next((p for p in params if p in INPUT_KEYS), params[0] if params else "input_ids")


class TrainlintCallback(TrainerCallback):
    """On train begin: `export(Prediction(model), train_dataloader, out_dir, loss_fn, optimizer, ...)`;
    on each log event with a `loss`: a row at `state.global_step`. `loss_fn` has no default here (the
    Trainer computes the loss inside the model): pass the one the model uses, or leave it to trainlint's
    task default. `output` names the prediction in what the model returns; the other keyword arguments
    go to `export` (`format="torchscript"` to write model.pt, not model.pt2). Every module is recorded
    as training in model.pt2's trainlint.json, since the Trainer calls model.train() after this
    callback. Exports on the main process only. Nothing it does raises into `trainer.train()`: a failed
    export is a warning and the run goes on without an audit folder."""

    def __init__(self, out_dir, loss_fn=None, samples: int = 256, output=None, **export_kwargs):
        self.out_dir = out_dir
        self.loss_fn = loss_fn
        self.samples = samples
        self.output = output
        self.export_kwargs = export_kwargs
        self.audit = None
        self.error = None

    def on_train_begin(self, args, state, control, model=None, train_dataloader=None, optimizer=None,
                       lr_scheduler=None, **kwargs):
        if not state.is_world_process_zero:
            return
        try:
            if model is None or train_dataloader is None:
                raise ValueError("the Trainer passed no model or train_dataloader to the callback")
            key = input_key(model, self.export_kwargs.get("inputs"))
            export_kwargs = {"inputs": key, "scheduler": lr_scheduler,
                             "total_steps": state.max_steps if state.max_steps and state.max_steps > 0 else None,
                             **self.export_kwargs}
            chosen = "its logits (or the first entry of a tuple)" if self.output is None else f"its output {self.output!r}"
            self.audit = write_audit(
                Prediction(model, key, self.output),
                train_dataloader,
                self.out_dir,
                loss_fn=self.loss_fn,
                optimizer=optimizer,
                samples=self.samples,
                # The Trainer calls model.train() itself, after this callback.
                warn_eval=False,
                notes=[("model", f"exported: {type(model).__name__} called as model({key}=inputs), {chosen} "
                                 f"as the prediction")],
                **export_kwargs,
            )
        except Exception as e:  # noqa: BLE001 - never into trainer.train()
            self.error = e
            warnings.warn(
                f"trainlint-export: no audit folder was written ({type(e).__name__}: {e}); training goes on",
                ExportWarning,
                stacklevel=2,
            )

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.audit is None or not logs or "loss" not in logs:
            return
        self.audit.log_step(state.global_step, logs["loss"])
