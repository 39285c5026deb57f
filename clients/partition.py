"""Non-IID partitions of a training set over devices.

``iid``, ``dirichlet`` and ``pathological`` are flwr-datasets' partitioners
(``IidPartitioner``, ``DirichletPartitioner``, ``PathologicalPartitioner``) run
on an in-memory table of labels; ``natural`` keeps a dataset's own split over
devices (LEAF synthetic's users, UCI HAR's volunteers).

The library walks Python lists per device and builds an Arrow dataset for
every partition read back. Measured on 2 cores: 1-7 ms a device at 1,000
devices, up to 55 ms at 100 devices on 60,000 samples (pathological), and at
100,000 devices on 4,000,000 samples Dirichlet and pathological spent 73-74 s
just assigning samples, with some 760-1550 s more to read the partitions
back. So past :data:`LIBRARY_MAX_DEVICES` devices or
:data:`LIBRARY_MAX_SAMPLES` samples the same three algorithms run here as
vectorised numpy (about 1.5-2 s at that largest size), with the same random
draws in the same order: they return exactly the library's partition, which
the tests check on small inputs.
"""

from __future__ import annotations

import inspect
import math
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from clients.checks import check_int
from clients.errors import ClientsError
from etree.core.registry import Registry

Partitioner = Callable[..., np.ndarray]

#: Partition schemes by name: ``fn(labels, devices, *, <options>) -> owner``, the device of every
#: sample (-1: no device). A scheme's options are ``[data]`` keys: those of :data:`DATA_OPTIONS`
#: (always given by ``[data]``, so their ``[data]`` defaults apply) and any extra key it declares.
#: It is also handed ``seed``, ``natural_groups`` and ``coordinates`` (the devices' [x, y]) if it asks.
PARTITIONERS: Registry[Partitioner] = Registry(
    "partition", "data.partition", fixed=("seed", "natural_groups", "coordinates"), error=ClientsError
)
register_partitioner = PARTITIONERS.register
DATA_OPTIONS = ("alpha", "classes_per_device", "min_partition_size")  # fields of every spec's [data]

#: Largest fleet handed to flwr-datasets; larger ones use the numpy mirror.
LIBRARY_MAX_DEVICES = 1000
#: Largest training set handed to flwr-datasets; larger ones use the numpy mirror.
LIBRARY_MAX_SAMPLES = 20_000

#: DirichletPartitioner redraws up to 10 times when a device is below the minimum.
DIRICHLET_DRAWS = 11


def partition_indices(
    labels: np.ndarray,
    devices: int,
    *,
    scheme: str,
    seed: int,
    alpha: float = 0.5,
    classes_per_device: int = 2,
    min_partition_size: int = 1,
    natural_groups: np.ndarray | None = None,
    coordinates: np.ndarray | None = None,
    options: Mapping[str, Any] | None = None,
) -> list[np.ndarray]:
    """Split sample indices ``0..len(labels)-1`` over ``devices`` devices.

    Returns, per device, its sorted int64 sample indices; devices never share a
    sample. ``iid`` gives every device n // devices or one more samples;
    ``dirichlet`` splits each class over devices by Dirichlet(alpha) shares (Yurochkin
    et al., 2019; smaller alpha is more skewed), redrawing while a device holds
    fewer than ``min_partition_size``; ``pathological`` gives every device exactly
    ``classes_per_device`` classes (McMahan et al., 2017; Li et al., 2021), each
    class cut into equal slices; ``natural`` gives device d the d-th group of
    ``natural_groups``; ``spatial`` is label skew correlated with place: devices
    ordered by their angle around the centre of ``coordinates`` (their [x, y]
    positions) take ``classes_per_device`` consecutive classes starting at
    floor(rank * C / devices), so neighbours hold similar classes, as devices of
    one region would (used to show what KMA's accuracy term buys).

    Pathological runs in the library's ``deterministic`` mode: device d takes
    classes d, d+1, ..., d+k-1 (mod C), so class loads differ by at most k
    devices and no class is dropped while devices + k - 1 >= C (with fewer
    devices the classes left over go unused). The ``random`` mode can leave
    classes unused at any fleet size, or want a class on more devices than it
    has samples. A seeded relabelling of the classes makes which classes share
    a device depend on the seed, as the seeded row order does for every scheme.

    ``scheme`` names any registered partitioner (:data:`PARTITIONERS`); ``options`` are the
    extra ``[data]`` keys it declares.
    """
    labels = _check_labels(labels)
    n = len(labels)
    devices = check_int("devices", devices, 1)
    if devices > n:
        raise ClientsError(f"devices: {devices} is more than the {n} training samples")
    partitioner = PARTITIONERS.get(scheme)
    seed = check_int("seed", seed, 0)
    if (
        isinstance(alpha, bool)
        or not isinstance(alpha, int | float | np.number)
        or not (math.isfinite(alpha) and alpha > 0)
    ):
        raise ClientsError(f"data.alpha: {alpha!r} must be a finite number > 0")
    k = check_int("data.classes_per_device", classes_per_device, 1)
    min_size = check_int("data.min_partition_size", min_partition_size, 0)
    if devices * min_size > n:
        raise ClientsError(
            f"data.min_partition_size: {min_size} samples on each of {devices} devices needs "
            f"{devices * min_size} but there are {n}; lower it or use fewer devices"
        )

    declared = PARTITIONERS.options(scheme)
    shared = dict(zip(DATA_OPTIONS, (float(alpha), k, min_size), strict=True))
    chosen = {name: value for name, value in shared.items() if name in declared} | dict(options or {})
    given = {"seed": seed, "natural_groups": natural_groups, "coordinates": coordinates}
    context = {name: value for name, value in given.items() if name in inspect.signature(partitioner).parameters}
    owner = partitioner(labels, devices, **context, **PARTITIONERS.check(scheme, chosen, "data"))
    owner = _checked_owner(owner, scheme, n, devices)
    sizes = np.bincount(owner[owner >= 0], minlength=devices)
    if sizes.min() < min_size:
        d = int(np.argmin(sizes))
        raise ClientsError(
            f"data.min_partition_size: {min_size} is not met: the {scheme} partition gives device "
            f"{d} only {sizes[d]} samples; lower it or use fewer devices"
        )
    by_device = np.argsort(owner, kind="stable")[int(np.count_nonzero(owner < 0)) :]
    return np.split(by_device.astype(np.int64), np.cumsum(sizes)[:-1])


