"""Every ``etree`` command in README.md's shell blocks runs as written (shrunk to a few rounds, one
seed, in a scratch folder, so the repository's results/ stay untouched): a README edit cannot break
a command silently."""

from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path

import pytest

from experiments.checkpoints import save_checkpoint
from experiments.cli import main
from experiments.runner import RunCheckpoint, run_spec
from experiments.spec import load_spec

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"

# appended to each command of a kind so it runs in seconds; a later option wins over the README's
SHRINK = {
    "run": ["--set", "rounds=2", "--quiet"],
    "tree": [],
    "table3": ["--seeds", "1", "--set", "rounds=2", "--quiet"],
    "sweep": ["--seeds", "1", "--set", "rounds=2", "--jobs", "1", "--quiet"],
    "plot": [],
    "list": [],
    "tune": ["--set", "rounds=1", "--quiet"],
    "design": ["--budget", "2", "--set", "rounds=3", "--quiet"],
}
# the topology study's grid is 24 settings: one topology keeps all of its K and ratios axes
SPEC_SHRINK = {
    "experiments/topology_study.toml": ["--grid", "topology.kind=grid_2d", "--set", "topology.devices=40"],
    "experiments/drift.toml": ["--set", "topology.devices=20", "--set", "topology.links=40"],
    # 14 protocols, each tuned first: one dataset, one learning rate, one tuning round
    "experiments/niid_bench.toml": [
        *("--set", "topology.devices=20", "--set", "topology.links=40", "--grid", "data.dataset=digits"),
        *("--tune", "train.lr=0.1", "--tune-set", "rounds=1"),
    ],
}
# commands that need what a test machine does not have, each with the reason
NOT_RUN = {
    "run experiments/my_spec.toml --set backend.kind=ray --set backend.address=auto --set backend.workers=32": (
        "needs a Ray cluster started with `ray start` and the reader's own spec"
    ),
}


def readme_commands() -> list[list[str]]:
    """The ``etree`` commands of README.md's ``bash`` blocks, in order, without the program and comments."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", README.read_text(), re.DOTALL):
        for line in block.replace("\\\n", " ").splitlines():
            tokens = shlex.split(line, comments=True)
            if tokens and Path(tokens[0]).name == "etree":
                commands.append(tokens[1:])
    return commands


def _made_resumable(folder: Path) -> None:
    """``results/big_run``, the README's example of a run that was killed: a checkpoint after round 2."""
    spec = load_spec(Path("experiments/default.toml"), ["name=big_run", "rounds=4", "topology.devices=40"])
    taken: list[RunCheckpoint] = []
    run_spec(spec, checkpoint_every=2, on_checkpoint=taken.append)
    save_checkpoint(folder, spec, taken[0])


def test_the_readme_names_the_commands_it_has() -> None:
    commands = [" ".join(command) for command in readme_commands()]
    assert len(commands) >= 10 and commands[0].startswith("run experiments/default.toml")
    assert set(NOT_RUN) <= set(commands), "a command listed as not run left the README: update NOT_RUN"


def test_every_readme_command_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "experiments").mkdir()
    for spec in (ROOT / "experiments").glob("*.toml"):
        shutil.copy(spec, tmp_path / "experiments" / spec.name)
    monkeypatch.chdir(tmp_path)
    failed = []
    for command in readme_commands():
        text = " ".join(command)
        if text in NOT_RUN:
            continue
        if command[:2] == ["run", "--resume"]:
            _made_resumable(Path(command[2]))
        extra = SHRINK[command[0]] + [arg for spec in command if spec in SPEC_SHRINK for arg in SPEC_SHRINK[spec]]
        if command[:2] == ["run", "--resume"]:
            extra = ["--quiet"]  # the checkpoint's spec decides the rounds
        if main([*command, *extra]) != 0:
            failed.append(text)
    assert not failed, f"README commands that fail: {failed}"
    assert not (ROOT / "results" / "mine").exists() and not (ROOT / "results" / "big_run").exists()
