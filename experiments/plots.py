"""Convergence plots, drawn from a run folder's files alone (so ``etree plot`` can redraw them)."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from experiments.metrics_file import read_metrics

AXES = (
    ("rounds", "round (one local epoch of every device)", False),
    ("sim_time_s", "simulated time (s)", False),
    ("bytes_sent", "bytes sent (all links)", True),
)


def plot_run(run_dir: Path) -> Path:
    """Write ``convergence.png``: test accuracy of every protocol per round, simulated second and byte."""
    run_dir = Path(run_dir)
    series = read_metrics(run_dir)
    figure, axes = plt.subplots(1, len(AXES), figsize=(5.2 * len(AXES), 4.2), constrained_layout=True)
    for ax, (axis, label, log) in zip(axes, AXES, strict=True):
        for protocol, metrics in series.items():
            if "accuracy" not in metrics:
                continue
            s = metrics["accuracy"]
            x = getattr(s, axis)
            keep = x > 0 if log else slice(None)
            ax.plot(x[keep], s.values[keep], marker="o" if len(x) <= 40 else None, ms=3, label=protocol)
            if "accuracy_std" in metrics:
                spread = metrics["accuracy_std"].values[keep]
                ax.fill_between(x[keep], s.values[keep] - spread, s.values[keep] + spread, alpha=0.15)
        ax.set_xlabel(label)
        ax.set_ylabel("test accuracy")
        if log:
            ax.set_xscale("log")
        ax.grid(alpha=0.3)
    axes[0].legend(title="protocol", fontsize=8)
    figure.suptitle(f"Convergence — {run_name(run_dir)}")
    return save_figure(figure, run_dir / "convergence.png")


def run_name(run_dir: Path) -> str:
    """The spec's name (the folder may still be a staging folder while it is written)."""
    spec = run_dir / "spec.toml"
    return str(tomllib.loads(spec.read_text()).get("name", run_dir.name)) if spec.is_file() else run_dir.name


def save_figure(figure: plt.Figure, path: Path) -> Path:
    """Save atomically: draw to a temporary file, then rename over ``path``."""
    temp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    figure.savefig(temp, dpi=110)
    plt.close(figure)
    os.replace(temp, path)
    return path
