"""A Hugging Face `TrainerCallback` that writes the audit folder when training starts and logs the
training loss the Trainer reports (every `logging_steps`).

    from trainlint_export.huggingface import TrainlintCallback
    trainer = Trainer(model, args, train_dataset=ds, callbacks=[TrainlintCallback("audit")])

The batches are dicts: `inputs` defaults to "input_ids" / "pixel_values" / ..., `targets` to "labels".
The model's forward must take that one tensor and return a tensor, a tuple or a dict: a transformers
model is usually traced (set `model.config.torchscript = True`, and `return_dict=False`), so wrap it
when it needs several inputs. Importing this module needs `transformers` installed.
"""
from __future__ import annotations

try:
    from transformers import TrainerCallback
except ImportError as e:  # pragma: no cover - depends on what is installed
    raise ImportError("trainlint_export.huggingface needs transformers: pip install transformers") from e

from ._export import export


class TrainlintCallback(TrainerCallback):
    """On train begin: `export(model, train_dataloader, out_dir, loss_fn, optimizer, ...)`; on each
    log event with a `loss`: a row at `state.global_step`. `loss_fn` has no default here (the Trainer
    computes the loss inside the model): pass the one the model uses, or leave it to trainlint's task
    default. The other keyword arguments go to `export`. Exports on the main process only."""

    def __init__(self, out_dir, loss_fn=None, samples: int = 256, **export_kwargs):
        self.out_dir = out_dir
        self.loss_fn = loss_fn
        self.samples = samples
        self.export_kwargs = export_kwargs
        self.audit = None

    def on_train_begin(self, args, state, control, model=None, train_dataloader=None, optimizer=None, **kwargs):
        if not state.is_world_process_zero:
            return
        if model is None or train_dataloader is None:
            raise ValueError("the Trainer passed no model or train_dataloader to the callback")
        self.audit = export(
            model,
            train_dataloader,
            self.out_dir,
            loss_fn=self.loss_fn,
            optimizer=optimizer,
            samples=self.samples,
            **self.export_kwargs,
        )

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.audit is None or not logs or "loss" not in logs:
            return
        self.audit.log_step(state.global_step, logs["loss"])
