"""etree: a simulator for decentralized edge federated learning (E-Tree, FedAvg, Flower, gossip).

This file is the public Python API, for notebooks and scripts::

    import etree
    result = etree.run("experiments/default.toml", overrides={"rounds": 5}, out=None)
    result.metrics    # pandas DataFrame with the metrics.csv columns
    result.summary()  # summary.md's text; result.plot(): convergence.png's figure
    etree.load_run("results/default")  # a run folder read back into the same result type

Its names are loaded on first use (PEP 562): every module of the project imports
:mod:`etree.core` for the base exception, which runs this file first, so this
file may import nothing itself; ``etree --help`` stays fast for the same reason.
The packages below it are documented in ``docs/ARCHITECTURE.md``.
"""

from __future__ import annotations

import importlib
from typing import Any

from etree.core.version import __version__

# public name -> module that defines it
_EXPORTS = {
    "run": "experiments.api",
    "resume": "experiments.api",
    "load_run": "experiments.api",
    "RunResult": "experiments.api",
    "register_model": "experiments.plugins",
    "register_dataset": "experiments.plugins",
    "register_partitioner": "experiments.plugins",
    "register_topology": "experiments.plugins",
    "register_protocol": "experiments.plugins",
    "EtreeError": "etree.core.errors",
    "ProtocolError": "etree.core.errors",
    "Protocol": "etree.engine.protocol",
    "Record": "etree.engine.protocol",
    "RoundCost": "etree.engine.protocol",
    "Workload": "etree.engine.workload",
    "run_protocol": "etree.engine.loop",
    "PROTOCOLS": "etree.engine.registry",
    "make_protocol": "etree.protocols",
}

__all__ = ["__version__", *sorted(_EXPORTS)]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'etree' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
