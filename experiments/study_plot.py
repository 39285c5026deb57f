"""A sweep over a tree protocol's K: final accuracy and time to target against K, per panel.

Written next to a sweep's own summary when its grid varies ``protocols.<label>.groups``
(K = ``groups[0]``, the first-layer cluster count), and redrawn by ``etree plot`` on the
sweep folder, from the run folders alone. A panel is one value of the grid's keys outside
``protocols.*`` (in the topology study, one generator). A protocol whose K varies is drawn
against K, one line per combination of its other varied options (e.g. ``ratios``); any
other protocol (FedAvg) is a horizontal reference, the same run in every setting of a panel.

Time to target uses one target accuracy for every run, so times compare across panels:
``TARGET_FRACTION`` (as in ``summary.md``) of the best mean final accuracy of any protocol,
K and panel in the sweep. A seed that never reaches it has no time: means and CIs are over
the seeds that did, and the table and plot say how many those are (hollow marker: some
seeds missed; a cross at the top: none reached it).
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import FixedLocator, NullLocator

from experiments.metrics_file import Series, first_reaching
from experiments.plots import save_figure
from experiments.run_folder import atomic_write_text
from experiments.summary import TARGET_FRACTION
from experiments.sweep_files import SWEEP_FILE, confidence, sweep_headline, sweep_runs

FIGURE = "study.png"
TABLE = "study.md"


@dataclass(frozen=True)
class Cell:
    """One protocol variant at one K in one panel: its per-seed results."""

    panel: str
    protocol: str
    variant: str  # the protocol's other varied options, e.g. "ratios=[1,5]" ("" if none)
    k: int | None  # None: a reference protocol whose K the sweep does not vary
    seeds: tuple[int, ...]
    finals: np.ndarray  # final accuracy per seed
    times: np.ndarray  # simulated seconds to the target per seed; NaN where never reached

    @property
    def name(self) -> str:
        return f"{self.protocol} {self.variant}".strip()

    @property
    def reached(self) -> int:
        return int(np.isfinite(self.times).sum())


def _value(text: str) -> object:
    """An override's value as ``--set`` parses it (TOML, else the text)."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _k(text: str) -> int:
    groups = _value(text)
    if not isinstance(groups, list) or not groups or not isinstance(groups[0], int):
        raise ValueError(f"groups override {text!r}: expected a list such as [8,1]")
    return groups[0]


def collect(out: Path) -> list[tuple[str, str, str, int | None, int, Series]]:
    """``(panel, protocol, variant, K, seed, accuracy)`` per protocol run of the sweep, each once."""
    found: dict[tuple[str, str, str, int | None, int], Series] = {}
    everything = sweep_runs(out)
    metric = sweep_headline(everything)
    for _, overrides, seed, runs in everything:
        pairs = [o.split("=", 1) for o in overrides]
        panel = ", ".join(v for k, v in pairs if not k.startswith("protocols.")) or "all"
        for protocol, metrics in runs.items():
            if metric not in metrics:
                continue
            own = [(k.split(".", 2)[2], v) for k, v in pairs if k.startswith(f"protocols.{protocol}.")]
            k = next((_k(v) for key, v in own if key == "groups"), None)
            variant = " ".join(f"{key}={v}" for key, v in own if key != "groups")
            found.setdefault((panel, protocol, variant, k, seed), metrics[metric])
    return [(*key, series) for key, series in found.items()]


def study_target(runs: Sequence[tuple[str, str, str, int | None, int, Series]]) -> float:
    """``TARGET_FRACTION`` of the best mean final accuracy over every cell (panel, protocol, variant, K)."""
    finals: dict[tuple[str, str, str, int | None], list[float]] = {}
    for panel, protocol, variant, k, _, series in runs:
        finals.setdefault((panel, protocol, variant, k), []).append(float(series.values[-1]))
    return TARGET_FRACTION * max((float(np.mean(v)) for v in finals.values()), default=0.0)


def cells(runs: Sequence[tuple[str, str, str, int | None, int, Series]], target: float) -> list[Cell]:
    """Group runs into cells, in the sweep's order; references (K None) first in each panel."""
    grouped: dict[tuple[str, str, str, int | None], list[tuple[int, Series]]] = {}
    for panel, protocol, variant, k, seed, series in runs:
        grouped.setdefault((panel, protocol, variant, k), []).append((seed, series))
    out = []
    for (panel, protocol, variant, k), items in grouped.items():
        items.sort(key=lambda item: item[0])
        times = []
        for _, series in items:
            hit = first_reaching(series, target)
            times.append(np.nan if hit is None else float(series.sim_time_s[hit]))
        finals = np.array([float(s.values[-1]) for _, s in items])
        out.append(Cell(panel, protocol, variant, k, tuple(s for s, _ in items), finals, np.array(times)))
    panels = list(dict.fromkeys(c.panel for c in out))
    return sorted(out, key=lambda c: (panels.index(c.panel), c.k is not None, c.name, c.k or 0))


