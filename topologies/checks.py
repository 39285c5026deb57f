"""Validation of topology inputs, shared by the registry and the generators.

Generators are public functions that may be called without the registry, so
they validate their own options through these helpers; every failure is a
``TopologyError`` whose one-line message names the field, quotes the bad value
and states the rule (docs/ARCHITECTURE.md, conventions).
"""

import math
from collections.abc import Iterable
from numbers import Integral, Real
from typing import Any

from topologies.errors import TopologyError


def _field(name: str) -> str:
    return name if name.startswith("topology.") else f"topology.{name}"


def is_number(value: Any) -> bool:
    """True for real numbers other than bools (``True`` is not a count of devices)."""
    return isinstance(value, Real) and not isinstance(value, bool)


def check_devices(devices: Any) -> int:
    """Return ``devices`` as an int, refusing bools, non-integers and counts below one."""
    if isinstance(devices, bool) or not isinstance(devices, Integral) or devices < 1:
        raise TopologyError(f"topology.devices: {devices!r} is not allowed; must be a positive int")
    return int(devices)


def check_seed(seed: Any) -> int:
    """Return ``seed`` as an int; numpy seeds must be non-negative integers."""
    if isinstance(seed, bool) or not isinstance(seed, Integral) or seed < 0:
        raise TopologyError(f"topology.seed: {seed!r} is not allowed; must be a non-negative int")
    return int(seed)


def positive_float(name: str, value: Any) -> float:
    """Return ``value`` as a float, refusing non-numbers, NaN, infinities and values <= 0."""
    if not is_number(value) or not math.isfinite(float(value)) or float(value) <= 0:
        raise TopologyError(f"{_field(name)}: {value!r} is not allowed; must be a positive finite number")
    return float(value)


def positive_int(name: str, value: Any) -> int:
    """Return ``value`` as an int, refusing bools, non-integers and values < 1."""
    if isinstance(value, bool) or not isinstance(value, Integral) or value < 1:
        raise TopologyError(f"{_field(name)}: {value!r} is not allowed; must be a positive int")
    return int(value)


def one_of(name: str, value: Any, allowed: Iterable[str]) -> str:
    """Return ``value`` if it is one of ``allowed``; the error lists them sorted."""
    choices = sorted(allowed)
    if not isinstance(value, str) or value not in choices:
        raise TopologyError(f"{_field(name)}: unknown {value!r}; choose one of: {', '.join(choices)}")
    return value
