"""Writing a run folder: every file complete or absent, never half-written, and never over a folder
etree did not write.

The folder is assembled in a temporary sibling and swapped into place only
when every file is written, so a failed or interrupted run leaves the previous
results of the same name untouched. Its marker (``etree.json``,
:mod:`experiments.run_folder`) says etree wrote it and records what the read-back
files hold; only a folder etree owns is replaced. The summary and plots are computed from the run's rows in
memory, the same rows ``metrics.csv`` and ``links.csv`` hold, so ``etree plot``
redraws them identically from the files.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

import numpy as np
import tomli_w

from etree.engine.protocol import Record
from etree.network.links import LinkLoad
from experiments.interrupts import interrupts_deferred
from experiments.metrics_file import LinkRow, MetricRow, group_series
from experiments.run_folder import check_replaceable, spec_sha256, write_marker
from experiments.runner import RunOutput
from experiments.summary import render_summary
from topologies import write_graphml

GZIP_TOPOLOGY_ABOVE = 20_000  # nodes; 100,000 nodes are 183 MB of graphml, 23 MB gzipped at level 1
# nodes; a larger network is left out of the run folder: at 100,000 nodes (1.1 million links) its
# gzipped graphml alone took 27 s to write, and the folder's spec.toml rebuilds it exactly from its seed
WRITE_TOPOLOGY_UP_TO = 50_000


def topology_file(nodes: int) -> str:
    """``topology.graphml``, gzipped for large networks (``etree``'s graphml loader reads both)."""
    return "topology.graphml.gz" if nodes > GZIP_TOPOLOGY_ABOVE else "topology.graphml"


METRIC_COLUMNS = ("protocol", "round", "sim_time_s", "bytes_sent", "metric", "value")
LINK_COLUMNS = ("protocol", "u", "v", "messages", "bytes_sent")


def metric_rows(records: Iterable[Record]) -> Iterator[MetricRow]:
    """The rows of ``metrics.csv`` (``METRIC_COLUMNS``), typed."""
    for r in records:
        yield r.protocol, int(r.round), float(r.sim_time_s), int(r.bytes_sent), r.metric, float(r.value)


def link_rows(links: Mapping[str, LinkLoad]) -> Iterator[LinkRow]:
    """The rows of ``links.csv`` (``LINK_COLUMNS``): links that carried nothing are left out."""
    for label, load in links.items():
        for i in np.flatnonzero(load.messages):
            u, v = load.ends[i]
            yield label, int(u), int(v), int(load.messages[i]), int(load.bytes_sent[i])


def metrics_csv(records: Iterable[Record]) -> str:
    """Long-format CSV; floats in ``repr`` form so a seed reproduces it byte for byte."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(METRIC_COLUMNS)
    for protocol, round_index, sim_time_s, bytes_sent, metric, value in metric_rows(records):
        writer.writerow([protocol, round_index, repr(sim_time_s), bytes_sent, metric, repr(value)])
    return buffer.getvalue()


def links_csv(links: Mapping[str, LinkLoad]) -> str:
    """Per-link load of every protocol that tracks it; links that carried nothing are left out."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(LINK_COLUMNS)
    writer.writerows(link_rows(links))
    return buffer.getvalue()


def write_run(result: RunOutput, out_dir: Path, field: str = "out") -> Path:
    """Write ``spec.toml``, ``metrics.csv``, ``links.csv``, ``tree.json``, ``topology.graphml[.gz]``
    (networks of up to ``WRITE_TOPOLOGY_UP_TO`` nodes), ``summary.md``, plots and the marker;
    ``out_dir`` must be a folder etree may replace (``field`` names it in the error)."""
    from experiments.plots import convergence_figure, save_figure
    from experiments.tree_view import draw_tree

    out_dir = Path(out_dir)
    check_replaceable(out_dir, field)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.staging-"))
    try:
        (staging / "spec.toml").write_text(tomli_w.dumps(result.spec.to_dict()))
        (staging / "metrics.csv").write_text(metrics_csv(result.records))
        if result.links:
            (staging / "links.csv").write_text(links_csv(result.links))
        structure = {"partition": result.partition_summary, "protocols": result.structures}
        (staging / "tree.json").write_text(json.dumps(structure, indent=1) + "\n")
        if result.graph.number_of_nodes() <= WRITE_TOPOLOGY_UP_TO:
            write_graphml(result.graph, staging / topology_file(result.graph.number_of_nodes()))
        series = group_series(metric_rows(result.records))
        summary = render_summary(result.spec.to_dict(), series, result.structures, link_rows(result.links))
        (staging / "summary.md").write_text(summary)
        save_figure(convergence_figure(series, result.spec.name), staging / "convergence.png")
        for label, tree in result.structures.items():
            if "layers" in tree and len(tree["layers"][0]["clusters"]) > 1:
                draw_tree(result.graph, tree, staging / f"tree_{label}.png", title=f"{label} aggregation tree")
        write_marker(staging, "run", [p.name for p in staging.iterdir()], spec_sha256(result.spec.to_dict()))
        check_replaceable(out_dir, field)  # again: the run took a while, and the folder may have changed
        _swap_into_place(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out_dir


def _swap_into_place(staging: Path, out_dir: Path) -> None:
    """Replace ``out_dir`` by ``staging``; the old folder is removed only after the rename, and an
    interrupt waits until both renames are done."""
    with interrupts_deferred():
        if out_dir.exists():
            retired = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
            os.replace(out_dir, retired)
            os.replace(staging, out_dir)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.replace(staging, out_dir)
