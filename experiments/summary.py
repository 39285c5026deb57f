"""``summary.md``: the run's headline table, computed from ``metrics.csv`` alone."""

from __future__ import annotations

import csv
import json
import tomllib
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from experiments.metrics_file import first_reaching, headline_metric, read_metrics

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
    metric = headline_metric(series)
    accuracy = {p: m[metric] for p, m in series.items() if metric in m}
    finals = {p: float(s.values[-1]) for p, s in accuracy.items()}
    ndcg = metric == "hr@10"  # recommenders: NDCG@10 next to HR@10
    target = TARGET_FRACTION * max(finals.values(), default=0.0)
    lines = [
        f"# {spec.get('name', run_dir.name)}",
        "",
        f"{spec.get('topology', {}).get('devices', '?')} devices, dataset `{spec.get('data', {}).get('dataset', '?')}` "
        f"({spec.get('data', {}).get('partition', '?')} partition), model `{spec.get('model', {}).get('kind', '?')}`, "
        f"{spec.get('rounds', '?')} rounds, seed {spec.get('seed', '?')}. A round is one local epoch of every device.",
        "",
        f"Target {metric} for the 'to target' columns: {target:.3f} "
        f"({TARGET_FRACTION:.0%} of the best final {metric}).",
        "",
        f"| protocol | final {metric} | best {metric} |{' final ndcg@10 |' * ndcg} rounds to target "
        "| sim time to target (s) | bytes to target | total sim time (s) | total bytes sent |",
        "|---|---|---|---|---|---|---|---|" + "---|" * ndcg,
    ]
    for protocol in sorted(accuracy, key=lambda p: -finals[p]):
        s = accuracy[protocol]
        hit = first_reaching(s, target)
        to_target = (
            ("—", "—", "—")
            if hit is None
            else (str(int(s.rounds[hit])), f"{s.sim_time_s[hit]:.3g}", _fmt_bytes(float(s.bytes_sent[hit])))
        )
        extra = f" {float(series[protocol]['ndcg@10'].values[-1]):.4f} |" if ndcg else ""
        lines.append(
            f"| {protocol} | {finals[protocol]:.4f} | {s.values.max():.4f} |{extra} {' | '.join(to_target)} "
            f"| {s.sim_time_s[-1]:.4g} | {_fmt_bytes(float(s.bytes_sent[-1]))} |"
        )
    lines += cluster_balance_lines(run_dir)
    lines += _busiest_links(run_dir, accuracy)
    lines += _faults(series)
    return "\n".join(lines) + "\n"


def _busiest_links(run_dir: Path, protocols: Mapping[str, object]) -> list[str]:
    """From ``links.csv``: each protocol's most loaded link and its share of all link traffic."""
    path = run_dir / "links.csv"
    if not path.is_file():
        return []
    busiest: dict[str, tuple[int, str]] = {}
    totals: dict[str, int] = {}
    with path.open(newline="") as handle:
        for row in csv.DictReader(handle):
            label, sent = row["protocol"], int(row["bytes_sent"])
            totals[label] = totals.get(label, 0) + sent
            if sent > busiest.get(label, (-1, ""))[0]:
                busiest[label] = (sent, f"{row['u']}–{row['v']}")
    if not busiest:
        return []
    lines = [
        "",
        "Busiest link (bytes over the whole run; a message counts on every link of its path):",
        "",
        "| protocol | busiest link | its bytes | share of all link bytes |",
        "|---|---|---|---|",
    ]
    for label in [p for p in protocols if p in busiest] + [p for p in busiest if p not in protocols]:
        sent, link = busiest[label]
        lines.append(f"| {label} | {link} | {_fmt_bytes(sent)} | {sent / max(totals[label], 1):.1%} |")
    return lines


def _faults(series: dict) -> list[str]:
    """Crashes and failovers, from their metric rows."""
    events = [
        (float(t), protocol, kind, int(v))
        for protocol, metrics in series.items()
        for kind in ("crash", "failover")
        if kind in metrics
        for t, v in zip(metrics[kind].sim_time_s, metrics[kind].values, strict=True)
    ]
    if not events:
        return []
    lines = ["", "Faults:", "", "| sim time (s) | protocol | event | node |", "|---|---|---|---|"]
    lines += [f"| {t:.4g} | {p} | {k} | {n} |" for t, p, k, n in sorted(events)]
    return lines


def cluster_balance_lines(run_dir: Path) -> list[str]:
    """Per tree protocol: how far each layer-1 cluster's label mix is from the global mix.

    Imbalance = total-variation distance between a cluster's label distribution
    and the fleet's (0: the cluster looks like the whole data set; 1: disjoint).
    This is what KMA's accuracy term is meant to lower (E-Tree paper, Sec. IV).
    """
    path = run_dir / "tree.json"
    if not path.is_file():
        return []
    protocols = json.loads(path.read_text()).get("protocols", {})
    rows = []
    for label, tree in protocols.items():
        clusters = tree.get("layers", [{}])[0].get("clusters", [])
        if len(clusters) < 2 or "label_histogram" not in clusters[0]:
            continue
        counts = np.array([c["label_histogram"] for c in clusters], dtype=float)
        share = counts / counts.sum(1, keepdims=True).clip(min=1)
        overall = counts.sum(0) / counts.sum()
        distance = 0.5 * np.abs(share - overall).sum(1)
        sizes = [len(c["members"]) for c in clusters]
        method = tree.get("clustering", {}).get("method", "?")
        rows.append(
            f"| {label} | {method} | {len(clusters)} | {min(sizes)}–{max(sizes)} "
            f"| {distance.mean():.3f} | {distance.max():.3f} |"
        )
    if not rows:
        return []
    return [
        "",
        "## Cluster label balance (layer 1)",
        "",
        "Imbalance: total-variation distance of a cluster's label mix from the whole fleet's (lower is better).",
        "",
        "| protocol | clustering | clusters | devices per cluster | mean imbalance | worst imbalance |",
        "|---|---|---|---|---|---|",
        *rows,
    ]
