"""``etree run --resume``: a run killed with SIGKILL mid-run and resumed writes the same metrics.csv,
byte for byte, as the same run left alone."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import tomli_w
from helpers import tiny_spec_with

from experiments.checkpoints import CHECKPOINT_DIR, STATE_FILE, load_checkpoint
from experiments.cli import main

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
    assert (broken / "metrics.csv").read_bytes() == (full / "metrics.csv").read_bytes()
    assert (broken / "tree.json").read_bytes() == (full / "tree.json").read_bytes()
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
