"""The error raised for bad topology input.

Each layer has its own error class because lower layers may not import one
another (see DESIGN.md); all are ``ValueError`` subclasses and the CLI reports
any of them as one ``error:`` line.
"""


class TopologyError(ValueError):
    """A topology request or file that cannot be honoured; the message names the field."""
