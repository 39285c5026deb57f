"""FedProx, SCAFFOLD and FedNova pinned to their papers' definitions on small digits fleets:
FedProx with mu = 0 is FedAvg and with mu > 0 a per-device loop; SCAFFOLD's control variates follow
option II; FedNova with equal step counts is FedAvg and otherwise its normalized update; a SCAFFOLD
run resumed from a checkpoint continues exactly."""

from __future__ import annotations

import itertools
import json
import math
from typing import Any

import numpy as np
import pytest
import safetensors.torch
import torch
import torch.nn.functional as F
from helpers import Digits, recommender_workload, softmax_workload, tiny_spec_with
from torch.func import functional_call

from clients.classification.models import build_model
from clients.errors import ClientsError
from clients.params import ParamStack, init_params, replicate
from clients.train_config import TrainConfig, epoch_order, local_steps
from etree.core.errors import ProtocolError
from etree.engine.checkpoint import RunSnapshot, pack_state, unpack_state
from etree.engine.loop import run_protocol
from etree.engine.protocol import Protocol, Record
from etree.engine.sampling import participants
from etree.engine.workload import Workload
from etree.network.conditions import NetworkConditions
from etree.protocols import make_protocol
from etree.trees.hierarchical import TreeProtocol
from etree.trees.tree import star_tree
from experiments.cli import main
from experiments.runner import run_spec
from experiments.spec import spec_from_dict
from topologies import build_topology

SIZES = (13, 20, 31, 9)  # unequal local datasets: unequal step counts, a last partial batch


def fleet(digits: Digits, sizes: tuple[int, ...] = SIZES, **options: Any) -> Workload:
    """``len(sizes)`` devices holding ``sizes`` disjoint digits samples (batch 4, lr 0.05)."""
    bounds = np.cumsum((0, *sizes))
    parts = [np.arange(a, b) for a, b in itertools.pairwise(bounds)]
    graph = build_topology("random_geometric", len(sizes), seed=4)
    return softmax_workload(digits, parts, graph, **options)


def run(name: str, options: dict[str, Any], workload: Workload, rounds: int = 3) -> Protocol:
    protocol = make_protocol(name, name, options)
    list(run_protocol(protocol, workload, rounds=rounds, eval_every=rounds))
    return protocol


def params_of(protocol: Protocol) -> ParamStack:
    return protocol.params  # type: ignore[attr-defined,no-any-return]


def reference_sgd(
    workload: Workload,
    start: ParamStack,
    device: int,
    round_index: int,
    *,
    mu: float = 0.0,
    correction: ParamStack | None = None,
) -> ParamStack:
    """One device's local training written as a plain loop: its own batches (the counter-based
    order every trainer uses), autograd on the batch-mean loss, ``w -= lr (g + mu (w - w_0) + corr)``."""
    config, data = workload.train, workload.data
    n = int(data.counts[device])
    x, y = data.x[device, :n], data.y[device, :n]
    w = {name: t.clone().requires_grad_(True) for name, t in start.items()}
    for epoch in range(config.local_epochs):
        order = torch.from_numpy(epoch_order(workload.seed, round_index, epoch, np.array([device]), np.array([n]), n))
        for step in range(math.ceil(n / config.batch_size)):
            batch = order[0, step * config.batch_size : (step + 1) * config.batch_size]
            loss = F.cross_entropy(functional_call(workload.model, w, (x[batch],)), y[batch])
            grads = torch.autograd.grad(loss, list(w.values()))
            with torch.no_grad():
                for (name, tensor), grad in zip(w.items(), grads, strict=True):
                    extra = mu * (tensor - start[name]) + (0 if correction is None else correction[name])
                    tensor -= config.lr * (grad + extra)
    return {name: t.detach() for name, t in w.items()}


def mean_of(models: list[ParamStack]) -> ParamStack:
    return {name: torch.stack([m[name] for m in models]).mean(0) for name in models[0]}


