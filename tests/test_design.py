"""etree design: timing-only predictions equal real runs, the three outputs, reproducibility, bad input."""

from __future__ import annotations

import tomllib
from pathlib import Path

import numpy as np
import pytest

from clients.classification.datasets import Dataset
from clients.datasets import DATASETS, load_dataset, register_dataset
from experiments.api import run
from experiments.cli import main
from experiments.design import design_entry
from experiments.design_space import Design
from experiments.design_study import main as study_main
from experiments.design_timing import CostPredictor
from experiments.run_folder import read_marker
from experiments.runner import build_workload
from experiments.spec import ProtocolSpec, load_spec, spec_from_dict

FLEET = """
name = "fleet"
seed = 1
rounds = 6
eval_every = 1

[topology]
kind = "random_geometric"
devices = 24

[data]
dataset = "digits"
partition = "pathological"
classes_per_device = 3

[model]
kind = "softmax"

[train]
lr = 0.05
local_epochs = 1
batch_size = 4

[[protocols]]
name = "etree"
groups = [4, 1]
ratios = [1, 2]
pretrain_epochs = 2

[[protocols]]
name = "fedavg"
"""

DESIGNS = [
    Design(groups=(4, 1), ratios=(1, 2)),
    Design(groups=(6, 2, 1), ratios=(1, 2, 2), clustering="kmedoids", participation=0.5),
    Design(groups=(5, 1), ratios=(2, 3), delta=0.2, weighted=True, public_nodes=True, gamma=0.1),
]


@pytest.fixture
def fleet(tmp_path: Path) -> Path:
    path = tmp_path / "fleet.toml"
    path.write_text(FLEET)
    return path


