"""What etree promises a user with results to lose (issue 12): it never deletes or overwrites what it
did not write, every check comes before the first round, senseless numbers are refused, a user's
mistake is one ``error:`` line (never a traceback), files that lie are detected, and an interrupt
ends with one line, no staging folder left and a checkpoint that resumes."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import tomli_w
from helpers import tiny_spec_with

from experiments import api, runner
from experiments.checkpoints import CHECKPOINT_DIR, STATE_FILE
from experiments.cli import main
from experiments.run_folder import MARKER

ROOT = Path(__file__).resolve().parents[1]
ETREE_TREE = 'protocols=[{name="etree",groups=[3,1],pretrain_epochs=1}]'


@pytest.fixture
def work(tmp_path: Path, tiny_spec: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working folder holding the tiny spec, a user's folder ``keep/`` and a user's file ``mine.txt``."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "keep").mkdir()
    (tmp_path / "keep" / "notes.txt").write_text("my notes")
    (tmp_path / "mine.txt").write_text("my file")
    return tmp_path


def _files(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()
    }


def _refused(argv: list[str], capsys: pytest.CaptureFixture[str], says: str) -> str:
    """``etree ARGV`` ends with exit 2 and one ``error:`` line holding ``says``."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert says in err, err
    return err


def _run(*args: str, out: str | None = "run") -> list[str]:
    argv = ["run", "tiny.toml", "--quiet", "--checkpoint-every", "0", *args]
    return argv + (["--out", out] if out is not None else [])


# -- 1. never delete or overwrite what etree did not write ------------------------------------------------
@pytest.mark.parametrize(
    ("out", "says"),
    [
        ("keep", "exists and etree did not write it"),
        ("mine.txt", "is a file"),
        ("mine.txt/run", "'mine.txt' is a file"),
        (".", "is the current folder or one above it"),
        ("..", "is the current folder or one above it"),
        ("", "--out: empty"),
    ],
)
def test_out_that_etree_did_not_write_is_refused(
    work: Path, capsys: pytest.CaptureFixture[str], out: str, says: str
) -> None:
    before = _files(work)
    _refused(_run(out=out), capsys, says)
    assert _files(work) == before


