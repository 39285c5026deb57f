"""The K study drawn from a sweep folder: target, time to target, missed targets, CIs, reused runs.

A synthetic sweep folder with hand-written ``metrics.csv`` files: panels ``a`` and ``b``
(``topology.kind``), ``etree`` at K = 2 and 4, and ``fedavg`` run only in the K = 2
settings and reused by the K = 4 ones, as ``etree sweep`` records it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from experiments.cli import main
from experiments.run_folder import write_marker
from experiments.study_plot import cells, collect, study_target, write_study
from experiments.summary import TARGET_FRACTION

SEEDS = (0, 1, 2)
TIMES = (1.0, 2.0, 3.0)  # simulated seconds of rounds 1..3 unless a run says otherwise
# (panel, protocol, K) -> per seed: accuracy at rounds 1..3, optionally their simulated times
RUNS: dict[tuple[str, str, int], list[tuple[tuple[float, ...], tuple[float, ...]]]] = {
    ("a", "fedavg", 2): [((0.5, 0.8, 0.92), TIMES)] * 3,  # reaches 0.9 at 3 s
    ("a", "etree", 2): [
        ((0.5, 0.95, 0.96), TIMES),  # at 2 s
        ((0.5, 0.6, 0.97), TIMES),  # at 3 s
        ((0.5, 0.85, 0.89), TIMES),  # never
    ],
    ("a", "etree", 4): [((0.6, 0.95, 1.0), (0.4, 0.8, 1.2))] * 3,  # the best cell: target 0.9; at 0.8 s
    ("b", "fedavg", 2): [((0.3, 0.4, 0.5), TIMES)] * 3,  # never
    ("b", "etree", 2): [((0.91, 0.92, 0.93), (t, 2 * t, 3 * t)) for t in (0.1, 0.2, 0.3)],
    ("b", "etree", 4): [((0.1, 0.2, 0.3), TIMES)] * 3,  # never
}


def _setting(panel: str, k: int) -> tuple[str, list[str]]:
    return f"{panel}_K{k}", [f"topology.kind={panel}", f"protocols.etree.groups=[{k},1]"]


@pytest.fixture
def sweep_folder(tmp_path: Path) -> Path:
    out = tmp_path / "sweep"
    settings = dict(_setting(panel, k) for panel in "ab" for k in (2, 4))
    record = {
        "spec": "experiments/study.toml",
        "seeds": list(SEEDS),
        "settings": settings,
        "reused": {f"{panel}_K4": {"fedavg": f"{panel}_K2"} for panel in "ab"},
    }
    out.mkdir()
    (out / "sweep.json").write_text(json.dumps(record))
    for (panel, protocol, k), per_seed in RUNS.items():
        for seed, (values, times) in zip(SEEDS, per_seed, strict=True):
            folder = out / f"{panel}_K{k}" / f"seed{seed}"
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / "metrics.csv"
            lines = [] if path.is_file() else ["protocol,round,sim_time_s,bytes_sent,metric,value"]
            for round_, (value, time) in enumerate(zip(values, times, strict=True), start=1):
                lines.append(f"{protocol},{round_},{time},{1000 * round_},accuracy,{value}")
                lines.append(f"{protocol},{round_},{time},{1000 * round_},loss,{1 - value}")
            with path.open("a") as handle:
                handle.write("\n".join(lines) + "\n")
            write_marker(folder, "run", ["metrics.csv"])  # as etree writes a run folder: it vouches for the rows
    write_marker(out, "sweep", ["sweep.json", *settings])
    return out


def test_reused_reference_runs_count_once_per_panel_and_seed(sweep_folder):
    runs = collect(sweep_folder)
    fedavg = [(panel, seed) for panel, protocol, _, k, seed, _ in runs if protocol == "fedavg"]
    assert sorted(fedavg) == [(p, s) for p in "ab" for s in SEEDS]  # not once per setting
    assert {k for _, protocol, _, k, _, _ in runs if protocol == "fedavg"} == {None}  # a reference
    assert {k for _, protocol, _, k, _, _ in runs if protocol == "etree"} == {2, 4}


def test_target_is_the_fraction_of_the_best_mean_final_accuracy(sweep_folder):
    assert study_target(collect(sweep_folder)) == pytest.approx(TARGET_FRACTION * 1.0)


def test_times_to_target_mark_missed_seeds_as_nan(sweep_folder):
    runs = collect(sweep_folder)
    by_key = {(c.panel, c.protocol, c.k): c for c in cells(runs, study_target(runs))}
    np.testing.assert_array_equal(by_key["a", "etree", 2].times, [2.0, 3.0, np.nan])
    assert by_key["a", "etree", 2].reached == 2
    np.testing.assert_allclose(by_key["a", "etree", 4].times, [0.8] * 3)
    np.testing.assert_allclose(by_key["b", "etree", 2].times, [0.1, 0.2, 0.3])
    assert by_key["b", "fedavg", None].reached == 0
    np.testing.assert_allclose(by_key["a", "etree", 2].finals, [0.96, 0.97, 0.89])


def _table(out: Path) -> dict[tuple[str, str, str], list[str]]:
    rows = [line.split("|")[1:-1] for line in (out / "study.md").read_text().splitlines() if line.startswith("| ")]
    return {(r[0].strip(), r[1].strip(), r[2].strip()): [c.strip() for c in r[3:]] for r in rows[1:]}


def _half(values: list[float]) -> float:
    return float(stats.t.ppf(0.975, len(values) - 1) * np.std(values, ddof=1) / np.sqrt(len(values)))


def test_table_gives_student_t_intervals_and_reached_counts(sweep_folder, capsys):
    assert main(["plot", str(sweep_folder)]) == 0
    table = _table(sweep_folder)
    seeds, final, time, reached, delta, ratio = table["b", "etree", "2"]
    assert (seeds, reached) == ("3", "3/3")
    assert time == f"{0.2:.3g} ± {_half([0.1, 0.2, 0.3]):.2g}"
    assert final == "0.9300 ± 0.0000"
    assert (delta, ratio) == ("+43.0 ± 0.0", "—")  # paired with fedavg, which never reached the target
    # some seeds missed: the mean is over those that reached, and the count says so
    _, final, time, reached, delta, ratio = table["a", "etree", "2"]
    assert (time, reached) == (f"{2.5:.3g} ± {_half([2.0, 3.0]):.2g}", "2/3")
    assert final.startswith(f"{np.mean([0.96, 0.97, 0.89]):.4f} ± ")
    assert delta == f"{2.0:+.1f} ± {_half([4.0, 5.0, -3.0]):.1f}"  # per seed: etree - fedavg (0.92), in pp
    assert ratio == f"{np.mean([2 / 3, 1.0]):.2f} ± {_half([2 / 3, 1.0]):.2f} (n = 2)"  # both reached: seeds 0, 1
    assert table["b", "fedavg", "—"][2:4] == ["—", "0/3"]
    assert table["a", "fedavg", "—"][2:4] == ["3 ± 0", "3/3"]  # identical seeds: a zero-width interval
    assert "Target accuracy 0.900" in (sweep_folder / "study.md").read_text()
    assert (sweep_folder / "study.png").stat().st_size > 10_000


def test_no_study_when_no_protocol_varies_k(sweep_folder):
    record = json.loads((sweep_folder / "sweep.json").read_text())
    record["settings"] = {name: overrides[:1] for name, overrides in record["settings"].items()}
    (sweep_folder / "sweep.json").write_text(json.dumps(record))
    assert write_study(sweep_folder) is None
    assert not (sweep_folder / "study.md").exists()
