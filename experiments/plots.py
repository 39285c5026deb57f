"""Convergence plots, drawn from a run's series: in memory (``RunResult.plot``) or read from
a run folder's files alone (``plot_run``, so ``etree plot`` can redraw them).

The convergence figure is a plain :class:`matplotlib.figure.Figure`, not a pyplot one: it needs
no backend to be drawn or saved, and a notebook that draws it keeps its own backend.
"""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib
import numpy as np

if matplotlib.get_backend(auto_select=False) is None:  # nobody chose one: the CLI draws files only
    matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.figure import Figure

from experiments.metrics_file import RunSeries, Series, headline_metric, metric_label, read_metrics, read_spec_table

AXES = (
    ("rounds", "round (one local epoch of every device)", False),
    ("sim_time_s", "simulated time (s)", False),
    ("bytes_sent", "bytes sent (all links)", True),
)
ROOT_AXIS = "root aggregations (global merges; the E-Tree paper's likely x-axis)"


def _root_aggregations(metrics: dict[str, Series], metric: str) -> np.ndarray | None:
    """Cumulative root aggregations at each evaluated round (None if the protocol has no root)."""
    if "root_aggregations" not in metrics:
        return None
    counts = dict(zip(metrics["root_aggregations"].rounds.tolist(), metrics["root_aggregations"].values, strict=True))
    return np.array([counts.get(r, 0.0) for r in metrics[metric].rounds.tolist()])


def plot_run(run_dir: Path) -> Path:
    """Write a run folder's ``convergence.png`` from its files alone."""
    run_dir = Path(run_dir)
    return save_figure(convergence_figure(read_metrics(run_dir), run_name(run_dir)), run_dir / "convergence.png")


def convergence_figure(everything: RunSeries, name: str) -> Figure:
    """Test accuracy of every protocol per round, simulated second and byte, and, when tree
    protocols ran, per root aggregation (``convergence.png``); ``name`` is the run's."""
    metric = headline_metric(everything)  # accuracy, or HR@10 for recommenders
    series = {p: m for p, m in everything.items() if metric in m}
    roots = {p: _root_aggregations(m, metric) for p, m in series.items()}
    panels = len(AXES) + (1 if any(r is not None for r in roots.values()) else 0)
    figure = Figure(figsize=(5.2 * panels, 4.2), layout="constrained")
    axes = figure.subplots(1, panels)
    colours = {p: f"C{i % 10}" for i, p in enumerate(series)}
    dashes = {p: ("-", "--", "-.", ":")[i % 4] for i, p in enumerate(series)}  # identical curves stay visible
    for index, ax in enumerate(axes):
        for protocol, metrics in series.items():
            s = metrics[metric]
            if index < len(AXES):
                x, log = getattr(s, AXES[index][0]), AXES[index][2]
            else:
                x, log = roots[protocol], False
                if x is None:
                    continue
            # on the root axis, only the evaluations right after a root aggregation (a new count)
            keep = x > 0 if log else np.ones(len(x), dtype=bool)
            if index == len(AXES):
                keep = np.concatenate(([True], np.diff(x) != 0))
            style = {"color": colours[protocol], "linestyle": dashes[protocol], "label": protocol}
            ax.plot(x[keep], s.values[keep], marker="o" if len(x) <= 40 else None, ms=3, **style)
            if "crash" in metrics and index < len(AXES):  # a fault run: a vertical line where the node died
                for at in getattr(metrics["crash"], AXES[index][0]):
                    if not log or at > 0:
                        ax.axvline(at, color=colours[protocol], linestyle=(0, (1, 2)), linewidth=1.2, alpha=0.9)
            if "accuracy_std" in metrics:
                spread = metrics["accuracy_std"].values[keep]
                ax.fill_between(
                    x[keep], s.values[keep] - spread, s.values[keep] + spread, alpha=0.12, color=colours[protocol]
                )
        ax.set_xlabel(AXES[index][1] if index < len(AXES) else ROOT_AXIS, fontsize=9)
        ax.set_ylabel(metric_label(metric))
        if index < len(AXES) and AXES[index][2] and any(len(line.get_xdata()) for line in ax.get_lines()):
            ax.set_xscale("log")  # not when nothing was sent (one device): a log axis needs a positive x
        ax.grid(alpha=0.3)
    crashed = any("crash" in m for m in series.values())
    axes[0].legend(title="protocol (dotted: a crash)" if crashed else "protocol", fontsize=8)
    figure.suptitle(f"Convergence — {name} (shaded: spread over device models)")
    return figure


def run_name(run_dir: Path) -> str:
    """The spec's name, from the folder's checked ``spec.toml``."""
    return str(read_spec_table(run_dir).get("name", run_dir.name))


def save_figure(figure: Figure, path: Path) -> Path:
    """Save atomically: draw to a temporary file, then rename over ``path``; a pyplot figure is closed."""
    temp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    figure.savefig(temp, dpi=110)
    plt.close(figure)
    os.replace(temp, path)
    return path
