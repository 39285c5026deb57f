"""Partitions: invariants over seeds, library/numpy agreement, and every bad input."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from sklearn.datasets import load_digits

from clients import partition
from clients.errors import ClientsError
from clients.partition import label_histograms, partition_indices

SEEDS = (0, 1, 2)
LABELS = load_digits().target.astype(np.int64)  # 1797 samples, 10 nearly balanced classes
SKEWED = np.random.default_rng(9).choice(6, size=900, p=[0.4, 0.25, 0.15, 0.1, 0.06, 0.04])


def _check_disjoint(parts: list[np.ndarray], n: int, *, cover: bool) -> None:
    for p in parts:
        assert p.dtype == np.int64 and np.all(np.diff(p) > 0)  # sorted, no repeats
    joined = np.concatenate(parts)
    assert joined.min() >= 0 and joined.max() < n
    assert len(np.unique(joined)) == len(joined)  # no sample on two devices
    if cover:
        assert len(joined) == n


def _entropy(labels: np.ndarray, parts: list[np.ndarray], classes: int) -> float:
    counts = label_histograms(labels, parts, classes).astype(float)
    p = counts / counts.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(np.mean(-np.nansum(p * np.log(p), axis=1)))


@pytest.fixture
def numpy_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    """Route every size to the vectorised engine, as a large fleet would be."""
    monkeypatch.setattr(partition, "LIBRARY_MAX_DEVICES", 0)


# ---------------------------------------------------------------------------
# invariants


@pytest.mark.parametrize("seed", SEEDS)
def test_iid_covers_everything_evenly(seed: int) -> None:
    parts = partition_indices(LABELS, 23, scheme="iid", seed=seed)
    _check_disjoint(parts, len(LABELS), cover=True)
    sizes = [len(p) for p in parts]
    assert len(parts) == 23 and max(sizes) - min(sizes) <= 1
    assert _entropy(LABELS, parts, 10) > 2.0  # every device sees most classes


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize(("devices", "k"), [(20, 2), (9, 3), (12, 1), (8, 10)])
def test_pathological_gives_each_device_exactly_k_classes(seed: int, devices: int, k: int) -> None:
    parts = partition_indices(LABELS, devices, scheme="pathological", seed=seed, classes_per_device=k)
    _check_disjoint(parts, len(LABELS), cover=devices + k - 1 >= 10)
    assert [len(np.unique(LABELS[p])) for p in parts] == [k] * devices


def test_pathological_with_few_devices_leaves_classes_unused() -> None:
    parts = partition_indices(LABELS, 3, scheme="pathological", seed=0, classes_per_device=2)
    _check_disjoint(parts, len(LABELS), cover=False)
    assert len(np.unique(LABELS[np.concatenate(parts)])) == 4  # classes d..d+1 for d = 0, 1, 2


def test_pathological_class_sets_follow_the_seed() -> None:
    def pairs(seed: int) -> set[tuple[int, ...]]:
        parts = partition_indices(LABELS, 10, scheme="pathological", seed=seed, classes_per_device=2)
        return {tuple(np.unique(LABELS[p])) for p in parts}

    assert pairs(0) != pairs(1)


@pytest.mark.parametrize("seed", SEEDS)
def test_dirichlet_covers_everything_and_respects_the_minimum(seed: int) -> None:
    parts = partition_indices(LABELS, 30, scheme="dirichlet", seed=seed, alpha=0.3, min_partition_size=10)
    _check_disjoint(parts, len(LABELS), cover=True)
    assert min(len(p) for p in parts) >= 10


@pytest.mark.parametrize("seed", SEEDS)
def test_smaller_alpha_is_more_skewed(seed: int) -> None:
    def entropy(alpha: float) -> float:
        parts = partition_indices(LABELS, 20, scheme="dirichlet", seed=seed, alpha=alpha, min_partition_size=0)
        return _entropy(LABELS, [p for p in parts if len(p)], 10)

    skewed, mild, flat = entropy(0.1), entropy(1.0), entropy(100.0)
    assert skewed < mild < flat and flat > 2.2  # log(10) = 2.30 is perfectly even


@pytest.mark.parametrize("scheme", ["iid", "dirichlet", "pathological"])
def test_same_seed_same_partition_other_seed_other_partition(scheme: str) -> None:
    def run(seed: int) -> list[np.ndarray]:
        return partition_indices(SKEWED, 15, scheme=scheme, seed=seed, min_partition_size=0)

    a, b, c = run(4), run(4), run(5)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))


@pytest.mark.parametrize(
    ("scheme", "options"),
    [
        ("iid", {}),
        ("dirichlet", {"alpha": 0.2, "min_partition_size": 3}),
        ("dirichlet", {"alpha": 10.0}),
        ("pathological", {"classes_per_device": 2}),
        ("pathological", {"classes_per_device": 4}),
    ],
)
@pytest.mark.parametrize(("labels", "devices"), [(LABELS, 40), (SKEWED, 7)])
def test_numpy_engine_reproduces_flwr_datasets(
    scheme: str, options: dict[str, Any], labels: np.ndarray, devices: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The vectorised engine for large fleets returns exactly the library's partition."""
    library = partition_indices(labels, devices, scheme=scheme, seed=11, **options)
    monkeypatch.setattr(partition, "LIBRARY_MAX_DEVICES", 0)
    vectorised = partition_indices(labels, devices, scheme=scheme, seed=11, **options)
    assert all(np.array_equal(x, y) for x, y in zip(library, vectorised, strict=True))