def assert_close(a: ParamStack, b: ParamStack, atol: float = 1e-5) -> None:
    for name in a:
        assert torch.allclose(a[name], b[name], atol=atol, rtol=0), f"{name}: {(a[name] - b[name]).abs().max()}"


# -- FedProx (Li et al., MLSys 2020) ------------------------------------------------------------
QUICK_TREE = {"etree": {"groups": [2, 1], "ratios": [1, 2], "pretrain_epochs": 1, "public_samples": 50}}


@pytest.mark.parametrize("name", ["fedavg", "hierfavg", "etree"])
def test_fedprox_with_mu_zero_is_plain_local_sgd_bit_for_bit(digits: Digits, name: str) -> None:
    base = QUICK_TREE.get(name, {})
    plain = params_of(run(name, base, fleet(digits)))
    prox = params_of(run(name, base | {"local": "fedprox", "mu": 0.0}, fleet(digits)))
    moved = params_of(run(name, base | {"local": "fedprox", "mu": 0.5}, fleet(digits)))
    for tensor in plain:
        assert torch.equal(plain[tensor], prox[tensor])
        assert not torch.allclose(plain[tensor], moved[tensor])  # the option reaches the training


@pytest.mark.parametrize("model", ["softmax", "cnn"])  # the dense MLP step and the generic autograd one
def test_fedprox_matches_a_per_device_loop(digits: Digits, model: str) -> None:
    workload = fleet(digits)
    if model != "softmax":
        net = build_model(model, (64,), 10)
        workload = Workload(**{**workload.__dict__, "model": net, "initial": init_params(net, 0)})
    protocol = run("fedavg", {"local": "fedprox", "mu": 0.3, "server_trains": True}, workload, rounds=2)
    x = workload.initial
    for r in (1, 2):  # every device trains from x with the proximal term, the server averages
        x = mean_of([reference_sgd(workload, x, d, r, mu=0.3) for d in range(workload.devices)])
    assert_close(params_of(protocol), replicate(x, workload.devices))


def test_the_proximal_term_pulls_toward_the_received_model(digits: Digits) -> None:
    workload = fleet(digits)
    ids = torch.arange(workload.devices)
    start = replicate(workload.initial, workload.devices)
    drift = []
    for mu in (0.0, 1.0, 5.0):
        trained = workload.train_devices(start, ids, 1, config=TrainConfig(0.05, 3, 4, prox_mu=mu))
        drift.append(float(sum((trained[k] - start[k]).norm() for k in start)))
    assert drift[0] > drift[1] > drift[2] > 0


# -- SCAFFOLD (Karimireddy et al., ICML 2020) ---------------------------------------------------
@pytest.mark.parametrize(("global_lr", "participation"), [(1.0, 1.0), (0.5, 0.5)])
def test_scaffold_control_variates_follow_option_two(digits: Digits, global_lr: float, participation: float) -> None:
    """Two devices of 13 and 31 samples (K = 4 and 8 steps of batch 4), three rounds, written out."""
    workload = fleet(digits, (13, 31))
    options = {"server_trains": True, "global_lr": global_lr, "participation": participation}
    protocol = run("scaffold", options, workload, rounds=3)
    lr, steps = workload.train.lr, local_steps(workload.data.counts.numpy(), workload.train)
    assert steps.tolist() == [4, 8]
    x = workload.initial
    c = {k: torch.zeros_like(v) for k, v in x.items()}
    c_i = [dict(c), dict(c)]
    for r in (1, 2, 3):
        sampled = participants(workload.seed, r, 2, participation).tolist()
        assert len(sampled) == (2 if participation == 1 else 1)
        delta_x, delta_c = [], []
        for d in sampled:
            y = reference_sgd(workload, x, d, r, correction={k: c[k] - c_i[d][k] for k in x})
            new = {k: c_i[d][k] - c[k] + (x[k] - y[k]) / (steps[d] * lr) for k in x}  # option II
            delta_x.append({k: y[k] - x[k] for k in x})
            delta_c.append({k: new[k] - c_i[d][k] for k in x})
            c_i[d] = new
        x = {k: x[k] + global_lr * mean_of(delta_x)[k] for k in x}
        c = {k: c[k] + len(sampled) / 2 * mean_of(delta_c)[k] for k in x}
    state = protocol.state_dict()
    assert_close(params_of(protocol), replicate(x, 2))
    assert_close(state["control"], replicate(c, 1))
    assert_close(state["device_controls"], {k: torch.stack([c_i[0][k], c_i[1][k]]) for k in x})
    if participation == 1:  # every device reported every round: c is the mean of the c_i
        assert_close(state["control"], {k: v.mean(0, keepdim=True) for k, v in state["device_controls"].items()})


