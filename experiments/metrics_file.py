"""A run's rows (``metrics.csv``, ``links.csv``) read back typed, and its metrics as per-protocol series.

Floats are written in ``repr`` form and read back with ``float``, so rows read from a run folder
equal the rows they were written from, and so does everything computed from them (``summary.md``,
the plots, ``etree.load_run``).
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from etree.core.errors import EtreeError


class RunFolderError(EtreeError):
    """A run folder that is missing or does not hold what ``etree run`` writes."""


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
    """The rows of a run folder's ``metrics.csv``."""
    path = Path(run_dir) / "metrics.csv"
    if not path.is_file():
        raise RunFolderError(f"run folder: '{path}' not found; pass a folder written by 'etree run'")
    with path.open(newline="") as handle:
        return [
            (
                r["protocol"],
                int(r["round"]),
                float(r["sim_time_s"]),
                int(r["bytes_sent"]),
                r["metric"],
                float(r["value"]),
            )
            for r in csv.DictReader(handle)
        ]


def read_link_rows(run_dir: Path) -> list[LinkRow]:
    """The rows of a run folder's ``links.csv`` (none when the run tracked no link loads)."""
    path = Path(run_dir) / "links.csv"
    if not path.is_file():
        return []
    with path.open(newline="") as handle:
        return [
            (r["protocol"], int(r["u"]), int(r["v"]), int(r["messages"]), int(r["bytes_sent"]))
            for r in csv.DictReader(handle)
        ]


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
