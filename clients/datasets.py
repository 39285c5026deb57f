"""Datasets by name: one registry for classification and recommendation loaders.

A loader is ``fn(*, seed, devices, **options)`` returning a labelled
:class:`~clients.classification.datasets.Dataset` or, for recommenders,
:class:`~clients.recommendation.interactions.Interactions`. The loaders register
themselves when their subpackage is imported (``clients/__init__`` imports both).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from clients.checks import MAX_SEED
from clients.errors import ClientsError
from etree.core.registry import Option, Registry

Loader = Callable[..., Any]

DATASETS: Registry[Loader] = Registry("dataset", "data.dataset", fixed=("seed", "devices"), error=ClientsError)
register_dataset = DATASETS.register


def dataset_options(name: str) -> dict[str, Any]:
    """The options a dataset accepts, with their defaults (for help text and spec checks)."""
    return {option.name: option.default for option in DATASETS.options(name).values()}


def dataset_option_types(name: str) -> dict[str, Option]:
    """The options of dataset ``name`` with their annotations (``etree list datasets``)."""
    return DATASETS.options(name)


def load_dataset(name: str, *, seed: int, devices: int, **options: Any) -> Any:
    """Build dataset ``name`` after checking the name and every option against its loader."""
    checked = DATASETS.check(name, options, "data")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise ClientsError(f"seed: {seed!r} must be an integer in [0, {MAX_SEED}]")
    if isinstance(devices, bool) or not isinstance(devices, int) or devices < 1:
        raise ClientsError(f"devices: {devices!r} must be an integer >= 1")
    return DATASETS.get(name)(seed=int(seed), devices=int(devices), **checked)
