"""Sweeps: grid parsing, confidence intervals, and a tiny end-to-end sweep."""

import json
import tomllib

import numpy as np
import pytest
from conftest import TINY_SPEC
from scipy import stats

from experiments.cli import main
from experiments.metrics_file import read_metrics
from experiments.runner import run_spec
from experiments.spec import SpecError, apply_overrides, load_spec, override_text, spec_from_dict, sweep_plan
from experiments.sweep import merge_axes, only, parse_axes, parse_grid
from experiments.sweep_files import confidence
from experiments.sweep_summary import paired_p_values


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


# -- the [sweep] table, reused protocols, lean run folders ---------------------------------
STUDY_SPEC = (
    TINY_SPEC.replace("rounds = 4", "rounds = 2").replace("eval_every = 2", "eval_every = 1")
    + """
[[protocols]]
name = "etree"
groups = [2, 1]
ratios = [1, 2]
pretrain_epochs = 1

[sweep]
seeds = 2

[sweep.grid]
"protocols.etree.groups" = [[2, 1], [3, 1]]
topology.kind = ["random_geometric", "grid_2d"]   # a bare dotted key: TOML nests it
"""
)


def test_sweep_table_gives_axes_in_file_order_as_set_texts():
    plan = sweep_plan(tomllib.loads(STUDY_SPEC)["sweep"])
    assert plan.seeds == 2
    assert plan.grid == (
        ("protocols.etree.groups", ("[2,1]", "[3,1]")),
        ("topology.kind", ("random_geometric", "grid_2d")),
    )


@pytest.mark.parametrize(
    ("table", "field"),
    [
        ({"seeds": 0}, "sweep.seeds"),
        ({"jobs": 2}, "sweep.jobs"),
        ({"grid": {"data.alpha": 0.5}}, "sweep.grid.data.alpha"),
        ({"grid": {"data": {"alpha": []}}}, "sweep.grid.data.alpha"),
        ({"grid": [1, 2]}, "sweep.grid"),
        ({"tune": {"grid": {"train.lr": []}}}, "sweep.tune.grid.train.lr"),
        ({"tune": {"seeds": 0}}, "sweep.tune.seeds"),
        ({"tune": {"set": "rounds=2"}}, "sweep.tune.set"),
        ({"tune": {"rounds": 2}}, "sweep.tune.rounds"),
    ],
)
def test_bad_sweep_table_names_the_field_even_for_a_single_run(tiny_spec, table, field):
    with pytest.raises(SpecError, match=f"^{field}"):
        sweep_plan(table)
    raw = tomllib.loads(tiny_spec.read_text())
    with pytest.raises(SpecError, match=f"^{field}"):
        spec_from_dict({**raw, "sweep": table})


@pytest.mark.parametrize(
    "value",
    [
        "waxman",
        "true",
        "12",
        "a b",
        "[x",
        'say "hi"',
        0.5,
        3,
        False,
        [4, 1],
        ["x", "y"],
        {"kind": "fixed", "value": 1e9},
    ],
)
def test_override_text_parses_back_to_the_value(value):
    assert apply_overrides({}, [f"key={override_text(value)}"])["key"] == value


def test_command_line_axes_replace_or_extend_the_spec_grid():
    spec_grid = [("data.alpha", ("0.1", "1.0")), ("topology.kind", ("waxman",))]
    merged = merge_axes(spec_grid, parse_axes(["topology.kind=grid_2d,waxman", "rounds=2"]))
    assert merged == [("data.alpha", ("0.1", "1.0")), ("topology.kind", ("grid_2d", "waxman")), ("rounds", ("2",))]


def test_a_protocol_runs_the_same_alone_as_beside_others(tmp_path):
    path = tmp_path / "study.toml"
    path.write_text(STUDY_SPEC)
    spec = load_spec(path)
    alone = run_spec(only(spec, ["fedavg"])).records
    beside = [r for r in run_spec(spec).records if r.protocol == "fedavg"]
    assert alone == beside and len(alone) > 0


def test_spec_sweep_table_runs_reuses_fedavg_and_keeps_run_folders_lean(tmp_path, capsys):
    path = tmp_path / "study.toml"
    path.write_text(STUDY_SPEC)
    out = tmp_path / "sweep"
    assert main(["sweep", str(path), "--jobs", "1", "--out", str(out), "--grid", "topology.kind=grid_2d"]) == 0
    record = json.loads((out / "sweep.json").read_text())
    assert record["seeds"] == [3, 4]  # seeds = 2 from the table
    k2, k3 = record["settings"]  # --grid replaced the topology axis: two settings, not four
    assert record["settings"][k3] == ["protocols.etree.groups=[3,1]", "topology.kind=grid_2d"]
    assert record["reused"] == {k3: {"fedavg": k2}}
    for seed in (3, 4):
        assert {"etree", "fedavg"} == set(read_metrics(out / k2 / f"seed{seed}"))
        assert {"etree"} == set(read_metrics(out / k3 / f"seed{seed}"))  # FedAvg ran once per seed
        assert sorted(p.name for p in (out / k3 / f"seed{seed}").iterdir()) == [
            "etree.json",
            "links.csv",
            "metrics.csv",
            "spec.toml",
            "summary.md",
            "tree.json",
        ]
        assert load_spec(out / k3 / f"seed{seed}" / "spec.toml").seed == seed  # reruns as saved
    summary = (out / "summary.md").read_text()
    assert summary.count("| fedavg | 2 |") == 2  # the reused runs still summarise every setting
    assert "| grid_2d | etree | 3 | 2 |" in (out / "study.md").read_text()


