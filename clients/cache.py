"""The on-disk cache of downloaded or regenerated data (``ETREE_CACHE``), and the one-line offline error."""

from __future__ import annotations

import os
import tempfile
import zipfile
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from clients.errors import ClientsError


def cache_dir() -> Path:
    """Where generated and downloaded data is kept: ``$ETREE_CACHE`` or ``~/.cache/etree``."""
    return Path(os.environ.get("ETREE_CACHE") or Path.home() / ".cache" / "etree")


def read_npz(path: Path, keys: tuple[str, ...]) -> dict[str, np.ndarray] | None:
    """Arrays ``keys`` from a cache file, or None when it is missing or unreadable (regenerate)."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {key: archive[key] for key in keys}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None


def write_npz(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    """Write a cache file atomically, so a killed run never leaves half a file under its name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        named: dict[str, Any] = dict(arrays)  # (numpy's stubs type **kwds like allow_pickle)
        with os.fdopen(fd, "wb") as handle:
            np.savez(handle, **named)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def offline_error(name: str, cause: BaseException | str) -> ClientsError:
    """The one-line error for a dataset that needs a download this machine cannot make."""
    if isinstance(cause, BaseException):
        cause = f"{type(cause).__name__}: {cause}"
    cause = " ".join(str(cause).split())
    if len(cause) > 160:
        cause = cause[:157] + "..."
    return ClientsError(
        f"data.dataset: {name!r} must be downloaded and this machine is offline ({cause}); "
        f"use 'digits', 'mnist1d' or 'synthetic' offline"
    )


def packaged_file(distribution: str, member: str) -> Path | None:
    """A data file shipped inside an installed wheel (``member``: its path in the wheel), or None when
    the package is not installed. Only the file is read; the package's code is never imported."""
    try:
        dist = metadata.distribution(distribution)
    except metadata.PackageNotFoundError:
        return None
    for file in dist.files or ():
        if str(file).replace("\\", "/") == member:
            path = Path(str(dist.locate_file(file)))
            return path if path.is_file() else None
    return None
