"""trainlint-export: write a trainlint audit folder from live PyTorch training objects.

    from trainlint_export import export
    audit = export(model, loader, "audit", loss_fn=loss_fn, optimizer=optimizer)
    ...
    audit.log_step(step, loss)          # in the training loop

then `trainlint check audit`.
"""
from ._errors import ExportError, ExportWarning
from ._export import Audit, export
from ._log import LossLogger

__all__ = ["Audit", "ExportError", "ExportWarning", "LossLogger", "export"]
__version__ = "0.1.0"