def test_scaffold_sends_two_models_per_message(digits: Digits) -> None:
    """Up (Δy, Δc) and down (x, c): the messages FedAvg sends, each twice the bytes and slower."""

    def last(name: str) -> Record:
        protocol = make_protocol(name, name, {})
        records = list(run_protocol(protocol, fleet(digits), rounds=2, eval_every=2))
        return next(r for r in reversed(records) if r.metric == "accuracy")

    fedavg, scaffold = last("fedavg"), last("scaffold")
    assert scaffold.bytes_sent == 2 * fedavg.bytes_sent > 0
    assert scaffold.sim_time_s > fedavg.sim_time_s


def test_scaffold_resumes_from_a_checkpoint_exactly(digits: Digits) -> None:
    """Dropouts make some devices keep old controls: the c_i are state, and survive the disk format."""
    network = NetworkConditions(dropout=0.3)

    def go(resume: RunSnapshot | None) -> tuple[list[Record], list[RunSnapshot], Protocol]:
        protocol = make_protocol("scaffold", "scaffold", {"participation": 0.75})
        snapshots: list[RunSnapshot] = []
        records = list(
            run_protocol(
                protocol,
                fleet(digits, network=network),
                rounds=6,
                eval_every=1,
                resume=resume,
                checkpoint_every=3,
                on_checkpoint=snapshots.append,
            )
        )
        return records, snapshots, protocol

    full, (snapshot,), finished = go(None)
    document, tensors = pack_state(snapshot.to_state())
    revived = RunSnapshot.from_state(
        unpack_state(json.loads(json.dumps(document)), safetensors.torch.load(safetensors.torch.save(tensors)))
    )
    resumed, _, again = go(revived)
    assert resumed == [r for r in full if r.round > 3]
    ended, restarted = finished.state_dict(), again.state_dict()
    for key in ("params", "control", "device_controls"):
        for name, tensor in ended[key].items():
            assert torch.equal(tensor, restarted[key][name]), key
    assert any(bool(t.abs().sum() > 0) for t in ended["control"].values())


# -- FedNova (Wang et al., NeurIPS 2020) --------------------------------------------------------
@pytest.mark.parametrize("weighted", [True, False])
def test_fednova_with_equal_step_counts_is_fedavg(digits: Digits, weighted: bool) -> None:
    same = (16, 14, 13, 15)  # 4 batches of 4 each: equal tau_i, unequal n_i
    options = {"weighted": weighted, "participation": 0.75}
    fedavg = params_of(run("fedavg", options, fleet(digits, same)))
    fednova = params_of(run("fednova", options, fleet(digits, same)))
    for name in fedavg:
        assert torch.equal(fedavg[name], fednova[name])


