"""The design study's summary: each network's designed tree against the paper's tree, FedAvg and
HierFAVG, in time to target over fresh seeds, paired by seed (``experiments/design_study.toml``).

``python -m experiments.design_study results/design`` reads every ``results/design/<network>/seeds``
sweep (``etree sweep`` of ``results/design/<network>/design/designed.toml``) and writes
``results/design/summary.md``:
per network, each protocol's simulated time until the models devices hold reach the target test
accuracy (mean ± 95% CI over the seeds that reach it), and the designed tree's time over the paper's
tree's and over FedAvg's, paired by seed (mean ratio ± 95% CI; paired t-test and Wilcoxon p-values
on the time differences). The target, per network, is ``TARGET_FRACTION`` of the best mean final
test accuracy of its protocols, as ``summary.md`` sets its own; a seed where either protocol never
reaches it drops out of that pair, and the table says how many seeds remain.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from etree.core.errors import EtreeError
from experiments.metrics_file import first_reaching
from experiments.run_folder import RunFolderError, atomic_write_text
from experiments.summary import TARGET_FRACTION
from experiments.sweep_files import confidence, is_sweep, sweep_runs
from experiments.sweep_summary import paired_p_values

METRIC = "accuracy"  # test accuracy of the models devices hold: the study reports, it chooses nothing
PAPER, FEDAVG, HIERFAVG, DESIGNED = "etree", "fedavg", "hierfavg", "etree-designed"
SEEDS_FOLDER = "seeds"


def network_times(sweep: Path) -> tuple[float, dict[str, dict[int, float]]]:
    """One network's target and ``{protocol: {seed: seconds to target}}`` (NaN: never reached)."""
    runs = sweep_runs(sweep)
    finals: dict[str, list[float]] = {}
    for _, _, _, protocols in runs:
        for protocol, metrics in protocols.items():
            finals.setdefault(protocol, []).append(float(metrics[METRIC].values[-1]))
    target = TARGET_FRACTION * max(float(np.mean(v)) for v in finals.values())
    times: dict[str, dict[int, float]] = {}
    for _, _, seed, protocols in runs:
        for protocol, metrics in protocols.items():
            hit = first_reaching(metrics[METRIC], target)
            times.setdefault(protocol, {})[seed] = np.nan if hit is None else float(metrics[METRIC].sim_time_s[hit])
    return target, times


def _mean(by_seed: dict[int, float]) -> str:
    reached = np.array([t for t in by_seed.values() if np.isfinite(t)])
    if not len(reached):
        return f"— (0 of {len(by_seed)})"
    mean, half = confidence(reached)
    seeds = "" if len(reached) == len(by_seed) else f" ({len(reached)} of {len(by_seed)})"
    return f"{float(mean):.3g} ± {float(half):.2g}{seeds}"


def _ratio(mine: dict[int, float], other: dict[int, float]) -> str:
    """Designed time over ``other``'s, paired by seed: mean ± 95% CI, then the two p-values."""
    seeds = [s for s in sorted(set(mine) & set(other)) if np.isfinite(mine[s]) and np.isfinite(other[s])]
    if not seeds:
        return "—"
    ratio = np.array([mine[s] / other[s] for s in seeds])
    mean, half = confidence(ratio)
    t_p, w_p = paired_p_values(np.array([mine[s] - other[s] for s in seeds]))
    return f"{float(mean):.3f} ± {float(half):.3f} ({len(seeds)} seeds; t p {t_p:.3g}, Wilcoxon p {w_p:.3g})"


def summarise(root: Path) -> Path:
    """Write ``root/summary.md`` from every ``root/<network>/seeds`` sweep; return its path."""
    sweeps = sorted(p for p in Path(root).glob(f"*/{SEEDS_FOLDER}") if is_sweep(p))
    if not sweeps:
        raise RunFolderError(f"design study: no '{root}/<network>/{SEEDS_FOLDER}' sweep folder; run the study first")
    lines = [
        "# Design study: designed trees against the paper's tree, FedAvg and HierFAVG",
        "",
        f"Simulated seconds until the models devices hold reach the target test {METRIC} "
        f"({TARGET_FRACTION:.0%} of the network's best mean final), mean ± 95% CI over the seeds that reach it;",
        "ratios are the designed tree's time over the other's, paired by seed.",
        "",
        "| network | target | FedAvg | HierFAVG | paper's tree | designed "
        "| designed / paper's tree | designed / FedAvg |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for sweep in sweeps:
        target, times = network_times(sweep)
        designed = times.get(DESIGNED, {})
        cells = [_mean(times.get(p, {})) for p in (FEDAVG, HIERFAVG, PAPER, DESIGNED)]
        pairs = [_ratio(designed, times.get(p, {})) for p in (PAPER, FEDAVG)]
        lines.append(f"| {sweep.parent.name} | {target:.4f} | {' | '.join(cells)} | {' | '.join(pairs)} |")
    path = Path(root) / "summary.md"
    if path.exists() and not path.read_text(encoding="utf-8", errors="replace").startswith(lines[0]):
        raise RunFolderError(f"design study: '{path}' exists and etree cannot tell it wrote it; move it away")
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path


def main(argv: Sequence[str]) -> int:
    """``python -m experiments.design_study [ROOT]`` (default ``results/design``); bad input: one line, exit 2."""
    try:
        print(f"wrote {summarise(Path(argv[0] if argv else 'results/design'))}")
    except EtreeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
