"""The protocols, one module each; protocols never import each other (what two share lives below them).

A protocol's module is imported when a run names it (``make_protocol``), so a
FedAvg run never loads Flower's or gossip's code and ``etree --help`` loads none.
"""

from __future__ import annotations

import importlib
from typing import Any

from etree.engine.protocol import Protocol
from etree.engine.registry import PROTOCOLS, build_registered

# protocol name -> module of this package that registers it
BUILTIN = {
    "centralised": "centralised",
    "dpsgd": "dpsgd",
    "etree": "etree_learning",
    "fedavg": "fedavg",
    "fednova": "fednova",
    "flower": "flower",
    "gossip": "gossip",
    "grouped": "ablations",
    "hierfavg": "hierfavg",
    "ifca": "ifca",
    "individual": "ablations",
    "popularity": "centralised",
    "scaffold": "scaffold",
}


def import_protocol(name: str) -> None:
    """Import the module of built-in protocol ``name`` (nothing for a plug-in's, already registered)."""
    if name in BUILTIN and name not in PROTOCOLS:
        importlib.import_module(f"{__name__}.{BUILTIN[name]}")


def import_all() -> None:
    """Register every built-in protocol (``etree list``)."""
    for name in sorted(BUILTIN):
        import_protocol(name)


def make_protocol(name: str, label: str, options: dict[str, Any]) -> Protocol:
    """Build protocol ``name`` labelled ``label`` with ``options``; each option is checked first."""
    if isinstance(name, str):
        import_protocol(name)
    else:
        import_all()  # so the error lists every valid name
    if name not in PROTOCOLS:
        import_all()
    return build_registered(name, label, options)


__all__ = ["BUILTIN", "PROTOCOLS", "import_all", "import_protocol", "make_protocol"]
