"""What the exporter raises and warns."""


class ExportError(ValueError):
    """The objects cannot be exported as they are; the message says what to pass instead."""


class ExportWarning(UserWarning):
    """Something trainlint will model differently from your training (the audit still runs)."""