def _series(metrics, label: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rows = metrics[(metrics["protocol"] == label) & (metrics["metric"] == "accuracy")]
    return rows["round"].to_numpy(), rows["sim_time_s"].to_numpy(), rows["bytes_sent"].to_numpy()


@pytest.mark.parametrize("network", [{}, {"dropout": 0.2, "crash": [{"at_s": 0.05, "node": "head"}]}])
def test_timing_only_prediction_equals_what_a_real_run_measures(fleet: Path, network: dict) -> None:
    """Round times and bytes computed without training equal, to the last bit, a trained run's
    (contention on, as the default network has it; with dropout and a crashed head too)."""
    table = tomllib.loads(fleet.read_text()) | {"network": network}
    table["protocols"] = [
        {"name": "etree", "label": f"d{i}", "pretrain_epochs": 2, **d.options()} for i, d in enumerate(DESIGNS)
    ] + [{"name": "fedavg"}, {"name": "hierfavg"}]
    spec = spec_from_dict(table)
    assert spec.network.contention
    workload, _, _ = build_workload(spec)
    measured = run(spec).metrics
    for entry in spec.protocols:
        predicted = CostPredictor(entry, workload).extend(spec.rounds)
        rounds, times, sent = _series(measured, entry.label)
        assert np.array_equal(predicted.sim_time_s[rounds], times), entry.label
        assert np.array_equal(predicted.bytes_sent[rounds], sent), entry.label
        assert predicted.sim_time_s[-1] > 0


def _design(spec: Path, out: Path, *extra: str) -> int:
    return main(["design", str(spec), "--budget", "3", "--out", str(out), "--quiet", *extra])


def test_design_writes_a_runnable_spec_a_report_and_a_pareto_plot(fleet: Path, tmp_path: Path) -> None:
    out = tmp_path / "design"
    assert _design(fleet, out) == 0
    assert {p.name for p in out.iterdir()} == {"designed.toml", "design.md", "design.png", "etree.json"}
    assert read_marker(out)["kind"] == "design"
    report = (out / "design.md").read_text()
    for section in ("## Best designs", "## Against the baselines", "## Trials"):
        assert section in report
    for baseline in ("FedAvg", "HierFAVG", "paper's tree", "designed (`etree-designed`)"):
        assert baseline in report
    designed = load_spec(out / "designed.toml")
    labels = [p.label for p in designed.protocols]
    assert labels[:2] == ["etree", "etree-designed"] and {"fedavg", "hierfavg"} <= set(labels)
    mine = next(p for p in designed.protocols if p.label == "etree-designed")
    assert mine.options["pretrain_epochs"] == 2  # the options the search leaves alone are the spec's
    result = run(out / "designed.toml", overrides={"rounds": 2})
    assert set(result.metrics["protocol"]) == set(labels)
    assert (out / "design.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_design_replays_its_trials_from_the_seed(fleet: Path, tmp_path: Path) -> None:
    assert _design(fleet, tmp_path / "a") == 0 and _design(fleet, tmp_path / "b") == 0
    for name in ("design.md", "designed.toml"):
        assert (tmp_path / "a" / name).read_text() == (tmp_path / "b" / name).read_text()
    assert _design(fleet, tmp_path / "a") == 0  # its own folder is replaced


def test_the_measured_time_to_target_is_what_the_designed_spec_gives(fleet: Path, tmp_path: Path) -> None:
    """The search scores the spec's own workload and seed: running designed.toml reproduces the
    designed protocol's validation time to target that design.md reports."""
    out = tmp_path / "d"
    assert _design(fleet, out, "--target", "0.5") == 0
    row = next(line for line in (out / "design.md").read_text().splitlines() if "designed (`" in line)
    reported = row.split(" | ")[1]
    metrics = run(out / "designed.toml").metrics
    rows = metrics[(metrics["protocol"] == "etree-designed") & (metrics["metric"] == "validation_accuracy")]
    hit = rows[rows["value"] >= 0.5]
    assert reported == ("—" if hit.empty else f"{hit['sim_time_s'].iloc[0]:.4g}")


@pytest.fixture
def poisoned_digits():
    """digits with scrambled test labels: a search that looked at the test set would choose differently."""

    def load(*, seed: int, devices: int) -> Dataset:
        clean = load_dataset("digits", seed=seed, devices=devices)
        scrambled = np.random.default_rng(0).permutation(clean.y_test)
        return Dataset("poisoned", clean.x_train, clean.y_train, clean.x_test, scrambled, num_classes=10)

    register_dataset("poisoned_digits_for_design")(load)
    yield
    del DATASETS["poisoned_digits_for_design"]


def test_design_never_reads_the_test_set(fleet: Path, tmp_path: Path, poisoned_digits: None) -> None:
    poisoned = tmp_path / "poisoned.toml"
    poisoned.write_text(FLEET.replace('dataset = "digits"', 'dataset = "poisoned_digits_for_design"'))
    assert _design(fleet, tmp_path / "a") == 0 and _design(poisoned, tmp_path / "b") == 0
    a, b = ((tmp_path / d / "design.md").read_text() for d in "ab")
    assert a.split("## Trials")[1] == b.split("## Trials")[1]  # the same trials, the same choices
    assert a.split("## Against")[1].split("## Trials")[0] != b.split("## Against")[1].split("## Trials")[0]


@pytest.mark.parametrize("objective", ["bytes", "accuracy"])
def test_other_objectives_and_a_round_budget(fleet: Path, tmp_path: Path, objective: str) -> None:
    out = tmp_path / objective
    assert main(["design", str(fleet), "--objective", objective, "--budget", "34r", "--out", str(out), "--quiet"]) == 0
    report = (out / "design.md").read_text()
    assert ("at simulated time" in report) == (objective == "accuracy")
    spent = report.split("rounds trained: ")[1].split(".")[0]
    assert sum(int(part.split()[-1]) for part in spent.split(", ")) <= 34


@pytest.mark.parametrize(
    ("args", "field"),
    [
        (["--objective", "foo"], "--objective"),
        (["--protocol", "fedavg"], "--protocol"),
        (["--protocol", "nope"], "--protocol"),
        (["--budget", "0"], "--budget"),
        (["--budget", "20r"], "--budget"),
        (["--objective", "accuracy", "--target", "0.8"], "--target"),
        (["--target", "1.5"], "--target"),
    ],
)
def test_bad_design_input_is_one_error_line(
    fleet: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], field: str
) -> None:
    assert main(["design", str(fleet), "--out", str(tmp_path / "d"), "--quiet", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [err[0]] and err[0].startswith(f"error: {field}:")
    assert not (tmp_path / "d").exists()


def test_a_spec_without_a_tree_is_refused(tiny_spec: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["design", str(tiny_spec), "--out", str(tmp_path / "d")]) == 2
    assert capsys.readouterr().err.startswith("error: protocols:")


def test_design_entry_keeps_what_it_does_not_search() -> None:
    entry = ProtocolSpec("etree", "tree", {"groups": [8, 1], "pretrain_epochs": 3}, {"lr": 0.1})
    made = design_entry(entry, DESIGNS[1], "tree-designed")
    assert made.options["pretrain_epochs"] == 3 and made.options["groups"] == [6, 2, 1]
    assert made.train == {"lr": 0.1} and made.label == "tree-designed"


def test_the_design_study_summary_pairs_the_designed_tree_by_seed(fleet: Path, tmp_path: Path) -> None:
    net = tmp_path / "study" / "random_geometric"
    assert _design(fleet, net / "design") == 0
    sweep = ["sweep", str(net / "design" / "designed.toml"), "--seeds", "2", "--set", "seed=2", "--set", "rounds=3"]
    assert main([*sweep, "--out", str(net / "seeds"), "--jobs", "1", "--quiet"]) == 0
    (tmp_path / "study" / "summary.md").write_text("my notes\n")
    assert study_main([str(tmp_path / "study")]) == 2  # a summary.md etree did not write stays
    assert (tmp_path / "study" / "summary.md").read_text() == "my notes\n"
    (tmp_path / "study" / "summary.md").unlink()
    assert study_main([str(tmp_path / "study")]) == 0
    rows = [r for r in (tmp_path / "study" / "summary.md").read_text().splitlines() if r.startswith("| random")]
    assert len(rows) == 1 and len(rows[0].strip("|").split(" | ")) == 8
    assert study_main([str(tmp_path / "study")]) == 0  # its own summary is replaced
