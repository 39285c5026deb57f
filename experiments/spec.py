"""Experiment specs: TOML files loaded into typed, frozen config objects.

Strict like nanoGPT's configurator: an unknown key or a value of the wrong type
fails here with the dotted name of the field. Tables that configure a
registered component (``[topology]``, ``[data]``, ``[model]``, ``[[protocols]]``)
pass their extra keys through as that component's options; the component's
registry checks those names before anything runs, except a ``[[protocols]]``
table's ``train = {lr = ..., local_epochs = ..., batch_size = ...}``: that
protocol's own ``[train]`` values, checked here. The resolved spec is saved by
serialising these objects (``to_dict``), never from a hand-kept field list.

``[network]`` (optional) is ``etree.network.conditions.NetworkConditions``: timing,
contention, compression, faults and heterogeneity, e.g.::

    [network]
    contention = true
    dropout = 0.1                    # per device per round
    deadline_s = 2.0                 # late uploads dropped, or late = "stale"
    detection_timeout_s = 1.0
    compute_flops = {kind = "lognormal", median = 1e9, sigma = 0.5}
    bandwidth_bps = {kind = "uniform", low = 5e6, high = 2e7}
    crash = [{at_s = 30.0, node = "server"}, {at_s = 40.0, node = "root", protocol = "etree"}]

``[backend]`` (optional) is where local training runs (``etree.backends.local``): ``local``
(this process, the default) or ``ray`` (device shards on ``workers`` Ray actors; a
private loopback Ray when ``address`` is empty, else ``ray.init(address=...)``)::

    [backend]
    kind = "ray"
    workers = 2
    address = ""                     # "auto": the cluster of `ray start --head` on this machine

``[plugins]`` (optional) names modules of the user's own factories (``experiments.plugins``),
imported before the rest of the spec is read, so the spec can name what they register::

    [plugins]
    modules = ["my_package.my_module"]

``[sweep]`` (optional) is the grid ``etree sweep`` runs (:class:`SweepPlan`), so one
file describes a whole study; ``etree run`` validates it and runs the spec alone::

    [sweep]
    seeds = 3
    [sweep.grid]
    "topology.kind" = ["waxman", "grid_2d"]
    "protocols.etree.groups" = [[4, 1], [8, 1]]
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from etree.backends import BACKENDS
from etree.core.errors import EtreeError
from etree.network.conditions import (
    CRASH_ROLES,
    DISTRIBUTIONS,
    LATE_POLICIES,
    Crash,
    Distribution,
    NetworkConditions,
)
from experiments.plugins import load_plugins


class SpecError(EtreeError):
    """A spec that cannot be run; the message names the field and the rule."""


@dataclass(frozen=True)
class TopologySpec:
    kind: str = "random_geometric"
    devices: int = 100
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class DataSpec:
    dataset: str = "digits"
    partition: str = "pathological"
    alpha: float = 0.5
    classes_per_device: int = 4
    min_partition_size: int = 1
    validation_fraction: float = 0.1  # carved from the training data before partitioning (classification)
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelSpec:
    kind: str = "softmax"
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TrainSpec:
    lr: float = 0.02
    local_epochs: int = 1
    batch_size: int = 1


@dataclass(frozen=True)
class BackendSpec:
    kind: str = "local"  # etree.backends.local.BACKENDS
    workers: int = 2  # Ray actors, one contiguous device shard each (kind = "ray")
    address: str = ""  # "" = a private loopback Ray on this machine; else ray.init(address=...)


@dataclass(frozen=True)
class ProtocolSpec:
    """One ``[[protocols]]`` table; ``train`` holds the ``[train]`` values this protocol overrides."""

    name: str
    label: str
    options: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PluginsSpec:
    modules: tuple[str, ...] = ()  # imported in order before the spec is validated


@dataclass(frozen=True)
class Spec:
    name: str = "experiment"
    seed: int = 0
    rounds: int = 30
    eval_every: int = 1
    topology: TopologySpec = field(default_factory=TopologySpec)
    data: DataSpec = field(default_factory=DataSpec)
    model: ModelSpec = field(default_factory=ModelSpec)
    train: TrainSpec = field(default_factory=TrainSpec)
    protocols: tuple[ProtocolSpec, ...] = ()
    network: NetworkConditions = field(default_factory=NetworkConditions)
    backend: BackendSpec = field(default_factory=BackendSpec)
    plugins: PluginsSpec = field(default_factory=PluginsSpec)

    def to_dict(self) -> dict[str, Any]:
        """The resolved spec as TOML-ready data (options folded back into their tables; ``plugins``
        only when there are any, so a spec without them saves as it always did)."""
        out: dict[str, Any] = {
            "name": self.name,
            "seed": self.seed,
            "rounds": self.rounds,
            "eval_every": self.eval_every,
        }
        if self.plugins.modules:
            out["plugins"] = {"modules": list(self.plugins.modules)}
        for section in ("topology", "data", "model", "train"):
            out[section] = _table(getattr(self, section))
        out["network"] = _network_table(self.network)
        out["backend"] = _table(self.backend)
        out["protocols"] = [_protocol_table(p) for p in self.protocols]
        return out


def _protocol_table(protocol: ProtocolSpec) -> dict[str, Any]:
    """A ``[[protocols]]`` table: name, label, its ``train`` overrides (only when it has some), options."""
    table: dict[str, Any] = {"name": protocol.name, "label": protocol.label}
    if protocol.train:
        table["train"] = dict(protocol.train)
    table.update(protocol.options)
    return table


def _network_table(network: NetworkConditions) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in dataclasses.fields(network):
        value = getattr(network, f.name)
        if isinstance(value, Distribution):
            value = {k: getattr(value, k) for k in ("kind", *_DISTRIBUTION_KEYS[value.kind])}
        elif f.name == "crash":
            value = [{k: v for k, v in dataclasses.asdict(c).items() if v != ""} for c in value]
        out[f.name] = value
    return out


def _table(config: Any) -> dict[str, Any]:
    table = {f.name: getattr(config, f.name) for f in dataclasses.fields(config) if f.name != "options"}
    table.update(getattr(config, "options", {}))
    return table


@dataclass(frozen=True)
class SweepPlan:
    """A spec's ``[sweep]`` table: the settings grid and seed count of ``etree sweep``.

    Not part of a run's resolved spec: a run is one point of the grid, and its
    ``spec.toml`` holds that point's values. ``grid`` keeps each axis as its
    dotted key and one ``--set`` override text per value, in file order.
    """

    grid: tuple[tuple[str, tuple[str, ...]], ...] = ()
    seeds: int | None = None
    # [sweep.tune]: each setting's protocols tuned (etree tune) before its runs; grid items as
    # ``train.KEY=V1,V2`` texts, ``--set`` overrides of the tuning runs only, seeds per value
    tune: tuple[str, ...] = ()
    tune_set: tuple[str, ...] = ()
    tune_seeds: int = 1


# -- loading ------------------------------------------------------------------
_POSITIVE = {"devices", "rounds", "eval_every", "local_epochs", "batch_size", "lr", "alpha", "classes_per_device"}
_FLOAT32 = {"lr"}  # multiplies float32 tensors: a larger value overflows there
FLOAT32_MAX = 3.4028234663852886e38
NAME_RULE = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,199}")


def _typed(value: Any, expected: type, path: str) -> Any:
    """Check one scalar against its declared type; ints are accepted where floats are."""
    ok = (
        isinstance(value, int) and not isinstance(value, bool)
        if expected is int
        else isinstance(value, (int, float)) and not isinstance(value, bool)
        if expected is float
        else isinstance(value, expected)
    )
    if not ok:
        raise SpecError(f"{path}: expected {expected.__name__}, got {type(value).__name__} {value!r}")
    if expected is float and not math.isfinite(value):
        raise SpecError(f"{path}: got {value}; must be a finite number")
    if expected in (int, float) and path.rsplit(".", 1)[-1] in _POSITIVE and value <= 0:
        raise SpecError(f"{path}: got {value}; must be > 0")
    if path.rsplit(".", 1)[-1] in _FLOAT32 and value > FLOAT32_MAX:
        raise SpecError(f"{path}: got {value}; must be at most {FLOAT32_MAX:.3g} (training runs in float32)")
    if path.endswith("min_partition_size") and value < 0:
        raise SpecError(f"{path}: got {value}; must be >= 0")
    return float(value) if expected is float else value


def _build(cls: type, table: Mapping[str, Any], path: str, *, open_options: bool) -> Any:
    """Instantiate a section dataclass from its TOML table, checking every key."""
    if not isinstance(table, Mapping):
        raise SpecError(f"{path}: expected a table, got {type(table).__name__}")
    known = {f.name: f for f in dataclasses.fields(cls) if f.name != "options"}
    values: dict[str, Any] = {}
    options: dict[str, Any] = {}
    for key, value in table.items():
        if key in known:
            values[key] = _typed(value, _scalar_type(known[key].type), f"{path}.{key}")
        elif open_options:
            options[key] = value
        else:
            raise SpecError(f"{path}.{key}: unknown key; allowed: {', '.join(sorted(known))}")
    if open_options:
        values["options"] = options
    try:
        return cls(**values)
    except TypeError as exc:  # a required field is missing
        missing = [n for n, f in known.items() if n not in values and f.default is dataclasses.MISSING]
        raise SpecError(f"{path}.{missing[0] if missing else '?'}: required") from exc


def _scalar_type(annotation: Any) -> type:
    return {"str": str, "int": int, "float": float, "bool": bool}[str(annotation)]


_DISTRIBUTION_KEYS: dict[str, tuple[str, ...]] = {
    "topology": (),
    "fixed": ("value",),
    "uniform": ("low", "high"),
    "lognormal": ("median", "sigma"),
}
_NETWORK_SCALARS: dict[str, type] = {
    "timing": bool,
    "contention": bool,
    "compression": float,
    "dropout": float,
    "deadline_s": float,
    "late": str,
    "detection_timeout_s": float,
    "trace": str,
}


def _distribution(value: Any, path: str) -> Distribution:
    """A per-device distribution: a number (fixed) or a table with ``kind`` and its parameters."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        value = {"kind": "fixed", "value": value}
    if not isinstance(value, Mapping):
        raise SpecError(f'{path}: expected a number or a table such as {{kind = "uniform", low = 1, high = 2}}')
    kind = value.get("kind")
    if kind not in DISTRIBUTIONS:
        raise SpecError(f"{path}.kind: got {kind!r}; choose one of: {', '.join(DISTRIBUTIONS)}")
    allowed = _DISTRIBUTION_KEYS[kind]
    params: dict[str, float] = {}
    for key, item in value.items():
        if key == "kind":
            continue
        if key not in allowed:
            raise SpecError(f"{path}.{key}: unknown key for kind {kind!r}; allowed: kind, {', '.join(allowed) or '-'}")
        params[key] = _typed(item, float, f"{path}.{key}")
    for key in allowed:
        if key not in params:
            raise SpecError(f"{path}.{key}: required for kind {kind!r}")
    for key in ("value", "low", "median"):
        if key in params and params[key] <= 0:
            raise SpecError(f"{path}.{key}: got {params[key]}; must be > 0")
    if kind == "uniform" and params["high"] < params["low"]:
        raise SpecError(f"{path}.high: got {params['high']}; must be >= low ({params['low']})")
    if kind == "lognormal" and params["sigma"] < 0:
        raise SpecError(f"{path}.sigma: got {params['sigma']}; must be >= 0")
    return Distribution(kind, **params)


