"""Folders etree owns: the marker that says etree wrote a folder and what it holds, and the checks
that keep etree from deleting or overwriting anything it did not write.

Every folder etree writes as a whole (a run folder, a sweep or Table 3 folder, a folder made for a
tree drawing) carries ``etree.json``: who wrote it, what kind of folder it is, the SHA-256 of the
resolved spec (run and tree folders), and every file and folder etree put there; for the files that
are read back (``spec.toml``, ``metrics.csv``, ``links.csv``, ``tree.json``) their SHA-256 and, for
the CSVs, their row count. So:

- a folder is replaced only when etree owns it (:func:`check_replaceable`): it does not exist, it is
  empty, it holds nothing but an etree ``checkpoint/``, or its marker lists everything in it (a file
  a user put there stops the replacement, and so does a folder without a marker);
- a file cut, edited or emptied since etree wrote it is refused where it is read
  (:func:`read_checked`), before a number computed from it replaces an old summary.

The marker holds no time stamp, so the same spec writes the same marker.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from etree.core.errors import EtreeError
from etree.core.version import __version__

MARKER = "etree.json"
MARKER_FORMAT = 1
CHECKPOINT_DIR = "checkpoint"  # a run's checkpoint (experiments.checkpoints), inside its run folder
CHECKED = ("spec.toml", "metrics.csv", "links.csv", "tree.json")  # read back, so recorded by hash
KINDS = ("run", "tree", "sweep", "table3", "tune", "design")


class RunFolderError(EtreeError):
    """A folder etree must not write, or a run folder that does not hold what etree wrote."""


def spec_sha256(table: Mapping[str, Any]) -> str:
    """SHA-256 of a resolved spec table (``Spec.to_dict``), as canonical JSON."""
    canonical = json.dumps(table, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _facts(path: Path) -> dict[str, Any]:
    """What the marker records of one entry: folders by name only, read-back files by hash and rows."""
    if path.is_dir():
        return {"folder": True}
    if path.name not in CHECKED:
        return {}
    data = path.read_bytes()
    facts: dict[str, Any] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    if path.suffix == ".csv":
        facts["rows"] = max(data.count(b"\n") - 1, 0)
    return facts


def write_marker(folder: Path, kind: str, names: Iterable[str], spec: str | None = None) -> None:
    """Write ``folder/etree.json`` (atomically) listing ``names``, the entries etree put in ``folder``."""
    assert kind in KINDS, kind
    marker: dict[str, Any] = {"written_by": "etree", "format": MARKER_FORMAT, "version": __version__, "kind": kind}
    if spec is not None:
        marker["spec_sha256"] = spec
    marker["files"] = {name: _facts(folder / name) for name in sorted(set(names) - {MARKER})}
    atomic_write_text(folder / MARKER, json.dumps(marker, indent=1) + "\n")


def add_to_marker(folder: Path, names: Iterable[str]) -> None:
    """Record files etree added to a folder it owns (a redrawn plot, a tree drawing)."""
    marker = read_marker(folder)
    assert marker is not None, folder
    write_marker(folder, marker["kind"], [*marker["files"], *names], marker.get("spec_sha256"))


def relist_marker(folder: Path) -> None:
    """The marker lists what the folder holds now (after etree removed files it wrote there)."""
    marker = read_marker(folder)
    assert marker is not None, folder
    names = [name for name in marker["files"] if (folder / name).exists()]
    write_marker(folder, marker["kind"], names, marker.get("spec_sha256"))


def read_marker(folder: Path) -> dict[str, Any] | None:
    """The marker of ``folder``; None when it has none, an error when it is not one etree writes."""
    path = Path(folder) / MARKER
    if not path.is_file():
        return None
    try:
        marker = json.loads(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise RunFolderError(f"run folder: '{path}' is not a marker etree wrote ({exc}); restore it or rerun") from exc
    valid = (
        isinstance(marker, dict)
        and marker.get("written_by") == "etree"
        and marker.get("kind") in KINDS
        and isinstance(marker.get("files"), dict)
        and all(isinstance(facts, dict) for facts in marker["files"].values())
    )
    if not valid:
        raise RunFolderError(f"run folder: '{path}' is not a marker etree wrote; restore it or rerun")
    return marker


def check_target(out: str | os.PathLike[str], field: str) -> Path:
    """``out`` as a folder path etree may create or replace, by its form alone: not empty, not the
    current folder or one above it, not a file, no file on its way, not a symbolic link."""
    text = os.fspath(out)
    if not text.strip():
        raise RunFolderError(f"{field}: empty; give the folder to write, such as results/mine")
    path = Path(text)
    if path.name in ("", ".", "..") or Path.cwd().resolve().is_relative_to(path.resolve()):
        raise RunFolderError(
            f"{field}: '{text}' is the current folder or one above it, which the run would replace; "
            "give a folder of its own, such as results/mine"
        )
    for above in reversed(path.parents):
        if above.exists() and not above.is_dir():
            raise RunFolderError(f"{field}: '{above}' is a file, so '{text}' cannot be a folder; choose another path")
    if path.is_symlink():
        raise RunFolderError(f"{field}: '{text}' is a symbolic link; give the folder it points to, or another path")
    if path.exists() and not path.is_dir():
        raise RunFolderError(f"{field}: '{text}' is a file; etree writes a folder there, so choose another path")
    return path


def check_replaceable(out: Path, field: str, kinds: tuple[str, ...] = ("run", "tree")) -> None:
    """Refuse ``out`` unless etree may replace it as a whole (see the module docstring)."""
    if not out.exists():
        return
    if not out.is_dir():
        raise RunFolderError(f"{field}: '{out}' is a file; etree writes a folder there, so choose another path")
    entries = {entry.name for entry in out.iterdir()}
    marker = read_marker(out)
    if marker is None:
        if entries <= {CHECKPOINT_DIR}:
            return  # empty, or a run etree checkpointed before its first folder was written
        raise RunFolderError(
            f"{field}: '{out}' exists and etree did not write it (it has no {MARKER}); etree replaces only "
            "folders it wrote: choose another folder, or move this one away yourself"
        )
    if marker["kind"] not in kinds:
        raise RunFolderError(
            f"{field}: '{out}' holds an etree {marker['kind']} folder, not a {' or '.join(kinds)} folder; "
            "choose another folder"
        )
    foreign = sorted(entries - set(marker["files"]) - {MARKER, CHECKPOINT_DIR})
    if foreign:
        raise RunFolderError(
            f"{field}: '{out}' holds {', '.join(repr(name) for name in foreign[:3])}, which etree did not write; "
            "move it out of the folder, or choose another folder"
        )


def check_writable(out: Path, field: str) -> None:
    """Refuse ``out`` when its nearest existing folder cannot take a new entry (tried, not guessed)."""
    existing = next(p for p in (out, *out.parents) if p.exists())
    probe_in = existing if existing != out else out.parent
    try:
        os.rmdir(tempfile.mkdtemp(dir=probe_in, prefix=".etree-write-check-"))
    except OSError as exc:
        raise RunFolderError(
            f"{field}: cannot write in '{probe_in}' ({exc.strerror}); choose a folder you can write to"
        ) from exc


def prepare_target(out: str | os.PathLike[str], field: str, kinds: tuple[str, ...] = ("run", "tree")) -> Path:
    """Every check of an output folder that can be made before the run: its form, that etree may
    replace it, and that it can be written, so a run is never lost for want of a place to put it."""
    path = check_target(out, field)
    check_replaceable(path, field, kinds)
    check_writable(path, field)
    return path


@contextmanager
def batch_folder(out: str | os.PathLike[str], kind: str, names: Iterable[str], field: str) -> Iterator[Path]:
    """``out`` as a folder of ``kind`` (a sweep, Table 3) that etree writes into entry by entry: new,
    empty or already one; its marker lists ``names`` before anything is written. A batch that fails
    or is interrupted before any of its runs finished removes again the folder it made."""
    path = check_target(out, field)
    if path.exists() and any(path.iterdir()):
        marker = read_marker(path)
        if marker is None or marker["kind"] != kind:
            what = "etree did not write it" if marker is None else f"it holds an etree {marker['kind']} folder"
            raise RunFolderError(f"{field}: '{path}' exists and {what}; choose another folder")
        names = [*marker["files"], *names]
    check_writable(path, field)
    made = not path.exists()
    path.mkdir(parents=True, exist_ok=True)
    write_marker(path, kind, names)
    try:
        yield path
    except BaseException:
        if made and not any(found != path / MARKER for found in path.rglob(MARKER)):
            shutil.rmtree(path, ignore_errors=True)
        raise


def prepare_drawing(out: str | os.PathLike[str], spec: str, field: str) -> bool:
    """Check a tree drawing's path before the tree is built: a ``.png`` file, not over a file etree
    cannot tell it drew, and not into a folder etree wrote for another spec (``spec``: the drawing's
    spec hash). True when its folder does not exist yet (it becomes a ``tree`` folder)."""
    text = os.fspath(out)
    path = Path(text)
    if not text.strip() or path.is_dir():
        raise RunFolderError(f"{field}: '{text}' is a folder; give the drawing's file, such as results/trees/tree.png")
    if path.suffix.lower() != ".png":
        raise RunFolderError(f"{field}: '{text}' must end in .png (etree tree draws a PNG)")
    for above in reversed(path.parents):
        if above.exists() and not above.is_dir():
            raise RunFolderError(f"{field}: '{above}' is a file, so '{text}' cannot be written; choose another path")
    folder = path.parent
    marker = read_marker(folder) if folder.is_dir() else None
    if marker is not None and marker.get("spec_sha256") != spec:
        raise RunFolderError(
            f"{field}: '{folder}' holds an etree {marker['kind']} folder of another spec, whose drawings stay as "
            f"they are; give --out elsewhere, such as {folder.name}_tree.png beside it"
        )
    if marker is None and path.exists():
        raise RunFolderError(f"{field}: '{text}' exists and etree cannot tell it drew it; remove it or pick a new path")
    check_writable(path, field)
    return not folder.exists()


def record_drawing(out: Path, spec: str, new_folder: bool) -> None:
    """After drawing: a folder etree made for the drawing gets its marker; one it owns lists the file."""
    if new_folder:
        write_marker(out.parent, "tree", [out.name], spec)
    elif read_marker(out.parent) is not None:
        add_to_marker(out.parent, [out.name])


def read_checked(folder: Path, name: str) -> str | None:
    """The text of ``folder/name`` once it is the file etree wrote (its marker's hash and row count);
    None when the run wrote no such file."""
    folder = Path(folder)
    path = folder / name
    marker = read_marker(folder)
    if marker is None:
        raise RunFolderError(
            f"run folder: '{folder}' has no {MARKER}, so etree cannot tell its files are the ones it wrote "
            "(an older etree's folder, or not etree's); rerun its spec to write it anew"
        )
    facts = marker["files"].get(name)
    if facts is None:
        if path.exists():
            raise RunFolderError(f"run folder: '{path}' was not written by etree (its {MARKER} does not list it)")
        return None
    if not path.is_file():
        raise RunFolderError(f"run folder: '{path}' is missing; etree wrote it; rerun the spec, or restore the file")
    data = path.read_bytes()
    if "sha256" in facts and hashlib.sha256(data).hexdigest() != facts["sha256"]:
        rows = max(data.count(b"\n") - 1, 0)
        change = (
            f"it holds {rows} rows, etree wrote {facts['rows']}"
            if "rows" in facts and rows != facts["rows"]
            else f"{len(data)} bytes, not the {facts.get('bytes', '?')} etree wrote"
            if len(data) != facts.get("bytes")
            else "its SHA-256 differs"
        )
        raise RunFolderError(
            f"run folder: '{path}' is not the file etree wrote ({change}): it was cut or edited since; "
            "rerun the spec, or restore the file"
        )
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RunFolderError(f"run folder: '{path}' is not UTF-8 text ({exc.reason} at byte {exc.start})") from exc


def atomic_write_text(path: Path, text: str) -> None:
    """Write a file via a temporary file in the same folder and ``os.replace``: complete or absent."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", newline="") as handle:
            handle.write(text)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
