"""Reading a run folder's ``metrics.csv`` back into per-protocol series."""

from __future__ import annotations

import csv
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


def read_metrics(run_dir: Path) -> dict[str, dict[str, Series]]:
    """``{protocol: {metric: Series}}`` in file order (protocols keep the spec's order)."""
    path = Path(run_dir) / "metrics.csv"
    if not path.is_file():
        raise RunFolderError(f"run folder: '{path}' not found; pass a folder written by 'etree run'")
    rows: dict[str, dict[str, list[tuple[int, float, int, float]]]] = {}
    with path.open(newline="") as handle:
        for row in csv.DictReader(handle):
            rows.setdefault(row["protocol"], {}).setdefault(row["metric"], []).append(
                (int(row["round"]), float(row["sim_time_s"]), int(row["bytes_sent"]), float(row["value"]))
            )
    out: dict[str, dict[str, Series]] = {}
    for protocol, metrics in rows.items():
        out[protocol] = {}
        for metric, points in metrics.items():
            r, t, b, v = (np.array(column) for column in zip(*points, strict=True))
            out[protocol][metric] = Series(r, t, b, v)
    return out


def first_reaching(series: Series, target: float) -> int | None:
    """Index of the first evaluation at or above ``target`` (None if never)."""
    hits = np.flatnonzero(series.values >= target)
    return int(hits[0]) if len(hits) else None


def headline_metric(series: dict[str, dict[str, Series]]) -> str:
    """The metric a run is judged by: ``accuracy`` for classifiers, ``hr@10`` for recommenders."""
    if any("accuracy" in m for m in series.values()):
        return "accuracy"
    return "hr@10" if any("hr@10" in m for m in series.values()) else "accuracy"


def metric_label(metric: str) -> str:
    """How plots and tables name a metric: ``test accuracy``, ``test HR@10``."""
    return f"test {metric}" if metric == "accuracy" else f"test {metric.upper()}"
