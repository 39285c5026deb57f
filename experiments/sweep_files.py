"""Reading a sweep folder back: its runs, their curves, and Student-t confidence intervals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from scipy import stats

from experiments.metrics_file import Series, headline_metric, read_metrics

SWEEP_FILE = "sweep.json"


Curves = dict[str, dict[str, list[tuple[np.ndarray, np.ndarray]]]]


def sweep_headline(runs: list[tuple[str, list[str], int, dict[str, dict[str, Series]]]]) -> str:
    """The headline metric of a sweep's runs (:func:`experiments.metrics_file.headline_metric`)."""
    return headline_metric({f"{name}/{seed}/{p}": m for name, _, seed, r in runs for p, m in r.items()})


def sweep_curves(out: Path) -> tuple[str, Curves]:
    """The sweep's headline metric and ``{setting label: {protocol: [(rounds, values) per seed]}}``."""
    runs = sweep_runs(out)
    metric = sweep_headline(runs)
    curves: Curves = {}
    for _, overrides, _, by_protocol in runs:
        label = "\n".join(overrides) or "base"
        for protocol, metrics in by_protocol.items():
            if metric in metrics:
                s = metrics[metric]
                curves.setdefault(label, {}).setdefault(protocol, []).append((s.rounds, s.values))
    return metric, curves


def sweep_runs(out: Path) -> list[tuple[str, list[str], int, dict[str, dict[str, Series]]]]:
    """``(setting, overrides, seed, {protocol: {metric: Series}})`` for every finished run of a sweep,
    reused protocols read from the setting that ran them."""
    record = json.loads((out / SWEEP_FILE).read_text())
    found = []
    for name, overrides in record["settings"].items():
        for seed in record["seeds"]:
            runs = {}
            if (out / name / f"seed{seed}" / "metrics.csv").is_file():
                runs.update(read_metrics(out / name / f"seed{seed}"))
            for protocol, source in record.get("reused", {}).get(name, {}).items():
                if (out / source / f"seed{seed}" / "metrics.csv").is_file():
                    runs[protocol] = read_metrics(out / source / f"seed{seed}")[protocol]
            if runs:
                found.append((name, overrides, seed, runs))
    return found


def confidence(values: np.ndarray, axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Mean and 95% confidence half-width (Student t); half-width 0 for a single seed."""
    n = values.shape[axis]
    mean = values.mean(axis)
    if n < 2:
        return mean, np.zeros_like(mean)
    half = stats.t.ppf(0.975, n - 1) * values.std(axis, ddof=1) / np.sqrt(n)
    return mean, half


def is_sweep(folder: Path) -> bool:
    return (Path(folder) / SWEEP_FILE).is_file()
