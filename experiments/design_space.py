"""The design space ``etree design`` searches: the E-Tree choices the paper leaves open.

The E-Tree paper (Yang et al., IEEE IoT-J 8(14), 2021) calls its tree and the locations and
orders of aggregation on it "optimally designed" but gives no method to choose them; its
experiments fix K = 8 first-layer clusters, a 3-level tree and ratios [1, 5]. A :class:`Design`
is one point of the space of the ``etree`` protocol's options (``etree.protocols.etree_learning``)
that shape the tree and its schedule; why each one is searched or fixed is in
``docs/DESIGN_SEARCH.md``:

- ``layers`` (2 or 3 aggregation layers, the paper's Fig. 2 has 2: heads, then the root) and
  ``groups``: first-layer clusters K in [2, min(32, devices // 2)] (log scale), and for 3 layers
  a second layer of ceil(K / shrink) clusters (shrink in 2..8, at least 2 clusters, fewer than K);
- ``ratios``: local epochs per cluster aggregation in 1..3, then each layer above aggregates every
  1..10 aggregations of the layer below (log scale);
- ``clustering``: KMA (Algorithm 1) with its accuracy tolerance δ in [0.01, 0.5] (log), or plain
  delay k-medoids;
- ``weighted`` (example-weighted means, or the paper's plain mean), ``participation`` (the share
  of devices sampled to train each round, 0.2..1 by 0.1) and ``public_nodes`` (Algorithm 2, with
  its γ in [0.01, 0.2], log; δ is Algorithm 2's tolerance too).

Every other option of the protocol (pre-training epochs, the public set's size, KMA's
iterations, how public nodes merge) keeps the spec's value: they are the authors' settings or
do not shape the tree.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import optuna

MAX_CLUSTERS = 32  # largest first-layer K searched: beyond it clusters are a handful of devices
MIN_DEVICES = 4  # the fewest devices a tree of 2 clusters of 2 can be designed for
SEARCHED = ("groups", "ratios", "clustering", "delta", "weighted", "participation", "public_nodes", "gamma")
PAPER_DELTA = 0.09  # the authors' clustering.delta
PAPER_GAMMA = 0.05  # etree's default gamma (a GUESS: the paper gives none)


@dataclass(frozen=True)
class Design:
    """One tree design: the ``etree`` options a trial sets (``options``); equal designs are one design."""

    groups: tuple[int, ...]
    ratios: tuple[int, ...]
    clustering: str = "kma"
    delta: float = PAPER_DELTA
    weighted: bool = False
    participation: float = 1.0
    public_nodes: bool = False
    gamma: float = PAPER_GAMMA

    def options(self) -> dict[str, Any]:
        """The ``[[protocols]]`` options of this design (TOML-ready)."""
        return {
            "groups": list(self.groups),
            "ratios": list(self.ratios),
            "clustering": self.clustering,
            "delta": self.delta,
            "weighted": self.weighted,
            "participation": self.participation,
            "public_nodes": self.public_nodes,
            "gamma": self.gamma,
        }

    def text(self) -> str:
        """A one-line description for tables: ``K [8, 1], ratios [1, 5], kma δ 0.09, plain, p 1, no public``."""
        clustering = f"kma δ {self.delta:.3g}" if self.clustering == "kma" else "k-medoids"
        public = f"public γ {self.gamma:.3g}" + ("" if self.clustering == "kma" else f" δ {self.delta:.3g}")
        return (
            f"K {list(self.groups)}, ratios {list(self.ratios)}, {clustering}, "
            f"{'weighted' if self.weighted else 'plain'}, p {self.participation:g}, "
            f"{public if self.public_nodes else 'no public'}"
        )


def max_clusters(devices: int) -> int:
    """The largest first-layer K searched: clusters of at least 2 devices, at most ``MAX_CLUSTERS``."""
    return max(2, min(MAX_CLUSTERS, devices // 2))


def paper_design(devices: int) -> Design:
    """The paper's tree (K = 8, 3 levels, ratios [1, 5], KMA with δ 0.09, plain means, everyone
    trains, no public nodes), with K cut to what the fleet allows."""
    return Design(groups=(min(8, max_clusters(devices)), 1), ratios=(1, 5))


def paper_params(devices: int) -> dict[str, Any]:
    """The optuna parameters that :func:`suggest_design` turns into :func:`paper_design`, to enqueue it."""
    design = paper_design(devices)
    return {
        "groups_1": design.groups[0],
        "layers": 2,
        "ratio_1": 1,
        "ratio_2": 5,
        "clustering": "kma",
        "delta": PAPER_DELTA,
        "public_nodes": False,
        "weighted": False,
        "participation": 1.0,
    }


def suggest_design(trial: optuna.Trial, devices: int) -> Design:
    """The design optuna's sampler proposes for ``trial`` (the space of the module docstring)."""
    first = trial.suggest_int("groups_1", 2, max_clusters(devices), log=True)
    layers = trial.suggest_int("layers", 2, 3) if first >= 3 else 2
    groups: tuple[int, ...] = (first, 1)
    if layers == 3:
        shrink = trial.suggest_int("shrink", 2, 8)
        groups = (first, max(2, math.ceil(first / shrink)), 1)
    ratios = [trial.suggest_int("ratio_1", 1, 3)]
    ratios += [trial.suggest_int(f"ratio_{layer}", 1, 10, log=True) for layer in range(2, layers + 1)]
    clustering = trial.suggest_categorical("clustering", ["kma", "kmedoids"])
    public = bool(trial.suggest_categorical("public_nodes", [False, True]))
    delta = trial.suggest_float("delta", 0.01, 0.5, log=True) if clustering == "kma" or public else PAPER_DELTA
    gamma = trial.suggest_float("gamma", 0.01, 0.2, log=True) if public else PAPER_GAMMA
    return Design(
        groups=groups,
        ratios=tuple(ratios),
        clustering=str(clustering),
        delta=float(delta),
        weighted=bool(trial.suggest_categorical("weighted", [False, True])),
        participation=round(float(trial.suggest_float("participation", 0.2, 1.0, step=0.1)), 2),
        public_nodes=public,
        gamma=float(gamma),
    )