def _crashes(value: Any) -> tuple[Crash, ...]:
    if not isinstance(value, Sequence) or isinstance(value, str):
        raise SpecError('network.crash: expected an array of tables, e.g. [{at_s = 30.0, node = "server"}]')
    out = []
    for index, table in enumerate(value):
        path = f"network.crash[{index}]"
        if not isinstance(table, Mapping):
            raise SpecError(f'{path}: expected a table such as {{at_s = 30.0, node = "server"}}')
        for key in table:
            if key not in ("at_s", "node", "protocol"):
                raise SpecError(f"{path}.{key}: unknown key; allowed: at_s, node, protocol")
        for key in ("at_s", "node"):
            if key not in table:
                raise SpecError(f"{path}.{key}: required")
        at_s = _typed(table["at_s"], float, f"{path}.at_s")
        if at_s < 0:
            raise SpecError(f"{path}.at_s: got {at_s}; must be >= 0")
        node = table["node"]
        is_id = isinstance(node, int) and not isinstance(node, bool)
        if not (is_id and node >= 0) and node not in CRASH_ROLES:
            raise SpecError(f"{path}.node: got {node!r}; use a node id >= 0 or one of: {', '.join(CRASH_ROLES)}")
        out.append(Crash(at_s, node, _typed(table.get("protocol", ""), str, f"{path}.protocol")))
    return tuple(out)


