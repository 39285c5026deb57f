"""``etree tune``: each protocol's training settings chosen on the validation split, never the test set.

``etree tune SPEC --grid train.lr=0.01,0.05,0.1 --seeds 2`` runs every protocol of the spec
alone, once per grid value and seed, with that value as its own ``[[protocols]] train``
override, and keeps for each protocol the value with the best mean final
``validation_accuracy`` (of the models devices hold, on the split carved from the training
data; ties: the first value in the grid). It writes the tuned spec (``tuned.toml``, ready for
``etree run``) and ``tune.md``: the validation accuracy of every value, and the test accuracy of
the chosen value only (DESIGN: each baseline at its strongest setting, tuned on a validation
split; the test set only reports). ``--set`` overrides shape the tuning runs only (fewer rounds,
a smaller fleet): ``tuned.toml`` is SPEC itself with each protocol's chosen ``train`` added.
"""

from __future__ import annotations

import copy
import tomllib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tomli_w

from experiments.api import run
from experiments.run_folder import atomic_write_text, prepare_target, write_marker
from experiments.spec import SpecError, load_spec
from experiments.sweep_files import confidence

TUNABLE = ("lr", "local_epochs", "batch_size")
SCORE = "validation_accuracy"


def parse_tune_grid(items: Sequence[str]) -> dict[str, list[Any]]:
    """``train.KEY=V1,V2`` items as ``{KEY: [values]}``; only the training settings a protocol may override."""
    grid: dict[str, list[Any]] = {}
    for item in items:
        key, sep, values = item.partition("=")
        name = key.strip().removeprefix("train.")
        if not sep or name not in TUNABLE or not key.strip().startswith("train."):
            raise SpecError(f"--grid: got {item!r}; give train.KEY=V1,V2 with KEY one of: {', '.join(TUNABLE)}")
        parsed = [_value(v.strip()) for v in values.split(",") if v.strip()]
        if not parsed:
            raise SpecError(f"--grid: {key.strip()} has no values; give train.{name}=V1,V2")
        grid[name] = parsed
    if not grid:
        raise SpecError("--grid: give at least one train.KEY=V1,V2, e.g. --grid train.lr=0.01,0.05")
    return grid


Row = tuple[dict[str, Any], float, float, float]  # (setting, validation mean, its CI half-width, test mean)


def best_row(rows: list[Row]) -> Row:
    """The row of the highest validation mean, the first of equal bests; a diverged setting (NaN
    score) never wins, wherever it sits in the grid (plain ``max`` keeps a leading NaN)."""
    return max(rows, key=lambda row: row[1] if np.isfinite(row[1]) else -np.inf)


def tune(
    spec_path: Path,
    out: Path,
    *,
    grid: Sequence[str],
    seeds: int = 1,
    overrides: Sequence[str] = (),
    on_done: Callable[[str, int, int], None] | None = None,
) -> Path:
    """Tune every protocol of ``spec_path`` over ``grid``; write ``tuned.toml`` and ``tune.md`` into ``out``."""
    if seeds < 1:
        raise SpecError(f"--seeds: got {seeds}; must be >= 1")
    axes = parse_tune_grid(grid)
    spec = load_spec(spec_path, overrides)  # validates the spec and the overrides before any run
    if spec.data.validation_fraction <= 0:
        raise SpecError("data.validation_fraction: tuning scores the validation split; set it > 0 (default 0.1)")
    target = prepare_target(out, "--out", kinds=("tune",))
    base = spec.to_dict()
    combos = _product(axes)
    total = len(base["protocols"]) * len(combos) * seeds
    done = 0
    scores: dict[str, list[Row]] = {}
    for entry in base["protocols"]:
        label = entry.get("label", entry["name"])
        for combo in combos:
            finals, tests = [], []
            for k in range(seeds):
                table = copy.deepcopy(base)
                own = copy.deepcopy(entry)
                own["train"] = {**own.get("train", {}), **combo}
                table["protocols"] = [own]
                table["seed"] = spec.seed + k
                result = run(table)
                rows = result.metrics[(result.metrics["protocol"] == label)]
                last = rows[rows["round"] == rows["round"].max()]
                by_metric = dict(zip(last["metric"], last["value"], strict=True))
                if SCORE not in by_metric:
                    raise SpecError(f"protocols.{label}: reports no {SCORE}; tuning needs a labelled validation split")
                finals.append(float(by_metric[SCORE]))
                tests.append(float(by_metric.get("accuracy", float("nan"))))
                done += 1
                if on_done is not None:
                    on_done(f"{label} {combo} seed {spec.seed + k}", done, total)
            mean, half = confidence(np.array(finals))
            scores.setdefault(label, []).append((combo, float(mean), float(half), float(np.mean(tests))))
    chosen = {label: best_row(rows) for label, rows in scores.items()}
    raw = tomllib.loads(Path(spec_path).read_text(encoding="utf-8"))
    for entry in raw.get("protocols", []):
        label = entry.get("label", entry["name"])
        entry["train"] = {**entry.get("train", {}), **chosen[label][0]}
    atomic_write_text(target / "tuned.toml", tomli_w.dumps(raw))
    atomic_write_text(target / "tune.md", _report(spec.name, axes, seeds, scores, chosen))
    write_marker(target, "tune", ["tuned.toml", "tune.md"])
    return target


def _value(text: str) -> Any:
    """A grid value as TOML reads it (``0.05`` a float, ``10`` an int), as ``--set`` parses values."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(f"--grid: {text!r} is not a number") from exc


def _product(axes: dict[str, list[Any]]) -> list[dict[str, Any]]:
    combos: list[dict[str, Any]] = [{}]
    for name, values in axes.items():
        combos = [{**combo, name: value} for combo in combos for value in values]
    return combos


def _report(
    name: str,
    axes: dict[str, list[Any]],
    seeds: int,
    scores: dict[str, list[tuple[dict[str, Any], float, float, float]]],
    chosen: dict[str, tuple[dict[str, Any], float, float, float]],
) -> str:
    grid = ", ".join(f"train.{k} ∈ {{{', '.join(map(str, v))}}}" for k, v in axes.items())
    lines = [
        f"# Tuning {name}",
        "",
        f"{grid}; {seeds} seed(s) per value. Score: final {SCORE} (models devices hold, validation split"
        " carved from the training data), mean ± 95% CI. Test accuracy is shown for the chosen value only.",
        "",
        "| protocol | setting | validation accuracy | chosen | test accuracy |",
        "|---|---|---|---|---|",
    ]
    for label, rows in scores.items():
        for combo, mean, half, test in rows:
            pick = combo == chosen[label][0]
            setting = ", ".join(f"{k} = {v}" for k, v in combo.items())
            lines.append(
                f"| {label} | {setting} | {mean:.4f} ± {half:.4f} | {'yes' if pick else ''} "
                f"| {f'{test:.4f}' if pick else '—'} |"
            )
    return "\n".join(lines) + "\n"
