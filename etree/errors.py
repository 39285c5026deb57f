"""The error raised for a protocol request that cannot be honoured (bad option, impossible tree)."""


class ProtocolError(ValueError):
    """A protocol option or structure that is invalid; the message names the spec field."""