@pytest.mark.usefixtures("numpy_engine")
def test_large_fleet_partitions_quickly() -> None:
    labels = np.random.default_rng(0).integers(0, 10, 200_000)
    for scheme in ("iid", "dirichlet", "pathological"):
        parts = partition_indices(labels, 10_000, scheme=scheme, seed=0, alpha=1.0, min_partition_size=0)
        _check_disjoint(parts, len(labels), cover=True)
        if scheme == "pathological":
            classes = label_histograms(labels, parts, 10) > 0
            assert np.all(classes.sum(axis=1) == 2)


def test_natural_gives_device_d_group_d() -> None:
    groups = np.array([2, 0, 1, 2, 0, 2], dtype=np.int64)
    parts = partition_indices(np.zeros(6, np.int64), 3, scheme="natural", seed=0, natural_groups=groups)
    assert [p.tolist() for p in parts] == [[1, 4], [2], [0, 3, 5]]


def test_label_histograms_count_each_device() -> None:
    parts = partition_indices(SKEWED, 5, scheme="dirichlet", seed=0, alpha=0.5)
    hist = label_histograms(SKEWED, parts, 6)
    assert hist.shape == (5, 6) and hist.dtype == np.int64
    assert np.array_equal(hist.sum(axis=1), [len(p) for p in parts])
    assert np.array_equal(hist[2], np.bincount(SKEWED[parts[2]], minlength=6))


# ---------------------------------------------------------------------------
# bad input: one line naming the field


@pytest.mark.parametrize(
    ("devices", "options", "message"),
    [
        (0, {"scheme": "iid"}, "devices: 0 must be an integer >= 1"),
        (2000, {"scheme": "iid"}, "devices: 2000 is more than the 1797 training samples"),
        (
            5,
            {"scheme": "shards"},
            "data.partition: unknown 'shards'; choose one of: dirichlet, iid, natural, pathological",
        ),
        (5, {"scheme": "dirichlet", "alpha": 0.0}, "data.alpha: 0.0 must be a finite number > 0"),
        (5, {"scheme": "dirichlet", "alpha": float("nan")}, "data.alpha: nan must be"),
        (5, {"scheme": "iid", "seed": -3}, "seed: -3 must be an integer >= 0"),
        (5, {"scheme": "pathological", "classes_per_device": 0}, "data.classes_per_device: 0 must be"),
        (
            5,
            {"scheme": "pathological", "classes_per_device": 11},
            "data.classes_per_device: 11 is more than the 10 classes",
        ),
        (5, {"scheme": "iid", "min_partition_size": -1}, "data.min_partition_size: -1 must be"),
        (100, {"scheme": "iid", "min_partition_size": 18}, "data.min_partition_size: 18 samples on each of 100"),
        (
            1000,
            {"scheme": "pathological", "classes_per_device": 2},
            "data.classes_per_device: 2 classes on each of 1000 devices puts a class on 200 devices",
        ),
        (
            110,
            {"scheme": "pathological", "classes_per_device": 1, "min_partition_size": 16},
            "data.min_partition_size: 16 is not met: the pathological partition gives device",
        ),
        (3, {"scheme": "natural"}, "data.partition: 'natural' needs a dataset split over devices"),
    ],
)
def test_bad_input_is_one_line_naming_the_field(devices: int, options: dict[str, Any], message: str) -> None:
    options.setdefault("seed", 0)
    with pytest.raises(ClientsError) as exc:
        partition_indices(LABELS, devices, **options)
    assert str(exc.value).startswith(message) and "\n" not in str(exc.value)


@pytest.mark.parametrize("engine", ["library", "numpy"])
def test_unreachable_dirichlet_minimum_says_what_to_change(engine: str, monkeypatch: pytest.MonkeyPatch) -> None:
    if engine == "numpy":
        monkeypatch.setattr(partition, "LIBRARY_MAX_DEVICES", 0)
    with pytest.raises(ClientsError) as exc:
        partition_indices(LABELS, 50, scheme="dirichlet", seed=0, alpha=0.05, min_partition_size=30)
    assert str(exc.value) == (
        "data.min_partition_size: Dirichlet(alpha=0.05) left a device below 30 samples in 11 draws; "
        "lower data.min_partition_size or raise data.alpha"
    )


