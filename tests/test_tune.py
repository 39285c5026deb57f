"""etree tune picks each protocol's training settings on the validation split and never reads the test set."""

from __future__ import annotations

import tomllib
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_SPEC

from clients.classification.datasets import Dataset
from clients.datasets import DATASETS, load_dataset, register_dataset
from experiments.cli import main
from experiments.spec import load_spec
from experiments.tune import best_row

SPEC = TINY_SPEC + '\n[[protocols]]\nname = "individual"\n'


def _table(out: Path) -> list[list[str]]:
    rows = [line.strip("| ").split(" | ") for line in (out / "tune.md").read_text().splitlines()]
    return [r for r in rows if r[0] in ("fedavg", "individual")]


def _tune(spec: Path, out: Path) -> int:
    return main(["tune", str(spec), "--grid", "train.lr=0.0005,0.2", "--set", "rounds=2", "--out", str(out), "--quiet"])


@pytest.fixture
def poisoned_digits():
    """digits with its test labels scrambled: a tuner that looked at the test set would choose differently."""

    def load(*, seed: int, devices: int) -> Dataset:
        clean = load_dataset("digits", seed=seed, devices=devices)
        scrambled = np.random.default_rng(0).permutation(clean.y_test)
        return Dataset("poisoned", clean.x_train, clean.y_train, clean.x_test, scrambled, num_classes=10)

    register_dataset("poisoned_digits_for_tune")(load)
    yield
    del DATASETS["poisoned_digits_for_tune"]


def test_tune_keeps_the_best_validation_value_and_writes_a_runnable_spec(tmp_path: Path) -> None:
    spec = tmp_path / "two.toml"
    spec.write_text(SPEC)
    assert _tune(spec, tmp_path / "tune") == 0
    rows = _table(tmp_path / "tune")
    for protocol in ("fedavg", "individual"):
        mine = [r for r in rows if r[0] == protocol]
        best = max(mine, key=lambda r: float(r[2].split(" ±")[0]))
        assert [r[3] for r in mine].count("yes") == 1 and best[3] == "yes"
        assert all(r[4] == "—" for r in mine if r[3] != "yes")  # test accuracy of the chosen value only
    tuned = load_spec(tmp_path / "tune" / "tuned.toml")
    assert tuned.rounds == tomllib.loads(SPEC)["rounds"]  # --set shaped the tuning runs only
    assert {p.label: p.train.get("lr") for p in tuned.protocols} == {"fedavg": 0.2, "individual": 0.2}


def test_tune_never_reads_the_test_set(tmp_path: Path, poisoned_digits: None) -> None:
    clean, poisoned = tmp_path / "clean.toml", tmp_path / "poisoned.toml"
    clean.write_text(SPEC)
    poisoned.write_text(SPEC.replace('dataset = "digits"', 'dataset = "poisoned_digits_for_tune"'))
    assert _tune(clean, tmp_path / "a") == 0 and _tune(poisoned, tmp_path / "b") == 0
    a, b = _table(tmp_path / "a"), _table(tmp_path / "b")
    assert [r[:4] for r in a] == [r[:4] for r in b]  # same validation scores, same choices
    assert [r[4] for r in a] != [r[4] for r in b]  # while the reported test accuracy differs


def test_bad_tune_grid_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = tmp_path / "two.toml"
    spec.write_text(SPEC)
    assert main(["tune", str(spec), "--grid", "model.hidden=4,8", "--out", str(tmp_path / "t")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [err[0]] and err[0].startswith("error: --grid:")


def test_a_diverged_setting_never_wins_even_first_in_the_grid() -> None:
    nan = float("nan")
    rows = [({"lr": 0.4}, nan, nan, nan), ({"lr": 0.1}, 0.71, 0.01, 0.70), ({"lr": 0.2}, 0.71, 0.02, 0.69)]
    assert best_row(rows)[0] == {"lr": 0.1}  # finite, and the first of the equal bests
    assert best_row(rows[::-1])[0] == {"lr": 0.2}
