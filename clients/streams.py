"""Counter-based random numbers: one independent stream per (seed, round, device, ...).

numpy's ``Generator`` draws sequentially, so a device's numbers would depend on
how many devices were drawn before it, and on how the fleet is chunked or
sharded. A stateless hash of the stream coordinates (SplitMix64, Steele et al.,
"Fast splittable pseudorandom number generators", OOPSLA 2014) gives every
device its own stream, vectorised over any array shape, identical whichever
batch or machine computes it. Hand-written because no library offers a
vectorised counter-based generator over numpy arrays.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


def splitmix64(x: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint64]:
    """SplitMix64's finaliser of every entry: a fixed pseudo-random bijection of 64-bit integers."""
    with np.errstate(over="ignore"):
        z = x + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * _MIX1
        z = (z ^ (z >> np.uint64(27))) * _MIX2
    return z ^ (z >> np.uint64(31))


def hashed_uniform(seed: int, *coordinates: int | npt.ArrayLike) -> npt.NDArray[np.float64]:
    """Uniform [0, 1) numbers indexed by ``seed`` and broadcast integer coordinates."""
    state = splitmix64(np.asarray(seed % 2**64, dtype=np.uint64))
    for coordinate in coordinates:
        values = np.asarray(coordinate).astype(np.int64).astype(np.uint64)
        state = splitmix64(state ^ values)
    return (state >> np.uint64(11)).astype(np.float64) * (1.0 / 2**53)
