"""The error raised for bad topology input.

A subclass of the project's base exception, :class:`etree.core.errors.EtreeError`, which the CLI
reports as one ``error:`` line.
"""

from etree.core.errors import EtreeError


class TopologyError(EtreeError):
    """A topology request or file that cannot be honoured; the message names the field."""
