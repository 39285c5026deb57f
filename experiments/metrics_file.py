"""A run's rows (``metrics.csv``, ``links.csv``) read back typed, and its metrics as per-protocol series.

Floats are written in ``repr`` form and read back with ``float``, so rows read from a run folder
equal the rows they were written from, and so does everything computed from them (``summary.md``,
the plots, ``etree.load_run``). A file is read only once it is the one etree wrote (its hash and
row count in the folder's marker, :func:`experiments.run_folder.read_checked`), and every row is
parsed strictly: a cut, edited or foreign file is one ``RunFolderError``, never wrong numbers.
"""

from __future__ import annotations

import csv
import io
import json
import math
import tomllib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from experiments.run_folder import RunFolderError, read_checked


@dataclass(frozen=True)
class Series:
    """One metric of one protocol over its evaluated rounds."""

    rounds: np.ndarray
    sim_time_s: np.ndarray
    bytes_sent: np.ndarray
    values: np.ndarray


MetricRow = tuple[str, int, float, int, str, float]  # protocol, round, sim_time_s, bytes_sent, metric, value
LinkRow = tuple[str, int, int, int, int]  # protocol, u, v, messages, bytes_sent
RunSeries = dict[str, dict[str, Series]]  # {protocol: {metric: Series}}


def read_metrics(run_dir: Path) -> RunSeries:
    """``{protocol: {metric: Series}}`` in file order (protocols keep the spec's order)."""
    return group_series(read_metric_rows(run_dir))


def read_metric_rows(run_dir: Path) -> list[MetricRow]:
    """The rows of a run folder's ``metrics.csv`` (at least one: every run evaluates round 0)."""
    path = Path(run_dir) / "metrics.csv"
    if not path.is_file():
        raise RunFolderError(f"run folder: '{path}' not found; pass a folder written by 'etree run'")
    rows = _parse(path, read_checked(Path(run_dir), path.name), METRIC_TYPES)
    if not rows:
        raise RunFolderError(f"run folder: '{path}' holds no rows; rerun the spec that wrote it")
    return rows


def read_link_rows(run_dir: Path) -> list[LinkRow]:
    """The rows of a run folder's ``links.csv`` (none when the run tracked no link loads)."""
    text = read_checked(Path(run_dir), "links.csv")
    return [] if text is None else _parse(Path(run_dir) / "links.csv", text, LINK_TYPES)


def read_spec_table(run_dir: Path) -> dict[str, Any]:
    """A run folder's ``spec.toml`` as a table (the resolved spec), once checked against the marker."""
    path = Path(run_dir) / "spec.toml"
    text = read_checked(Path(run_dir), path.name)
    if text is None:
        raise RunFolderError(f"run folder: '{path}' not found; pass a folder written by 'etree run'")
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise RunFolderError(f"run folder: '{path}' is not valid TOML ({exc})") from exc


def read_tree(run_dir: Path) -> dict[str, Any]:
    """A run folder's ``tree.json`` (``{"partition": ..., "protocols": ...}``; empty when absent)."""
    path = Path(run_dir) / "tree.json"
    text = read_checked(Path(run_dir), path.name)
    try:
        tree = {} if text is None else json.loads(text)
    except ValueError as exc:
        raise RunFolderError(f"run folder: '{path}' is not valid JSON ({exc})") from exc
    if not isinstance(tree, dict):
        raise RunFolderError(f"run folder: '{path}' does not hold a table of partition and protocols")
    return tree


def _number(text: str) -> float:
    """A float as ``repr`` wrote it (``nan`` and ``inf`` included: a diverged run records them)."""
    value = float(text)
    if not math.isfinite(value) and text.strip().lower() not in ("nan", "inf", "-inf"):
        raise ValueError(f"{text!r} is not a number")
    return value


METRIC_TYPES: dict[str, Callable[[str], Any]] = {
    "protocol": str,
    "round": int,
    "sim_time_s": _number,
    "bytes_sent": int,
    "metric": str,
    "value": _number,
}
LINK_TYPES: dict[str, Callable[[str], Any]] = {
    "protocol": str,
    "u": int,
    "v": int,
    "messages": int,
    "bytes_sent": int,
}


def _parse(path: Path, text: str | None, types: dict[str, Callable[[str], Any]]) -> list[tuple[Any, ...]]:
    """Rows of a CSV etree wrote, typed column by column; anything else names its line."""
    lines = csv.reader(io.StringIO(text or "", newline=""))
    header = next(lines, None)
    if header != list(types):
        raise RunFolderError(f"run folder: '{path}' has columns {header}, not {list(types)}; rerun the spec")
    rows = []
    for number, line in enumerate(lines, start=2):
        if len(line) != len(types):
            raise RunFolderError(f"run folder: '{path}' line {number} has {len(line)} fields, not {len(types)}")
        try:
            rows.append(tuple(parse(field) for parse, field in zip(types.values(), line, strict=True)))
        except ValueError as exc:
            raise RunFolderError(f"run folder: '{path}' line {number}: {exc}; rerun the spec that wrote it") from exc
    return rows


def group_series(rows: Iterable[MetricRow]) -> RunSeries:
    """Rows grouped into ``{protocol: {metric: Series}}``, both in order of first appearance."""
    grouped: dict[str, dict[str, list[tuple[int, float, int, float]]]] = {}
    for protocol, round_index, sim_time_s, bytes_sent, metric, value in rows:
        grouped.setdefault(protocol, {}).setdefault(metric, []).append((round_index, sim_time_s, bytes_sent, value))
    out: RunSeries = {}
    for protocol, metrics in grouped.items():
        out[protocol] = {}
        for metric, points in metrics.items():
            r, t, b, v = (np.array(column) for column in zip(*points, strict=True))
            out[protocol][metric] = Series(r, t, b, v)
    return out


def first_reaching(series: Series, target: float) -> int | None:
    """Index of the first evaluation at or above ``target`` (None if never)."""
    hits = np.flatnonzero(series.values >= target)
    return int(hits[0]) if len(hits) else None


def headline_metric(series: RunSeries) -> str:
    """The metric a run is judged by: ``accuracy`` for classifiers, ``hr@10`` for recommenders."""
    if any("accuracy" in m for m in series.values()):
        return "accuracy"
    return "hr@10" if any("hr@10" in m for m in series.values()) else "accuracy"


def metric_label(metric: str) -> str:
    """How plots and tables name a metric: ``test accuracy``, ``test HR@10``."""
    return f"test {metric}" if metric == "accuracy" else f"test {metric.upper()}"
