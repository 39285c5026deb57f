"""A sweep's ``summary.md`` and ``sweep.png``: final metric per setting with 95% CIs, mean curves with bands."""

from __future__ import annotations

import json
import math
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from scipy import stats

from experiments.metrics_file import metric_label
from experiments.plots import save_figure
from experiments.run_folder import atomic_write_text
from experiments.study_plot import write_study
from experiments.summary import values_at_equal_cost
from experiments.sweep_files import SWEEP_FILE, confidence, sweep_curves, sweep_runs


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
    lines += paired_lines(out, metric)
    atomic_write_text(out / "summary.md", "\n".join(lines) + "\n")
    save_figure(figure, out / "sweep.png")
    return [out / "summary.md", out / "sweep.png", *(write_study(out) or ())]


MEASURES = ("final", "at equal simulated time", "at equal bytes")


def paired_lines(out: Path, metric: str) -> list[str]:
    """Against the sweep's ``reference`` protocol (``etree sweep --reference``): per setting and
    protocol, the difference paired by seed, its mean with a 95% CI (Student t), and the paired
    t-test's and Wilcoxon signed-rank test's two-sided p-values (``scipy.stats``); for the final
    metric and for the metric at equal simulated time and at equal bytes, each budget set per run
    as the run's ``summary.md`` sets it (:func:`experiments.summary.equal_budgets`: where the first
    protocol that communicates stops), so a method is not credited for rounds that cost more."""
    reference = json.loads((out / SWEEP_FILE).read_text()).get("reference")
    if not reference:
        return []
    # values[measure][setting][protocol][seed]
    values: dict[str, dict[str, dict[str, dict[int, float]]]] = {m: {} for m in MEASURES}
    for _, overrides, seed, runs in sweep_runs(out):
        setting = ", ".join(overrides) or "base"
        curves = {protocol: metrics[metric] for protocol, metrics in runs.items() if metric in metrics}
        if not curves:
            continue
        at_cost = values_at_equal_cost(curves) if len(curves) > 1 else {}
        for protocol, series in curves.items():
            cells = (float(series.values[-1]), *at_cost.get(protocol, (math.nan,) * 3)[1:])
            for measure, value in zip(MEASURES, cells, strict=True):
                values[measure].setdefault(setting, {}).setdefault(protocol, {})[seed] = value
    lines: list[str] = []
    for measure in MEASURES:
        lines += [
            "",
            f"## Paired over seeds: {metric} ({measure}) minus {reference}'s",
            "",
            "| setting | protocol | seeds | mean | mean difference ± 95% CI | paired t p | Wilcoxon p |",
            "|---|---|---|---|---|---|---|",
        ]
        for setting, protocols in values[measure].items():
            base = protocols.get(reference, {})
            for protocol, by_seed in protocols.items():
                seeds = [k for k in sorted(set(by_seed) & set(base)) if not math.isnan(by_seed[k] - base[k])]
                if protocol == reference or not seeds:
                    continue
                diff = np.array([by_seed[k] - base[k] for k in seeds])
                mean, half = confidence(diff)
                t_p, w_p = paired_p_values(diff)
                own = float(np.mean([by_seed[k] for k in seeds]))
                lines.append(
                    f"| {setting} | {protocol} | {len(seeds)} | {own:.4f} | {float(mean):+.4f} ± {float(half):.4f} "
                    f"| {_p(t_p)} | {_p(w_p)} |"
                )
    return lines


def paired_p_values(diff: np.ndarray) -> tuple[float, float]:
    """Two-sided p-values of the paired t-test and the Wilcoxon signed-rank test on differences
    (NaN with fewer than two seeds; 1 when every difference is zero)."""
    if len(diff) < 2:
        return float("nan"), float("nan")
    if np.all(diff == 0):
        return 1.0, 1.0
    t_p = float(stats.ttest_1samp(diff, 0.0).pvalue)
    w_p = float(stats.wilcoxon(diff).pvalue)
    return t_p, w_p


def _p(value: float) -> str:
    return "—" if np.isnan(value) else f"{value:.3g}"
