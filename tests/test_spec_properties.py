"""Property: whatever spec a user writes near a valid one (other types, values out of range, odd
names, keys missing or extra, inf and nan), ``etree run`` either writes a complete run folder
(exit 0) or says one ``error:`` line (exit 2), never a traceback, and touches nothing outside its
run folder. Tiny fleets and one or two rounds keep it well under a minute."""

from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import tomli_w
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from experiments.api import load_run
from experiments.cli import main
from experiments.run_folder import MARKER

BASE: dict[str, Any] = {
    "name": "prop",
    "seed": 1,
    "rounds": 1,
    "eval_every": 1,
    "topology": {"kind": "random_geometric", "devices": 8},
    "data": {"dataset": "digits", "partition": "pathological", "classes_per_device": 3},
    "model": {"kind": "softmax"},
    "train": {"lr": 0.05, "local_epochs": 1, "batch_size": 4},
    "protocols": [{"name": "fedavg"}],
}
RUN_FILES = {"spec.toml", "metrics.csv", "summary.md", "convergence.png", "tree.json", "topology.graphml", MARKER}

numbers = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -1.0, 0.5, 1.0, 2.0, 1e-9, 1e9, 1e300, -math.inf, math.inf, math.nan]),
    st.integers(-3, 10),
)
wrong_types = st.one_of(st.text(max_size=4), st.booleans(), st.lists(st.integers(0, 3), max_size=2), st.just({}))
small_ints = st.integers(-2, 3)  # every valid one runs in a blink
names = st.one_of(
    st.sampled_from(["", ".", "..", ".hidden", "a/b", "../../escaped", "a b", "ok-1.2_x", "/abs", "-x", "é"]),
    st.text(alphabet="ab./_- é\\", max_size=6),
)
distributions = st.one_of(
    numbers,
    st.fixed_dictionaries({"kind": st.just("lognormal"), "median": numbers, "sigma": numbers}),
    st.fixed_dictionaries({"kind": st.just("uniform"), "low": numbers, "high": numbers}),
    st.fixed_dictionaries({"kind": st.sampled_from(["fixed", "topology", "poisson"])}),
)
nodes = st.one_of(st.sampled_from(["server", "root", "head", "x"]), small_ints)
crashes = st.lists(st.fixed_dictionaries({"at_s": numbers, "node": nodes}), max_size=2)
protocols = st.one_of(
    st.just([{"name": "fedavg"}]),
    st.builds(lambda p: [{"name": "fedavg", "participation": p}], numbers),
    st.builds(lambda g: [{"name": "etree", "groups": [g, 1], "pretrain_epochs": 1}], small_ints),
    st.builds(lambda k: [{"name": "hierfavg", "edge_servers": k}], st.integers(-1, 20)),
    st.sampled_from([[{"name": "gossip"}], [{"name": "individual"}], [{"name": "teleport"}], [], [{"label": "x"}]]),
    st.just([{"name": "fedavg"}, {"name": "fedavg"}]),
)
# dotted key -> what may be written there (valid values, senseless ones, other types)
VALUES: dict[str, st.SearchStrategy[Any]] = {
    "name": names,
    "seed": st.one_of(st.integers(-2, 2**63 - 1), wrong_types),
    "rounds": st.one_of(small_ints, wrong_types),
    "eval_every": st.one_of(small_ints, wrong_types),
    "topology.kind": st.sampled_from(["random_geometric", "grid_2d", "waxman", "moon", "graphml"]),
    "topology.devices": st.one_of(st.integers(-1, 10), wrong_types),
    "topology.radius": numbers,
    "data.partition": st.sampled_from(["iid", "dirichlet", "pathological", "weird"]),
    "data.alpha": numbers,
    "data.classes_per_device": st.one_of(st.integers(-1, 12), wrong_types),
    "data.min_partition_size": st.one_of(small_ints, wrong_types),
    "model.kind": st.sampled_from(["softmax", "mlp", "transformer"]),
    "model.hidden": st.one_of(st.integers(-1, 16), wrong_types),
    "train.lr": st.one_of(numbers, wrong_types),
    "train.local_epochs": st.one_of(small_ints, wrong_types),
    "train.batch_size": st.one_of(st.integers(-1, 8), wrong_types),
    "network.timing": st.one_of(st.booleans(), wrong_types),
    "network.dropout": numbers,
    "network.compression": numbers,
    "network.deadline_s": numbers,
    "network.detection_timeout_s": numbers,
    "network.compute_flops": distributions,
    "network.bandwidth_bps": distributions,
    "network.crash": st.one_of(crashes, wrong_types),
    "backend.kind": st.sampled_from(["local", "gpu"]),
    "backend.workers": st.one_of(small_ints, wrong_types),
    "protocols": protocols,
}
REMOVABLE = ["name", "seed", "rounds", "topology", "data", "model.kind", "train", "protocols", "topology.devices"]
sets = st.tuples(st.just("set"), st.sampled_from(sorted(VALUES))).flatmap(
    lambda edit: st.tuples(st.just(edit[0]), st.just(edit[1]), VALUES[edit[1]])
)
edits = st.one_of(
    sets,
    sets,
    sets,
    st.tuples(st.just("remove"), st.sampled_from(REMOVABLE), st.just(0)),
    st.tuples(st.just("extra"), st.sampled_from(["", "topology.", "train.", "network.", "backend."]), st.just(1)),
)