def label_histograms(labels: np.ndarray, parts: list[np.ndarray], num_classes: int) -> np.ndarray:
    """Per-device label counts, int64 [devices, num_classes] (what tree.json reports)."""
    sizes = np.array([len(p) for p in parts], dtype=np.int64)
    index = np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)
    device = np.repeat(np.arange(len(parts)), sizes)
    flat = np.bincount(device * num_classes + labels[index], minlength=len(parts) * num_classes)
    return flat.reshape(len(parts), num_classes).astype(np.int64)


# ---------------------------------------------------------------------------
# checks


def _check_labels(labels: np.ndarray) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1 or len(labels) == 0 or not np.issubdtype(labels.dtype, np.integer):
        raise ClientsError(
            f"data.dataset: labels must be a non-empty 1-D integer array, got {labels.dtype} {labels.shape}"
        )
    return labels.astype(np.int64, copy=False)


def _checked_owner(owner: Any, scheme: str, n: int, devices: int) -> np.ndarray:
    """A partitioner's answer as int64 owners: a plug-in that returns anything else is told the rule."""
    owner = np.asarray(owner)
    rule = f"must return the device (0..{devices - 1}, or -1: none) of each of the {n} samples as integers"
    if owner.shape != (n,) or not np.issubdtype(owner.dtype, np.integer):
        raise ClientsError(f"data.partition: {scheme!r} {rule}, got {owner.dtype} {owner.shape}")
    if owner.min() < -1 or owner.max() >= devices:
        raise ClientsError(f"data.partition: {scheme!r} {rule}, got ids {owner.min()}..{owner.max()}")
    return owner.astype(np.int64, copy=False)


# ---------------------------------------------------------------------------
# the built-in schemes


@register_partitioner("iid")
def iid_partition(labels: np.ndarray, devices: int, *, seed: int) -> np.ndarray:
    """flwr-datasets' ``IidPartitioner`` on seeded rows: n // devices samples each, or one more."""
    return _seeded_owner(labels, devices, scheme="iid", seed=seed)


@register_partitioner("dirichlet")
def dirichlet_partition(
    labels: np.ndarray, devices: int, *, seed: int, alpha: float, min_partition_size: int
) -> np.ndarray:
    """``DirichletPartitioner``: each class split by Dirichlet(alpha) shares (Yurochkin et al., 2019)."""
    return _seeded_owner(labels, devices, scheme="dirichlet", seed=seed, alpha=alpha, min_size=min_partition_size)


@register_partitioner("pathological")
def pathological_partition(labels: np.ndarray, devices: int, *, seed: int, classes_per_device: int) -> np.ndarray:
    """``PathologicalPartitioner`` (deterministic): ``classes_per_device`` classes on every device."""
    return _seeded_owner(labels, devices, scheme="pathological", seed=seed, k=classes_per_device)


@register_partitioner("natural")
def natural_partition(labels: np.ndarray, devices: int, *, natural_groups: np.ndarray | None) -> np.ndarray:
    """The dataset's own split: device d holds the d-th group (LEAF synthetic's users, UCI HAR's volunteers)."""
    return _natural_owner(natural_groups, len(labels), devices)


