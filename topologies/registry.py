"""The topology registry: names to generator functions, and the validated entry point.

A plain dict filled by a decorator (STYLE.md item 10): a duplicate name is
refused and an unknown name lists the valid ones. :func:`build_topology` is
the boundary where a spec's ``[topology]`` table is checked before any graph
is drawn.
"""

import inspect
import math
from collections.abc import Callable
from typing import Any

import networkx as nx

from topologies.checks import check_devices, check_seed, is_number
from topologies.errors import TopologyError

Generator = Callable[..., nx.Graph]

TOPOLOGIES: dict[str, Generator] = {}


def register_topology(name: str) -> Callable[[Generator], Generator]:
    """Register a generator ``fn(devices, *, seed, **options) -> nx.Graph`` under ``name``."""

    def decorate(fn: Generator) -> Generator:
        if name in TOPOLOGIES:
            raise TopologyError(f"topology.kind: {name!r} is already registered")
        params = inspect.signature(fn).parameters
        if "seed" not in params or params["seed"].kind is not inspect.Parameter.KEYWORD_ONLY:
            raise TopologyError(f"topology.kind: generator {name!r} must take a keyword-only 'seed'")
        TOPOLOGIES[name] = fn
        return fn

    return decorate


def topology_options(kind: str) -> dict[str, inspect.Parameter]:
    """Keyword-only options of a registered generator (``seed`` excluded), by name."""
    fn = _generator(kind)
    return {
        name: param
        for name, param in inspect.signature(fn).parameters.items()
        if param.kind is inspect.Parameter.KEYWORD_ONLY and name != "seed"
    }


def _generator(kind: Any) -> Generator:
    if not isinstance(kind, str) or kind not in TOPOLOGIES:
        raise TopologyError(f"topology.kind: unknown {kind!r}; choose one of: {', '.join(sorted(TOPOLOGIES))}")
    return TOPOLOGIES[kind]


def _check_options(kind: str, options: dict[str, Any]) -> None:
    accepted = topology_options(kind)
    valid = ", ".join(sorted(accepted)) or "(none)"
    for name in sorted(options):
        if name not in accepted:
            raise TopologyError(f"topology.{name}: unknown option {name!r} for {kind!r}; valid options: {valid}")
    for name, param in sorted(accepted.items()):
        if param.default is inspect.Parameter.empty and name not in options:
            raise TopologyError(f"topology.{name}: required by {kind!r} but not given")
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
