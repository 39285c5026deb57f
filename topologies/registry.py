"""The topology registry: names to generator functions, and the validated entry point.

An :class:`etree.core.registry.Registry` filled by a decorator (docs/ARCHITECTURE.md, registries): a duplicate name is
refused and an unknown name lists the valid ones. :func:`build_topology` is
the boundary where a spec's ``[topology]`` table is checked before any graph
is drawn.
"""

import inspect
import math
from collections.abc import Callable
from typing import Any

import networkx as nx

from etree.core.registry import Option, Registry
from topologies.checks import check_devices, check_seed, is_number
from topologies.errors import TopologyError

Generator = Callable[..., nx.Graph]

TOPOLOGIES: Registry[Generator] = Registry("topology", "topology.kind", fixed=("seed",), error=TopologyError)


def register_topology(name: str) -> Callable[[Generator], Generator]:
    """Register a generator ``fn(devices, *, seed, **options) -> nx.Graph`` under ``name``."""

    def decorate(fn: Generator) -> Generator:
        params = inspect.signature(fn).parameters
        if "seed" not in params or params["seed"].kind is not inspect.Parameter.KEYWORD_ONLY:
            raise TopologyError(f"topology.kind: generator {name!r} must take a keyword-only 'seed'")
        return TOPOLOGIES.register(name)(fn)

    return decorate


def topology_options(kind: str) -> dict[str, Option]:
    """Keyword-only options of a registered generator (``seed`` excluded), by name."""
    return TOPOLOGIES.options(kind)


def _generator(kind: Any) -> Generator:
    return TOPOLOGIES.get(kind)


def _check_options(kind: str, options: dict[str, Any]) -> None:
    TOPOLOGIES.check(kind, options, "topology")
    accepted = topology_options(kind)
    for name, value in sorted(options.items()):
        # Every numeric option of a topology (sizes, radii, latencies, rates)
        # is a positive quantity; generators check finer rules themselves.
        numeric_default = is_number(accepted[name].default)
        if isinstance(value, bool) and numeric_default:
            raise TopologyError(f"topology.{name}: {value!r} is not allowed; must be a positive number")
        if is_number(value) and not (math.isfinite(float(value)) and float(value) > 0):
            raise TopologyError(f"topology.{name}: {value!r} is not allowed; must be a positive finite number")


def build_topology(kind: str, devices: int, *, seed: int, **options: Any) -> nx.Graph:
    """Validate a topology request and build the graph.

    Checks, in order: ``kind`` is registered, ``devices`` is a positive int,
    ``seed`` a non-negative int, every option is one the generator accepts,
    required options are present, and numeric options are positive.
    """
    fn = _generator(kind)
    devices = check_devices(devices)
    seed = check_seed(seed)
    _check_options(kind, options)
    return fn(devices, seed=seed, **options)