@pytest.mark.parametrize("weighted", [True, False])
def test_fednova_with_unequal_steps_takes_the_normalized_step(digits: Digits, weighted: bool) -> None:
    workload = fleet(digits)
    protocol = run("fednova", {"weighted": weighted, "server_trains": True}, workload, rounds=2)
    tau = local_steps(workload.data.counts.numpy(), workload.train).astype(np.float64)
    assert len(set(tau.tolist())) > 1
    n = workload.data.counts.numpy().astype(np.float64)
    p = n / n.sum() if weighted else np.full(len(n), 1 / len(n))
    tau_eff = float(p @ tau)
    x = workload.initial
    for r in (1, 2):  # x - tau_eff sum_i p_i (x - y_i) / tau_i
        ys = workload.train_devices(replicate(x, workload.devices), torch.arange(workload.devices), r)
        x = {k: x[k] - tau_eff * sum(p[d] * (x[k] - ys[k][d]) / tau[d] for d in range(len(n))) for k in x}
    assert_close(params_of(protocol), replicate(x, workload.devices))
    fedavg = params_of(run("fedavg", {"weighted": weighted, "server_trains": True}, fleet(digits), rounds=2))
    assert not torch.allclose(fedavg["1.weight"], params_of(protocol)["1.weight"], atol=1e-4)


@pytest.mark.parametrize("name", ["scaffold", "fednova"])
def test_a_device_without_data_takes_no_step_and_spoils_nothing(digits: Digits, name: str) -> None:
    protocol = run(name, {"server_trains": True}, fleet(digits, (13, 0, 20)), rounds=2)
    assert all(bool(t.isfinite().all()) for t in params_of(protocol).values())
    if name == "scaffold":
        controls = protocol.state_dict()["device_controls"]
        assert all(not t[1].any() and t[0].any() for t in controls.values())  # K = 0: c_i stays 0


# -- specs, listing and refusals ------------------------------------------------------------------
def test_specs_name_the_new_methods_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list", "protocols"]) == 0
    out = capsys.readouterr().out
    for line in ("  scaffold\n", "  fednova\n", "      global_lr: float = 1.0\n", "      local: 'sgd' | 'fedprox'"):
        assert line in out
    protocols = [
        {"name": "scaffold"},
        {"name": "fednova"},
        {
            "name": "etree",
            "label": "etree+fedprox",
            "local": "fedprox",
            "mu": 0.1,
            "groups": [2, 1],
            "pretrain_epochs": 1,
        },
    ]
    spec = spec_from_dict(tiny_spec_with(rounds=2, protocols=protocols))
    result = run_spec(spec)
    finals = {r.protocol for r in result.records if r.metric == "accuracy" and r.round == 2}
    assert finals == {"scaffold", "fednova", "etree+fedprox"}


def test_bad_options_and_workloads_are_refused(digits: Digits) -> None:
    with pytest.raises(ProtocolError, match=r"protocols\.fedavg\.local: 'adam' is not allowed"):
        make_protocol("fedavg", "fedavg", {"local": "adam"})
    with pytest.raises(ProtocolError, match=r"protocols\.mine\.local: got 'adam'"):  # the engine checks too
        TreeProtocol("mine", lambda workload, network: star_tree(workload.devices, 0), local="adam")  # type: ignore[arg-type]
    with pytest.raises(ProtocolError, match=r"protocols\.etree\.mu: got -1"):
        make_protocol("etree", "etree", {"local": "fedprox", "mu": -1.0})
    with pytest.raises(ProtocolError, match=r"protocols\.scaffold\.global_lr"):
        make_protocol("scaffold", "scaffold", {"global_lr": 0.0})
    for name, options in (("fedavg", {"local": "fedprox"}), ("scaffold", {}), ("fednova", {})):
        with pytest.raises(ProtocolError, match=rf"protocols\.{name}"):
            make_protocol(name, name, options).setup(recommender_workload("mf"))
    late = fleet(digits, network=NetworkConditions(deadline_s=0.01, late="stale"))
    with pytest.raises(ProtocolError, match=r"network\.late: got 'stale'"):
        make_protocol("scaffold", "scaffold", {}).setup(late)
    with pytest.raises(ClientsError, match=r"train\.prox_mu"):
        TrainConfig(prox_mu=-0.1)
