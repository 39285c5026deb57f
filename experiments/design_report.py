"""What ``etree design`` found, and its two reports: ``design.md`` and ``design.png``.

Every accuracy that chose something is ``validation_accuracy`` (the models devices hold, on the
split carved from the training data); test accuracy appears only in the final report, for the
baselines and the chosen design. "Predicted" is the timing engine alone
(:class:`experiments.design_timing.CostPredictor`), "measured" the trained run.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import matplotlib

if matplotlib.get_backend(auto_select=False) is None:  # nobody chose one: the CLI draws files only
    matplotlib.use("Agg")
from matplotlib.figure import Figure

from experiments.design_space import Design
from experiments.design_timing import Costs
from experiments.plots import save_figure

TOP = 5  # best designs listed
WIDE = 20  # an axis of design.png spanning more than this factor is drawn in log scale


@dataclass(frozen=True)
class Point:
    """One evaluated round of a trained run: what devices hold, on the validation and test sets."""

    round: int
    sim_time_s: float
    bytes_sent: int
    validation: float
    test: float

    def spent(self, axis: str) -> float:
        """Simulated seconds (``sim_time_s``) or bytes (``bytes_sent``) spent by this round."""
        return float(getattr(self, axis))


@dataclass(frozen=True)
class Curve:
    """A trained run, evaluated every round from round 0."""

    points: tuple[Point, ...]

    def reaching(self, target: float, *, test: bool = False) -> Point | None:
        """The first round whose held models reach ``target`` (validation, or test accuracy)."""
        return next((p for p in self.points if (p.test if test else p.validation) >= target), None)

    @property
    def final(self) -> Point:
        return self.points[-1]


@dataclass(frozen=True)
class Trial:
    """One optuna trial: its design, what became of it and why (``note``), and its value."""

    number: int
    design: Design
    complete: bool  # False: pruned (by timing, successive halving, the best design's cost, the round cap)
    how: str  # "trained", "timing only", "baseline run" or "repeat of #n"
    note: str
    value: float | None
    costs: Costs
    curve: Curve | None  # the rounds trained for it (None: discarded by timing alone)

    def reach(self, target: float) -> Point | None:
        return None if self.curve is None else self.curve.reaching(target)


@dataclass(frozen=True)
class Baseline:
    """A comparison run over the spec's rounds: FedAvg, HierFAVG or the paper's tree."""

    name: str
    label: str  # its label in the designed spec
    curve: Curve


@dataclass(frozen=True)
class Found:
    """Everything a design search produced, for the reports."""

    spec_name: str
    objective: str  # time | bytes | accuracy
    target: float
    target_note: str
    at_time_s: float | None  # the fixed simulated time of the accuracy objective
    seed: int
    budget: str
    rounds: dict[str, int]  # rounds trained: baselines, trials, final report
    rounds_per_run: int  # the spec's rounds
    search: str  # the sampler, pruner and discard rules, in words
    label: str  # the designed protocol's label in designed.toml
    baselines: tuple[Baseline, ...]
    trials: tuple[Trial, ...]
    best: Trial | None
    final: Curve | None  # the chosen design over the spec's rounds (its test accuracy is reported)


def fmt_bytes(value: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(value) < 1000:
            return f"{value:.3g} {unit}"
        value /= 1000
    return f"{value:.3g} PB"


def _time(point: Point | None) -> str:
    return "—" if point is None else f"{point.sim_time_s:.4g}"


def _bytes(point: Point | None) -> str:
    return "—" if point is None else fmt_bytes(point.bytes_sent)


def _value(found: Found, value: float | None) -> str:
    if value is None:
        return "—"
    return {"time": f"{value:.4g} s", "bytes": fmt_bytes(value), "accuracy": f"{value:.4f}"}[found.objective]


def ranked(found: Found) -> list[Trial]:
    """Complete trials, best first (ties: the earlier trial), each design once."""
    seen: set[Design] = set()
    done = []
    for trial in found.trials:
        if trial.complete and trial.value is not None and trial.design not in seen:
            seen.add(trial.design)
            done.append(trial)
    sign = -1.0 if found.objective == "accuracy" else 1.0
    return sorted(done, key=lambda t: (sign * (t.value or 0.0), t.number))


def design_markdown(found: Found) -> str:
    """``design.md``: the objective, the best designs (predicted and measured), the baselines against
    the chosen design (validation, then test), and every trial."""
    axis = "simulated time" if found.objective == "time" else "bytes sent"
    goal = (
        f"maximise the validation accuracy the devices hold at simulated time {found.at_time_s:.4g} s"
        if found.at_time_s is not None
        else f"minimise {axis} until the held models reach validation accuracy {found.target:.4f}"
    )
    spent = ", ".join(f"{what} {count}" for what, count in found.rounds.items())
    lines = [
        f"# Designing a tree for {found.spec_name}",
        "",
        f"Objective: {goal} ({found.target_note}).",
        f"Budget: {found.budget}; rounds trained: {spent}. Search seed {found.seed}. {found.search}",
        "",
        "Accuracies are of the models devices hold. Every choice was made on the validation split (carved",
        "from the training data); the test set appears only in the final comparison. Predicted: the timing",
        "engine alone, no training (exact: it runs the same rounds on the same simulated clock); measured: the",
        "trained run. Accuracy cannot be predicted without training, so only its measured value is shown.",
        "",
        "## Best designs",
        "",
        "| rank | trial | design | predicted s/round | predicted time to target (s) | measured time to target (s) "
        "| predicted bytes to target | measured bytes to target | validation accuracy | objective |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    best = ranked(found)
    for rank, trial in enumerate(best[:TOP], start=1):
        hit = trial.reach(found.target)
        assert trial.curve is not None  # a complete trial was trained (or replayed from a baseline run)
        shown = hit or trial.curve.final
        lines.append(
            f"| {rank} | {trial.number} | {trial.design.text()} | {trial.costs.round_s:.4g} "
            f"| {_predicted_time(trial, hit)} | {_time(hit)} | {_predicted_bytes(trial, hit)} | {_bytes(hit)} "
            f"| {shown.validation:.4f} (round {shown.round}) | {_value(found, trial.value)} |"
        )
    if not best:
        lines.append("| — | — | no design reached the target within its rounds | | | | | | | |")
        if found.best is not None and found.best.curve is not None:
            held = max(p.validation for p in found.best.curve.points)
            number = found.best.number
            lines += [
                "",
                f"`{found.label}` is trial {number}, the highest validation accuracy a trial held ({held:.4f}).",
            ]
    lines += _comparison(found)
    lines += [
        "",
        "## Trials",
        "",
        "| trial | state | how | design | predicted s/round | rounds | time to target (s) | bytes to target "
        "| best validation accuracy | objective | note |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for trial in found.trials:
        hit = trial.reach(found.target)
        rounds = 0 if trial.curve is None else trial.curve.final.round
        top = "—" if trial.curve is None else f"{max(p.validation for p in trial.curve.points):.4f}"
        lines.append(
            f"| {trial.number} | {'complete' if trial.complete else 'pruned'} | {trial.how} | {trial.design.text()} "
            f"| {trial.costs.round_s:.4g} | {rounds} | {_time(hit)} | {_bytes(hit)} | {top} "
            f"| {_value(found, trial.value)} | {trial.note} |"
        )
    return "\n".join(lines) + "\n"


def _predicted_time(trial: Trial, hit: Point | None) -> str:
    return "—" if hit is None else f"{trial.costs.sim_time_s[hit.round]:.4g}"


def _predicted_bytes(trial: Trial, hit: Point | None) -> str:
    return "—" if hit is None else fmt_bytes(int(trial.costs.bytes_sent[hit.round]))


def _comparison(found: Found) -> list[str]:
    """The chosen design against the baselines over the spec's rounds: validation, then test."""
    runs = [(f"{b.name} (`{b.label}`)", b.curve) for b in found.baselines]
    if found.best is not None and found.final is not None:
        runs.append((f"designed (`{found.label}`)", found.final))
    lines = [
        "",
        f"## Against the baselines ({found.rounds_per_run} rounds each, the same seed and workload)",
        "",
        f"Target {found.target:.4f} on both splits. The test columns report; they chose nothing.",
        "",
        "| protocol | validation: time to target (s) | validation: bytes to target | final validation accuracy "
        "| test: time to target (s) | test: bytes to target | final test accuracy |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, curve in runs:
        valid, test = curve.reaching(found.target), curve.reaching(found.target, test=True)
        lines.append(
            f"| {name} | {_time(valid)} | {_bytes(valid)} | {curve.final.validation:.4f} "
            f"| {_time(test)} | {_bytes(test)} | {curve.final.test:.4f} |"
        )
    return lines


MARKERS = {"FedAvg": ("s", "black"), "HierFAVG": ("^", "tab:blue"), "paper's tree": ("D", "tab:green")}


def pareto(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The non-dominated points (less time and fewer bytes is better), by increasing time."""
    front: list[tuple[float, float]] = []
    for time, sent in sorted(points):
        if not front or sent < front[-1][1]:
            front.append((time, sent))
    return front


def pareto_figure(found: Found) -> Figure:
    """Simulated time against bytes to the validation target: every design that reached it, their
    Pareto front, the chosen design, and FedAvg, HierFAVG and the paper's tree."""
    figure = Figure(figsize=(7.5, 5.2))
    ax = figure.subplots()
    tried = [t for t in found.trials if t.how in ("trained", "baseline run")]  # each design once
    reached = [(t, hit) for t in tried if (hit := t.reach(found.target))]
    xy = [(hit.sim_time_s, float(hit.bytes_sent)) for _, hit in reached]
    if xy:
        ax.scatter([x for x, _ in xy], [y for _, y in xy], s=18, color="0.6", label="designs that reached the target")
        front = pareto(xy)
        ax.step(
            [x for x, _ in front],
            [y for _, y in front],
            where="post",
            color="tab:orange",
            marker="o",
            label="Pareto front",
        )
    if found.best is not None and (hit := found.best.reach(found.target)) is not None:
        ax.scatter(
            [hit.sim_time_s], [hit.bytes_sent], marker="*", s=420, facecolors="none", edgecolors="tab:red", zorder=5,
            label=f"chosen (trial {found.best.number})",
        )  # fmt: skip
    for baseline in found.baselines:
        marker, colour = MARKERS[baseline.name]
        hit = baseline.curve.reaching(found.target)
        if hit is None:
            ax.scatter([], [], marker=marker, color=colour, label=f"{baseline.name} (never reaches it)")
            continue
        ax.scatter([hit.sim_time_s], [hit.bytes_sent], marker=marker, s=70, color=colour, zorder=4, label=baseline.name)
    everything = [*xy] + [
        (h.sim_time_s, float(h.bytes_sent)) for b in found.baselines if (h := b.curve.reaching(found.target))
    ]
    for axis, values in (("x", [x for x, _ in everything]), ("y", [y for _, y in everything])):
        if values and min(values) > 0 and max(values) > WIDE * min(values):  # log only where values span decades
            getattr(ax, f"set_{axis}scale")("log")
    ax.set_xlabel(f"simulated time to validation accuracy {found.target:.3f} (s)")
    ax.set_ylabel("bytes sent to the target (all messages)")
    ax.set_title(f"Tree designs for {found.spec_name}: time and bytes to target", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    figure.tight_layout()
    return figure


def write_pareto(found: Found, path: Path) -> Path:
    """``design.png``, written atomically."""
    return save_figure(pareto_figure(found), path)
