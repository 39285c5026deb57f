"""Sweeps: grid parsing, confidence intervals, and a tiny end-to-end sweep."""

import json

import numpy as np
import pytest
from scipy import stats

from experiments.cli import main
from experiments.spec import SpecError
from experiments.sweep import confidence, parse_grid


def test_grid_is_the_product_and_keeps_bracketed_values_whole():
    settings = parse_grid(["data.alpha=0.1,1.0", "protocols.etree.groups=[8,1],[4,1]"])
    assert [s.overrides for s in settings] == [
        ("data.alpha=0.1", "protocols.etree.groups=[8,1]"),
        ("data.alpha=0.1", "protocols.etree.groups=[4,1]"),
        ("data.alpha=1.0", "protocols.etree.groups=[8,1]"),
        ("data.alpha=1.0", "protocols.etree.groups=[4,1]"),
    ]
    assert len({s.name for s in settings}) == 4


@pytest.mark.parametrize("bad", ["data.alpha", "=1,2", "data.alpha="])
def test_bad_grid_names_the_flag(bad):
    with pytest.raises(SpecError, match="--grid"):
        parse_grid([bad])


def test_confidence_is_student_t_half_width():
    mean, half = confidence(np.array([1.0, 2.0, 3.0]))
    assert mean == pytest.approx(2.0)
    assert half == pytest.approx(stats.t.ppf(0.975, 2) * 1.0 / np.sqrt(3))
    assert confidence(np.array([0.7]))[1] == 0


def test_tiny_sweep_runs_every_setting_and_seed(tiny_spec, tmp_path, capsys):
    out = tmp_path / "sweep"
    code = main(
        [
            "sweep",
            str(tiny_spec),
            "--grid",
            "data.classes_per_device=2,3",
            "--seeds",
            "2",
            "--jobs",
            "1",
            "--set",
            "rounds=2",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    record = json.loads((out / "sweep.json").read_text())
    assert record["seeds"] == [3, 4]
    folders = sorted(p.relative_to(out).as_posix() for p in out.glob("*/seed*"))
    assert len(folders) == 4
    summary = (out / "summary.md").read_text()
    assert summary.count("| fedavg | 2 |") == 2
    (out / "sweep.png").unlink()
    assert main(["plot", str(out)]) == 0
    assert (out / "sweep.png").stat().st_size > 1000


def test_bad_grid_value_fails_before_any_run(tiny_spec, tmp_path, capsys):
    out = tmp_path / "sweep"
    assert main(["sweep", str(tiny_spec), "--grid", "topology.devices=10,-1", "--seeds", "1", "--out", str(out)]) == 2
    assert "topology.devices" in capsys.readouterr().err
    assert not out.exists()
