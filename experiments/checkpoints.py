"""A run's checkpoint on disk: ``RUN_DIR/checkpoint/``, so ``etree run --resume RUN_DIR`` can continue.

The folder holds three kinds of file, none of which can run code when read
(nothing on this path unpickles):

- ``spec.toml``: the resolved spec. The resumed run rebuilds its workload from
  it, bit for bit (every stream is seeded from it), and runs with it.
- ``state.json``: the checkpoint format version; a SHA-256 of the format version
  and the resolved spec (canonical JSON), with that spec; the records written so
  far; the structures and link loads of finished protocols; and the snapshot of
  the protocol in progress (``etree.engine.checkpoint``: round, bytes sent,
  counters, clock, and the non-tensor part of its ``state_dict()``). Every tensor
  and array is named there by key, dtype and shape.
- ``tensors-<hash>.safetensors``: those tensors and arrays, in the safetensors
  format (a JSON header and raw bytes); ``state.json`` gives its name and SHA-256.

Writing is atomic: the tensors go to a new file (temporary name, fsync, rename),
then ``state.json`` is replaced the same way, which commits the checkpoint, and
only then are older tensor files removed. A kill at any instant leaves the
previous checkpoint whole.

Reading refuses, with one ``SpecError`` line each: a spec edited after the
checkpoint was taken (the hash; resuming with other rounds, learning rate or
devices would silently run something else), a checkpoint of another format, a
tensor file that is not the one ``state.json`` names, a tensor whose dtype or
shape differs from the document's, and anything else that is not a checkpoint.
An older etree's ``state.pkl`` is a pickle and is never opened. The finished run
folder replaces ``RUN_DIR`` and with it the checkpoint (``experiments.results``).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.torch
import tomli_w
from safetensors import SafetensorError

from etree.core.errors import EtreeError
from etree.engine.checkpoint import CheckpointError, RunSnapshot, expect, expect_array, pack_state, unpack_state
from etree.engine.protocol import Record
from etree.network.links import LinkLoad
from experiments.run_folder import CHECKPOINT_DIR
from experiments.runner import RunCheckpoint
from experiments.spec import Spec, SpecError, load_spec

SPEC_FILE = "spec.toml"
STATE_FILE = "state.json"  # written last: its replacement commits a checkpoint
LEGACY_STATE_FILE = "state.pkl"  # format 1 (a pickle): never opened
FORMAT = 2  # bump when the layout of state.json changes
_TENSOR_FILE = re.compile(r"tensors-[0-9a-f]{16}\.safetensors")
_RERUN = "rerun with `etree run SPEC`"


def checkpoint_dir(run_dir: Path) -> Path:
    return Path(run_dir) / CHECKPOINT_DIR


def spec_digest(spec: Spec) -> str:
    """SHA-256 of the checkpoint format version and the resolved spec, as canonical JSON."""
    canonical = json.dumps({"format": FORMAT, "spec": _spec_data(spec)}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def save_checkpoint(run_dir: Path, spec: Spec, checkpoint: RunCheckpoint) -> None:
    """Write the checkpoint atomically (see the module docstring); ``spec.toml`` is written when it
    does not hold ``spec`` yet. Nothing is written before the first checkpoint, so a run refused for
    bad input leaves no trace."""
    folder = checkpoint_dir(run_dir)
    folder.mkdir(parents=True, exist_ok=True)
    spec_text = tomli_w.dumps(spec.to_dict())
    spec_path = folder / SPEC_FILE
    if not spec_path.is_file() or spec_path.read_text() != spec_text:
        _write_atomically(folder, SPEC_FILE, spec_text.encode())
    document, tensors = pack_state(_run_state(checkpoint))
    tensor_file, tensor_digest = _write_tensors(folder, tensors)
    state = {
        "format": FORMAT,
        "spec_sha256": spec_digest(spec),
        "spec": _spec_data(spec),
        "tensors": {"file": tensor_file, "sha256": tensor_digest},
        "run": document,
    }
    _write_atomically(folder, STATE_FILE, json.dumps(state).encode())
    for path in folder.iterdir():  # superseded tensor files, temporary files of killed writes, a format-1 pickle
        superseded = bool(_TENSOR_FILE.fullmatch(path.name)) and path.name != tensor_file
        stale = superseded or path.name.endswith(".tmp")
        if stale or path.name == LEGACY_STATE_FILE:
            path.unlink(missing_ok=True)


def load_checkpoint(run_dir: Path) -> tuple[Spec, RunCheckpoint]:
    """The saved spec and the latest checkpoint of an interrupted run, checked (see the module docstring)."""
    folder = checkpoint_dir(run_dir)
    spec_path, state_path = folder / SPEC_FILE, folder / STATE_FILE
    if not spec_path.is_file():
        raise SpecError(
            f"--resume: '{run_dir}' has no {CHECKPOINT_DIR}/{SPEC_FILE}; it finished (its checkpoint is removed) "
            f"or was not started by `etree run`; {_RERUN}"
        )
    if not state_path.is_file():
        if (folder / LEGACY_STATE_FILE).exists():
            raise SpecError(
                f"--resume: '{folder / LEGACY_STATE_FILE}' is a checkpoint of an older etree, a pickle, which "
                f"this version never opens (loading a pickle can run any code); {_RERUN}"
            )
        raise SpecError(
            f"--resume: '{folder}' holds no {STATE_FILE}: the run stopped before its first checkpoint; {_RERUN}"
        )
    try:
        state = expect(json.loads(state_path.read_bytes()), dict, "state.json")
    except (OSError, ValueError) as exc:  # a JSONDecodeError or a CheckpointError are ValueErrors
        raise _not_a_checkpoint(state_path, exc) from exc
    if state.get("format") != FORMAT:
        raise SpecError(
            f"--resume: '{state_path}' was written by another etree version (checkpoint format "
            f"{state.get('format')!r}, this one reads {FORMAT}); {_RERUN}"
        )
    try:
        saved_digest = expect(_key(state, "spec_sha256"), str, "spec_sha256")
    except CheckpointError as exc:
        raise _not_a_checkpoint(state_path, exc) from exc
    try:
        spec = load_spec(spec_path)
    except EtreeError as exc:
        raise SpecError(f"--resume: '{spec_path}' does not load ({_first_line(exc)}); {_RERUN}") from exc
    if saved_digest != spec_digest(spec):
        raise SpecError(
            f"--resume: '{spec_path}' was edited after the checkpoint was taken "
            f"({_spec_changes(state.get('spec'), _spec_data(spec))}); {_RERUN}"
        )
    try:
        tensors = _read_tensors(folder, state.get("tensors"))
        checkpoint = _run_checkpoint(unpack_state(_key(state, "run"), tensors), spec)
    except (OSError, ValueError, TypeError, KeyError, IndexError) as exc:  # CheckpointError is a ValueError
        raise _not_a_checkpoint(state_path, exc) from exc
    return spec, checkpoint


# -- the run as state ----------------------------------------------------------
def _run_state(checkpoint: RunCheckpoint) -> dict[str, Any]:
    """A ``RunCheckpoint`` as state for ``pack_state`` (structures as ``tree.json`` will hold them)."""
    snapshot = checkpoint.snapshot
    return {
        "protocol_index": checkpoint.protocol_index,
        "records": [
            [r.protocol, int(r.round), float(r.sim_time_s), int(r.bytes_sent), r.metric, float(r.value)]
            for r in checkpoint.records
        ],
        "structures": json.loads(json.dumps(checkpoint.structures)),
        "links": {
            label: {"ends": load.ends, "messages": load.messages, "bytes_sent": load.bytes_sent}
            for label, load in checkpoint.links.items()
        },
        "snapshot": None if snapshot is None else snapshot.to_state(),
    }


def _run_checkpoint(state: Any, spec: Spec) -> RunCheckpoint:
    """The ``RunCheckpoint`` ``_run_state`` described, checked against the spec it continues."""
    state = expect(state, dict, "run")
    index = expect(_key(state, "protocol_index"), int, "run.protocol_index")
    if not 0 <= index < len(spec.protocols):
        raise CheckpointError(f"run.protocol_index: got {index}; the spec has {len(spec.protocols)} protocol(s)")
    records = [_record(row, i) for i, row in enumerate(expect(_key(state, "records"), list, "run.records"))]
    links: dict[str, LinkLoad] = {}
    for label, raw in expect(_key(state, "links"), dict, "run.links").items():
        load = expect(raw, dict, f"run.links.{label}")
        ends = expect_array(_key(load, "ends"), f"run.links.{label}.ends", np.int64, (None, 2))
        count = (len(ends),)
        messages = expect_array(_key(load, "messages"), f"run.links.{label}.messages", np.float64, count)
        sent = expect_array(_key(load, "bytes_sent"), f"run.links.{label}.bytes_sent", np.float64, count)
        links[label] = LinkLoad(ends, messages, sent)
    raw_snapshot = _key(state, "snapshot")
    snapshot = None if raw_snapshot is None else RunSnapshot.from_state(raw_snapshot)
    if snapshot is not None and not 0 < snapshot.round_index < spec.rounds:
        raise CheckpointError(f"snapshot.round_index: got {snapshot.round_index}; the run has {spec.rounds} rounds")
    structures = expect(_key(state, "structures"), dict, "run.structures")
    return RunCheckpoint(index, records, structures, links, snapshot)


def _record(row: Any, index: int) -> Record:
    where = f"run.records[{index}]"
    if not isinstance(row, list) or len(row) != 6:
        raise CheckpointError(f"{where}: expected [protocol, round, sim_time_s, bytes_sent, metric, value]")
    protocol, round_index, sim_time_s, sent, metric, value = row
    for number in (sim_time_s, value):
        if isinstance(number, bool) or not isinstance(number, int | float):
            raise CheckpointError(f"{where}: got {number!r} where a number belongs")
    return Record(
        expect(protocol, str, where),
        expect(round_index, int, where),
        float(sim_time_s),
        expect(sent, int, where),
        expect(metric, str, where),
        float(value),
    )


def _key(mapping: dict[str, Any], key: str) -> Any:
    if key not in mapping:
        raise CheckpointError(f"has no {key!r}")
    return mapping[key]


# -- files -----------------------------------------------------------------------
def _write_atomically(folder: Path, name: str, data: bytes) -> None:
    """Write ``folder/name`` via a temporary file, flushed to disk, then ``os.replace``d."""
    fd, temp = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, folder / name)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    _sync_folder(folder)


def _write_tensors(folder: Path, tensors: dict[str, Any]) -> tuple[str, str]:
    """Write the tensors to a new file named by their hash; return its name and SHA-256."""
    fd, temp = tempfile.mkstemp(dir=folder, prefix=".tensors.", suffix=".tmp")
    os.close(fd)
    try:
        safetensors.torch.save_file(tensors, temp)
        digest = hashlib.sha256()
        with open(temp, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
            os.fsync(handle.fileno())
        name = f"tensors-{digest.hexdigest()[:16]}.safetensors"
        os.replace(temp, folder / name)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    _sync_folder(folder)
    return name, digest.hexdigest()


def _sync_folder(folder: Path) -> None:
    """Make the renames in ``folder`` durable, so ``state.json`` never outlives the tensor file it names."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _read_tensors(folder: Path, ref: Any) -> dict[str, Any]:
    """The tensors of the file ``state.json`` names, once its SHA-256 matches."""
    ref = expect(ref, dict, "tensors")
    name, digest = ref.get("file"), ref.get("sha256")
    if not isinstance(name, str) or not _TENSOR_FILE.fullmatch(name):
        raise CheckpointError(f"tensors.file: got {name!r}, not a tensor file of this folder")
    data = (folder / name).read_bytes()
    if hashlib.sha256(data).hexdigest() != digest:
        raise CheckpointError(f"{name}: its SHA-256 is not the one state.json gives (a partial or foreign file)")
    try:
        return safetensors.torch.load(data)
    except SafetensorError as exc:
        raise CheckpointError(f"{name}: {exc}") from exc


