"""The error raised for bad dataset, partition, model or training input.

Each layer has its own error class because lower layers may not import one
another (see DESIGN.md); all are ``ValueError`` subclasses and the CLI reports
any of them as one ``error:`` line.
"""


class ClientsError(ValueError):
    """A data, model or training request that cannot be honoured; the message names the field."""