def _network(table: Any) -> NetworkConditions:
    """The ``[network]`` table, strictly: unknown keys and out-of-range values name their field."""
    if not isinstance(table, Mapping):
        raise SpecError(f"network: expected a table, got {type(table).__name__}")
    values: dict[str, Any] = {}
    allowed = sorted([*_NETWORK_SCALARS, "compute_flops", "bandwidth_bps", "crash"])
    for key, value in table.items():
        path = f"network.{key}"
        if key in _NETWORK_SCALARS:
            values[key] = _typed(value, _NETWORK_SCALARS[key], path)
        elif key in ("compute_flops", "bandwidth_bps"):
            values[key] = _distribution(value, path)
        elif key == "crash":
            values[key] = _crashes(value)
        else:
            raise SpecError(f"{path}: unknown key; allowed: {', '.join(allowed)}")
    network = NetworkConditions(**values)
    rules = [
        ("compression", network.compression >= 0.01, "must be >= 0.01 (bytes on the wire = model bytes / compression)"),
        ("dropout", 0 <= network.dropout < 1, "must be in [0, 1)"),
        ("deadline_s", network.deadline_s >= 0, "must be >= 0 (0: no deadline)"),
        ("late", network.late in LATE_POLICIES, f"choose one of: {', '.join(LATE_POLICIES)}"),
        ("detection_timeout_s", network.detection_timeout_s > 0, "must be > 0"),
    ]
    for key, ok, rule in rules:
        if not ok:
            raise SpecError(f"network.{key}: got {getattr(network, key)!r}; {rule}")
    if not network.timing:
        for key, used in (("crash", bool(network.crash)), ("deadline_s", network.deadline_s > 0)):
            if used:
                raise SpecError(f"network.{key}: needs simulated time; remove it or set network.timing = true")
    return network


