"""``summary.md``: the run's headline table, computed from ``metrics.csv`` alone."""

from __future__ import annotations

import tomllib
from pathlib import Path

from experiments.metrics_file import first_reaching, read_metrics

TARGET_FRACTION = 0.9


def _fmt_bytes(value: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(value) < 1000:
            return f"{value:.3g} {unit}"
        value /= 1000
    return f"{value:.3g} PB"


def summary_markdown(run_dir: Path) -> str:
    """A table per protocol: final/best accuracy, and rounds, time and bytes to a common target."""
    run_dir = Path(run_dir)
    series = read_metrics(run_dir)
    spec = tomllib.loads((run_dir / "spec.toml").read_text()) if (run_dir / "spec.toml").is_file() else {}
    accuracy = {p: m["accuracy"] for p, m in series.items() if "accuracy" in m}
    finals = {p: float(s.values[-1]) for p, s in accuracy.items()}
    target = TARGET_FRACTION * max(finals.values(), default=0.0)
    lines = [
        f"# {spec.get('name', run_dir.name)}",
        "",
        f"{spec.get('topology', {}).get('devices', '?')} devices, dataset `{spec.get('data', {}).get('dataset', '?')}` "
        f"({spec.get('data', {}).get('partition', '?')} partition), model `{spec.get('model', {}).get('kind', '?')}`, "
        f"{spec.get('rounds', '?')} rounds, seed {spec.get('seed', '?')}. A round is one local epoch of every device.",
        "",
        f"Target accuracy for the 'to target' columns: {target:.3f} "
        f"({TARGET_FRACTION:.0%} of the best final accuracy).",
        "",
        "| protocol | final accuracy | best accuracy | rounds to target | sim time to target (s) "
        "| bytes to target | total sim time (s) | total bytes sent |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for protocol in sorted(accuracy, key=lambda p: -finals[p]):
        s = accuracy[protocol]
        hit = first_reaching(s, target)
        to_target = (
            ("—", "—", "—")
            if hit is None
            else (str(int(s.rounds[hit])), f"{s.sim_time_s[hit]:.3g}", _fmt_bytes(float(s.bytes_sent[hit])))
        )
        lines.append(
            f"| {protocol} | {finals[protocol]:.4f} | {s.values.max():.4f} | {' | '.join(to_target)} "
            f"| {s.sim_time_s[-1]:.4g} | {_fmt_bytes(float(s.bytes_sent[-1]))} |"
        )
    return "\n".join(lines) + "\n"
