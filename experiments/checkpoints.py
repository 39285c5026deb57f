"""A run's checkpoint on disk: ``RUN_DIR/checkpoint/``, so ``etree run --resume RUN_DIR`` can continue.

``spec.toml`` is the resolved spec (the resumed run rebuilds its workload from
it, bit for bit: every stream is seeded from it); ``state.pkl`` holds the
records written so far, the structures and link loads of finished protocols,
and a snapshot of the protocol in progress (``etree.engine.checkpoint``). Both are
replaced atomically, so a kill at any instant leaves the previous checkpoint
whole. The finished run folder replaces the whole ``RUN_DIR`` and with it the
checkpoint (``experiments.results``).

``state.pkl`` is a pickle: load only checkpoints your own runs wrote.
"""

from __future__ import annotations

import os
import pickle
import tempfile
from pathlib import Path

import tomli_w

from experiments.results import atomic_write_text
from experiments.runner import RunCheckpoint
from experiments.spec import Spec, SpecError, load_spec

CHECKPOINT_DIR = "checkpoint"
STATE_FILE = "state.pkl"
FORMAT = 1  # bump when RunCheckpoint changes shape


def checkpoint_dir(run_dir: Path) -> Path:
    return Path(run_dir) / CHECKPOINT_DIR


def save_checkpoint(run_dir: Path, spec: Spec, checkpoint: RunCheckpoint) -> None:
    """Replace ``state.pkl`` atomically (written beside it, flushed to disk, then renamed); the first
    checkpoint also saves the spec it resumes with. Nothing is written before the first checkpoint,
    so a run refused for bad input leaves no trace."""
    folder = checkpoint_dir(run_dir)
    if not (folder / "spec.toml").is_file():
        atomic_write_text(folder / "spec.toml", tomli_w.dumps(spec.to_dict()))
    fd, temp = tempfile.mkstemp(dir=folder, prefix=f".{STATE_FILE}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            pickle.dump((FORMAT, checkpoint), handle, protocol=pickle.HIGHEST_PROTOCOL)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, folder / STATE_FILE)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def load_checkpoint(run_dir: Path) -> tuple[Spec, RunCheckpoint]:
    """The saved spec and the latest checkpoint of an interrupted run."""
    folder = checkpoint_dir(run_dir)
    state = folder / STATE_FILE
    if not (folder / "spec.toml").is_file():
        raise SpecError(
            f"--resume: '{run_dir}' has no {CHECKPOINT_DIR}/spec.toml; it finished (its checkpoint is removed) "
            "or was not started by `etree run`; rerun it with `etree run SPEC`"
        )
    spec = load_spec(folder / "spec.toml")
    try:
        with state.open("rb") as handle:
            version, checkpoint = pickle.load(handle)
    except (OSError, pickle.UnpicklingError, EOFError, ValueError, TypeError) as exc:
        raise SpecError(
            f"--resume: '{state}' is not a readable checkpoint ({exc}); rerun with `etree run SPEC`"
        ) from exc
    if version != FORMAT or not isinstance(checkpoint, RunCheckpoint):
        raise SpecError(f"--resume: '{state}' was written by another etree version; rerun with `etree run SPEC`")
    return spec, checkpoint