def test_a_file_put_into_a_run_folder_keeps_it_from_being_replaced(
    work: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(_run()) == 0
    assert json.loads((work / "run" / MARKER).read_text())["written_by"] == "etree"
    assert main(_run("--set", "seed=4")) == 0  # etree's own folder: replaced as a whole
    (work / "run" / "notes.txt").write_text("my notes")
    _refused(_run("--set", "seed=5"), capsys, "holds 'notes.txt', which etree did not write")
    assert (work / "run" / "notes.txt").read_text() == "my notes"


@pytest.mark.parametrize("name", ["", "../../escaped", "../x", ".hidden", "a/b", "a b", "/abs", "x" * 201])
def test_name_is_one_plain_folder_name(work: Path, capsys: pytest.CaptureFixture[str], name: str) -> None:
    (work / "results" / "other").mkdir(parents=True)
    (work / "results" / "other" / "kept.txt").write_text("kept")
    before = _files(work.parent)
    _refused(_run("--set", f"name={json.dumps(name)}", out=None), capsys, "name: got")
    assert _files(work.parent) == before


def test_a_plain_name_writes_under_results(work: Path) -> None:
    assert main(_run("--set", 'name="ok-1.2_x"', out=None)) == 0
    assert (work / "results" / "ok-1.2_x" / "metrics.csv").is_file()


def test_tree_never_draws_over_a_run_of_another_spec(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(_run("--set", ETREE_TREE, out=None)) == 0
    drawing = work / "results" / "tiny" / "tree_etree.png"
    kept = drawing.read_bytes()
    _refused(["tree", "tiny.toml", "--set", ETREE_TREE, "--set", "seed=9"], capsys, "of another spec")
    assert drawing.read_bytes() == kept
    assert main(["tree", "tiny.toml", "--set", ETREE_TREE]) == 0  # the same spec: its own drawing, redrawn
    assert main(["tree", "tiny.toml", "--set", ETREE_TREE, "--out", "drawings/t.png"]) == 0  # a new folder
    assert main(["tree", "tiny.toml", "--set", ETREE_TREE, "--out", "keep/new.png"]) == 0  # a new file: fine
    assert (work / "keep" / "notes.txt").read_text() == "my notes"


@pytest.mark.parametrize(
    ("out", "says"),
    [
        ("keep", "is a folder; give the drawing's file"),
        ("t.txt", "must end in .png"),
        ("mine.txt/t.png", "'mine.txt' is a file"),
    ],
)
def test_tree_out_must_be_a_png_path(work: Path, capsys: pytest.CaptureFixture[str], out: str, says: str) -> None:
    _refused(["tree", "tiny.toml", "--set", ETREE_TREE, "--out", out], capsys, says)


def test_tree_does_not_overwrite_a_file_it_cannot_tell_it_drew(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (work / "keep" / "photo.png").write_bytes(b"\x89PNG mine")
    _refused(["tree", "tiny.toml", "--set", ETREE_TREE, "--out", "keep/photo.png"], capsys, "etree cannot tell")
    assert (work / "keep" / "photo.png").read_bytes() == b"\x89PNG mine"


@pytest.mark.parametrize("command", ["sweep", "table3"])
def test_a_batch_never_writes_into_a_users_folder(work: Path, capsys: pytest.CaptureFixture[str], command: str) -> None:
    before = _files(work)
    _refused([command, "tiny.toml", "--seeds", "1", "--out", "keep", "--quiet"], capsys, "etree did not write it")
    assert _files(work) == before


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["table3", "--set", 'protocols=[{name="gossip"}]', "--set", "topology.devices=1"], "gossip needs at least 2"),
        (["table3", "--set", "data.partition=weird"], "data.partition"),  # IID runs first, non-IID has the typo
        (["sweep", "--grid", "data.partition=iid,weird", "--jobs", "1"], "data.partition"),
    ],
)
def test_a_batch_fails_before_its_first_run_and_leaves_no_folder(
    work: Path, capsys: pytest.CaptureFixture[str], argv: list[str], says: str
) -> None:
    _refused([argv[0], "tiny.toml", "--seeds", "1", "--out", "batch", "--quiet", *argv[1:]], capsys, says)
    assert not (work / "batch").exists()


