"""Sweeps: the product of spec settings and seeds, run in parallel, summarised with 95% CIs.

``etree sweep SPEC --grid data.alpha=0.1,1.0 --grid topology.kind=waxman,grid_2d --seeds 3``
runs every combination of grid values once per seed (seeds ``spec.seed + k``),
each as an ordinary run folder under ``<out>/<setting>/seed<k>/``, in separate
processes. The grid and seed count can also live in the spec's ``[sweep]``
table (:class:`experiments.spec.SweepPlan`), so one file describes a study;
``--grid`` replaces that table's axis of the same key or adds one, ``--seeds``
replaces its count.

A protocol whose inputs are the same in two settings (for FedAvg, a grid over
``protocols.etree.*``) is run once, in the first setting, and reused by the
others: the protocols of a run share nothing but their workload (common random
numbers), so the rerun would repeat it exactly. ``sweep.json`` records the
grid, the seeds and these reuses. Run folders keep their data (``spec.toml``,
``metrics.csv``, ``links.csv``, ``tree.json``, ``summary.md``) but not what is
redrawn from it or rebuilt from the spec: ``convergence.png`` (``etree plot``
on the run folder), tree drawings (``etree tree``) and ``topology.graphml``.

``summary.md`` gives, per setting and protocol, the final accuracy as mean ±
95% confidence half-width (Student t over seeds); ``sweep.png`` draws mean
curves with 95% bands; when the grid varies a tree protocol's ``groups``,
``study.png`` and ``study.md`` (:mod:`experiments.study_plot`) set final accuracy
and time to target against K. ``etree plot`` on the sweep folder redraws all
of them from the run folders alone.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

from experiments.run_folder import add_to_marker, atomic_write_text, batch_folder, relist_marker
from experiments.spec import Spec, SpecError, load_spec, load_sweep_plan
from experiments.sweep_files import SWEEP_FILE
from experiments.sweep_summary import summarise_sweep

REDRAWABLE = ("convergence.png", "tree_*.png", "topology.graphml*")  # dropped from a sweep's run folders
Axis = tuple[str, tuple[str, ...]]  # a dotted key and its values as --set texts


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


def parse_axes(items: Sequence[str]) -> list[Axis]:
    """``key=v1,v2`` items into grid axes (values kept as text, parsed like ``--set``)."""
    axes: list[Axis] = []
    for item in items:
        key, sep, values = item.partition("=")
        if not sep or not key or not values:
            raise SpecError(f"--grid {item!r}: expected dotted.key=value1,value2")
        axes.append((key, tuple(_split_values(values))))
    return axes


def merge_axes(base: Sequence[Axis], extra: Sequence[Axis]) -> list[Axis]:
    """``base`` with each axis of ``extra`` replacing the one of the same key, or appended."""
    merged = dict(base)
    merged.update(extra)
    return list(merged.items())


def grid_settings(axes: Sequence[Axis]) -> list[Setting]:
    """The product of the axes' values, first axis slowest."""
    options = [[f"{key}={value}" for value in values] for key, values in axes]
    return [Setting(tuple(combo)) for combo in itertools.product(*options)]


def parse_grid(items: Sequence[str]) -> list[Setting]:
    """``key=v1,v2`` items into the product of settings."""
    return grid_settings(parse_axes(items))


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


def only(spec: Spec, labels: Sequence[str]) -> Spec:
    """The spec with just the protocols labelled ``labels`` (and the crashes that concern them)."""
    protocols = tuple(p for p in spec.protocols if p.label in labels)
    crashes = tuple(c for c in spec.network.crash if c.protocol in ("", *labels))
    return dataclasses.replace(spec, protocols=protocols, network=dataclasses.replace(spec.network, crash=crashes))


def _run_one(spec_path: str, overrides: tuple[str, ...], folder: str, labels: tuple[str, ...]) -> str:
    """Worker: one run of the protocols ``labels``, one folder (top level so process pools can pickle it)."""
    from experiments.results import write_run
    from experiments.runner import run_spec

    out = write_run(run_spec(only(load_spec(spec_path, list(overrides)), labels)), Path(folder))
    for pattern in REDRAWABLE:
        for path in sorted(out.glob(pattern)):
            path.unlink()
    relist_marker(out)
    return str(out)