# -- messages ----------------------------------------------------------------------
def _spec_data(spec: Spec) -> Any:
    """The resolved spec as JSON data (tuples as lists), the form the hash and the comparison see."""
    return json.loads(json.dumps(spec.to_dict(), default=str))


def _spec_changes(saved: Any, current: Any, shown: int = 3) -> str:
    """What differs between the spec the checkpoint was taken with and the one on disk, e.g. ``rounds: 30 -> 3``."""
    if not isinstance(saved, dict):
        return "state.json does not hold the spec it was taken with"
    before, after = dict(_leaves(saved)), dict(_leaves(current))
    changed = [key for key in sorted(before.keys() | after.keys()) if before.get(key, ...) != after.get(key, ...)]
    if not changed:
        return "its hash differs from the one state.json gives"

    def shown_value(leaves: dict[str, Any], key: str) -> str:
        return json.dumps(leaves[key]) if key in leaves else "(absent)"

    parts = [f"{key}: {shown_value(before, key)} -> {shown_value(after, key)}" for key in changed[:shown]]
    more = f"; and {len(changed) - shown} more" if len(changed) > shown else ""
    return "; ".join(parts) + more


def _leaves(value: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """Dotted paths to every value of a spec (``protocols[0].groups``)."""
    if isinstance(value, dict) and value:
        for key, item in value.items():
            yield from _leaves(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, list) and value and all(isinstance(item, dict) for item in value):
        for index, item in enumerate(value):
            yield from _leaves(item, f"{path}[{index}]")
    else:
        yield path, value


def _first_line(exc: BaseException) -> str:
    text = f"missing {exc}" if isinstance(exc, KeyError) else str(exc)
    return (text or type(exc).__name__).splitlines()[0]


def _not_a_checkpoint(path: Path, exc: BaseException) -> SpecError:
    return SpecError(f"--resume: '{path}' is not a valid checkpoint ({_first_line(exc)}); {_RERUN}")
