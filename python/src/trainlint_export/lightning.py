"""A Lightning callback that writes the audit folder when training starts and logs the training loss.

    from trainlint_export.lightning import TrainlintCallback
    trainer = L.Trainer(callbacks=[TrainlintCallback("audit", loss_fn=nn.CrossEntropyLoss())])

Importing this module needs `lightning` (or the older `pytorch_lightning`) installed.
"""
from __future__ import annotations

try:
    import lightning.pytorch as pl
except ImportError:  # pragma: no cover - depends on what is installed
    try:
        import pytorch_lightning as pl
    except ImportError as e:
        raise ImportError(
            "trainlint_export.lightning needs Lightning: pip install lightning (or pytorch-lightning)"
        ) from e

from ._export import export


class TrainlintCallback(pl.Callback):
    """On train start: `export(pl_module, trainer.train_dataloader, out_dir, loss_fn, the first
    optimizer, ...)`. After every training batch: the step's loss (`outputs["loss"]` or the returned
    tensor) at `trainer.global_step`. `loss_fn` defaults to the module's `loss_fn` or `criterion`
    attribute; the other keyword arguments go to `export`. Exports on global rank 0 only."""

    def __init__(self, out_dir, loss_fn=None, samples: int = 256, **export_kwargs):
        self.out_dir = out_dir
        self.loss_fn = loss_fn
        self.samples = samples
        self.export_kwargs = export_kwargs
        self.audit = None

    def on_train_start(self, trainer, pl_module) -> None:
        if trainer.global_rank != 0:
            return
        loss_fn = self.loss_fn
        if loss_fn is None:
            loss_fn = getattr(pl_module, "loss_fn", None) or getattr(pl_module, "criterion", None)
        optimizers = trainer.optimizers
        self.audit = export(
            pl_module,
            trainer.train_dataloader,
            self.out_dir,
            loss_fn=loss_fn,
            optimizer=optimizers[0] if optimizers else None,
            samples=self.samples,
            **self.export_kwargs,
        )

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.audit is None or outputs is None:
            return
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if loss is not None:
            # global_step counts optimizer steps; with gradient accumulation several batches share one.
            step = trainer.global_step
            if self.audit.last_step is None or step > self.audit.last_step:
                self.audit.log_step(step, loss)
