"""Plug-ins: a user's own models, datasets, partitions, topologies and protocols.

A plug-in is an ordinary module that registers factories with these decorators, which
are the registries' own ``register`` methods (public as ``etree.register_model`` and so
on), so a plugged factory is checked, listed and built exactly like a built-in one::

    import etree
    from torch import nn

    @etree.register_model("tiny_mlp")
    def tiny_mlp(input_shape: tuple[int, ...], num_classes: int, *, hidden: int = 16) -> nn.Module:
        return nn.Sequential(nn.Flatten(), nn.Linear(input_shape[0], hidden), nn.Tanh(), nn.Linear(hidden, num_classes))

A spec names its plug-ins in ``[plugins] modules = ["my_package.my_module"]``, imported
before the rest of the spec is read; an installed package registers its own under the
``etree.plugins`` entry-point group (``[project.entry-points."etree.plugins"]
my_plugin = "my_package.my_module"`` in its ``pyproject.toml``), loaded with every spec.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Sequence
from importlib import metadata

from clients.classification.models import MODELS
from clients.datasets import DATASETS
from clients.partition import PARTITIONERS
from etree.core.errors import EtreeError
from etree.engine.registry import PROTOCOLS
from topologies import register_topology

ENTRY_POINT_GROUP = "etree.plugins"

register_model = MODELS.register  # fn(input_shape, num_classes, **options) -> torch.nn.Module
register_dataset = DATASETS.register  # fn(*, seed, devices, **options) -> Dataset | Interactions
register_partitioner = PARTITIONERS.register  # fn(labels, devices, *, seed, **options) -> owner per sample
register_protocol = PROTOCOLS.register  # fn(label, **options) -> Protocol

__all__ = [
    "ENTRY_POINT_GROUP",
    "PluginError",
    "load_entry_points",
    "load_plugins",
    "register_dataset",
    "register_model",
    "register_partitioner",
    "register_protocol",
    "register_topology",
]


class PluginError(EtreeError):
    """A plug-in module that cannot be found or fails while it is imported."""


def load_plugins(modules: Sequence[str], field: str = "plugins.modules") -> None:
    """Import the installed packages' entry points (once per process), then ``modules`` in order.

    ``field`` is what the user wrote them in (``plugins.modules``, ``--plugins``), for the error.
    """
    load_entry_points()
    for name in modules:
        _import(name, field)


@functools.cache
def load_entry_points() -> tuple[str, ...]:
    """Load every ``etree.plugins`` entry point of the installed packages; their names, sorted."""
    points = sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda point: point.name)
    for point in points:
        try:
            point.load()
        except Exception as exc:  # whatever the package raised, the user learns which one and why
            raise PluginError(
                f"plugins: entry point {point.name!r} = {point.value!r} of group {ENTRY_POINT_GROUP!r} "
                f"failed to load: {type(exc).__name__}: {exc}"
            ) from exc
    return tuple(point.name for point in points)


def _import(name: str, field: str) -> None:
    if not isinstance(name, str) or not all(part.isidentifier() for part in name.split(".")):
        raise PluginError(f"{field}: {name!r} is not a module name; give dotted names such as 'my_package.my_module'")
    try:
        importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (name == exc.name or name.startswith(f"{exc.name}.")):
            raise PluginError(
                f"{field}: no module named {name!r}; put its folder on PYTHONPATH or install its package"
            ) from exc
        raise PluginError(f"{field}: importing {name!r} failed: {exc}") from exc
    except Exception as exc:  # a broken plug-in is the user's code: one line saying where it broke
        raise PluginError(f"{field}: importing {name!r} failed: {type(exc).__name__}: {exc}") from exc