def _ci(values: np.ndarray) -> tuple[float, float]:
    mean, half = confidence(values)
    return float(mean), float(half)


def _mean_ci(values: np.ndarray, mean_format: str, half_format: str) -> str:
    """``mean ± half`` over several values; a lone value has no interval and is shown alone."""
    mean, half = _ci(values)
    return mean_format.format(mean) if len(values) == 1 else f"{mean_format.format(mean)} ± {half_format.format(half)}"


def study_markdown(all_cells: Sequence[Cell], target: float, panel_key: str) -> str:
    """The table: final accuracy and time to target, mean ± 95% CI, per panel x protocol x K."""
    best = max((c for c in all_cells), key=lambda c: float(c.finals.mean()))
    references = {c.panel: c for c in all_cells if c.k is None}
    paired = len({c.name for c in references.values()}) == 1 and all(
        sum(r.panel == panel for r in all_cells if r.k is None) == 1 for panel in references
    )
    reference = next(iter(references.values())).name if paired else ""
    lines = [
        "# Study: final accuracy and time to target against K",
        "",
        f"Target accuracy {target:.3f} for every run: {TARGET_FRACTION:.0%} of the best mean final accuracy "
        f"in the study ({best.name}, K = {best.k if best.k is not None else '—'}, {best.panel}). "
        "Mean ± 95% confidence half-width over seeds (Student t). Time to target: simulated seconds to "
        "the first evaluation at or above the target, over the seeds that reached it ('reached'). "
        "K '—': a reference protocol the grid does not vary, the same run in every setting of its panel.",
        *(
            [
                "",
                f"Paired with {reference} on the same seed (same data split, topology and initial model): "
                f"the final accuracy minus {reference}'s, in percentage points, and the time to target over "
                f"{reference}'s, over the seeds where both reached it (n = how many, if not all).",
            ]
            if paired
            else []
        ),
        "",
        f"| {panel_key} | protocol | K | seeds | final accuracy | sim time to target (s) | reached |"
        + (f" Δ final vs {reference} (pp) | time / {reference} |" if paired else ""),
        "|---|---|---|---|---|---|---|" + ("---|---|" if paired else ""),
    ]
    for c in all_cells:
        final = _mean_ci(c.finals, "{:.4f}", "{:.4f}")
        reached = c.times[np.isfinite(c.times)]
        time = _mean_ci(reached, "{:.3g}", "{:.2g}") if len(reached) else "—"
        k = "—" if c.k is None else str(c.k)
        row = f"| {c.panel} | {c.name} | {k} | {len(c.seeds)} | {final} | {time} | {c.reached}/{len(c.seeds)} |"
        if paired:
            row += " — | — |" if c.k is None else f" {_against(c, references[c.panel])} |"
        lines.append(row)
    return "\n".join(lines) + "\n"


def _against(cell: Cell, reference: Cell) -> str:
    """Paired over seeds: final accuracy difference (pp) and time-to-target ratio against ``reference``."""
    mine = dict(zip(cell.seeds, zip(cell.finals, cell.times, strict=True), strict=True))
    theirs = dict(zip(reference.seeds, zip(reference.finals, reference.times, strict=True), strict=True))
    common = [seed for seed in cell.seeds if seed in theirs]
    if not common:
        return "— | —"
    delta = _mean_ci(np.array([100 * (mine[s][0] - theirs[s][0]) for s in common]), "{:+.1f}", "{:.1f}")
    both = [s for s in common if np.isfinite(mine[s][1]) and np.isfinite(theirs[s][1])]
    ratio = "—" if not both else _mean_ci(np.array([mine[s][1] / theirs[s][1] for s in both]), "{:.2f}", "{:.2f}")
    if both and len(both) < len(common):
        ratio += f" (n = {len(both)})"
    return f"{delta} | {ratio}"


