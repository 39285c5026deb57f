"""The Python API: a run in memory equals its run folder read back, and `etree run` writes what `etree.run` does."""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import tomli_w
from helpers import tiny_spec_with
from matplotlib.figure import Figure

import etree
from experiments.api import resolve_spec
from experiments.cli import main
from experiments.metrics_file import RunFolderError
from experiments.spec import SpecError, load_spec

README = Path(__file__).resolve().parents[1] / "README.md"
COLUMNS = ["protocol", "round", "sim_time_s", "bytes_sent", "metric", "value"]
SPEC = tomli_w.dumps(
    tiny_spec_with(
        protocols=[{"name": "etree", "groups": [3, 1], "ratios": [1, 2], "pretrain_epochs": 1}, {"name": "fedavg"}]
    )
)


@pytest.fixture(scope="module")
def spec_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("spec") / "tiny.toml"
    path.write_text(SPEC)
    return path


@pytest.fixture(scope="module")
def cli_folder(spec_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "run"
    assert main(["run", str(spec_file), "--out", str(out), "--quiet"]) == 0
    return out


@pytest.fixture(scope="module")
def in_memory(spec_file: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[etree.RunResult, list[Path]]:
    """``etree.run(..., out=None)`` from an empty working folder with an empty temporary folder."""
    here, temp = tmp_path_factory.mktemp("cwd"), tmp_path_factory.mktemp("temp")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(here)
        patch.setattr(tempfile, "tempdir", str(temp))
        result = etree.run(str(spec_file), out=None)
    return result, [here, temp]


def test_a_run_without_out_writes_nothing(in_memory: tuple[etree.RunResult, list[Path]]) -> None:
    result, folders = in_memory
    assert result.out is None
    assert [list(folder.iterdir()) for folder in folders] == [[], []]


def test_a_run_in_memory_equals_its_folder_read_back(
    in_memory: tuple[etree.RunResult, list[Path]], cli_folder: Path
) -> None:
    result, _ = in_memory
    loaded = etree.load_run(cli_folder)
    assert list(result.metrics.columns) == COLUMNS
    assert {c: str(result.metrics[c].dtype) for c in COLUMNS[1:4] + COLUMNS[5:]} == {
        "round": "int64",
        "sim_time_s": "float64",
        "bytes_sent": "int64",
        "value": "float64",
    }
    assert {"etree", "fedavg"} == set(result.metrics["protocol"]) and len(result.links) > 0
    pd.testing.assert_frame_equal(result.metrics, loaded.metrics)
    pd.testing.assert_frame_equal(result.links, loaded.links)
    assert (result.spec, result.structures, result.partition) == (loaded.spec, loaded.structures, loaded.partition)
    summary = (cli_folder / "summary.md").read_text()
    assert result.summary() == summary == loaded.summary()
    assert "Cluster label balance" in summary and "Busiest link" in summary  # every part of it was compared


def test_run_with_out_writes_what_etree_run_writes(spec_file: Path, cli_folder: Path, tmp_path: Path) -> None:
    result = etree.run(spec_file, out=tmp_path / "api")
    assert result.out == tmp_path / "api"
    for name in ("metrics.csv", "summary.md", "spec.toml", "tree.json", "links.csv"):
        assert (tmp_path / "api" / name).read_bytes() == (cli_folder / name).read_bytes(), name
    assert (tmp_path / "api" / "convergence.png").stat().st_size > 1000


def test_plot_draws_the_convergence_figure(in_memory: tuple[etree.RunResult, list[Path]], tmp_path: Path) -> None:
    result, _ = in_memory
    figure = result.plot()
    assert isinstance(figure, Figure)
    assert len(figure.axes) == 4  # rounds, simulated time, bytes, root aggregations (etree has a root)
    lines = {line.get_label(): line for line in figure.axes[0].get_lines()}
    fedavg = result.metrics.query("protocol == 'fedavg' and metric == 'accuracy'")
    assert list(lines["fedavg"].get_ydata()) == fedavg["value"].tolist()
    path = result.plot(tmp_path / "convergence.png")
    assert path == tmp_path / "convergence.png" and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_every_form_of_spec_resolves_alike(spec_file: Path) -> None:
    table = tiny_spec_with(protocols=[{"name": "etree", "groups": [3, 1], "ratios": [1, 2], "pretrain_epochs": 1}])
    table["protocols"].append({"name": "fedavg"})
    spec = load_spec(spec_file)
    forms: list[Any] = [str(spec_file), spec_file, SPEC, table, spec]
    assert all(resolve_spec(form) == spec for form in forms)
    overrides = {"rounds": 6, "topology.devices": 10, "protocols.fedavg.participation": 0.5}
    as_set = load_spec(spec_file, ["rounds=6", "topology.devices=10", "protocols.fedavg.participation=0.5"])
    assert all(resolve_spec(form, overrides) == as_set for form in forms)
    assert table["rounds"] == 4 and "participation" not in table["protocols"][1]  # the caller's table is untouched


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"rounds": "two"}, "rounds: expected int, got str 'two'"),
        ({"rounds": 0}, "rounds: got 0; must be > 0"),
        ({"topology.devices.count": 3}, "overrides['topology.devices.count']: 'devices' is not a table"),
        ({"protocols.gossip.merge": "age"}, "overrides['protocols.gossip.merge']: no protocol labelled 'gossip'"),
        ({"": 1}, "overrides: key '' is not a dotted spec key"),
        ({"protocols.fedavg.participation": 2.0}, "protocols.fedavg.participation"),
    ],
)
def test_bad_overrides_fail_like_set_does(spec_file: Path, overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(etree.EtreeError) as info:
        etree.run(spec_file, overrides=overrides)
    assert str(info.value).startswith(message) and "\n" not in str(info.value)


def test_bad_arguments_are_one_line_errors(spec_file: Path, tmp_path: Path) -> None:
    with pytest.raises(SpecError, match=r"^checkpoint_every: checkpoints go into the run folder"):
        etree.run(spec_file, checkpoint_every=2)
    with pytest.raises(SpecError, match=r"^spec: got int; give a TOML file's path, a TOML text or a table"):
        etree.run(42)  # type: ignore[arg-type]
    with pytest.raises(SpecError, match=r"^spec: the TOML text is not valid TOML"):
        etree.run("rounds = = 3")
    with pytest.raises(RunFolderError, match=r"^run folder: .* not found"):
        etree.load_run(tmp_path)


def test_readme_python_example_runs_as_written(monkeypatch: pytest.MonkeyPatch) -> None:
    section = README.read_text().split("## Python API", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert code is not None, "README's Python API section has a python code block"
    monkeypatch.chdir(README.parent)
    before = sorted(os.listdir(README.parent))
    scope: dict[str, Any] = {}
    exec(code.group(1), scope)
    result = scope["result"]
    assert result.spec.rounds == 5 and result.spec.topology.devices == 50
    assert result.metrics["round"].max() == 5 and result.summary().startswith("# default")
    assert sorted(os.listdir(README.parent)) == before  # out=None: nothing written