@register_partitioner("spatial")
def spatial_partition(
    labels: np.ndarray, devices: int, *, seed: int, classes_per_device: int, coordinates: np.ndarray | None
) -> np.ndarray:
    """Label skew that follows the devices' angle around the network's centre (neighbours share classes)."""
    return _spatial_owner(labels, devices, coordinates, k=classes_per_device, seed=seed)


def _natural_owner(groups: np.ndarray | None, n: int, devices: int) -> np.ndarray:
    """Device d owns the samples of the d-th natural group (groups in id order)."""
    if groups is None:
        raise ClientsError(
            "data.partition: 'natural' needs a dataset split over devices by nature "
            "(e.g. 'synthetic' or 'uci_har'); this one has no natural groups"
        )
    groups = np.asarray(groups)
    if groups.shape != (n,) or not np.issubdtype(groups.dtype, np.integer):
        raise ClientsError(
            f"data.partition: 'natural' groups must be integers, one per sample ({n}), "
            f"got {groups.dtype} {groups.shape}"
        )
    ids, owner = np.unique(groups, return_inverse=True)
    if len(ids) != devices:
        raise ClientsError(
            f"data.partition: 'natural' gives {len(ids)} groups but devices = {devices}; "
            f"set the number of devices to {len(ids)}"
        )
    return owner.reshape(-1).astype(np.int64)


def _spatial_owner(
    labels: np.ndarray, devices: int, coordinates: np.ndarray | None, *, k: int, seed: int
) -> np.ndarray:
    """Owner of every sample when classes follow the devices' angular position (see ``partition_indices``)."""
    if coordinates is None or np.shape(coordinates) != (devices, 2):
        raise ClientsError("data.partition: 'spatial' needs the devices' [x, y] positions from the topology")
    classes, ranks = np.unique(labels, return_inverse=True)
    if k > len(classes):
        raise ClientsError(f"data.classes_per_device: {k} is more than the {len(classes)} classes in the data")
    rng = np.random.default_rng(seed)
    seen = rng.permutation(len(classes))[ranks.reshape(-1)]  # seeded relabelling of the classes
    centre = coordinates.mean(0)
    angle = np.arctan2(coordinates[:, 1] - centre[1], coordinates[:, 0] - centre[0])
    rank = np.argsort(np.argsort(angle, kind="stable"), kind="stable")
    start = rank * len(classes) // devices
    owner = np.full(len(labels), -1, dtype=np.int64)
    order = rng.permutation(len(labels))
    for c in range(len(classes)):
        holders = np.flatnonzero((c - start) % len(classes) < k)
        rows = order[seen[order] == c]
        if len(holders):
            owner[rows] = np.repeat(holders, _even_sizes(len(rows), len(holders)))
    return owner


def _class_loads(devices: int, num_classes: int, k: int) -> np.ndarray:
    """How many devices hold each (relabelled) class when device d takes d..d+k-1 mod C."""
    loads = np.zeros(num_classes, dtype=np.int64)
    for i in range(k):
        loads += np.bincount((np.arange(devices) + i) % num_classes, minlength=num_classes)
    return loads


def _seeded_owner(
    labels: np.ndarray, devices: int, *, scheme: str, seed: int, alpha: float = 1.0, k: int = 1, min_size: int = 0
) -> np.ndarray:
    """Owner device of every sample (-1: unused) for the iid, dirichlet and pathological schemes.

    Both engines see the rows in one seeded order, since the library cuts each
    class (or, for iid, the whole set) into contiguous runs of rows. ``alpha`` and
    ``min_size`` matter to dirichlet only, ``k`` to pathological only.
    """
    order_seed, class_seed, draw_seed = np.random.SeedSequence(seed).spawn(3)
    order = np.random.default_rng(order_seed).permutation(len(labels))
    seen = labels[order]
    if scheme == "pathological":
        classes, ranks = np.unique(seen, return_inverse=True)
        if k > len(classes):
            raise ClientsError(f"data.classes_per_device: {k} is more than the {len(classes)} classes in the data")
        relabel = np.random.default_rng(class_seed).permutation(len(classes))
        seen = relabel[ranks.reshape(-1)]
        loads = _class_loads(devices, len(classes), k)
        counts = np.bincount(seen, minlength=len(classes))
        short = np.flatnonzero(loads > counts)
        if len(short):
            c = int(short[0])
            raise ClientsError(
                f"data.classes_per_device: {k} classes on each of {devices} devices puts a class on "
                f"{loads[c]} devices but it has only {counts[c]} samples; lower it or use fewer devices"
            )
    draws = int(draw_seed.generate_state(1)[0])
    small = devices <= LIBRARY_MAX_DEVICES and len(labels) <= LIBRARY_MAX_SAMPLES
    engine = _library_owner if small else _numpy_owner
    seen_owner = engine(seen, devices, scheme=scheme, seed=draws, alpha=alpha, k=k, min_size=min_size)
    owner = np.empty(len(labels), dtype=np.int64)
    owner[order] = seen_owner
    return owner