def test_natural_group_count_must_match_devices() -> None:
    groups = np.repeat(np.arange(4), 3)
    with pytest.raises(ClientsError, match=r"^data\.partition: 'natural' gives 4 groups but devices = 3; "):
        partition_indices(np.zeros(12, np.int64), 3, scheme="natural", seed=0, natural_groups=groups)


def test_labels_must_be_integers() -> None:
    with pytest.raises(ClientsError, match="labels must be a non-empty 1-D integer array"):
        partition_indices(np.zeros(5), 2, scheme="iid", seed=0)


def test_spatial_partition_gives_neighbours_similar_classes():
    """Devices close in angle share classes; far apart ones mostly do not."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, 4000)
    angle = np.linspace(0, 2 * np.pi, 40, endpoint=False)
    coordinates = np.stack([0.5 + 0.4 * np.cos(angle), 0.5 + 0.4 * np.sin(angle)], axis=1)
    parts = partition_indices(labels, 40, scheme="spatial", seed=1, classes_per_device=3, coordinates=coordinates)
    held = [set(np.unique(labels[p]).tolist()) for p in parts]
    assert all(len(h) == 3 for h in held)
    neighbours = np.mean([len(held[d] & held[(d + 1) % 40]) for d in range(40)])
    opposite = np.mean([len(held[d] & held[(d + 20) % 40]) for d in range(40)])
    assert neighbours > 2 and opposite < 1
    assert len(np.unique(np.concatenate(parts))) == sum(len(p) for p in parts)


def test_spatial_partition_needs_positions():
    with pytest.raises(ClientsError, match="spatial"):
        partition_indices(np.arange(100) % 5, 10, scheme="spatial", seed=0, classes_per_device=2)


# ---------------------------------------------------------------------------
# the registry of schemes


def test_builtin_schemes_give_the_partitions_they_always_gave() -> None:
    """Golden digests from before the schemes became registered functions: same seed, same bytes."""
    angle = np.linspace(0, 2 * np.pi, 30, endpoint=False)
    extra: dict[str, dict[str, Any]] = {
        "spatial": {"coordinates": np.stack([np.cos(angle), np.sin(angle)], axis=1)},
        "natural": {"natural_groups": np.arange(len(LABELS)) % 30},
    }
    golden = {
        "dirichlet": "a72e3589239fba77",
        "iid": "09706c44b2cbfce8",
        "natural": "be7ef2c94db86c13",
        "pathological": "a7d10ac72a07e874",
        "spatial": "77699fc75095fc16",
    }
    assert sorted(golden) == partition.PARTITIONERS.names()
    for scheme, digest in golden.items():
        parts = partition_indices(
            LABELS, 30, scheme=scheme, seed=7, alpha=0.5, classes_per_device=3, **extra.get(scheme, {})
        )
        assert hashlib.sha256(b"".join(p.tobytes() + b"|" for p in parts)).hexdigest()[:16] == digest, scheme


@pytest.fixture
def strided() -> Iterator[None]:
    """A registered scheme taking one [data] field and one option of its own."""

    @partition.register_partitioner("strided")
    def strided_partition(labels: np.ndarray, devices: int, *, classes_per_device: int, stride: int = 1) -> np.ndarray:
        return (np.arange(len(labels)) // stride + classes_per_device) % devices

    yield
    del partition.PARTITIONERS["strided"]


@pytest.mark.usefixtures("strided")
def test_a_registered_scheme_gets_the_fields_it_declares_and_its_options() -> None:
    parts = partition_indices(SKEWED, 4, scheme="strided", seed=0, classes_per_device=1, options={"stride": 2})
    assert [p[:4].tolist() for p in parts] == [[6, 7, 14, 15], [0, 1, 8, 9], [2, 3, 10, 11], [4, 5, 12, 13]]
    with pytest.raises(ClientsError, match=r"^data\.stride: 2\.5 is not allowed; must be int"):
        partition_indices(SKEWED, 4, scheme="strided", seed=0, options={"stride": 2.5})
    with pytest.raises(ClientsError, match=r"^data\.shards: unknown option 'shards' for 'strided'"):
        partition_indices(SKEWED, 4, scheme="strided", seed=0, options={"shards": 2})


@pytest.mark.parametrize(
    ("owner", "message"),
    [
        (lambda n, d: np.zeros(n - 1, np.int64), r"of each of the 900 samples as integers, got int64 \(899,\)"),
        (lambda n, d: np.zeros(n), r"got float64"),
        (lambda n, d: np.full(n, d), r"got ids 4\.\.4"),
    ],
)
def test_a_scheme_returning_a_wrong_owner_is_told_the_rule(owner: Any, message: str) -> None:
    partition.register_partitioner("broken")(lambda labels, devices: owner(len(labels), devices))
    try:
        with pytest.raises(
            ClientsError,
            match=rf"^data\.partition: 'broken' must return the device \(0\.\.3, or -1: none\) .*{message}",
        ):
            partition_indices(SKEWED, 4, scheme="broken", seed=0)
    finally:
        del partition.PARTITIONERS["broken"]
