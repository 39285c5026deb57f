"""The project's exceptions (SimPy's ``exceptions.py`` style): one base, one class per layer.

Every error a user's input can cause derives from :class:`EtreeError`; its
message names the spec field and the rule it broke, and the CLI prints it as one
``error:`` line (exit 2). Lower layers (``topologies``, ``clients``) import this
module, which imports nothing from the project.
"""


class EtreeError(ValueError):
    """Input etree cannot honour; the message starts with the field it concerns."""


class ProtocolError(EtreeError):
    """A protocol option or structure that is invalid; the message names the spec field."""