def run_sweep(
    spec_path: Path,
    out: Path,
    *,
    grid: Sequence[str] = (),
    seeds: int | None = None,
    jobs: int = 1,
    base_overrides: Sequence[str] = (),
    on_done: Callable[[str, int, int], None] | None = None,
    reference: str | None = None,
    tune: Sequence[str] = (),
    tune_overrides: Sequence[str] = (),
) -> Path:
    """Run every setting x seed (validating every spec and each setting's workload first, so bad input
    fails before any run).

    ``grid`` and ``seeds`` extend or replace the spec's ``[sweep]`` table (3 seeds if neither says).
    ``reference`` names the protocol the summary's paired tests compare every other one against.
    ``tune`` (``train.KEY=V1,V2`` items; default the spec's ``[sweep.tune]`` grid) first tunes each
    setting's protocols on its validation split (:func:`experiments.tune.tune`, into
    ``<setting>/tune/``, with ``tune_overrides`` or ``[sweep.tune] set`` shaping those runs only);
    the setting's runs then use its ``tuned.toml``: every method at its best, per workload.
    """
    from experiments.tune import parse_tune_grid

    plan = load_sweep_plan(spec_path, base_overrides)
    seeds = seeds if seeds is not None else plan.seeds or 3
    if seeds < 1:
        raise SpecError(f"--seeds: got {seeds}; must be >= 1")
    if jobs < 1:
        raise SpecError(f"--jobs: got {jobs}; must be >= 1")
    tune = list(tune) or list(plan.tune)
    tune_overrides = list(tune_overrides) or list(plan.tune_set)
    if tune:
        parse_tune_grid(tune)
    settings = grid_settings(merge_axes(plan.grid, parse_axes(grid)))
    base = load_spec(spec_path, list(base_overrides))
    if reference is not None and reference not in (p.label for p in base.protocols):
        known = ", ".join(p.label for p in base.protocols)
        raise SpecError(f"--reference: no protocol labelled {reference!r} in the spec; it has: {known}")
    seed_list = [base.seed + k for k in range(seeds)]
    for setting in settings:  # fail fast: tuning overrides and every setting's workload, before any run
        load_spec(spec_path, [*base_overrides, *setting.overrides, *tune_overrides])
    tasks, reused = _plan_runs({s.name: spec_path for s in settings}, settings, seed_list, base_overrides, out)
    with batch_folder(out, "sweep", [SWEEP_FILE, *(setting.name for setting in settings)], "--out"):
        record: dict[str, object] = {
            "spec": str(spec_path),
            "seeds": seed_list,
            "settings": {s.name: list(s.overrides) for s in settings},
            "reused": reused,
            "reference": reference,
        }
        if tune:
            jobs_list = [
                (
                    str(spec_path),
                    str(out / s.name / "tune"),
                    tuple(tune),
                    plan.tune_seeds,
                    (*base_overrides, *s.overrides, *tune_overrides),
                )
                for s in settings
            ]
            tuned = dict(zip((s.name for s in settings), _map(_tune_one, jobs_list, jobs, None), strict=True))
            tasks, reused = _plan_runs({k: Path(v) for k, v in tuned.items()}, settings, seed_list, base_overrides, out)
            record |= {"reused": reused, "tuned": {k: str(Path(v).relative_to(out)) for k, v in tuned.items()}}
        atomic_write_text(out / SWEEP_FILE, json.dumps(record, indent=1) + "\n")
        _map(_run_one, tasks, jobs, on_done)
        add_to_marker(out, [path.name for path in summarise_sweep(out)])
    return out


def _plan_runs(
    spec_paths: dict[str, Path],
    settings: Sequence[Setting],
    seed_list: Sequence[int],
    base_overrides: Sequence[str],
    out: Path,
) -> tuple[list[tuple[str, tuple[str, ...], str, tuple[str, ...]]], dict[str, dict[str, str]]]:
    """The run tasks of every setting (its spec file ``spec_paths[name]``) and the protocols reused
    from an earlier setting whose inputs are identical over all seeds."""
    from experiments.runner import check_workload

    tasks = []
    first_run: dict[str, str] = {}  # a protocol's resolved inputs over all seeds -> the setting that runs it
    reused: dict[str, dict[str, str]] = {}
    for setting in settings:
        path = spec_paths[setting.name]
        specs = {
            seed: load_spec(path, [*base_overrides, *setting.overrides, f"seed={seed}"])  # fail fast
            for seed in seed_list
        }
        check_workload(specs[seed_list[0]])  # a bad partition or topology file of any setting, before any run
        labels = []
        for protocol in specs[seed_list[0]].protocols:
            inputs = json.dumps([only(specs[seed], [protocol.label]).to_dict() for seed in seed_list], default=repr)
            if inputs in first_run:
                reused.setdefault(setting.name, {})[protocol.label] = first_run[inputs]
            else:
                first_run[inputs] = setting.name
                labels.append(protocol.label)
        if labels:
            for seed in seed_list:
                overrides = (*base_overrides, *setting.overrides, f"seed={seed}")
                tasks.append((str(path), overrides, str(out / setting.name / f"seed{seed}"), tuple(labels)))
    return tasks, reused


def _tune_one(spec_path: str, folder: str, grid: tuple[str, ...], seeds: int, overrides: tuple[str, ...]) -> str:
    """Worker: tune one setting's protocols; the path of its ``tuned.toml``."""
    from experiments.tune import tune

    return str(tune(Path(spec_path), Path(folder), grid=grid, seeds=seeds, overrides=overrides) / "tuned.toml")


def _map(
    work: Callable[..., str],
    tasks: Sequence[tuple[object, ...]],
    jobs: int,
    on_done: Callable[[str, int, int], None] | None,
) -> list[str]:
    """``work(*task)`` for every task, in ``jobs`` processes (each with one torch thread), in order."""
    if jobs == 1 or len(tasks) <= 1:
        finished: Iterable[str] = (work(*task) for task in tasks)
        return _report(finished, len(tasks), on_done)
    with ProcessPoolExecutor(max_workers=jobs, initializer=_one_torch_thread) as pool:
        try:
            return _report(pool.map(work, *zip(*tasks, strict=True)), len(tasks), on_done)
        except BaseException:  # Ctrl-C, SIGTERM, a failed run: the runs not started yet never start
            pool.shutdown(cancel_futures=True)
            raise


def _report(finished: Iterable[str], total: int, on_done: Callable[[str, int, int], None] | None) -> list[str]:
    """Consume the runs as they finish, telling ``on_done(folder, runs done, runs in all)``."""
    done = []
    for count, folder in enumerate(finished, start=1):
        done.append(folder)
        if on_done:
            on_done(folder, count, total)
    return done


def default_jobs() -> int:
    """One process per core (each with one torch thread: see :func:`_one_torch_thread`)."""
    return max(1, min(len(os.sched_getaffinity(0)), 4))


def _one_torch_thread() -> None:
    """Pool worker start-up: one torch thread per process, so ``jobs`` processes share the cores
    instead of oversubscribing them (on 2 shared, busy cores a 100-device run took 38 s with torch's
    default 2 threads and 3.6 s with 1, with byte-identical metrics)."""
    import torch

    torch.set_num_threads(1)
