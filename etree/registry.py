"""Protocols by name: plain functions ``fn(label, **options) -> Protocol``; duplicates refused."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from etree.errors import ProtocolError
from etree.protocol import Protocol

ProtocolFactory = Callable[..., Protocol]
PROTOCOLS: dict[str, ProtocolFactory] = {}


def register_protocol(name: str) -> Callable[[ProtocolFactory], ProtocolFactory]:
    """Add a protocol factory under ``name``."""

    def add(factory: ProtocolFactory) -> ProtocolFactory:
        if name in PROTOCOLS:
            raise ValueError(f"protocol {name!r} is registered twice")
        PROTOCOLS[name] = factory
        return factory

    return add


def protocol_options(name: str) -> list[str]:
    """The option names a protocol accepts (its keyword-only parameters)."""
    parameters = inspect.signature(PROTOCOLS[name]).parameters.values()
    return [p.name for p in parameters if p.kind is p.KEYWORD_ONLY]


def make_protocol(name: str, label: str, options: dict[str, Any]) -> Protocol:
    """Build a protocol, naming the spec field on an unknown name or option."""
    if name not in PROTOCOLS:
        raise ProtocolError(f"protocols.name: unknown {name!r}; choose one of: {', '.join(sorted(PROTOCOLS))}")
    accepted = protocol_options(name)
    for option in sorted(options):
        if option not in accepted:
            raise ProtocolError(
                f"protocols.{label}.{option}: unknown option for {name!r}; allowed: {', '.join(accepted) or 'none'}"
            )
    return PROTOCOLS[name](label, **options)