def _data(table: Any) -> DataSpec:
    """The ``[data]`` table; ``validation_fraction`` is a share of the training data, in [0, 1)."""
    data: DataSpec = _build(DataSpec, table, "data", open_options=True)
    if not 0 <= data.validation_fraction < 1:
        raise SpecError(
            f"data.validation_fraction: got {data.validation_fraction}; must be in [0, 1) "
            f"(the share of the training data carved off as the validation split)"
        )
    return data


_TRAIN_OVERRIDES: dict[str, type] = {f.name: _scalar_type(f.type) for f in dataclasses.fields(TrainSpec)}


def _protocol_train(value: Any, path: str) -> dict[str, Any]:
    """A ``[[protocols]]`` table's ``train = {lr = ..., local_epochs = ..., batch_size = ...}``: the
    ``[train]`` values this protocol uses instead, each checked as ``[train]`` checks it."""
    if not isinstance(value, Mapping):
        raise SpecError(f"{path}: expected a table such as {{lr = 0.05, local_epochs = 2, batch_size = 10}}")
    out: dict[str, Any] = {}
    for key, item in value.items():
        if key not in _TRAIN_OVERRIDES:
            raise SpecError(f"{path}.{key}: unknown key; allowed: {', '.join(sorted(_TRAIN_OVERRIDES))}")
        out[key] = _typed(item, _TRAIN_OVERRIDES[key], f"{path}.{key}")
    return out


def _backend(table: Any) -> BackendSpec:
    """The ``[backend]`` table, strictly: unknown keys and bad values name their field."""
    backend = _build(BackendSpec, table, "backend", open_options=False)
    if backend.kind not in BACKENDS:
        raise SpecError(f"backend.kind: got {backend.kind!r}; choose one of: {', '.join(BACKENDS)}")
    if backend.workers < 1:
        raise SpecError(f"backend.workers: got {backend.workers}; must be >= 1 (Ray actors, one device shard each)")
    if backend.address and backend.kind != "ray":
        raise SpecError(
            f'backend.address: got {backend.address!r}; only kind = "ray" uses it (set it, or remove address)'
        )
    return backend


