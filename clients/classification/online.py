"""Datasets that need one download: MNIST, Fashion-MNIST, CIFAR-10 and UCI HAR.

Each is split in two: a *fetch* that needs the network (Hugging Face hub, or
the UCI archive) and a pure *conversion* to :class:`~clients.classification.datasets.Dataset`,
tested offline on small fixtures. Converted images are cached as uint8 under
:func:`~clients.cache.cache_dir`, UCI HAR as its zip and parsed arrays; with
the cache filled no network is needed (a Hugging Face cache filled by hand is
read when ``HF_HUB_OFFLINE=1`` is set before the process starts). Without a
cache, and offline, the loaders raise a one-line :class:`ClientsError` naming
the offline alternatives.
"""

from __future__ import annotations

import http.client
import io
import os
import shutil
import socket
import tempfile
import urllib.request
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from clients.cache import cache_dir, offline_error, read_npz, write_npz
from clients.classification.datasets import Dataset
from clients.datasets import register_dataset
from clients.errors import ClientsError

if TYPE_CHECKING:
    import datasets as hf


@dataclass(frozen=True)
class HfSource:
    """Where an image dataset lives on the Hugging Face hub, and its column names."""

    repo: str
    image_column: str
    label_column: str = "label"
    num_classes: int = 10


HF_SOURCES: dict[str, HfSource] = {
    "mnist": HfSource("ylecun/mnist", "image"),
    "fashion_mnist": HfSource("zalando-datasets/fashion_mnist", "image"),
    "cifar10": HfSource("uoft-cs/cifar10", "img"),
}

HF_HOST = "huggingface.co"

# The UCI archive's current link (a zip holding "UCI HAR Dataset.zip"), then the
# historical one (the dataset folder directly); both layouts are read.
UCI_HAR_URLS = (
    "https://archive.ics.uci.edu/static/public/240/human+activity+recognition+using+smartphones.zip",
    "https://archive.ics.uci.edu/ml/machine-learning-databases/00240/UCI%20HAR%20Dataset.zip",
)
UCI_HAR_FEATURES = 561
UCI_HAR_CLASSES = 6

_CACHE_KEYS = ("x_train", "y_train", "x_test", "y_test")
_TRUE = {"1", "ON", "YES", "TRUE"}


# ---------------------------------------------------------------------------
# Hugging Face image datasets


def hf_images_to_arrays(
    split: hf.Dataset, image_column: str, label_column: str = "label"
) -> tuple[np.ndarray, np.ndarray]:
    """Decode a split's images to uint8 [n, C, H, W] (channels first, as torch wants) and int64 labels."""
    images = np.asarray(split.with_format("numpy")[:][image_column])
    if images.dtype != np.uint8 or images.ndim not in (3, 4):
        raise ClientsError(
            f"data.dataset: column {image_column!r} must hold equal-sized 8-bit images, "
            f"got {images.dtype} {images.shape}"
        )
    images = images[:, None] if images.ndim == 3 else images.transpose(0, 3, 1, 2)
    labels = np.asarray(split[label_column], dtype=np.int64)
    return np.ascontiguousarray(images), labels


def arrays_to_dataset(name: str, arrays: Mapping[str, np.ndarray], num_classes: int) -> Dataset:
    """A Dataset from cached uint8 images: float32 in [0, 1]."""
    return Dataset(
        name,
        arrays["x_train"].astype(np.float32) / 255.0,
        arrays["y_train"].astype(np.int64),
        arrays["x_test"].astype(np.float32) / 255.0,
        arrays["y_test"].astype(np.int64),
        num_classes=num_classes,
    )


def hf_splits_to_arrays(name: str, splits: Mapping[str, hf.Dataset]) -> dict[str, np.ndarray]:
    """The cacheable uint8 arrays of a downloaded ``{"train": ..., "test": ...}`` split pair."""
    source = HF_SOURCES[name]
    arrays: dict[str, np.ndarray] = {}
    for part in ("train", "test"):
        if part not in splits:
            raise ClientsError(f"data.dataset: {name!r} download has no {part!r} split")
        x, y = hf_images_to_arrays(splits[part], source.image_column, source.label_column)
        arrays[f"x_{part}"], arrays[f"y_{part}"] = x, y
    return arrays