# -- 3. every check before the first round ------------------------------------------------------------------
def test_a_workload_check_of_a_later_protocol_fails_before_any_round(
    work: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    rounds: list[int] = []
    real = runner.run_protocol

    def counted(*args, **kwargs):  # type: ignore[no-untyped-def]
        for record in real(*args, **kwargs):
            rounds.append(record.round)
            yield record

    monkeypatch.setattr(runner, "run_protocol", counted)
    protocols = '[{name="fedavg"},{name="etree",groups=[50,1]}]'
    argv = ["run", "tiny.toml", "--quiet", "--out", "run", "--checkpoint-every", "1", "--set", f"protocols={protocols}"]
    _refused(argv, capsys, "protocols.etree.groups")
    assert rounds == [] and not (work / "run").exists()  # FedAvg did not run, no checkpoint was left


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc, where nothing can be created")
def test_an_out_that_cannot_be_written_fails_before_the_run(
    work: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(api, "run_spec", lambda *a, **k: pytest.fail("the run started"))
    _refused(_run(out="/proc/etree-test/run"), capsys, "--out: cannot write in '/proc'")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only folder")
def test_a_read_only_parent_fails_before_the_run(
    work: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(api, "run_spec", lambda *a, **k: pytest.fail("the run started"))
    (work / "locked").mkdir(mode=0o500)
    _refused(_run(out="locked/run"), capsys, "cannot write in")


# -- 4. numbers that make no sense ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("override", "says"),
    [
        ("train.lr=inf", "train.lr: got inf; must be a finite number"),
        ("train.lr=nan", "train.lr: got nan"),
        ("train.lr=1e300", "train.lr: got 1e+300; must be at most"),
        ("data.alpha=inf", "data.alpha"),
        ('network.compute_flops={kind="lognormal",median=1e9,sigma=nan}', "network.compute_flops.sigma: got nan"),
        ('network.compute_flops={kind="lognormal",median=1e9,sigma=1e4}', "network.compute_flops: its lognormal"),
        ('network.bandwidth_bps={kind="uniform",low=1e6,high=inf}', "network.bandwidth_bps.high: got inf"),
        ("network.compute_flops=nan", "network.compute_flops.value: got nan"),
        ('network.crash=[{at_s=nan,node="server"}]', "network.crash[0].at_s: got nan"),
        ('network.crash=[{at_s=inf,node="server"}]', "network.crash[0].at_s: got inf"),
        ("network.detection_timeout_s=inf", "network.detection_timeout_s: got inf"),
        ("network.compression=inf", "network.compression: got inf"),
        ("network.deadline_s=inf", "network.deadline_s: got inf"),
    ],
)
def test_non_finite_and_overflowing_numbers_are_refused(
    work: Path, capsys: pytest.CaptureFixture[str], override: str, says: str
) -> None:
    _refused(_run("--set", override), capsys, says)
    assert not (work / "run").exists()


@pytest.mark.parametrize("jobs", ["0", "-1"])
def test_sweep_jobs_below_one_is_refused(work: Path, capsys: pytest.CaptureFixture[str], jobs: str) -> None:
    _refused(["sweep", "tiny.toml", "--jobs", jobs, "--seeds", "1", "--out", "sweep", "--quiet"], capsys, "--jobs")


# -- 5. no traceback for a user's mistake ---------------------------------------------------------------------
@pytest.mark.parametrize(
    ("setup", "argv", "says"),
    [
        (lambda: Path("bad.toml").write_bytes(b'name = "\xff"\n'), ["run", "bad.toml"], "'bad.toml' is not UTF-8"),
        (
            lambda: Path("edges.txt").write_bytes(b"0 1\n1 \xff\n"),
            _run("--set", 'topology.kind="edgelist"', "--set", 'topology.path="edges.txt"'),
            "topology.path: file 'edges.txt' is not UTF-8",
        ),
        (
            lambda: Path("trace.csv").write_bytes(b"device,compute_flops\n0,\xff\n"),
            _run("--set", 'network.trace="trace.csv"'),
            "network.trace: 'trace.csv' is not UTF-8",
        ),
        (None, _run("--set", 'model.kind="mlp"', "--set", 'model.hidden="big"'), "model.hidden"),
        (None, _run("--set", 'topology.kind="graphml"', "--set", "topology.path=5"), "topology.path: 5"),
        (None, ["sweep", "tiny.toml", "--jobs", "x"], "argument --jobs: invalid int value"),
        (None, [], "etree: the following arguments are required"),
    ],
)
def test_a_mistake_is_one_error_line(
    work: Path, capsys: pytest.CaptureFixture[str], setup: Callable[[], object] | None, argv: list[str], says: str
) -> None:
    if setup is not None:
        setup()
    _refused(argv, capsys, says)


def test_a_run_on_one_device_draws_its_plots(work: Path) -> None:
    assert main(_run("--set", "topology.devices=1")) == 0  # nothing is sent: the bytes axis is not logarithmic
    assert (work / "run" / "convergence.png").is_file()


def test_table3_of_a_short_run_writes_its_summary(work: Path) -> None:
    argv = ["table3", "tiny.toml", "--seeds", "1", "--set", "rounds=5", "--out", "t3", "--quiet"]
    assert main([*argv, "--set", 'protocols=[{name="fedavg"},{name="etree",groups=[3,1],pretrain_epochs=1}]']) == 0
    assert "Table 3" in (work / "t3" / "summary.md").read_text()


# -- 6. files that lie ------------------------------------------------------------------------------------------
def _lines(text: str) -> list[str]:
    return text.splitlines(keepends=True)


@pytest.mark.parametrize(
    ("spoil", "says"),
    [
        (lambda text: "".join(_lines(text)[:-2]), "holds 12 rows, etree wrote 14"),  # cut at a line end
        (lambda text: text[:-7], "holds 13 rows, etree wrote 14"),  # cut mid-row
        (lambda text: _lines(text)[0], "holds 0 rows"),  # the header alone
        (lambda text: "", "holds 0 rows"),
        (lambda text: text.replace(",0.0,", ",zero,", 1), "bytes, not the"),  # text in a number column
        (lambda text: text.replace("0.", "1.", 1), "its SHA-256 differs"),  # a number edited in place
    ],
    ids=["cut at a line end", "cut mid-row", "header only", "empty", "text in a number column", "edited"],
)
def test_plot_refuses_a_metrics_file_that_lies(
    work: Path, capsys: pytest.CaptureFixture[str], spoil: Callable[[str], str], says: str
) -> None:
    assert main(_run()) == 0
    metrics = work / "run" / "metrics.csv"
    metrics.write_text(spoil(metrics.read_text()))
    summary = (work / "run" / "summary.md").read_bytes()
    _refused(["plot", "run"], capsys, says)
    assert (work / "run" / "summary.md").read_bytes() == summary  # the old summary stays
    with pytest.raises(api.RunFolderError):
        api.load_run(work / "run")


def test_plot_redraws_an_untouched_folder_and_refuses_one_without_a_marker(
    work: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(_run()) == 0
    summary = (work / "run" / "summary.md").read_bytes()
    assert main(["plot", "run"]) == 0
    assert (work / "run" / "summary.md").read_bytes() == summary
    (work / "run" / MARKER).unlink()
    _refused(["plot", "run"], capsys, "has no etree.json")


# -- 7. interrupts ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("signum", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["SIGINT", "SIGTERM"])
def test_an_interrupt_is_one_line_and_the_checkpoint_resumes(tmp_path: Path, signum: int, status: int) -> None:
    spec = tmp_path / "long.toml"
    spec.write_text(tomli_w.dumps(tiny_spec_with(rounds=300, eval_every=1)))
    out = tmp_path / "run"
    command = [sys.executable, "-c", "import sys; from experiments.cli import main; sys.exit(main())"]
    victim = subprocess.Popen(
        [*command, "run", str(spec), "--out", str(out), "--quiet", "--checkpoint-every", "2"],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 240
    while not (out / CHECKPOINT_DIR / STATE_FILE).exists():
        assert victim.poll() is None and time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.02)
    victim.send_signal(signum)
    _, err = victim.communicate(timeout=120)
    assert victim.returncode == status
    assert err.count("\n") == 1 and err.startswith("interrupted at round "), err
    assert err.rstrip().endswith(f"; resume with: etree run --resume {out}")
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")], "a staging folder was left"
    assert main(["run", "--resume", str(out), "--quiet"]) == 0
    assert (out / "metrics.csv").is_file() and not (out / CHECKPOINT_DIR).exists()


def test_an_interrupt_while_writing_leaves_the_old_folder_and_no_staging(
    work: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(_run()) == 0
    before = _files(work / "run")
    import experiments.tree_view

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(experiments.tree_view, "draw_tree", interrupted)
    assert main(_run("--set", "seed=4", "--set", ETREE_TREE)) == 130
    assert capsys.readouterr().err.startswith("interrupted at round 4 of etree; no checkpoint was taken yet")
    assert _files(work / "run") == before
    assert not [p.name for p in work.iterdir() if p.name.startswith(".")]


def test_hierfavg_edge_servers_beyond_the_fleet_are_refused_before_any_round(tmp_path, capsys):
    """``edge_servers = 100`` on 20 devices used to be clamped silently to 20."""
    out = tmp_path / "run"
    code = main(
        [
            "run",
            "experiments/default.toml",
            "--set",
            "topology.devices=20",
            "--set",
            "rounds=1",
            "--set",
            'protocols=[{name = "fedavg"}, {name = "hierfavg", edge_servers = 100}]',
            "--out",
            str(out),
            "--quiet",
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err == [err[0]] and err[0].startswith("error: protocols.hierfavg.edge_servers: got 100")
    assert not out.exists()