def _apply(spec: dict[str, Any], edit: tuple[str, str, Any]) -> None:
    kind, dotted, value = edit
    *tables, key = (dotted + "surplus" if kind == "extra" else dotted).split(".")
    target = spec
    for table in tables:
        target = target.setdefault(table, {})
    if kind == "remove":
        target.pop(key, None)
    else:
        target[key] = value


def _files(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()
    }


# derandomize: CI explores the same 100 specs every time (a failure found elsewhere becomes an @example)
@settings(max_examples=100, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(edits=st.lists(edits, min_size=1, max_size=3), out=st.sampled_from([None, None, "new", "earlier", "keep"]))
# the inputs of issue 12, tried on every run besides what hypothesis draws
@example(edits=[("set", "network.compression", 1e-289)], out=None)  # wire bytes overflowed int64
@example(edits=[("set", "name", "")], out=None)
@example(edits=[("set", "name", "../../escaped")], out=None)
@example(edits=[("set", "train.lr", math.inf)], out="new")
@example(edits=[("set", "train.lr", 1e300)], out="new")
@example(edits=[("set", "network.compute_flops", {"kind": "lognormal", "median": 1e9, "sigma": math.nan})], out="new")
@example(edits=[("set", "network.bandwidth_bps", {"kind": "uniform", "low": 1e6, "high": math.inf})], out="new")
@example(edits=[("set", "network.crash", [{"at_s": math.nan, "node": "server"}])], out="new")
@example(edits=[("set", "network.detection_timeout_s", math.inf), ("set", "network.compression", math.inf)], out="new")
@example(edits=[("set", "protocols", [{"name": "fedavg"}, {"name": "etree", "groups": [50, 1]}])], out="new")
@example(edits=[("set", "model.kind", "mlp"), ("set", "model.hidden", "big")], out="keep")
def test_a_spec_runs_completely_or_fails_with_one_line_and_touches_nothing_else(
    edits: list[tuple[str, str, Any]], out: str | None
) -> None:
    spec = copy.deepcopy(BASE)
    for edit in edits:
        _apply(spec, edit)
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        (root / "spec.toml").write_text(tomli_w.dumps(spec))
        (root / "keep").mkdir()
        (root / "keep" / "notes.txt").write_text("a user's notes")
        earlier = root / "earlier"
        earlier.mkdir()  # an empty folder: one etree may replace
        argv = ["run", str(root / "spec.toml"), "--quiet", "--checkpoint-every", "0"]
        if out is not None:
            argv += ["--out", str(root / out)]
        before = _files(root)
        err = io.StringIO()
        cwd = os.getcwd()
        os.chdir(root)
        try:
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                status = main(argv)
        finally:
            os.chdir(cwd)
        errors = [line for line in err.getvalue().splitlines() if line.startswith("error:")]
        assert "Traceback" not in err.getvalue()
        assert status in (0, 2), err.getvalue()
        if status == 2:
            assert len(errors) == 1, err.getvalue()
            assert _files(root) == before, "a refused run changed files"
            return
        folder = root / out if out is not None else root / "results" / str(spec.get("name", "spec"))
        assert folder.resolve().parent == (root if out else root / "results").resolve(), "the run left its place"
        assert {p.name for p in folder.iterdir()} >= RUN_FILES
        outside = {k: v for k, v in _files(root).items() if not (root / k).is_relative_to(folder)}
        assert outside == {k: v for k, v in before.items() if not (root / k).is_relative_to(folder)}
        assert len(load_run(folder).metrics) > 0  # the marker vouches for what the folder holds