def _plugins(table: Any) -> PluginsSpec:
    """The ``[plugins]`` table: ``modules``, an array of module names."""
    if not isinstance(table, Mapping):
        raise SpecError(f"plugins: expected a table, got {type(table).__name__}")
    for key in table:
        if key != "modules":
            raise SpecError(f"plugins.{key}: unknown key; allowed: modules")
    modules = table.get("modules", [])
    if not isinstance(modules, list | tuple) or not all(isinstance(m, str) for m in modules):
        raise SpecError(f'plugins.modules: got {modules!r}; expected an array of module names, e.g. ["my_module"]')
    return PluginsSpec(tuple(modules))


def spec_from_dict(raw: Mapping[str, Any], *, default_name: str = "experiment") -> Spec:
    """Validate a parsed TOML document into a ``Spec``, after importing its plug-ins (and the
    installed packages' ones), so that what they register is known by the time it is named."""
    plugins = _plugins(raw.get("plugins", {}))
    load_plugins(plugins.modules)
    sections = {"topology": TopologySpec, "data": DataSpec, "model": ModelSpec, "train": TrainSpec}
    scalars = {"name": str, "seed": int, "rounds": int, "eval_every": int}
    values: dict[str, Any] = {"name": default_name, "plugins": plugins}
    for key, value in raw.items():
        if key == "plugins":
            continue
        if key in scalars:
            values[key] = _typed(value, scalars[key], key)
            if key == "seed" and value < 0:
                raise SpecError(f"seed: got {value}; must be >= 0")
            if key == "name":
                _check_name(value)
        elif key == "data":
            values[key] = _data(value)
        elif key in sections:
            values[key] = _build(sections[key], value, key, open_options=key != "train")
        elif key == "protocols":
            values[key] = _protocols(value)
        elif key == "network":
            values[key] = _network(value)
        elif key == "backend":
            values[key] = _backend(value)
        elif key == "sweep":
            sweep_plan(value)  # checked here so a typo fails for `etree run` too; not part of the run
        else:
            allowed = sorted([*scalars, *sections, "backend", "network", "plugins", "protocols", "sweep"])
            raise SpecError(f"{key}: unknown key; allowed top-level keys: {', '.join(allowed)}")
    if not values.get("protocols"):
        raise SpecError("protocols: at least one [[protocols]] table with a 'name' is required")
    labels = [p.label for p in values["protocols"]]
    if values.get("backend", BackendSpec()).kind == "ray" and any(p.name == "flower" for p in values["protocols"]):
        raise SpecError(
            'backend.kind: "ray" cannot run the flower protocol (Flower starts and stops its own Ray); '
            'run flower in a spec with backend.kind = "local"'
        )
    for index, crash in enumerate(values["network"].crash if "network" in values else ()):
        if crash.protocol and crash.protocol not in labels:
            raise SpecError(
                f"network.crash[{index}].protocol: no protocol labelled {crash.protocol!r}; "
                f"the spec has: {', '.join(labels)}"
            )
    return Spec(**values)


def _check_name(name: str) -> None:
    """A run's name is the folder it writes under ``results/``: one plain folder name, so no name
    can point at ``results/`` itself, above it or at a hidden folder."""
    if not NAME_RULE.fullmatch(name):
        raise SpecError(
            f"name: got {name!r}; must be a plain folder name of letters, digits, '.', '_' and '-', "
            "not starting with '.' (at most 200 characters), e.g. name = \"my_run\" (without one, a spec "
            "is named after its file)"
        )


def _protocols(raw: Any) -> tuple[ProtocolSpec, ...]:
    if not isinstance(raw, Sequence) or isinstance(raw, str):
        raise SpecError("protocols: expected an array of tables ([[protocols]])")
    out: list[ProtocolSpec] = []
    for index, table in enumerate(raw):
        if not isinstance(table, Mapping) or "name" not in table:
            raise SpecError(f'protocols[{index}].name: required (e.g. name = "fedavg")')
        name = _typed(table["name"], str, f"protocols[{index}].name")
        label = _typed(table.get("label", name), str, f"protocols[{index}].label")
        if any(p.label == label for p in out):
            raise SpecError(f"protocols[{index}].label: {label!r} is used twice; give each protocol a unique label")
        options = {k: v for k, v in table.items() if k not in ("name", "label", "train")}
        train = _protocol_train(table["train"], f"protocols[{index}].train") if "train" in table else {}
        out.append(ProtocolSpec(name, label, options, train))
    return tuple(out)


