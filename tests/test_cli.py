"""The ``etree`` command end to end: run folder, determinism, and one-line errors for bad input."""

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

from experiments.cli import main

RUN_FILES = {"spec.toml", "metrics.csv", "summary.md", "convergence.png", "tree.json", "topology.graphml"}


def test_run_writes_a_complete_folder(tiny_spec, tmp_path):
    out = tmp_path / "run"
    assert main(["run", str(tiny_spec), "--out", str(out), "--quiet"]) == 0
    assert {p.name for p in out.iterdir()} >= RUN_FILES
    with (out / "metrics.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["protocol", "round", "sim_time_s", "bytes_sent", "metric", "value"]
    accuracy = [float(r["value"]) for r in rows if r["metric"] == "accuracy"]
    assert [int(r["round"]) for r in rows if r["metric"] == "accuracy"] == [0, 2, 4]
    assert accuracy[-1] > accuracy[0]  # it learned
    times = [float(r["sim_time_s"]) for r in rows if r["metric"] == "accuracy"]
    assert times[0] == 0 and times[1] > 0 and times == sorted(times)
    assert "fedavg" in (out / "summary.md").read_text()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging leftovers


def test_same_seed_gives_byte_identical_metrics(tiny_spec, tmp_path):
    main(["run", str(tiny_spec), "--out", str(tmp_path / "a"), "--quiet"])
    main(["run", str(tiny_spec), "--out", str(tmp_path / "b"), "--quiet"])
    main(["run", str(tiny_spec), "--out", str(tmp_path / "c"), "--quiet", "--set", "seed=4"])
    first = (tmp_path / "a" / "metrics.csv").read_bytes()
    assert first == (tmp_path / "b" / "metrics.csv").read_bytes()
    assert first != (tmp_path / "c" / "metrics.csv").read_bytes()


def test_plot_redraws_from_files_alone(tiny_spec, tmp_path):
    out = tmp_path / "run"
    main(["run", str(tiny_spec), "--out", str(out), "--quiet"])
    (out / "convergence.png").unlink()
    (out / "summary.md").unlink()
    assert main(["plot", str(out)]) == 0
    assert (out / "convergence.png").stat().st_size > 1000
    assert (out / "summary.md").is_file()


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ("topology.kind=moon", "topology.kind"),
        ("topology.devices=0", "topology.devices"),
        ("topology.devices=-5", "topology.devices"),
        ("topology.warp=3", "topology.warp"),
        ("data.dataset=imagenet", "data.dataset"),
        ("data.partition=weird", "data.partition"),
        ("data.classes_per_device=99", "data.classes_per_device"),
        ("model.kind=transformer", "model.kind"),
        ("model.depth=3", "model.depth"),
        ("train.lr=0", "train.lr"),
        ("protocols.fedavg.name=teleport", "protocols.name"),
        ("protocols.fedavg.participation=2.0", "protocols.fedavg.participation"),
        ("protocols.fedavg.sparkle=1", "protocols.fedavg.sparkle"),
        ("rounds=zero", "rounds"),
        ("bogus=1", "bogus"),
        ("topology.kind=graphml", "topology.path"),
    ],
)
def test_bad_input_is_one_line_naming_the_field(earlier_run, tiny_spec, capsys, override, field):
    out, files = earlier_run
    assert main(["run", str(tiny_spec), "--out", str(out), "--quiet", "--set", override]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err
    assert field in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == files  # the earlier results, untouched


@pytest.fixture(scope="module")
def earlier_run(tmp_path_factory):
    """A run folder an earlier ``etree run`` wrote, and its files' bytes."""
    from conftest import TINY_SPEC

    spec = tmp_path_factory.mktemp("earlier") / "tiny.toml"
    spec.write_text(TINY_SPEC)
    out = spec.parent / "run"
    assert main(["run", str(spec), "--out", str(out), "--quiet"]) == 0
    return out, {p.name: p.read_bytes() for p in out.iterdir()}


def test_missing_spec_file_and_missing_run_folder(tmp_path, capsys):
    assert main(["run", str(tmp_path / "missing.toml"), "--quiet"]) == 2
    assert main(["plot", str(tmp_path / "nothing")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2 and all(line.startswith("error: ") for line in lines)


def test_console_script_exit_status(tiny_spec, tmp_path):
    """The installed entry point reports bad input with exit 2 and no traceback."""
    etree = Path(sys.executable).with_name("etree")
    done = subprocess.run(
        [str(etree), "run", str(tiny_spec), "--set", "rounds=-1"],
        capture_output=True,
        text=True,
        env=os.environ | {"PYTHONWARNINGS": "ignore"},
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr.strip().startswith("error: rounds")


@pytest.mark.parametrize("flag", ["--help", "-h", "--version"])
def test_help_and_version_exit_zero(flag, capsys):
    import etree

    with pytest.raises(SystemExit) as done:
        main([flag])
    assert done.value.code == 0
    out = capsys.readouterr().out
    if flag == "--version":
        assert out == f"etree {etree.__version__}\n" and etree.__version__ != "0+unknown"
    else:
        assert out.startswith("usage: etree") and "list" in out


def test_list_protocols_names_every_builtin_with_its_options(capsys):
    from etree.protocols import BUILTIN, PROTOCOLS

    assert main(["list", "protocols"]) == 0
    out = capsys.readouterr().out
    described = PROTOCOLS.describe()
    assert set(BUILTIN) <= set(described)
    for name in BUILTIN:
        options = [f"      {option}" for option in described[name]] or ["      (no options)"]
        assert "\n".join([f"  {name}", *options]) + "\n" in out
    assert "      groups: sequence of int = (8, 1)\n" in out  # an option with its type and default


def test_list_without_a_kind_lists_every_kind(capsys):
    assert main(["list"]) == 0
    headings = [line.split(" ")[0] for line in capsys.readouterr().out.splitlines() if line and line[0] != " "]
    assert headings == ["protocols", "models", "datasets", "topologies", "partitions"]
