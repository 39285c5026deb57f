"""Writing a run folder: every file complete or absent, never half-written.

The folder is assembled in a temporary sibling and swapped into place only
when every file is written, so a failed run leaves the previous results of the
same name untouched. The summary and plots are computed from the run's rows in
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
from experiments.metrics_file import LinkRow, MetricRow, group_series
from experiments.runner import RunOutput
from experiments.summary import render_summary
from topologies import write_graphml

GZIP_TOPOLOGY_ABOVE = 20_000  # nodes; 100,000 nodes are 183 MB of graphml, 20 MB gzipped (+20% write time)


def topology_file(nodes: int) -> str:
    """``topology.graphml``, gzipped for large networks (``etree``'s graphml loader reads both)."""
    return "topology.graphml.gz" if nodes > GZIP_TOPOLOGY_ABOVE else "topology.graphml"


METRIC_COLUMNS = ("protocol", "round", "sim_time_s", "bytes_sent", "metric", "value")
LINK_COLUMNS = ("protocol", "u", "v", "messages", "bytes_sent")


def atomic_write_text(path: Path, text: str) -> None:
    """Write a file via a temporary file in the same folder and ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", newline="") as handle:
            handle.write(text)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


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


def write_run(result: RunOutput, out_dir: Path) -> Path:
    """Write ``spec.toml``, ``metrics.csv``, ``links.csv``, ``tree.json``, ``topology.graphml[.gz]``,
    ``summary.md`` and plots."""
    from experiments.plots import convergence_figure, save_figure
    from experiments.tree_view import draw_tree

    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.staging-"))
    try:
        (staging / "spec.toml").write_text(tomli_w.dumps(result.spec.to_dict()))
        (staging / "metrics.csv").write_text(metrics_csv(result.records))
        if result.links:
            (staging / "links.csv").write_text(links_csv(result.links))
        structure = {"partition": result.partition_summary, "protocols": result.structures}
        (staging / "tree.json").write_text(json.dumps(structure, indent=1) + "\n")
        write_graphml(result.graph, staging / topology_file(result.graph.number_of_nodes()))
        series = group_series(metric_rows(result.records))
        summary = render_summary(result.spec.to_dict(), series, result.structures, link_rows(result.links))
        (staging / "summary.md").write_text(summary)
        save_figure(convergence_figure(series, result.spec.name), staging / "convergence.png")
        for label, tree in result.structures.items():
            if "layers" in tree and len(tree["layers"][0]["clusters"]) > 1:
                draw_tree(result.graph, tree, staging / f"tree_{label}.png", title=f"{label} aggregation tree")
        _swap_into_place(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out_dir


def _swap_into_place(staging: Path, out_dir: Path) -> None:
    """Replace ``out_dir`` by ``staging``; the old folder is removed only after the rename."""
    if out_dir.exists():
        retired = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
        os.replace(out_dir, retired)
        os.replace(staging, out_dir)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        os.replace(staging, out_dir)
