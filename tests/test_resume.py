"""``etree run --resume``: a run killed with SIGKILL mid-run and resumed writes the same metrics.csv,
byte for byte, as the same run left alone; a checkpoint that was edited, spoiled or crafted is
refused with one ``error:`` line, and reading one never runs code."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pickle
import shlex
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
import safetensors.torch
import tomli_w
from helpers import tiny_spec_with

from experiments.checkpoints import (
    CHECKPOINT_DIR,
    LEGACY_STATE_FILE,
    SPEC_FILE,
    STATE_FILE,
    load_checkpoint,
    save_checkpoint,
)
from experiments.cli import main
from experiments.runner import RunCheckpoint, run_spec
from experiments.spec import Spec, spec_from_dict

SPEC = tomli_w.dumps(
    tiny_spec_with(
        name="resumable",
        seed=11,
        rounds=12,
        eval_every=1,
        topology={"devices": 30},
        train={"batch_size": 1},
        network={"dropout": 0.1, "crash": [{"at_s": 1.5, "node": "root"}]},
        protocols=[{"name": "etree", "groups": [4, 1], "ratios": [1, 3]}, {"name": "gossip"}],
    )
)


def _etree(*args: str) -> subprocess.Popen[bytes]:
    env = os.environ | {"PYTHONHASHSEED": "0"}
    command = [sys.executable, "-c", "import sys; from experiments.cli import main; sys.exit(main())", *args]
    return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _wait_for(path: Path, process: subprocess.Popen[bytes], timeout_s: float = 240.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        assert process.poll() is None, f"the run ended before checkpointing: {process.stderr.read()!r}"  # type: ignore[union-attr]
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.01)


def test_killed_run_resumes_to_identical_metrics(tmp_path: Path) -> None:
    spec = tmp_path / "resumable.toml"
    spec.write_text(SPEC)
    full, broken = tmp_path / "full", tmp_path / "broken"
    assert main(["run", str(spec), "--out", str(full), "--quiet", "--checkpoint-every", "0"]) == 0

    victim = _etree("run", str(spec), "--out", str(broken), "--quiet", "--checkpoint-every", "2")
    _wait_for(broken / CHECKPOINT_DIR / STATE_FILE, victim)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert victim.returncode == -signal.SIGKILL
    assert not (broken / "metrics.csv").exists(), "killed before it finished"
    _, checkpoint = load_checkpoint(broken)
    written = (full / "metrics.csv").read_text().count("\n") - 1
    assert 0 < len(checkpoint.records) < written, "the checkpoint lies mid-run"

    assert main(["run", "--resume", str(broken), "--quiet"]) == 0
    for name in ("metrics.csv", "links.csv", "tree.json"):
        assert (broken / name).read_bytes() == (full / name).read_bytes(), name
    assert not (broken / CHECKPOINT_DIR).exists(), "a finished run folder carries no checkpoint"


def test_resume_refuses_a_finished_or_foreign_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--resume", str(tmp_path / "nothing"), "--quiet"]) == 2
    assert "has no checkpoint/spec.toml" in capsys.readouterr().err
    assert main(["run", "x.toml", "--resume", str(tmp_path), "--quiet"]) == 2
    assert "give only the run folder" in capsys.readouterr().err


def test_a_broken_state_file_is_a_one_line_error(
    tmp_path: Path, tiny_spec: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    (run / CHECKPOINT_DIR).mkdir(parents=True)
    (run / CHECKPOINT_DIR / "spec.toml").write_text(tiny_spec.read_text())
    (run / CHECKPOINT_DIR / STATE_FILE).write_bytes(b"not a pickle")
    assert main(["run", "--resume", str(run), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --resume:") and err.count("\n") == 1


# -- checkpoints that must be refused ------------------------------------------
@pytest.fixture(scope="module")
def taken() -> tuple[Spec, list[RunCheckpoint]]:
    """The checkpoints of a short run (after rounds 1, 2 and 3 of 4), in memory."""
    spec = spec_from_dict(tiny_spec_with(name="taken", topology={"devices": 8}))
    checkpoints: list[RunCheckpoint] = []
    run_spec(spec, checkpoint_every=1, on_checkpoint=checkpoints.append)
    return spec, checkpoints


def _saved(tmp_path: Path, taken: tuple[Spec, list[RunCheckpoint]], which: int = 0) -> Path:
    """A run folder holding one of ``taken``'s checkpoints, as ``etree run`` writes it."""
    spec, checkpoints = taken
    run = tmp_path / "run"
    save_checkpoint(run, spec, checkpoints[which])
    return run


