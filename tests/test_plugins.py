"""Plug-ins: a user's module of every kind runs through the CLI and the API, and really is what runs."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import networkx as nx
import numpy as np
import pandas as pd
import pytest
import tomli_w
import torch
from helpers import tiny_spec_with
from sklearn.datasets import load_digits
from torch import nn

import etree
from clients.classification.fleet import pack_fleet
from clients.classification.models import MODELS
from clients.classification.training import dense_layers, train_classifier
from clients.datasets import DATASETS
from clients.params import init_params, replicate
from clients.partition import PARTITIONERS
from clients.train_config import TrainConfig, epoch_order
from etree.engine.registry import PROTOCOLS
from experiments.cli import main
from topologies import TOPOLOGIES

MODULE = "etree_plugin_for_tests"
PLUGIN = '''
"""One plug-in of every kind; each leaves a trace in the run that uses it."""

import math

import networkx as nx
import numpy as np
import torch
from torch import nn

import etree
from clients.classification.datasets import Dataset
from clients.params import replicate


class TanhNet(nn.Module):
    def __init__(self, features, num_classes, hidden):
        super().__init__()
        self.plug_hidden = nn.Linear(features, hidden)
        self.plug_out = nn.Linear(hidden, num_classes)

    def forward(self, x):
        return self.plug_out(torch.tanh(self.plug_hidden(x.flatten(1))))


@etree.register_model("plug_tanh")
def plug_tanh(input_shape: tuple[int, ...], num_classes: int, *, hidden: int = 8) -> nn.Module:
    return TanhNet(math.prod(input_shape), num_classes, hidden)


@etree.register_dataset("plug_blobs")
def plug_blobs(*, seed: int, devices: int, samples: int = 600) -> Dataset:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, samples).astype(np.int64)
    x = (4 * np.eye(3, 5)[y] + rng.normal(size=(samples, 5))).astype(np.float32)
    cut = samples * 3 // 4
    return Dataset("plug_blobs", x[:cut], y[:cut], x[cut:], y[cut:], num_classes=3)


@etree.register_partitioner("plug_round_robin")
def plug_round_robin(labels: np.ndarray, devices: int, *, unused: int = 0) -> np.ndarray:
    owner = np.arange(len(labels)) % devices
    owner[:unused] = -1
    return owner


@etree.register_topology("plug_ring")
def plug_ring(devices: int, *, seed: int, latency_s: float = 0.002) -> nx.Graph:
    graph = nx.cycle_graph(devices)
    for node in graph:
        angle = 2 * math.pi * node / devices
        graph.nodes[node].update(pos=(math.cos(angle), math.sin(angle)), compute_flops=1e9, role="device")
    nx.set_edge_attributes(graph, latency_s, "latency_s")
    nx.set_edge_attributes(graph, 1e8, "bandwidth_bps")
    return graph


class LocalOnly(etree.Protocol):
    def setup(self, workload):
        self.workload = workload
        self.params = replicate(workload.initial, workload.devices)

    def run_round(self, round_index):
        self.params = self.workload.train_devices(self.params, torch.arange(self.workload.devices), round_index)
        return etree.RoundCost(duration_s=0.01, bytes_sent=0, messages=0, events={"plug_rounds": 1.0})

    def evaluation_models(self):
        return {name: tensor.mean(0, keepdim=True) for name, tensor in self.params.items()}

    def structure(self):
        return {"parameters": sorted(self.workload.initial)}


@etree.register_protocol("plug_local")
def plug_local(label: str) -> etree.Protocol:
    return LocalOnly(label)
'''
REGISTERED = [
    (MODELS, "plug_tanh"),
    (DATASETS, "plug_blobs"),
    (PARTITIONERS, "plug_round_robin"),
    (TOPOLOGIES, "plug_ring"),
    (PROTOCOLS, "plug_local"),
]
SPEC = {
    "name": "plugged",
    "seed": 1,
    "rounds": 3,
    "plugins": {"modules": [MODULE]},
    "topology": {"kind": "plug_ring", "devices": 10, "latency_s": 0.003},
    "data": {"dataset": "plug_blobs", "partition": "plug_round_robin", "unused": 50},
    "model": {"kind": "plug_tanh", "hidden": 6},
    "train": {"lr": 0.1, "batch_size": 8},
    "protocols": [{"name": "plug_local"}, {"name": "fedavg"}],
}


def _etree(*args: str, pythonpath: Path) -> subprocess.CompletedProcess[str]:
    """The installed ``etree`` command, with ``pythonpath`` where a user would put their plug-ins."""
    env = os.environ | {"PYTHONPATH": str(pythonpath), "PYTHONWARNINGS": "ignore"}
    command = [str(Path(sys.executable).with_name("etree")), *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, cwd=pythonpath, check=False)


@pytest.fixture
def plugin_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The plug-in module in a folder on ``sys.path``; its registrations are undone afterwards."""
    (tmp_path / f"{MODULE}.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    sys.modules.pop(MODULE, None)
    for registry, name in REGISTERED:
        if name in registry:
            del registry[name]


def test_a_plugin_of_every_kind_runs_through_the_cli_and_the_api(plugin_dir: Path) -> None:
    spec = plugin_dir / "plugged.toml"
    spec.write_text(tomli_w.dumps(SPEC))
    done = _etree("run", str(spec), "--out", str(plugin_dir / "run"), "--quiet", pythonpath=plugin_dir)
    assert done.returncode == 0, done.stderr
    run = plugin_dir / "run"

    tree = json.loads((run / "tree.json").read_text())
    parameters = ["plug_hidden.bias", "plug_hidden.weight", "plug_out.bias", "plug_out.weight"]
    assert tree["protocols"]["plug_local"] == {"parameters": parameters}  # the plugged protocol ran the plugged model
    assert tree["partition"]["dataset"] == "plug_blobs"
    # (450 - 45 carved off as the validation split - 50 unused) / 10
    assert tree["partition"]["samples_per_device"] == {"min": 35, "mean": 35.5, "max": 36}
    assert tree["partition"]["validation_samples"] == 45
    graph = nx.read_graphml(run / "topology.graphml")
    assert sorted(d for _, d in graph.degree()) == [2] * 10  # the ring
    assert {a["latency_s"] for *_, a in graph.edges(data=True)} == {0.003}  # with the spec's option
    assert "etree_plugin_for_tests" in (run / "spec.toml").read_text()  # the resolved spec names its plug-ins

    result = etree.run(spec, out=None)  # in this process, the [plugins] table imports the module
    pd.testing.assert_frame_equal(result.metrics, etree.load_run(run).metrics)
    plug_rounds = result.metrics.query("protocol == 'plug_local' and metric == 'plug_rounds'")
    assert plug_rounds["value"].tolist() == [1.0, 2.0, 3.0]  # the plugged protocol's own records, rounds 1-3
    accuracy = result.metrics.query("protocol == 'fedavg' and metric == 'accuracy'")["value"].tolist()
    assert accuracy[-1] > max(0.6, accuracy[0])  # a built-in protocol learns with the plugged model


BROKEN = "raise RuntimeError('boom')\n"


@pytest.mark.parametrize(
    ("plugins", "message"),
    [
        ({"modules": ["etree_no_such_plugin"]}, "plugins.modules: no module named 'etree_no_such_plugin'; put its"),
        ({"modules": ["etree_broken_plugin"]}, "plugins.modules: importing 'etree_broken_plugin' failed: RuntimeError"),
        ({"modules": ["my-plugins"]}, "plugins.modules: 'my-plugins' is not a module name"),
        ({"modules": "etree_broken_plugin"}, "plugins.modules: got 'etree_broken_plugin'; expected an array"),
        ({"module": []}, "plugins.module: unknown key; allowed: modules"),
    ],
)
def test_a_plugin_that_cannot_load_is_one_error_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], plugins: Any, message: str
) -> None:
    (tmp_path / "etree_broken_plugin.py").write_text(BROKEN)
    monkeypatch.syspath_prepend(str(tmp_path))
    spec = tmp_path / "spec.toml"
    spec.write_text(tomli_w.dumps(tiny_spec_with(plugins=plugins)))
    assert main(["run", str(spec), "--out", str(tmp_path / "run"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {message}") and err.count("\n") == 1
    assert not (tmp_path / "run").exists()


def test_list_names_plugins_and_installed_entry_points(tmp_path: Path) -> None:
    """``--plugins`` imports a module; a package's ``etree.plugins`` entry point loads by itself."""
    (tmp_path / f"{MODULE}.py").write_text(PLUGIN)
    (tmp_path / "etree_entry_point_plugin.py").write_text(
        "import etree\n\n@etree.register_topology('entry_point_ring')\n"
        "def ring(devices: int, *, seed: int, hops: int = 1):\n    raise NotImplementedError\n"
    )
    info = tmp_path / "etree_entry_point_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: etree-entry-point-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[etree.plugins]\nring = etree_entry_point_plugin\n")

    done = _etree("list", "topologies", "--plugins", MODULE, pythonpath=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "  plug_ring\n      latency_s: float = 0.002\n" in done.stdout
    assert "  entry_point_ring\n      hops: int = 1\n" in done.stdout
    missing = _etree("list", "--plugins", "etree_no_such_plugin", pythonpath=tmp_path)
    assert missing.returncode == 2 and missing.stderr.startswith("error: --plugins: no module named")


class TanhNet(nn.Module):
    """A module of the user's own: not a Sequential."""

    def __init__(self) -> None:
        super().__init__()
        self.hidden = nn.Linear(64, 12)
        self.out = nn.Linear(12, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(self.hidden(x)))


class DoubledLinear(nn.Linear):
    """A Linear subclass that computes something else: the dense fast path would get it wrong."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 2 * super().forward(x)


@pytest.mark.parametrize(
    "make",
    [
        TanhNet,
        lambda: nn.Sequential(nn.Flatten(), DoubledLinear(64, 12), nn.ReLU(), nn.Linear(12, 10)),
        lambda: nn.Sequential(nn.ReLU(), nn.Linear(64, 12), nn.Linear(12, 10)),  # ReLU where no layer is between
        lambda: nn.Sequential(nn.Flatten(), nn.Linear(64, 12), nn.Tanh(), nn.Linear(12, 10)),
    ],
)
def test_a_plugged_model_trains_like_a_per_device_loop(make: Any) -> None:
    """Modules the dense fast path does not compute take the generic path and train exactly."""
    x, y = load_digits(return_X_y=True)
    x = (x / 16).astype(np.float32)
    parts = [np.arange(d * 15, d * 15 + 9 + d) for d in range(6)]  # unequal sizes
    fleet, model = pack_fleet(x, y, parts), make()
    assert dense_layers(model) is None
    initial = init_params(model, seed=3)
    config = TrainConfig(lr=0.1, local_epochs=2, batch_size=4)
    batched = train_classifier(model, replicate(initial, 6), fleet, torch.arange(6), config, seed=5, round_index=1)
    for d, part in enumerate(parts):
        alone = make()
        alone.load_state_dict(initial)
        optimizer = torch.optim.SGD(alone.parameters(), lr=config.lr)
        n = len(part)
        for epoch in range(config.local_epochs):
            order = epoch_order(5, 1, epoch, np.array([d]), np.array([n]), fleet.capacity)[0][:n]
            for start in range(0, n, config.batch_size):
                rows = order[start : start + config.batch_size]
                optimizer.zero_grad()
                nn.functional.cross_entropy(alone(fleet.x[d, rows]), fleet.y[d, rows]).backward()
                optimizer.step()
        for name, tensor in alone.state_dict().items():
            assert torch.allclose(batched[name][d], tensor, atol=1e-5), (d, name)
            assert not math.isclose(float((tensor - initial[name]).abs().max()), 0.0)  # it did train
