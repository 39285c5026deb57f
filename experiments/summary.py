"""``summary.md``: the run's headline table, from its metrics, structures and link loads.

:func:`render_summary` works on what a run holds in memory (``etree.run`` with no folder, and
the results writer); :func:`summary_markdown` reads the same things from a run folder's files
(``etree plot``). Both give the same text for the same run.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from experiments.metrics_file import (
    LinkRow,
    RunSeries,
    Series,
    first_reaching,
    headline_metric,
    read_link_rows,
    read_metrics,
    read_spec_table,
    read_tree,
)

TARGET_FRACTION = 0.9


def _fmt_bytes(value: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(value) < 1000:
            return f"{value:.3g} {unit}"
        value /= 1000
    return f"{value:.3g} PB"


def summary_markdown(run_dir: Path) -> str:
    """:func:`render_summary` of a run folder, from its files alone."""
    run_dir = Path(run_dir)
    series = read_metrics(run_dir)
    spec, tree = read_spec_table(run_dir), read_tree(run_dir)
    return render_summary({"name": run_dir.name, **spec}, series, tree.get("protocols", {}), read_link_rows(run_dir))


def render_summary(
    spec: Mapping[str, Any], series: RunSeries, structures: Mapping[str, Any], links: Iterable[LinkRow]
) -> str:
    """A table per protocol: final/best accuracy, and rounds, time and bytes to a common target.

    ``spec`` is the resolved spec as a table (``Spec.to_dict``, or ``spec.toml`` read back),
    ``structures`` each protocol's ``tree.json`` entry and ``links`` the rows of ``links.csv``.
    """
    metric = headline_metric(series)
    accuracy = {p: m[metric] for p, m in series.items() if metric in m}
    finals = {p: float(s.values[-1]) for p, s in accuracy.items()}
    ndcg = metric == "hr@10"  # recommenders: NDCG@10 next to HR@10
    target = TARGET_FRACTION * max(finals.values(), default=0.0)
    lines = [
        f"# {spec.get('name', '?')}",
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
    lines += equal_cost_lines(accuracy, metric)
    lines += cluster_balance_lines(structures)
    lines += _busiest_links(links, accuracy)
    lines += _faults(series)
    return "\n".join(lines) + "\n"


def value_at(series: Series, axis: str, budget: float) -> float:
    """The metric the devices hold once ``budget`` of ``axis`` (``sim_time_s``, ``bytes_sent``) is spent:
    its last evaluation at or before it (the step curve the plots draw)."""
    spent = getattr(series, axis)
    reached = np.flatnonzero(spent <= budget * (1 + 1e-12))
    return float(series.values[reached[-1]]) if len(reached) else float("nan")


def equal_cost_lines(curves: Mapping[str, Series], metric: str) -> list[str]:
    """The headline metric of every protocol at an equal budget: rounds (the fewest any protocol ran),
    simulated time (when the first protocol that communicates finishes) and bytes (the fewest any of
    them sent); a protocol that sends nothing (individual training) would make both budgets zero.

    Equal rounds flatter protocols whose rounds are slow or costly; equal time and equal bytes are
    what an edge deployment pays (DESIGN: results at equal rounds, time and bytes)."""
    if len(curves) < 2:
        return []
    rounds, seconds, nbytes = equal_budgets(curves)
    lines = [
        "",
        f"## At equal cost ({metric} the devices hold)",
        "",
        f"| protocol | at round {rounds} | at {seconds:.4g} s | at {_fmt_bytes(nbytes)} |",
        "|---|---|---|---|",
    ]
    for protocol, cells in values_at_equal_cost(curves).items():
        lines.append(f"| {protocol} | " + " | ".join("—" if np.isnan(v) else f"{v:.4f}" for v in cells) + " |")
    return lines


def equal_budgets(curves: Mapping[str, Series]) -> tuple[int, float, float]:
    """The budgets of :func:`equal_cost_lines`: the fewest rounds any protocol ran, and the simulated
    time and bytes at which the first protocol that communicates stops."""
    rounds = min(int(s.rounds[-1]) for s in curves.values())
    senders = [s for s in curves.values() if s.bytes_sent[-1] > 0] or list(curves.values())
    return rounds, min(float(s.sim_time_s[-1]) for s in senders), min(float(s.bytes_sent[-1]) for s in senders)


def values_at_equal_cost(curves: Mapping[str, Series]) -> dict[str, tuple[float, float, float]]:
    """Per protocol, its metric at the :func:`equal_budgets` of rounds, simulated time and bytes."""
    rounds, seconds, nbytes = equal_budgets(curves)
    return {
        protocol: (value_at(s, "rounds", rounds), value_at(s, "sim_time_s", seconds), value_at(s, "bytes_sent", nbytes))
        for protocol, s in curves.items()
    }


def _busiest_links(links: Iterable[LinkRow], protocols: Mapping[str, object]) -> list[str]:
    """Each protocol's most loaded link and its share of all link traffic."""
    busiest: dict[str, tuple[int, str]] = {}
    totals: dict[str, int] = {}
    for label, u, v, _, sent in links:
        totals[label] = totals.get(label, 0) + sent
        if sent > busiest.get(label, (-1, ""))[0]:
            busiest[label] = (sent, f"{u}–{v}")
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


def _faults(series: RunSeries) -> list[str]:
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


def cluster_balance_lines(structures: Mapping[str, Any]) -> list[str]:
    """Per tree protocol: how far each layer-1 cluster's label mix is from the global mix.

    Imbalance = total-variation distance between a cluster's label distribution
    and the fleet's (0: the cluster looks like the whole data set; 1: disjoint).
    This is what KMA's accuracy term is meant to lower (E-Tree paper, Sec. IV).
    """
    rows = []
    for label, tree in structures.items():
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
