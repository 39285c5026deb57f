"""Protocols by name: factories ``fn(label, **options) -> Protocol``, options checked from their annotations.

The built-in protocols register themselves when :mod:`etree.protocols` imports
their module (only the ones a run names); a user's protocol registers with the
same decorator (``etree.register_protocol``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from etree.core.errors import ProtocolError
from etree.core.registry import Registry
from etree.engine.protocol import Protocol

ProtocolFactory = Callable[..., Protocol]
PROTOCOLS: Registry[ProtocolFactory] = Registry("protocol", "protocols.name", error=ProtocolError)
register_protocol = PROTOCOLS.register


def build_registered(name: str, label: str, options: dict[str, Any]) -> Protocol:
    """Build a registered protocol, naming the spec field on an unknown name or a bad option."""
    factory = PROTOCOLS.get(name)
    return factory(label, **PROTOCOLS.check(name, options, f"protocols.{label}"))