def test_sweep_reports_each_finished_run_with_the_count(tiny_spec, tmp_path):
    from experiments.sweep import run_sweep

    seen = []
    out = tmp_path / "counted"
    run_sweep(tiny_spec, out, seeds=2, base_overrides=["rounds=1"], on_done=lambda f, d, t: seen.append((f, d, t)))
    assert [(done, total) for _, done, total in seen] == [(1, 2), (2, 2)]
    assert sorted(folder for folder, _, _ in seen) == sorted(str(p) for p in out.glob("*/seed*"))


def test_paired_p_values_match_scipy_and_handle_degenerate_seeds():
    diff = np.array([0.02, 0.03, -0.01, 0.04, 0.05])
    t_p, w_p = paired_p_values(diff)
    assert t_p == pytest.approx(stats.ttest_rel(diff + 1.0, np.ones(5)).pvalue)
    assert w_p == pytest.approx(stats.wilcoxon(diff).pvalue)
    assert paired_p_values(np.zeros(4)) == (1.0, 1.0)
    assert all(np.isnan(paired_p_values(np.array([0.1]))))


def test_sweep_reference_gives_paired_differences(tmp_path):
    spec = tmp_path / "two.toml"
    spec.write_text(TINY_SPEC + '\n[[protocols]]\nname = "individual"\n')
    out = tmp_path / "sweep"
    args = ["sweep", str(spec), "--seeds", "3", "--jobs", "1", "--set", "rounds=2", "--out", str(out)]
    assert main([*args, "--reference", "fedavg"]) == 0
    summary = (out / "summary.md").read_text()
    tables = summary.split("## Paired over seeds: ")[1:]
    assert [t.splitlines()[0] for t in tables] == [
        f"accuracy ({measure}) minus fedavg's" for measure in ("final", "at equal simulated time", "at equal bytes")
    ]
    for table in tables:
        rows = [line for line in table.splitlines() if line.startswith("| base |")]
        assert [row.split(" | ")[1:3] for row in rows] == [["individual", "3"]]
    # the equal-time difference is the per-run values_at_equal_cost difference, averaged over seeds
    from experiments.metrics_file import read_metrics
    from experiments.summary import values_at_equal_cost

    diffs = []
    for run in sorted(out.glob("*/seed*")):
        at_cost = values_at_equal_cost({p: m["accuracy"] for p, m in read_metrics(run).items()})
        diffs.append(at_cost["individual"][1] - at_cost["fedavg"][1])
    row = next(line for line in tables[1].splitlines() if line.startswith("| base |"))
    assert row.split(" | ")[4].split(" ± ")[0] == f"{np.mean(diffs):+.4f}"
    assert main([*args, "--reference", "nobody"]) == 2


def test_sweep_tunes_each_setting_on_validation_and_runs_what_it_chose(tiny_spec, tmp_path):
    """[sweep.tune]: every setting is tuned (etree tune, its own tune/ folder), and that setting's runs
    use each protocol's chosen value, which the run's own spec.toml records."""
    spec = tmp_path / "tuned_sweep.toml"
    spec.write_text(
        TINY_SPEC
        + '\n[[protocols]]\nname = "individual"\n'
        + '\n[sweep]\ngrid = {"data.classes_per_device" = [2, 3]}\n'
        + '[sweep.tune]\ngrid = {"train.lr" = [0.005, 0.2]}\nset = ["rounds=1"]\n'
    )
    assert sweep_plan(tomllib.loads(spec.read_text())["sweep"]).tune == ("train.lr=0.005,0.2",)
    out = tmp_path / "sweep"
    assert (
        main(["sweep", str(spec), "--seeds", "1", "--jobs", "1", "--set", "rounds=2", "--out", str(out), "--quiet"])
        == 0
    )
    record = json.loads((out / "sweep.json").read_text())
    assert sorted(record["tuned"]) == sorted(record["settings"])
    for name, tuned in record["tuned"].items():
        chosen = {
            p.get("label", p["name"]): p["train"]["lr"] for p in tomllib.loads((out / tuned).read_text())["protocols"]
        }
        assert set(chosen.values()) <= {0.005, 0.2}
        assert "validation accuracy" in (out / name / "tune" / "tune.md").read_text()
        ran = tomllib.loads((out / name / f"seed{record['seeds'][0]}" / "spec.toml").read_text())
        assert {p.get("label", p["name"]): p.get("train", {}).get("lr") for p in ran["protocols"]} == chosen
        assert ran["rounds"] == 2  # the tuning overrides shaped the tuning runs only
