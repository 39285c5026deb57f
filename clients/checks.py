"""Option checks shared by the data loaders: integers, booleans and finite floats within bounds."""

from __future__ import annotations

from typing import Any

import numpy as np

from clients.errors import ClientsError

#: Seeds reach numpy's legacy and scikit-learn's generators, which take 32 bits.
MAX_SEED = 2**32 - 1


def check_int(field: str, value: Any, low: int) -> int:
    """An integer option at least ``low`` (booleans refused: TOML ``true`` is not 1)."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < low:
        raise ClientsError(f"{field}: {value!r} must be an integer >= {low}")
    return int(value)


def check_bool(field: str, value: Any) -> bool:
    """A switch: TOML true or false, never a number or a string that merely looks truthy."""
    if not isinstance(value, bool):
        raise ClientsError(f"{field}: {value!r} must be true or false")
    return value


def check_float(
    field: str, value: Any, low: float, high: float, *, open_low: bool = False, open_high: bool = False
) -> float:
    """A real option inside [low, high], each end optionally open."""
    if isinstance(value, bool) or not isinstance(value, int | float | np.number):
        raise ClientsError(f"{field}: {value!r} must be a number")
    v = float(value)
    too_low = v <= low if open_low else v < low
    too_high = v >= high if open_high else v > high
    if not np.isfinite(v) or too_low or too_high:
        left, right = "(" if open_low else "[", ")" if open_high else "]"
        raise ClientsError(f"{field}: {value!r} is out of range; must be in {left}{low}, {high}{right}")
    return v