def plot_study(all_cells: Sequence[Cell], target: float, path: Path, title: str) -> Path:
    """Top row: final accuracy against K; bottom row: simulated time to target; one column per panel."""
    panels = list(dict.fromkeys(c.panel for c in all_cells))
    lines = list(dict.fromkeys(c.name for c in all_cells))
    colours = {name: f"C{i % 10}" for i, name in enumerate(lines)}
    swept = [name for name in lines if any(c.k is not None and c.name == name for c in all_cells)]
    ks = sorted({c.k for c in all_cells if c.k is not None})
    figure, axes = plt.subplots(
        2, len(panels), figsize=(4.4 * len(panels), 7.4), squeeze=False, sharey="row", constrained_layout=True
    )
    for column, panel in enumerate(panels):
        top, bottom = axes[0, column], axes[1, column]
        mine = [c for c in all_cells if c.panel == panel]
        for c in (c for c in mine if c.k is None):  # references: a line and its 95% band
            _reference(top, c.finals, colours[c.name], c.name)
            reached = c.times[np.isfinite(c.times)]
            suffix = "" if c.reached == len(c.seeds) else f" ({c.reached}/{len(c.seeds)} reached)"
            if len(reached):
                _reference(bottom, reached, colours[c.name], c.name + suffix)
            else:
                bottom.plot([], [], color=colours[c.name], linestyle="--", label=f"{c.name}: never reached")
        for index, name in enumerate(swept):
            points = sorted((c for c in mine if c.name == name and c.k is not None), key=lambda c: c.k or 0)
            if not points:
                continue
            shift = 2 ** (0.05 * (index - (len(swept) - 1) / 2))  # side by side on the log axis
            x = np.array([c.k for c in points], dtype=float) * shift
            finals = [_ci(c.finals) for c in points]
            top.errorbar(
                x,
                [m for m, _ in finals],
                yerr=[h for _, h in finals],
                color=colours[name],
                marker="o",
                ms=4,
                capsize=3,
                label=name,
            )
            _times(bottom, points, x, colours[name], name)
        top.set_title(panel)
        for ax in (top, bottom):
            ax.set_xscale("log", base=2)
            ax.xaxis.set_major_locator(FixedLocator(ks))
            ax.xaxis.set_minor_locator(NullLocator())
            ax.set_xticklabels([str(k) for k in ks])
            ax.set_xlim(min(ks) / 1.4, max(ks) * 1.4)
            ax.grid(alpha=0.3)
        bottom.set_xlabel("K (first-layer clusters)")
        top.legend(fontsize=7, loc="lower left")
        bottom.legend(fontsize=7, loc="best")
    axes[0, 0].set_ylabel("final test accuracy")
    axes[1, 0].set_ylabel(f"sim time to accuracy {target:.3f} (s)")
    figure.suptitle(f"{title}: mean and 95% CI over seeds (hollow: some seeds never reached the target; ×: none)")
    # Times are positive, and the top leaves room above the highest mean; a wider interval (few
    # seeds reached the target) runs off the frame: study.md has its numbers.
    means = [float(np.mean(c.times[np.isfinite(c.times)])) for c in all_cells if c.reached]
    axes[1, 0].set_ylim(0, 1.6 * max(means, default=1.0))
    return save_figure(figure, path)


def _reference(ax: plt.Axes, values: np.ndarray, colour: str, label: str) -> None:
    """A protocol that does not vary with K: its mean as a dashed line, its 95% CI as a band."""
    mean, half = _ci(values)
    ax.axhline(mean, color=colour, linestyle="--", linewidth=1.2, label=label)
    if half > 0:
        ax.axhspan(mean - half, mean + half, color=colour, alpha=0.15, linewidth=0)


def _times(ax: plt.Axes, points: Sequence[Cell], x: np.ndarray, colour: str, name: str) -> None:
    """Times to target: mean over the seeds that reached it; hollow if some missed, × at the top if all missed."""
    means = []
    for xi, c in zip(x, points, strict=True):
        reached = c.times[np.isfinite(c.times)]
        if not len(reached):
            means.append(np.nan)
            ax.plot(xi, 0.96, marker="x", ms=7, color=colour, transform=ax.get_xaxis_transform(), clip_on=False)
            ax.annotate(
                f"0/{len(c.seeds)}",
                (xi, 0.96),
                xycoords=ax.get_xaxis_transform(),
                fontsize=6,
                color=colour,
                xytext=(4, -3),
                textcoords="offset points",
            )
            continue
        mean, half = _ci(reached)
        means.append(mean)
        full = c.reached == len(c.seeds)
        ax.errorbar(
            xi, mean, yerr=half, color=colour, marker="o", ms=4, capsize=3, markerfacecolor=colour if full else "white"
        )
        if not full:
            ax.annotate(
                f"{c.reached}/{len(c.seeds)}",
                (xi, mean),
                fontsize=6,
                color=colour,
                xytext=(4, 3),
                textcoords="offset points",
            )
    ax.plot(x, means, color=colour, label=name)


def write_study(out: Path) -> tuple[Path, Path] | None:
    """Write ``study.md`` and ``study.png`` for a sweep that varies a protocol's K (else nothing)."""
    out = Path(out)
    runs = collect(out)
    if not any(k is not None for _, _, _, k, _, _ in runs):
        return None
    target = study_target(runs)
    all_cells = cells(runs, target)
    record = json.loads((out / SWEEP_FILE).read_text())
    panel_keys = list(
        dict.fromkeys(
            o.split("=", 1)[0]
            for overrides in record["settings"].values()
            for o in overrides
            if not o.startswith("protocols.")
        )
    )
    atomic_write_text(out / TABLE, study_markdown(all_cells, target, ", ".join(panel_keys) or "setting"))
    figure = plot_study(all_cells, target, out / FIGURE, Path(record["spec"]).stem)
    return out / TABLE, figure
