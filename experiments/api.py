"""The public Python API (``etree.run``, ``etree.resume``, ``etree.load_run``), for notebooks and scripts::

    import etree
    result = etree.run("experiments/default.toml", overrides={"rounds": 5, "topology.devices": 50}, out=None)
    result.metrics    # pandas DataFrame: the columns of metrics.csv
    result.summary()  # the text of summary.md
    result.plot()     # the figure of convergence.png

A run and a run folder read back give the same :class:`RunResult`, so a notebook treats a
fresh run and an old one alike. ``etree run`` is a thin layer over :func:`run` and
:func:`resume`: the same spec gives the same files either way.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, overload

import pandas as pd
from matplotlib.figure import Figure

from experiments.checkpoints import CHECKPOINT_DIR, STATE_FILE, load_checkpoint, save_checkpoint
from experiments.interrupts import RunInterrupted, signal_of
from experiments.metrics_file import (
    RunSeries,
    group_series,
    read_link_rows,
    read_metric_rows,
    read_spec_table,
    read_tree,
)
from experiments.plots import convergence_figure, save_figure
from experiments.progress import RoundProgress
from experiments.results import LINK_COLUMNS, METRIC_COLUMNS, link_rows, metric_rows, write_run
from experiments.run_folder import RunFolderError, check_replaceable, prepare_target
from experiments.runner import RunCheckpoint, RunOutput, run_spec
from experiments.spec import Spec, SpecError, raw_spec, set_values, spec_from_dict
from experiments.summary import render_summary

SpecSource = str | os.PathLike[str] | Mapping[str, Any] | Spec
RunFolder = str | os.PathLike[str]

METRIC_DTYPES = dict(zip(METRIC_COLUMNS, ("str", "int64", "float64", "int64", "str", "float64"), strict=True))
LINK_DTYPES = dict(zip(LINK_COLUMNS, ("str", "int64", "int64", "int64", "int64"), strict=True))


@dataclass(frozen=True, eq=False)
class RunResult:
    """A run's results, in memory: what its folder's files hold, typed.

    ``metrics`` has the columns of ``metrics.csv`` (one row per protocol, evaluated round and
    metric), ``links`` those of ``links.csv`` (per-link load of the protocols that track it;
    empty otherwise); ``structures`` and ``partition`` are ``tree.json``'s two parts (each
    protocol's aggregation structure; the partition's statistics) as JSON data; ``out`` is
    the run folder, or None when nothing was written.
    """

    spec: Spec
    metrics: pd.DataFrame
    links: pd.DataFrame
    structures: dict[str, Any]
    partition: dict[str, Any]
    out: Path | None = None

    def summary(self) -> str:
        """The Markdown of ``summary.md``: per protocol, final and best accuracy and rounds,
        simulated time and bytes to a common target; cluster balance, busiest links, faults."""
        links = _frame_rows(self.links, LINK_COLUMNS)
        return render_summary(self.spec.to_dict(), self.series(), self.structures, links)

    def series(self) -> RunSeries:
        """The metrics as ``{protocol: {metric: Series}}`` (numpy arrays per column), as plots use them."""
        return group_series(_frame_rows(self.metrics, METRIC_COLUMNS))

    @overload
    def plot(self, path: None = None) -> Figure: ...

    @overload
    def plot(self, path: str | os.PathLike[str]) -> Path: ...

    def plot(self, path: str | os.PathLike[str] | None = None) -> Figure | Path:
        """The figure of ``convergence.png`` (headline metric per round, simulated second, byte and
        root aggregation); with ``path``, saved there as PNG and the path returned instead."""
        figure = convergence_figure(self.series(), self.spec.name)
        return figure if path is None else save_figure(figure, Path(path))


def run(
    spec: SpecSource,
    overrides: Mapping[str, Any] | None = None,
    out: RunFolder | None = None,
    *,
    progress: bool = False,
    checkpoint_every: int = 0,
) -> RunResult:
    """Run a spec and return its results; with ``out``, also write its run folder there.

    ``spec`` is a TOML file's path, a TOML text, a table (a dict as the TOML would parse) or a
    :class:`~experiments.spec.Spec`. ``overrides`` maps dotted spec keys to typed values
    (``{"rounds": 5, "topology.devices": 50, "protocols.etree.groups": [4, 1]}``), applied and
    validated as ``etree run --set`` is. ``out=None`` writes nothing at all. ``progress`` shows
    the progress bar of ``etree run``; ``checkpoint_every`` rounds (0: never) a checkpoint goes
    into ``out`` so that :func:`resume` can continue an interrupted run.

    ``out`` must be a folder etree may replace (new, empty, or one etree wrote with nothing added);
    that, and that it can be written, is checked before the run starts. An interrupt (Ctrl-C) ends
    the run with :class:`~experiments.interrupts.RunInterrupted`, whose text says where it stopped
    and, when a checkpoint was taken, how to resume.
    """
    resolved = resolve_spec(spec, overrides)
    target = None if out is None else prepare_target(out, "out")
    return _execute(resolved, target, None, progress, checkpoint_every)


def resume(run_dir: RunFolder, *, progress: bool = False, checkpoint_every: int = 0) -> RunResult:
    """Continue the interrupted run in ``run_dir`` from its last checkpoint, with the spec saved
    there, and write its run folder; the records equal those of the run left alone."""
    out = Path(run_dir)
    spec, checkpoint = load_checkpoint(out)
    check_replaceable(out, "--resume")
    return _execute(spec, out, checkpoint, progress, checkpoint_every)


def load_run(run_dir: RunFolder) -> RunResult:
    """Read a run folder written by ``etree run`` (or :func:`run` with ``out``) back into a result;
    a file that is not the one etree wrote (cut, edited) is refused."""
    out = Path(run_dir)
    if not (out / "spec.toml").is_file():
        raise RunFolderError(f"run folder: '{out / 'spec.toml'}' not found; pass a folder written by 'etree run'")
    tree = read_tree(out)
    return RunResult(
        spec=spec_from_dict(read_spec_table(out)),
        metrics=_frame(read_metric_rows(out), METRIC_DTYPES),
        links=_frame(read_link_rows(out), LINK_DTYPES),
        structures=tree.get("protocols", {}),
        partition=tree.get("partition", {}),
        out=out,
    )


def resolve_spec(spec: SpecSource, overrides: Mapping[str, Any] | None = None) -> Spec:
    """The validated spec :func:`run` would run (plug-ins imported, ``overrides`` applied), to look
    at before running it."""
    if isinstance(spec, Spec):
        if not overrides:
            return spec
        return spec_from_dict(set_values(spec.to_dict(), overrides), default_name=spec.name)
    return spec_from_dict(set_values(raw_spec(spec), overrides or {}))  # a file's name defaults to its stem


def _execute(
    spec: Spec, out: Path | None, start: RunCheckpoint | None, progress: bool, checkpoint_every: int
) -> RunResult:
    if isinstance(checkpoint_every, bool) or not isinstance(checkpoint_every, int) or checkpoint_every < 0:
        raise SpecError(f"checkpoint_every: got {checkpoint_every!r}; give a number of rounds >= 0 (0: never)")
    if checkpoint_every and out is None:
        raise SpecError("checkpoint_every: checkpoints go into the run folder; give out too, or checkpoint_every=0")
    on_checkpoint = partial(save_checkpoint, out, spec) if out is not None and checkpoint_every else None
    where: list[tuple[str, int]] = []  # the protocol and round reported last

    def on_round(label: str, round_index: int, sim_time_s: float) -> None:
        where[:] = [(label, round_index)]
        bar.update(label, round_index, sim_time_s)

    try:
        with RoundProgress(spec, enabled=progress) as bar:
            output = run_spec(
                spec, on_round=on_round, resume=start, checkpoint_every=checkpoint_every, on_checkpoint=on_checkpoint
            )
        if out is not None:
            write_run(output, out)
    except KeyboardInterrupt as exc:
        raise RunInterrupted(_interrupted(where, out), signal_of(exc)) from exc
    return _result(output, out)


def _interrupted(where: list[tuple[str, int]], out: Path | None) -> str:
    """The one line an interrupted run ends with: where it stopped and how to go on."""
    at = f"at round {where[0][1]} of {where[0][0]}" if where else "before its first round"
    if out is not None and (out / CHECKPOINT_DIR / STATE_FILE).is_file():
        return f"interrupted {at}; resume with: etree run --resume {out}"
    return f"interrupted {at}; no checkpoint was taken yet, so start it again with etree run"


def _result(output: RunOutput, out: Path | None) -> RunResult:
    """A run's output as the data its folder holds (structures as ``tree.json`` has them)."""
    return RunResult(
        spec=output.spec,
        metrics=_frame(metric_rows(output.records), METRIC_DTYPES),
        links=_frame(link_rows(output.links), LINK_DTYPES),
        structures=json.loads(json.dumps(output.structures)),
        partition=json.loads(json.dumps(output.partition_summary)),
        out=out,
    )


def _frame(rows: Iterable[tuple[Any, ...]], dtypes: Mapping[str, str]) -> pd.DataFrame:
    return pd.DataFrame.from_records(list(rows), columns=list(dtypes)).astype(dict(dtypes))


def _frame_rows(frame: pd.DataFrame, columns: Iterable[str]) -> Iterable[Any]:
    """A frame's rows as tuples of plain Python values, in ``columns`` order (a user may have
    reordered or added columns)."""
    return zip(*(frame[column].tolist() for column in columns), strict=True)
