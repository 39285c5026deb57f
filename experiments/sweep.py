"""Sweeps: the product of spec settings and seeds, run in parallel, summarised with 95% CIs.

``etree sweep SPEC --grid data.alpha=0.1,1.0 --grid topology.kind=waxman,grid_2d --seeds 3``
runs every combination of grid values once per seed (seeds ``spec.seed + k``),
each as an ordinary run folder under ``<out>/<setting>/seed<k>/``, in separate
processes. ``sweep.json`` records the grid; ``summary.md`` gives, per setting
and protocol, the final accuracy as mean ± 95% confidence half-width (Student t
over seeds); ``sweep.png`` draws mean curves with 95% bands. ``etree plot`` on
the sweep folder redraws both from the run folders alone.
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from scipy import stats

from experiments.metrics_file import read_metrics
from experiments.plots import save_figure
from experiments.results import atomic_write_text
from experiments.spec import SpecError, load_spec

SWEEP_FILE = "sweep.json"


@dataclass(frozen=True)
class Setting:
    """One combination of grid values: its overrides and a folder-safe name."""

    overrides: tuple[str, ...]

    @property
    def name(self) -> str:
        if not self.overrides:
            return "base"
        safe = "_".join(o.replace("=", "-") for o in self.overrides)
        return "".join(c if c.isalnum() or c in "-_.," else "_" for c in safe)


def parse_grid(items: Sequence[str]) -> list[Setting]:
    """``key=v1,v2`` items into the product of settings (values kept as text, parsed like ``--set``)."""
    axes: list[list[str]] = []
    for item in items:
        key, sep, values = item.partition("=")
        if not sep or not key or not values:
            raise SpecError(f"--grid {item!r}: expected dotted.key=value1,value2")
        axes.append([f"{key}={v}" for v in _split_values(values)])
    return [Setting(tuple(combo)) for combo in itertools.product(*axes)]


def _split_values(text: str) -> list[str]:
    """Split on commas outside brackets, so ``groups=[8,1],[4,1]`` gives two values."""
    values, depth, current = [], 0, ""
    for char in text:
        depth += char == "["
        depth -= char == "]"
        if char == "," and depth == 0:
            values.append(current)
            current = ""
        else:
            current += char
    return [*values, current]


def _run_one(spec_path: str, overrides: tuple[str, ...], folder: str) -> str:
    """Worker: one run, one folder (a top-level function so process pools can pickle it)."""
    from experiments.results import write_run
    from experiments.runner import run_spec

    return str(write_run(run_spec(load_spec(spec_path, list(overrides))), Path(folder)))


def run_sweep(
    spec_path: Path,
    out: Path,
    *,
    grid: Sequence[str],
    seeds: int,
    jobs: int,
    base_overrides: Sequence[str] = (),
    on_done: Callable[[str], None] | None = None,
) -> Path:
    """Run every setting x seed (validating every spec first, so bad input fails before any run)."""
    if seeds < 1:
        raise SpecError(f"--seeds: got {seeds}; must be >= 1")
    if jobs < 1:
        raise SpecError(f"--jobs: got {jobs}; must be >= 1")
    settings = parse_grid(grid)
    base_seed = load_spec(spec_path, list(base_overrides)).seed
    tasks = []
    for setting in settings:
        for k in range(seeds):
            overrides = (*base_overrides, *setting.overrides, f"seed={base_seed + k}")
            load_spec(spec_path, list(overrides))  # fail fast on a bad grid value
            tasks.append((str(spec_path), overrides, str(out / setting.name / f"seed{base_seed + k}")))
    out.mkdir(parents=True, exist_ok=True)
    record = {
        "spec": str(spec_path),
        "seeds": [base_seed + k for k in range(seeds)],
        "settings": {s.name: list(s.overrides) for s in settings},
    }
    atomic_write_text(out / SWEEP_FILE, json.dumps(record, indent=1) + "\n")
    if jobs == 1:
        for task in tasks:
            done = _run_one(*task)
            if on_done:
                on_done(done)
    else:
        with ProcessPoolExecutor(max_workers=jobs) as pool:
            for done in pool.map(_run_one, *zip(*tasks, strict=True)):
                if on_done:
                    on_done(done)
    summarise_sweep(out)
    return out


def default_jobs() -> int:
    """One process per core (each run also uses torch threads; 2 cores here)."""
    return max(1, min(len(os.sched_getaffinity(0)), 4))


def _curves(out: Path) -> dict[str, dict[str, list[tuple[np.ndarray, np.ndarray]]]]:
    """``{setting label: {protocol: [(rounds, accuracy) per seed]}}`` read from the run folders."""
    record = json.loads((out / SWEEP_FILE).read_text())
    curves: dict[str, dict[str, list[tuple[np.ndarray, np.ndarray]]]] = {}
    for name, overrides in record["settings"].items():
        label = ", ".join(overrides) or "base"
        for seed in record["seeds"]:
            folder = out / name / f"seed{seed}"
            if not (folder / "metrics.csv").is_file():
                continue
            for protocol, metrics in read_metrics(folder).items():
                if "accuracy" in metrics:
                    s = metrics["accuracy"]
                    curves.setdefault(label, {}).setdefault(protocol, []).append((s.rounds, s.values))
    return curves


def confidence(values: np.ndarray, axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Mean and 95% confidence half-width (Student t); half-width 0 for a single seed."""
    n = values.shape[axis]
    mean = values.mean(axis)
    if n < 2:
        return mean, np.zeros_like(mean)
    half = stats.t.ppf(0.975, n - 1) * values.std(axis, ddof=1) / np.sqrt(n)
    return mean, half


def summarise_sweep(out: Path) -> None:
    """Write ``summary.md`` (final accuracy, mean ± 95% CI) and ``sweep.png`` (mean curves, 95% bands)."""
    curves = _curves(out)
    lines = [
        "# Sweep",
        "",
        "Final test accuracy, mean ± 95% confidence half-width over seeds (Student t).",
        "",
        "| setting | protocol | seeds | final accuracy |",
        "|---|---|---|---|",
    ]
    figure, axes = plt.subplots(
        1, max(1, len(curves)), figsize=(5.2 * max(1, len(curves)), 4.2), squeeze=False, constrained_layout=True
    )
    for ax, (name, protocols) in zip(axes[0], curves.items(), strict=False):
        for index, (protocol, runs) in enumerate(protocols.items()):
            length = min(len(r) for r, _ in runs)
            values = np.stack([v[:length] for _, v in runs])
            mean, half = confidence(values)
            rounds = runs[0][0][:length]
            ax.plot(rounds, mean, color=f"C{index % 10}", label=protocol)
            ax.fill_between(rounds, mean - half, mean + half, color=f"C{index % 10}", alpha=0.2)
            final_mean, final_half = confidence(values[:, -1])
            lines.append(f"| {name} | {protocol} | {len(runs)} | {float(final_mean):.4f} ± {float(final_half):.4f} |")
        ax.set_title(name, fontsize=8)
        ax.set_xlabel("round")
        ax.set_ylabel("test accuracy")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    atomic_write_text(out / "summary.md", "\n".join(lines) + "\n")
    save_figure(figure, out / "sweep.png")


def is_sweep(folder: Path) -> bool:
    return (Path(folder) / SWEEP_FILE).is_file()
