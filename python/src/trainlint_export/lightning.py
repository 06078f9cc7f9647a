"""A Lightning callback that writes the audit folder when training starts and logs the training loss.

    from trainlint_export.lightning import TrainlintCallback
    trainer = L.Trainer(callbacks=[TrainlintCallback("audit", loss_fn=nn.CrossEntropyLoss())])

Importing this module needs `lightning` (or the older `pytorch_lightning`) installed.
"""
from __future__ import annotations

import ast
import inspect
import textwrap
import warnings

import torch

try:
    import lightning.pytorch as pl
except ImportError:  # pragma: no cover - depends on what is installed
    try:
        import pytorch_lightning as pl
    except ImportError as e:
        raise ImportError(
            "trainlint_export.lightning needs Lightning: pip install lightning (or pytorch-lightning)"
        ) from e

from ._errors import ExportWarning
from ._export import write_audit


def _has_forward(module) -> bool:
    """Whether the module's own class (not nn.Module or LightningModule) defines forward."""
    owner = next((c for c in type(module).__mro__ if "forward" in c.__dict__), torch.nn.Module)
    return owner not in (torch.nn.Module, pl.LightningModule)


def _loss_or_metric(name: str, module: torch.nn.Module) -> bool:
    """A module training_step calls on the prediction, not to make it: a loss or a torchmetrics metric."""
    return (
        isinstance(module, torch.nn.modules.loss._Loss)
        or name in ("loss_fn", "criterion", "loss", "loss_func", "loss_module")
        or type(module).__module__.split(".")[0] == "torchmetrics"
    )


def trained_module(pl_module) -> tuple[torch.nn.Module | None, str]:
    """What `training_step` trains, read from its source: `self(...)` / `self.forward(...)` is the
    module's forward; otherwise the one submodule it calls (`self.net(x)`), if there is exactly one
    that is not a loss. Returns (module or None, what was decided, for the config and warnings)."""
    cls = type(pl_module).__name__
    try:
        source = textwrap.dedent(inspect.getsource(type(pl_module).training_step))
        tree = ast.parse(source)
    except (OSError, TypeError, SyntaxError):
        why = f"the source of {cls}.training_step cannot be read, so what it trains is unknown"
        return (pl_module, f"{cls}.forward ({why})") if _has_forward(pl_module) else (None, why)
    calls_forward, called = False, []
    calls = sorted((n for n in ast.walk(tree) if isinstance(n, ast.Call)), key=lambda n: (n.lineno, n.col_offset))
    for node in calls:  # in source order
        f = node.func
        if isinstance(f, ast.Name) and f.id == "self":
            calls_forward = True
        elif isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) and f.value.id == "self":
            if f.attr == "forward":
                calls_forward = True
            else:
                sub = getattr(pl_module, f.attr, None)
                if isinstance(sub, torch.nn.Module) and not _loss_or_metric(f.attr, sub) and f.attr not in called:
                    called.append(f.attr)
    if calls_forward and _has_forward(pl_module):
        return pl_module, f"{cls}.forward, which training_step calls"
    if len(called) == 1:
        return getattr(pl_module, called[0]), (
            f"self.{called[0]}, the module {cls}.training_step calls (it does not call forward)"
        )
    what = f"several modules (self.{', self.'.join(called)})" if called else "no submodule directly"
    why = (f"{cls}.training_step calls {what} and not forward, so trainlint-export cannot tell which model "
           f"it trains; pass TrainlintCallback(model=lambda m: ...) the module that maps a batch's inputs "
           f"to the prediction the loss reads")
    if _has_forward(pl_module):
        return pl_module, f"{cls}.forward, which may not be what trains: {why}"
    return None, why


class TrainlintCallback(pl.Callback):
    """On train start: `export(<what training_step trains>, trainer.train_dataloader, out_dir, loss_fn,
    the first optimizer and its scheduler, ...)`. After every training batch: the step's loss
    (`outputs["loss"]` or the returned tensor) at `trainer.global_step`.

    `model`: the module to export, or a function of the LightningModule that returns it; by default
    the module's forward when `training_step` calls `self(...)`, else the one submodule it calls
    (`self.net(x)`), else forward with a warning (read from training_step's source; the choice is a
    comment in trainlint.toml). `loss_fn` defaults to the module's `loss_fn` or `criterion` attribute;
    the other keyword arguments go to `export` (`format="torchscript"` to write model.pt, not
    model.pt2). Exports on global rank 0 only. Nothing it does raises into `trainer.fit`: a failed
    export is a warning and the run goes on without an audit folder."""

    def __init__(self, out_dir, loss_fn=None, samples: int = 256, model=None, **export_kwargs):
        self.out_dir = out_dir
        self.loss_fn = loss_fn
        self.samples = samples
        self.model = model
        self.export_kwargs = export_kwargs
        self.audit = None
        self.error = None

    def on_train_start(self, trainer, pl_module) -> None:
        if trainer.global_rank != 0:
            return
        try:
            self._export(trainer, pl_module)
        except Exception as e:  # noqa: BLE001 - never into trainer.fit
            self.error = e
            warnings.warn(
                f"trainlint-export: no audit folder was written ({type(e).__name__}: {e}); training goes on",
                ExportWarning,
                stacklevel=2,
            )

    def _export(self, trainer, pl_module) -> None:
        loss_fn = self.loss_fn
        if loss_fn is None:
            loss_fn = getattr(pl_module, "loss_fn", None) or getattr(pl_module, "criterion", None)
        if self.model is not None:
            module = self.model(pl_module) if callable(self.model) and not isinstance(self.model, torch.nn.Module) else self.model
            what = f"the module passed as model= ({type(module).__name__})"
        else:
            module, what = trained_module(pl_module)
            if module is None:
                raise ValueError(what)
            if "may not be" in what:
                warnings.warn(f"trainlint-export: exported {what}", ExportWarning, stacklevel=3)
        optimizers = trainer.optimizers
        configs = getattr(trainer, "lr_scheduler_configs", None) or []
        scheduler = configs[0].scheduler if configs else None
        try:
            total = trainer.estimated_stepping_batches
        except Exception:  # noqa: BLE001 - a loader without a length; the scheduler's base lr still counts
            total = None
        total = int(total) if isinstance(total, (int, float)) and total == total and total != float("inf") else None
        kwargs = {"scheduler": scheduler, "total_steps": total, **self.export_kwargs}
        self.audit = write_audit(
            module,
            trainer.train_dataloader,
            self.out_dir,
            loss_fn=loss_fn,
            optimizer=optimizers[0] if optimizers else None,
            samples=self.samples,
            notes=[("model", f"exported: {what}")],
            **kwargs,
        )

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.audit is None or outputs is None:
            return
        try:
            loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
            if loss is not None:
                # global_step counts optimizer steps; with gradient accumulation several batches share one.
                step = trainer.global_step
                if self.audit.last_step is None or step > self.audit.last_step:
                    self.audit.log_step(step, loss)
        except Exception as e:  # noqa: BLE001 - log_step does not raise; this is for the lines around it
            self.audit._lose("callback", f"a step was not logged ({type(e).__name__}: {e})")
