"""Network conditions of a run: timing, contention, compression, faults and heterogeneity.

One frozen object per run (the spec's ``[network]`` table, parsed and checked
by ``experiments.spec``), shared read-only by every protocol through the
``Workload``. Defaults: timing on, link contention on (messages into one
aggregator share its link; it costs little — about 1.4 s of engine time over a
1,000-device, 50-round E-Tree run with faults, against ~100 s of training), no
compression, no faults, the topology's own compute speeds and bandwidths.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DISTRIBUTIONS = ("topology", "fixed", "uniform", "lognormal")
LATE_POLICIES = ("drop", "stale")
CRASH_ROLES = ("server", "root", "head")


@dataclass(frozen=True)
class Distribution:
    """How a per-device quantity is drawn: ``topology`` keeps the graph's value;
    ``fixed`` is ``value`` everywhere; ``uniform`` is U(``low``, ``high``);
    ``lognormal`` has median ``median`` and log-space spread ``sigma``."""

    kind: str = "topology"
    value: float = 0.0
    low: float = 0.0
    high: float = 0.0
    median: float = 0.0
    sigma: float = 0.0

    def draw(self, rng: np.random.Generator, base: np.ndarray) -> np.ndarray:
        """One value per entry of ``base`` (the topology's values, returned as-is for ``topology``)."""
        size = len(base)
        if self.kind == "fixed":
            return np.full(size, self.value)
        if self.kind == "uniform":
            return rng.uniform(self.low, self.high, size)
        if self.kind == "lognormal":
            return self.median * np.exp(self.sigma * rng.standard_normal(size))
        return np.asarray(base, dtype=np.float64).copy()


@dataclass(frozen=True)
class Crash:
    """A node that fails for good at simulated time ``at_s``.

    ``node`` is a graph node id or a role resolved when the crash fires:
    ``"server"`` and ``"root"`` name the aggregation tree's root (FedAvg's
    server), ``"head"`` the layer-1 head, other than the root, of the largest
    cluster (ties: smallest id).
    ``protocol`` restricts the crash to the protocol with that label ("" = all).
    """

    at_s: float
    node: str | int
    protocol: str = ""


@dataclass(frozen=True)
class NetworkConditions:
    """The ``[network]`` table of a spec (see ``docs`` in ``experiments/spec.py``)."""

    timing: bool = True  # false: no simulated time at all (sim_time_s stays 0), the fastest runs
    contention: bool = True  # messages into (out of) one aggregator's link queue on it (FIFO)
    compression: float = 1.0  # bytes on the wire = model bytes / compression
    dropout: float = 0.0  # probability a device sits a round out (drawn per device per round)
    deadline_s: float = 0.0  # round deadline for device uploads, from the round's start; 0 = none
    late: str = "drop"  # what happens to an upload past the deadline: "drop" or "stale" (used next round)
    detection_timeout_s: float = 1.0  # how long children wait on a silent aggregator before giving up on it
    compute_flops: Distribution = Distribution()  # per-device compute speed
    bandwidth_bps: Distribution = Distribution()  # per-link bandwidth of every link touching a device
    trace: str = ""  # CSV with columns device, compute_flops, bandwidth_bps (either optional); overrides draws
    crash: tuple[Crash, ...] = ()

    @property
    def heterogeneous(self) -> bool:
        return self.compute_flops.kind != "topology" or self.bandwidth_bps.kind != "topology" or bool(self.trace)

    def crashes_for(self, label: str) -> tuple[Crash, ...]:
        """The crashes that concern the protocol labelled ``label``, in time order (ties: spec order)."""
        mine = [c for c in self.crash if c.protocol in ("", label)]
        return tuple(sorted(mine, key=lambda c: c.at_s))
