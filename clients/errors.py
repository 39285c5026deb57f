"""The error raised for bad dataset, partition, model or training input.

A subclass of the project's base exception, :class:`etree.core.errors.EtreeError`, which the CLI
reports as one ``error:`` line.
"""

from etree.core.errors import EtreeError


class ClientsError(EtreeError):
    """A data, model or training request that cannot be honoured; the message names the field."""
