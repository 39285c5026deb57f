"""Connectivity checks on edge arrays and the bounded retry every random generator uses.

A topology must be connected (docs/ARCHITECTURE.md, conventions): random generators redraw with
seeds derived from the caller's seed, a bounded number of times, then fail
with an error that says which option to raise. Checking components on the
edge array (scipy) before any networkx graph exists keeps retries cheap at
100,000 devices.
"""

from collections.abc import Callable
from typing import TypeVar

import numpy as np
from numpy.typing import NDArray
from scipy import sparse
from scipy.sparse import csgraph

from topologies.errors import TopologyError

#: Redraws allowed before a random generator gives up on connectivity.
MAX_ATTEMPTS = 20

T = TypeVar("T")


def component_count(n: int, edges: NDArray[np.int64]) -> int:
    """Number of connected components of the graph on nodes ``0..n-1``."""
    if n == 0:
        return 0
    ones = np.ones(len(edges), dtype=np.int8)
    adjacency = sparse.coo_array((ones, (edges[:, 0], edges[:, 1])), shape=(n, n))
    count, _ = csgraph.connected_components(adjacency, directed=False)
    return int(count)


def derived_seed(seed: int, attempt: int) -> int:
    """Seed of redraw ``attempt``: independent streams from one caller seed.

    Attempt 0 uses a derived seed too, so retries never reuse a stream.
    """
    state = np.random.SeedSequence([seed, attempt]).generate_state(1, dtype=np.uint32)
    return int(state[0])


def retry_until_connected(
    draw: Callable[[int], T],
    is_connected: Callable[[T], bool],
    *,
    seed: int,
    field: str,
    value: object,
    hint: str,
) -> T:
    """Call ``draw(derived_seed)`` until ``is_connected`` holds, at most MAX_ATTEMPTS times.

    The error names ``field`` (the option that governs connectivity), quotes
    its ``value`` and adds ``hint``, e.g. ``"raise topology.radius"``.
    """
    for attempt in range(MAX_ATTEMPTS):
        result = draw(derived_seed(seed, attempt))
        if is_connected(result):
            return result
    raise TopologyError(
        f"{field}: {value!r} left the graph disconnected in all {MAX_ATTEMPTS} draws from seed {seed}; {hint}"
    )