def _refused(run: Path, capsys: pytest.CaptureFixture[str]) -> str:
    """Resume ``run``: it must end with exit 2 and one ``error: --resume:`` line, returned."""
    assert main(["run", "--resume", str(run), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --resume:") and err.count("\n") == 1, err
    return err


def _state(run: Path) -> dict:
    return json.loads((run / CHECKPOINT_DIR / STATE_FILE).read_text())


def _tensor_file(run: Path) -> Path:
    return run / CHECKPOINT_DIR / _state(run)["tensors"]["file"]


def _replace_tensors(run: Path, data: bytes) -> None:
    """Replace the tensor file with ``data`` and make state.json vouch for it (its SHA-256), as a
    crafted checkpoint would."""
    state = _state(run)
    _tensor_file(run).write_bytes(data)
    state["tensors"]["sha256"] = hashlib.sha256(data).hexdigest()
    (run / CHECKPOINT_DIR / STATE_FILE).write_text(json.dumps(state))


def test_an_untouched_checkpoint_resumes(tmp_path: Path, taken: tuple[Spec, list[RunCheckpoint]]) -> None:
    run = _saved(tmp_path, taken)
    assert sorted(p.name for p in (run / CHECKPOINT_DIR).iterdir()) == [SPEC_FILE, STATE_FILE, _tensor_file(run).name]
    assert main(["run", "--resume", str(run), "--quiet"]) == 0
    assert not (run / CHECKPOINT_DIR).exists()


class _Payload:
    """Unpickled, it runs a shell command that creates ``marker``: what a crafted state.pkl did."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


@pytest.mark.parametrize("where", ["state.pkl", "state.json", "tensor file"])
def test_a_crafted_checkpoint_runs_no_code(
    where: str, tmp_path: Path, taken: tuple[Spec, list[RunCheckpoint]], capsys: pytest.CaptureFixture[str]
) -> None:
    marker = tmp_path / "pwned"
    payload = pickle.dumps(_Payload(marker))
    pickle.loads(payload)  # the payload is live: unpickling it runs its command
    assert marker.exists()
    marker.unlink()
    run = _saved(tmp_path, taken)
    folder = run / CHECKPOINT_DIR
    if where == "state.pkl":  # an older etree's checkpoint, or one made to look like it
        (folder / STATE_FILE).unlink()
        (folder / LEGACY_STATE_FILE).write_bytes(payload)
    elif where == "state.json":
        (folder / STATE_FILE).write_bytes(payload)
    else:
        _replace_tensors(run, payload)
    err = _refused(run, capsys)
    assert not marker.exists(), "reading the checkpoint ran code"
    assert "never opens" in err if where == "state.pkl" else "is not a valid checkpoint" in err


@pytest.mark.parametrize(
    ("table", "key", "value"),
    [(None, "rounds", 3), ("train", "lr", 0.5), ("topology", "devices", 20)],
    ids=["rounds", "lr", "devices"],
)
def test_resuming_after_editing_the_spec_is_refused(
    table: str | None,
    key: str,
    value: object,
    tmp_path: Path,
    taken: tuple[Spec, list[RunCheckpoint]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    run = _saved(tmp_path, taken)
    path = run / CHECKPOINT_DIR / SPEC_FILE
    raw = tomllib.loads(path.read_text())
    (raw if table is None else raw[table])[key] = value
    path.write_text(tomli_w.dumps(raw))
    err = _refused(run, capsys)
    field = key if table is None else f"{table}.{key}"
    assert "was edited after the checkpoint was taken" in err and f"{field}: " in err and "etree run SPEC" in err


def _spoil_shape(run: Path) -> None:
    tensors = safetensors.torch.load(_tensor_file(run).read_bytes())
    key = max(tensors, key=lambda k: tensors[k].numel())  # the model stack
    _replace_tensors(run, safetensors.torch.save({**tensors, key: tensors[key].reshape(-1)[:1]}))


@pytest.mark.parametrize(
    ("spoil", "says"),
    [
        (lambda run: _tensor_file(run).unlink(), "No such file"),
        (lambda run: _tensor_file(run).write_bytes(_tensor_file(run).read_bytes()[:-8]), "SHA-256"),
        (_spoil_shape, "in the tensor file, not"),
        (lambda run: _replace_tensors(run, safetensors.torch.save({})), "is missing from the tensor file"),
        (lambda run: (run / CHECKPOINT_DIR / STATE_FILE).write_text('{"format": 2}'), "has no 'spec_sha256'"),
        (lambda run: (run / CHECKPOINT_DIR / STATE_FILE).write_text('{"format": 1}'), "another etree version"),
        (lambda run: (run / CHECKPOINT_DIR / STATE_FILE).write_text("[]"), "not a valid checkpoint"),
        (lambda run: (run / CHECKPOINT_DIR / STATE_FILE).unlink(), "before its first checkpoint"),
    ],
    ids=["no tensor file", "truncated", "wrong shape", "missing tensors", "no hash", "format 1", "not a dict", "none"],
)
def test_a_spoiled_checkpoint_is_one_error_line(
    spoil: object,
    says: str,
    tmp_path: Path,
    taken: tuple[Spec, list[RunCheckpoint]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    run = _saved(tmp_path, taken)
    spoil(run)  # type: ignore[operator]
    assert says in _refused(run, capsys)


def test_a_state_that_does_not_fit_the_spec_is_one_error_line(
    tmp_path: Path, taken: tuple[Spec, list[RunCheckpoint]], capsys: pytest.CaptureFixture[str]
) -> None:
    """A well-formed checkpoint whose model stack has the wrong shape is refused when the protocol loads it."""
    spec, checkpoints = taken
    checkpoint = checkpoints[0]
    assert checkpoint.snapshot is not None
    params = checkpoint.snapshot.protocol["params"]
    spoiled = {**checkpoint.snapshot.protocol, "params": {name: t[:, :1] for name, t in params.items()}}
    snapshot = dataclasses.replace(checkpoint.snapshot, protocol=spoiled)
    save_checkpoint(tmp_path / "run", spec, RunCheckpoint(0, checkpoint.records, snapshot=snapshot))
    assert main(["run", "--resume", str(tmp_path / "run"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: checkpoint: protocol 'fedavg' cannot continue") and err.count("\n") == 1, err
    assert "params." in err


def test_an_interrupted_save_leaves_the_previous_checkpoint_whole(
    tmp_path: Path, taken: tuple[Spec, list[RunCheckpoint]], monkeypatch: pytest.MonkeyPatch
) -> None:
    spec, checkpoints = taken
    run = _saved(tmp_path, taken, 0)
    replace = os.replace

    def killed_at_the_commit(source: str, target: str | Path) -> None:
        if Path(target).name == STATE_FILE:
            raise KeyboardInterrupt("killed")
        replace(source, target)

    monkeypatch.setattr(os, "replace", killed_at_the_commit)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(run, spec, checkpoints[1])
    monkeypatch.undo()
    _, kept = load_checkpoint(run)
    assert kept.snapshot is not None and kept.snapshot.round_index == 1
    assert kept.records == checkpoints[0].records
    save_checkpoint(run, spec, checkpoints[1])  # the next checkpoint clears what the killed one left
    folder = run / CHECKPOINT_DIR
    assert sorted(p.name for p in folder.iterdir()) == [SPEC_FILE, STATE_FILE, _tensor_file(run).name]
    assert load_checkpoint(run)[1].records == checkpoints[1].records
