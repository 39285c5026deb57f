"""A sweep's ``summary.md`` and ``sweep.png``: final metric per setting with 95% CIs, mean curves with bands."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from experiments.metrics_file import metric_label
from experiments.plots import save_figure
from experiments.results import atomic_write_text
from experiments.study_plot import write_study
from experiments.sweep_files import confidence, sweep_curves


def summarise_sweep(out: Path) -> list[Path]:
    """Write ``summary.md`` (final headline metric, mean ± 95% CI) and ``sweep.png`` (mean curves,
    95% bands), and the K study when the grid varies a protocol's ``groups``; return the files written."""
    metric, curves = sweep_curves(out)
    lines = [
        "# Sweep",
        "",
        f"Final {metric_label(metric)}, mean ± 95% confidence half-width over seeds (Student t).",
        "",
        f"| setting | protocol | seeds | final {metric} |",
        "|---|---|---|---|",
    ]
    panels = max(1, len(curves))
    columns = min(panels, 6)
    rows = math.ceil(panels / columns)
    figure, axes = plt.subplots(
        rows, columns, figsize=(4.6 * columns, 3.8 * rows), squeeze=False, constrained_layout=True
    )
    for ax in axes.flat[len(curves) :]:
        ax.set_visible(False)
    for ax, (name, protocols) in zip(axes.flat, curves.items(), strict=False):
        for index, (protocol, runs) in enumerate(protocols.items()):
            length = min(len(r) for r, _ in runs)
            values = np.stack([v[:length] for _, v in runs])
            mean, half = confidence(values)
            rounds = runs[0][0][:length]
            ax.plot(rounds, mean, color=f"C{index % 10}", label=protocol)
            ax.fill_between(rounds, mean - half, mean + half, color=f"C{index % 10}", alpha=0.2)
            final_mean, final_half = confidence(values[:, -1])
            setting = name.replace("\n", ", ")
            final = f"{float(final_mean):.4f} ± {float(final_half):.4f}"
            lines.append(f"| {setting} | {protocol} | {len(runs)} | {final} |")
        ax.set_title(name, fontsize=7)
        ax.set_xlabel("round")
        ax.set_ylabel(metric_label(metric))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    atomic_write_text(out / "summary.md", "\n".join(lines) + "\n")
    save_figure(figure, out / "sweep.png")
    return [out / "summary.md", out / "sweep.png", *(write_study(out) or ())]