def _dirichlet_error(alpha: float, min_size: int) -> ClientsError:
    return ClientsError(
        f"data.min_partition_size: Dirichlet(alpha={alpha:g}) left a device below {min_size} "
        f"samples in {DIRICHLET_DRAWS} draws; lower data.min_partition_size or raise data.alpha"
    )


# ---------------------------------------------------------------------------
# the two engines: owner device of each row of ``seen`` (-1: unused)


def _library_owner(
    seen: np.ndarray, devices: int, *, scheme: str, seed: int, alpha: float, k: int, min_size: int
) -> np.ndarray:
    """flwr-datasets' partitioners on an in-memory table (no network, no files)."""
    import datasets
    from flwr_datasets.partitioner import (
        DirichletPartitioner,
        IidPartitioner,
        PathologicalPartitioner,
    )

    partitioner: IidPartitioner | DirichletPartitioner | PathologicalPartitioner
    if scheme == "iid":
        partitioner = IidPartitioner(num_partitions=devices)
    elif scheme == "dirichlet":
        partitioner = DirichletPartitioner(
            num_partitions=devices,
            partition_by="label",
            alpha=alpha,
            min_partition_size=min_size,
            self_balancing=False,
            shuffle=False,
            seed=seed,
        )
    else:
        partitioner = PathologicalPartitioner(
            num_partitions=devices,
            partition_by="label",
            num_classes_per_partition=k,
            class_assignment_mode="deterministic",
            shuffle=False,
            seed=seed,
        )
    partitioner.dataset = datasets.Dataset.from_dict({"label": seen, "row": np.arange(len(seen))})
    owner = np.full(len(seen), -1, dtype=np.int64)
    with warnings.catch_warnings():
        # Dirichlet warns at every redraw and pathological about unused classes;
        # both outcomes are reported here as errors or documented behaviour.
        warnings.simplefilter("ignore")
        try:
            for d in range(devices):
                owner[np.asarray(partitioner.load_partition(d)[:]["row"], dtype=np.int64)] = d
        except ValueError as exc:
            if scheme == "dirichlet":
                raise _dirichlet_error(alpha, min_size) from None
            raise ClientsError(f"data.partition: flwr-datasets refused {scheme!r}: {exc}") from None
    return owner


def _numpy_owner(
    seen: np.ndarray, devices: int, *, scheme: str, seed: int, alpha: float, k: int, min_size: int
) -> np.ndarray:
    """The library's three algorithms, vectorised over devices (see the module docstring)."""
    n = len(seen)
    if scheme == "iid":  # IidPartitioner: contiguous shards, the first n % devices one longer
        return np.repeat(np.arange(devices), _even_sizes(n, devices))

    classes = np.unique(seen)
    owner = np.full(n, -1, dtype=np.int64)
    if scheme == "pathological":  # PathologicalPartitioner, class_assignment_mode="deterministic"
        device_ids = np.arange(devices)
        for c in range(len(classes)):
            holders = device_ids[(c - device_ids) % len(classes) < k]  # devices d with c in d..d+k-1
            if len(holders):
                rows = np.flatnonzero(seen == classes[c])
                owner[rows] = np.repeat(holders, _even_sizes(len(rows), len(holders)))
        return owner

    # DirichletPartitioner without self-balancing: per class in sorted order, one
    # Dirichlet draw over devices; its cumulative shares cut the class's rows.
    rng = np.random.default_rng(seed)
    concentration = np.full(devices, alpha)
    rows_of = [np.flatnonzero(seen == c) for c in classes]
    for _ in range(DIRICHLET_DRAWS):
        for rows in rows_of:
            shares = rng.dirichlet(concentration)
            cuts = np.minimum((np.cumsum(shares) * len(rows)).astype(int)[:-1], len(rows))
            edges = np.concatenate(([0], cuts, [len(rows)]))
            owner[rows] = np.repeat(np.arange(devices), np.diff(edges))
        if np.bincount(owner, minlength=devices).min() >= min_size:
            return owner
    raise _dirichlet_error(alpha, min_size)


def _even_sizes(n: int, parts: int) -> np.ndarray:
    """Sizes of ``np.array_split(range(n), parts)``: the first n % parts get one more."""
    sizes = np.full(parts, n // parts, dtype=np.int64)
    sizes[: n % parts] += 1
    return sizes