def dataset_from_hf(name: str, splits: Mapping[str, hf.Dataset]) -> Dataset:
    """Convert downloaded Hugging Face splits of ``name`` (pure: no network, no cache)."""
    return arrays_to_dataset(name, hf_splits_to_arrays(name, splits), HF_SOURCES[name].num_classes)


def _env_offline() -> bool:
    return any(os.environ.get(var, "").upper() in _TRUE for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def _uses_proxy() -> bool:
    return any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"))


def _probe(host: str, name: str) -> None:
    """Fail in milliseconds when the host is unreachable (the hub client retries for ~25 s)."""
    if _uses_proxy():  # only the proxy knows; let the download itself try
        return
    try:
        socket.create_connection((host, 443), timeout=5).close()
    except OSError as exc:
        raise offline_error(name, exc) from None


def fetch_hf(name: str, cache: Path) -> Mapping[str, hf.Dataset]:
    """Download (or read from the hub cache under ``cache``) the splits of ``name``."""
    import datasets
    import httpx

    source = HF_SOURCES[name]
    hub_offline = bool(datasets.config.HF_HUB_OFFLINE)
    if _env_offline() and not hub_offline:
        # Set after the hub client was imported, so it would not take effect there.
        raise offline_error(name, "HF_HUB_OFFLINE is set")
    if not hub_offline:
        _probe(HF_HOST, name)
    try:
        return datasets.load_dataset(source.repo, cache_dir=str(cache))
    except (OSError, httpx.HTTPError) as exc:
        raise offline_error(name, exc) from None


def load_hf_images(name: str) -> Dataset:
    """Dataset ``name`` from its cached uint8 arrays, downloading and converting them once."""
    path = cache_dir() / f"{name}.npz"
    arrays = read_npz(path, _CACHE_KEYS)
    if arrays is None:
        arrays = hf_splits_to_arrays(name, fetch_hf(name, cache_dir() / "huggingface"))
        write_npz(path, arrays)
    return arrays_to_dataset(name, arrays, HF_SOURCES[name].num_classes)


# ---------------------------------------------------------------------------
# UCI HAR


def _har_member(archive: zipfile.ZipFile, suffix: str) -> bytes | None:
    for member in archive.namelist():
        if member.endswith(f"UCI HAR Dataset/{suffix}") and not member.startswith("__MACOSX"):
            return archive.read(member)
    return None


def _har_table(archive: zipfile.ZipFile, suffix: str) -> np.ndarray:
    data = _har_member(archive, suffix)
    if data is None:
        raise ClientsError(f"data.dataset: 'uci_har' archive lacks 'UCI HAR Dataset/{suffix}'")
    try:
        return np.loadtxt(io.BytesIO(data), dtype=np.float32, ndmin=2)
    except ValueError as exc:
        raise ClientsError(f"data.dataset: 'uci_har' file {suffix!r} is not a number table ({exc})") from None


def _har_split(archive: zipfile.ZipFile, part: str) -> tuple[np.ndarray, np.ndarray]:
    x = _har_table(archive, f"{part}/X_{part}.txt")
    y = _har_table(archive, f"{part}/y_{part}.txt").reshape(-1)
    if x.shape[1] != UCI_HAR_FEATURES or len(y) != len(x):
        raise ClientsError(
            f"data.dataset: 'uci_har' {part} split has X {x.shape} and y {y.shape}; "
            f"expected [n, {UCI_HAR_FEATURES}] and [n]"
        )
    if len(y) and (y.min() < 1 or y.max() > UCI_HAR_CLASSES or np.any(y != np.round(y))):
        raise ClientsError(f"data.dataset: 'uci_har' {part} labels must be 1..{UCI_HAR_CLASSES}")
    return x, y.astype(np.int64) - 1  # activities 1..6 -> 0..5


def uci_har_from_zip(path: Path) -> Dataset:
    """Parse the UCI HAR archive (pure: no network). Either layout of the zip is read.

    Features are the archive's 561 engineered ones, already scaled to [-1, 1];
    ``natural_groups`` are the training volunteers (``subject_train.txt``),
    renumbered 0..G-1 in id order.
    """
    try:
        with zipfile.ZipFile(path) as outer:
            nested = [m for m in outer.namelist() if m.endswith("UCI HAR Dataset.zip") and not m.startswith("__MACOSX")]
            archive = zipfile.ZipFile(io.BytesIO(outer.read(nested[0]))) if nested else outer
            with archive:
                x_train, y_train = _har_split(archive, "train")
                x_test, y_test = _har_split(archive, "test")
                subjects = _har_member(archive, "train/subject_train.txt")
    except (zipfile.BadZipFile, OSError) as exc:
        raise ClientsError(f"data.dataset: 'uci_har' archive {str(path)!r} is unreadable ({exc})") from None
    groups = None
    if subjects is not None:
        ids = np.loadtxt(io.BytesIO(subjects), dtype=np.int64, ndmin=1)
        if ids.shape != y_train.shape:
            raise ClientsError("data.dataset: 'uci_har' subject_train.txt does not match y_train.txt")
        groups = np.unique(ids, return_inverse=True)[1].astype(np.int64).reshape(-1)
    return Dataset("uci_har", x_train, y_train, x_test, y_test, UCI_HAR_CLASSES, natural_groups=groups)


def fetch_uci_har(dest: Path, urls: tuple[str, ...] = UCI_HAR_URLS) -> None:
    """Download the UCI HAR zip to ``dest`` atomically, trying each mirror in turn."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    cause: BaseException | str = "no URL given"
    for url in urls:
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=dest.name, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as response:
                shutil.copyfileobj(response, out)
            if not zipfile.is_zipfile(tmp):
                raise OSError(f"{url} did not return a zip file")
            os.replace(tmp, dest)
            return
        except (OSError, http.client.HTTPException) as exc:
            cause = exc
        finally:
            Path(tmp).unlink(missing_ok=True)
    raise offline_error("uci_har", cause)


def load_uci_har_zip() -> Dataset:
    """UCI HAR from the cache, downloading the zip once; a corrupt cached zip is fetched again.

    Parsing the zip's text tables takes seconds, so the parsed arrays are cached too.
    """
    folder = cache_dir() / "uci_har"
    keys = (*_CACHE_KEYS, "groups")
    arrays = read_npz(folder / "uci_har.npz", keys)
    if arrays is None:
        path = folder / "UCI_HAR_Dataset.zip"
        if not zipfile.is_zipfile(path):
            fetch_uci_har(path)
        parsed = uci_har_from_zip(path)
        groups = parsed.natural_groups
        arrays = {
            "x_train": parsed.x_train,
            "y_train": parsed.y_train,
            "x_test": parsed.x_test,
            "y_test": parsed.y_test,
            "groups": np.zeros(0, np.int64) if groups is None else groups,  # empty: none
        }
        write_npz(folder / "uci_har.npz", arrays)
    return Dataset(
        "uci_har",
        arrays["x_train"],
        arrays["y_train"],
        arrays["x_test"],
        arrays["y_test"],
        UCI_HAR_CLASSES,
        natural_groups=arrays["groups"] if len(arrays["groups"]) else None,
    )


@register_dataset("mnist")
def load_mnist(*, seed: int, devices: int) -> Dataset:
    """MNIST (LeCun et al., 1998) from the Hugging Face hub, images [1, 28, 28] in [0, 1]."""
    return load_hf_images("mnist")


@register_dataset("fashion_mnist")
def load_fashion_mnist(*, seed: int, devices: int) -> Dataset:
    """Fashion-MNIST (Xiao et al., 2017) from the Hugging Face hub, images [1, 28, 28]."""
    return load_hf_images("fashion_mnist")


@register_dataset("cifar10")
def load_cifar10(*, seed: int, devices: int) -> Dataset:
    """CIFAR-10 (Krizhevsky, 2009) from the Hugging Face hub, images [3, 32, 32] in [0, 1]."""
    return load_hf_images("cifar10")


@register_dataset("uci_har")
def load_uci_har(*, seed: int, devices: int) -> Dataset:
    """UCI HAR (Anguita et al., 2013), the E-Tree paper's data: 561 features, 6 activities.

    ``natural_groups`` are the 21 training volunteers, so ``natural`` gives each
    device one person's recordings.
    """
    return load_uci_har_zip()