def apply_overrides(raw: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``dotted.key=value`` overrides (values parsed as TOML, else kept as strings).

    ``protocols.<label>.<key>`` addresses the protocol with that label (or name), and
    ``protocols.<label>.train.<key>`` one of its ``train`` overrides.
    """
    for item in overrides:
        if "=" not in item:
            raise SpecError(f"--set {item!r}: expected dotted.key=value")
        dotted, text = item.split("=", 1)
        try:
            value = tomllib.loads(f"v = {text}")["v"]
        except tomllib.TOMLDecodeError:
            value = text
        _set_value(raw, dotted.strip(), value, f"--set {dotted}")
    return raw


def set_values(raw: dict[str, Any], values: Mapping[str, Any]) -> dict[str, Any]:
    """Apply typed overrides ``{dotted.key: value}`` (the Python API's ``overrides``) where
    ``--set`` would put them; the spec is validated afterwards, as after ``--set``."""
    for dotted, value in values.items():
        if not isinstance(dotted, str) or not dotted.strip():
            raise SpecError(f"overrides: key {dotted!r} is not a dotted spec key such as 'topology.devices'")
        _set_value(raw, dotted.strip(), value, f"overrides[{dotted!r}]")
    return raw


def _set_value(raw: dict[str, Any], dotted: str, value: Any, field: str) -> None:
    keys = dotted.split(".")
    target: dict[str, Any] = raw
    if keys[0] == "protocols" and len(keys) >= 3:
        matches = [p for p in raw.get("protocols", []) if p.get("label", p.get("name")) == keys[1]]
        if not matches:
            raise SpecError(f"{field}: no protocol labelled {keys[1]!r}")
        target, keys = matches[0], keys[2:]
    for key in keys[:-1]:
        nested = target.setdefault(key, {})
        if not isinstance(nested, dict):
            raise SpecError(f"{field}: {key!r} is not a table")
        target = nested
    target[keys[-1]] = value


def override_text(value: Any) -> str:
    """The ``--set`` text that :func:`apply_overrides` parses back to ``value``.

    A string stays bare when TOML would not parse it (``waxman``), as it would be typed
    on the command line, so folder names built from overrides read the same; anything
    else is written as a one-line TOML value (``[4,1]``, ``{"kind" = "fixed", "value" = 1.0}``).
    """
    if isinstance(value, str):
        try:
            tomllib.loads(f"v = {value}")
        except tomllib.TOMLDecodeError:
            return value
    return _inline_toml(value)


def _inline_toml(value: Any) -> str:
    if isinstance(value, str):
        return json.dumps(value)  # JSON's string escapes are valid in a TOML basic string
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ",".join(_inline_toml(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{json.dumps(k)} = {_inline_toml(v)}" for k, v in value.items()) + "}"
    raise SpecError(f"sweep.grid: value {value!r} ({type(value).__name__}) cannot be a spec value")


def sweep_plan(table: Any) -> SweepPlan:
    """Validate a ``[sweep]`` table: ``seeds`` (>= 1) and ``grid`` (dotted key = array of values).

    Grid keys may be quoted (``"topology.kind" = [...]``) or bare dotted keys, which TOML
    nests (``topology.kind = [...]``); both name the same ``--set`` key.
    """
    if not isinstance(table, Mapping):
        raise SpecError(f"sweep: expected a table, got {type(table).__name__}")
    for key in table:
        if key not in ("grid", "seeds", "tune"):
            raise SpecError(f"sweep.{key}: unknown key; allowed: grid, seeds, tune")
    seeds = None
    if "seeds" in table:
        seeds = _typed(table["seeds"], int, "sweep.seeds")
        if seeds < 1:
            raise SpecError(f"sweep.seeds: got {seeds}; must be >= 1")
    grid = table.get("grid", {})
    if not isinstance(grid, Mapping):
        raise SpecError('sweep.grid: expected a table such as {"data.alpha" = [0.1, 1.0]}')
    axes: list[tuple[str, tuple[str, ...]]] = []

    def walk(node: Mapping[str, Any], prefix: str) -> None:
        for key, value in node.items():
            dotted = f"{prefix}{key}"
            if isinstance(value, Mapping):
                walk(value, f"{dotted}.")
            elif not isinstance(value, list) or not value:
                raise SpecError(f"sweep.grid.{dotted}: got {value!r}; expected a non-empty array of values")
            else:
                axes.append((dotted, tuple(override_text(v) for v in value)))

    walk(grid, "")
    return SweepPlan(tuple(axes), seeds, *_tune_plan(table.get("tune", {})))


def _tune_plan(table: Any) -> tuple[tuple[str, ...], tuple[str, ...], int]:
    """``[sweep.tune]``: ``grid`` (``{"train.lr" = [...]}``), ``set`` (overrides of the tuning runs
    only, e.g. ``["rounds=10"]``) and ``seeds`` (per grid value, default 1)."""
    if not isinstance(table, Mapping):
        raise SpecError(f"sweep.tune: expected a table, got {type(table).__name__}")
    for key in table:
        if key not in ("grid", "set", "seeds"):
            raise SpecError(f"sweep.tune.{key}: unknown key; allowed: grid, set, seeds")
    grid = table.get("grid", {})
    if not isinstance(grid, Mapping):
        raise SpecError('sweep.tune.grid: expected a table such as {"train.lr" = [0.02, 0.05]}')
    flat = {f"train.{k}": v for k, v in grid.get("train", {}).items()} if isinstance(grid.get("train"), Mapping) else {}
    flat |= {k: v for k, v in grid.items() if k != "train"}
    items = []
    for key, values in flat.items():
        if not isinstance(values, list) or not values:
            raise SpecError(f"sweep.tune.grid.{key}: got {values!r}; expected a non-empty array of values")
        items.append(f"{key}={','.join(override_text(v) for v in values)}")
    overrides = table.get("set", [])
    if not isinstance(overrides, list) or not all(isinstance(o, str) and "=" in o for o in overrides):
        raise SpecError('sweep.tune.set: expected an array of KEY=VALUE texts, e.g. ["rounds=10"]')
    seeds = _typed(table.get("seeds", 1), int, "sweep.tune.seeds")
    if seeds < 1:
        raise SpecError(f"sweep.tune.seeds: got {seeds}; must be >= 1")
    return tuple(items), tuple(overrides), seeds


def _read_raw(path: str | os.PathLike[str]) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"spec: file '{path}' not found; pass a TOML spec such as experiments/default.toml")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        where = f"{exc.reason} at byte {exc.start}"
        raise SpecError(f"spec: '{path}' is not UTF-8 text ({where}); save it as UTF-8") from exc
    raw = _parse(text, f"'{path}'")
    raw.setdefault("name", path.stem)
    return raw


def _parse(text: str, origin: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(f"spec: {origin} is not valid TOML ({exc})") from exc


def raw_spec(source: str | os.PathLike[str] | Mapping[str, Any]) -> dict[str, Any]:
    """The unvalidated table of a spec given as a TOML file, a TOML text or a table (copied, so
    overrides never change the caller's). A string holding a newline or an ``=`` is TOML text
    (a file whose name has one is passed as a ``Path``); any other is a path, whose stem is
    the default name."""
    if isinstance(source, Mapping):
        return copy.deepcopy(dict(source))
    if isinstance(source, str) and ("\n" in source or "=" in source):
        return _parse(source, "the TOML text")
    if not isinstance(source, str | os.PathLike):
        raise SpecError(f"spec: got {type(source).__name__}; give a TOML file's path, a TOML text or a table")
    return _read_raw(source)


def load_sweep_plan(path: str | Path, overrides: Sequence[str] = ()) -> SweepPlan:
    """A spec file's ``[sweep]`` table (empty when it has none), after ``--set`` overrides."""
    return sweep_plan(apply_overrides(_read_raw(path), overrides).get("sweep", {}))


def load_spec(path: str | Path, overrides: Sequence[str] = ()) -> Spec:
    """Read, override and validate a spec file."""
    return spec_from_dict(apply_overrides(_read_raw(path), overrides), default_name=Path(path).stem)
