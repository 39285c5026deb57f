"""Public nodes shared by every cluster: E-Tree paper, Algorithm 2 and Fig. 5.

A public node is a leaf that belongs to all K layer-1 clusters, so its data
(through its model) reaches every cluster: the paper's refinement against
non-IID data. Candidates are the devices closest on average to the clusters;
one is kept if, after it joins the K - 1 clusters it is not yet in, every
cluster's mean pre-trained accuracy stays within ``delta`` of the global mean.

Open points (GUESSes, configurable where it matters):
- ``Dist(n, C_k)`` is the delay from n to cluster k's centre (head).
- Aggregators (layer-1 heads) are never public nodes: a head already sits in
  its own cluster's aggregation, and membership in the others would make it
  both aggregator and member of its peers.
- The number of candidates is ``floor(gamma * N)`` (at least one when gamma > 0).
- Accepted nodes stay in their clusters, so later candidates see the means
  they moved (the paper removes only the rejected ones).
"""

from __future__ import annotations

import numpy as np


def select_public_nodes(
    centre_delays: np.ndarray,
    labels: np.ndarray,
    accuracy: np.ndarray,
    *,
    gamma: float,
    delta: float,
    exclude: np.ndarray | None = None,
) -> np.ndarray:
    """Algorithm 2: the public nodes (sorted device ids).

    ``centre_delays[k, i]`` is the delay from cluster k's centre to device i,
    ``labels[i]`` device i's cluster, ``accuracy[i]`` its pre-trained accuracy.
    """
    k, n = centre_delays.shape
    accuracy = np.asarray(accuracy, dtype=np.float64)
    target = float(accuracy.mean())  # line 1
    sums = np.bincount(labels, weights=accuracy, minlength=k)  # line 2
    sizes = np.bincount(labels, minlength=k).astype(np.float64)
    spread = centre_delays.mean(axis=0)  # line 3: r_j = (1/K) sum_i Dist(n_j, C_i)
    allowed = np.ones(n, dtype=bool)
    if exclude is not None:
        allowed[np.asarray(exclude, dtype=np.int64)] = False
    ranked = np.flatnonzero(allowed)[np.argsort(spread[allowed], kind="stable")]  # line 4
    count = max(1, int(np.floor(gamma * n + 1e-9))) if gamma > 0 else 0
    chosen: list[int] = []
    for j in ranked[:count].tolist():  # lines 5-8
        others = np.arange(k) != labels[j]
        trial_sums = sums + others * accuracy[j]
        trial_sizes = sizes + others
        if bool(np.all(np.abs(trial_sums / trial_sizes - target) < delta)):
            sums, sizes = trial_sums, trial_sizes
            chosen.append(j)
    return np.array(sorted(chosen), dtype=np.int64)
