"""Gossip learning (Hegedűs, Danner, Jelasity, "Gossip learning as a decentralized
alternative to federated learning", DAIS 2019, Algorithm 1): no server and no tree.
Every device periodically pushes its model to one peer; a receiver merges what
it got with its own model, then updates it on its local data.

One round here is one gossip cycle of period Δ (``period_s``): every live
device wakes once per cycle, at its own seeded phase in [0, Δ) (Hegedűs et al.:
each node wakes every Δ, at a random phase). At its wake-up a device

1. merges the models that reached it since its last wake-up (``merge_models``);
2. runs one local epoch (``local_train``), as in every protocol of this
   engine, so curves share an x-axis (in Hegedűs et al. a node updates once
   per received model; a device here receives one model per cycle on average);
3. pushes its model to one peer of the overlay (``hashed_uniform`` on
   (seed, round, device), so a device's choice is independent of the fleet's
   size or order).

The numerics stay batched per cycle: all wake-ups of a cycle are applied at
once, in the order merge, train, push.

Merging, from the paper's MERGE: ``"average"`` is the plain mean of the own
and the received models; ``"age"`` weights each model by its age ``t`` (the
number of training examples it has seen) and keeps ``t = max`` of the merged
ages. With equal local datasets and every device training every cycle all ages
stay equal, so ``"age"`` then equals ``"average"``. The paper receives one
model at a time; when several arrive in one cycle we average the own model
with all of them at once, with equal (``"average"``) or age (``"age"``)
weights. That is our choice: it is order-free, and with one message it is
exactly the paper's MERGE.

Overlays: ``"random"`` (the default) samples any other device uniformly, an
idealised peer-sampling service: Hegedűs et al. gossip over peer sampling, and
the E-Tree authors' simulator uses Newscast with a full cache, which samples
the same way. ``"graph"`` gossips with neighbours in the topology graph only
(relayed through a shared edge server where a device has no device neighbour).

Timing (asynchronous gossip, batched per cycle): a cycle lasts exactly Δ of
simulated time. Device i wakes at ``start + phase_i`` with ``phase_i = Δ u_i``,
``u_i = hashed_uniform(seed, device)`` fixed for the run; its push leaves after its
local epoch and arrives ``phase_i + compute_i + transfer_i`` after the cycle's
start. The receiver j merges it at its first wake-up at or after the arrival,
``phase_j + kΔ``, but never before the next cycle (k >= 1: a cycle's wake-ups are
batched, so a model that would reach j before j's own wake-up in the same cycle
waits one cycle; our choice). A push that arrives after the receiver's next
wake-up (k >= 2) is *late*: it is merged k cycles later, never lost, and counted
in ``late_pushes``; ``late_fraction`` is the share of the pushes sent so far that
were late. A device does not wait for its epoch to finish before its next wake-up
(its period is fixed; an idealisation where compute_i > Δ).

The default period (``period_s`` unset, ``default_period``): the shortest Δ at
which at most 5% of the pushes are expected to arrive late (``LATE_TARGET``),
the expectation taken over the uniform phases with each device's own local epoch
plus its mean transfer time to its overlay partners. Hegedűs et al. merge a model
the moment it arrives, so lateness is an artefact of batching a cycle and the
default keeps it rare; the paper leaves Δ to the user. With equal devices it is
about 3.2 times one epoch plus one push (``busy / sqrt(2 * 0.05)``). With
``[network] timing = false`` no time passes and every push is merged in the
next cycle.

Faults, as the tree protocols honour them: a device that drops out of a cycle
(``[network] dropout``, the clock's per-(seed, round, device) draw) neither
trains nor pushes in it, but still merges what reaches it. A crashed device is
dead from its crash time on (``SimClock.alive_mask`` at its wake-up): it neither
sends nor receives, and pushes addressed to it are lost (counted in
``lost_pushes``; peer sampling does not learn of deaths, our choice). Bytes and
messages count the pushes sent, each ``Workload.wire_bytes`` long.

A push costs what ``NetworkModel.transfer_s`` charges (latency-shortest path + bits / its
bottleneck bandwidth), precomputed once: per overlay pair by a bounded
Dijkstra for ``"graph"``, as a device x device matrix for ``"random"``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import networkx as nx
import numpy as np
import torch
from scipy import sparse

from clients.classification.evaluation import voted_accuracy
from clients.params import ParamStack, replicate, select
from clients.recommendation.metrics import DeviceModels
from clients.streams import hashed_uniform
from etree.core.errors import ProtocolError
from etree.engine.checkpoint import CheckpointError, expect, expect_array, expect_ids, expect_tensor, stack_like
from etree.engine.protocol import Protocol, RoundCost, own_models
from etree.engine.registry import register_protocol
from etree.engine.workload import Workload
from etree.network.model import NetworkModel
from topologies import delays_from, latency_csgraph, pair_path_costs, path_bottleneck_bandwidth

OVERLAYS = ("random", "graph")
LATE_TARGET = 0.05  # the default period makes at most this share of pushes late, in expectation
MERGES = ("average", "age")
#: overlay="random" keeps an exact D x D device transfer-time matrix (float32):
#: 8192 devices are 256 MiB and about a minute of Dijkstra at setup.
MAX_RANDOM_OVERLAY_DEVICES = 8192
_PEER_STREAM = 0x6055  # coordinates that keep the random streams of gossip apart
_EVAL_STREAM = 0xE7A1
_PHASE_STREAM = 0x9A5E
_CHUNK = 256  # Dijkstra sources per batch


# -- pure math --------------------------------------------------------------
def merge_models(
    params: ParamStack,
    peers: torch.Tensor,
    ages: torch.Tensor | None = None,
    *,
    sent: ParamStack | None = None,
    sent_ages: torch.Tensor | None = None,
) -> ParamStack:
    """Every device's own model merged with the models pushed to it (Hegedűs et al., MERGE).

    Message m is row m of ``sent`` (default: ``params`` itself, device i pushing
    row i), addressed to device ``peers[m]``. Device d's merge is
    ``(a_d w_d + sum_{m: peers[m]=d} a_m w_m) / (a_d + sum a_m)`` with ``a = 1``
    (``ages=None``, plain average) or ``a = age`` (age-weighted; the messages'
    ages are ``sent_ages``, default ``ages``). A device whose merge has zero total
    age (nobody has trained yet) takes the plain average. A device that received
    nothing keeps its model. Returns new tensors.
    """
    count = len(next(iter(params.values())))
    incoming = params if sent is None else sent
    own = torch.ones(count, dtype=torch.float64) if ages is None else ages.to(torch.float64)
    if ages is None:
        carried = torch.ones(len(peers), dtype=torch.float64)
    else:
        carried = (ages if sent_ages is None else sent_ages).to(torch.float64)
    total = own.clone().index_add_(0, peers, carried)
    if ages is not None:
        blank = total == 0
        own = torch.where(blank, torch.ones_like(own), own)
        carried = torch.where(blank[peers], torch.ones_like(carried), carried)
        total = own.clone().index_add_(0, peers, carried)
    own_share, sent_share = own / total, carried / total[peers]
    out: ParamStack = {}
    for name, tensor in params.items():
        shape = (-1,) + (1,) * (tensor.dim() - 1)
        merged = tensor * own_share.to(tensor.dtype).view(shape)
        out[name] = merged.index_add_(0, peers, incoming[name] * sent_share.to(tensor.dtype).view(shape))
    return out


def merge_ages(ages: torch.Tensor, peers: torch.Tensor, sent_ages: torch.Tensor | None = None) -> torch.Tensor:
    """Age after the merge: the largest of the own and the received ages (Hegedűs et al., MERGE).

    ``sent_ages[m]`` is the age of the message to ``peers[m]`` (default: ``ages``, device i pushing)."""
    carried = ages if sent_ages is None else sent_ages
    return ages.clone().scatter_reduce_(0, peers, carried, reduce="amax", include_self=True)


def wake_phases(seed: int, devices: int, period_s: float) -> np.ndarray:
    """Each device's wake-up offset within a cycle, uniform in [0, Δ) and fixed for the run
    (Hegedűs et al.: every node wakes every Δ, at its own random phase); counter-based per device."""
    return period_s * hashed_uniform(seed, _PHASE_STREAM, np.arange(devices))


def merge_delay(arrival_s: np.ndarray, receiver_phase_s: np.ndarray, period_s: float) -> np.ndarray:
    """In how many cycles a push is merged: its receiver's first wake-up at or after its arrival,
    ``phase + k period``, with ``k >= 1`` (a cycle's wake-ups are batched). Times are from the
    sending cycle's start; ``k >= 2`` means the push arrived after the receiver's next wake-up."""
    cycles = np.ceil((np.asarray(arrival_s) - np.asarray(receiver_phase_s)) / period_s)
    return np.maximum(cycles, 1).astype(np.int64)


def expected_late_fraction(busy_s: np.ndarray, period_s: float) -> float:
    """The share of pushes expected to be late at period Δ: device i's push, sent ``busy_s[i]`` (its
    epoch plus its push) after its wake-up, misses its receiver's next wake-up when
    ``busy > Δ (1 - (u_i - u_j))``, the phases ``u`` independent and uniform, so ``u_i - u_j`` is
    triangular on (-1, 1): with ``r = busy / Δ`` the chance is ``r²/2`` up to r = 1, then
    ``1 - (2 - r)²/2``, and 1 from r = 2."""
    r = np.asarray(busy_s, dtype=np.float64) / period_s
    late = np.where(r <= 1, r**2 / 2, np.where(r <= 2, 1 - (2 - r) ** 2 / 2, 1.0))
    return float(late.mean())


def default_period(compute_s: np.ndarray, push_s: np.ndarray) -> float:
    """Δ when ``period_s`` is not given: the shortest period at which at most ``LATE_TARGET`` of the
    pushes are expected to be late (``expected_late_fraction``), from each device's local epoch plus a
    typical push (``push_s``: the mean transfer time to its overlay partners); 0 if both are 0."""
    busy = np.asarray(compute_s, dtype=np.float64) + np.asarray(push_s, dtype=np.float64)
    if not busy.max(initial=0.0) > 0:
        return 0.0
    low, high = 0.0, float(busy.max()) / math.sqrt(2 * LATE_TARGET)  # at high no device exceeds the target
    for _ in range(60):  # bisection: the expected share falls as the period grows
        middle = (low + high) / 2
        low, high = (low, middle) if expected_late_fraction(busy, middle) <= LATE_TARGET else (middle, high)
    return high


def random_peers(seed: int, round_index: int, devices: int) -> np.ndarray:
    """One uniform peer per device among all the others (idealised peer sampling)."""
    if devices < 2:
        raise ProtocolError(f"gossip: needs at least 2 devices, got {devices}")
    own = np.arange(devices)
    pick = np.floor(hashed_uniform(seed, round_index, _PEER_STREAM, own) * (devices - 1)).astype(np.int64)
    return pick + (pick >= own)  # skip the device itself


def neighbour_choice(seed: int, round_index: int, indptr: np.ndarray) -> np.ndarray:
    """One uniform position into each device's CSR neighbour row (an index into ``indices``)."""
    degree = np.diff(indptr)
    u = hashed_uniform(seed, round_index, _PEER_STREAM, np.arange(len(degree)))
    return indptr[:-1] + np.floor(u * degree).astype(np.int64)


# -- overlay ----------------------------------------------------------------
def graph_overlay(latency: sparse.csr_array, devices: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each device's gossip partners as CSR arrays ``(indptr, indices)``, and who needed a relay.

    Partners are the device's device neighbours in the graph. A device with
    none (in ``edge_cloud`` devices touch only their edge server) gossips with
    the devices that share a non-device neighbour with it, the traffic being
    relayed by that node (e.g. its edge server). A device with neither has no
    one to gossip with: a ``ProtocolError`` suggests ``overlay="random"``.
    """
    linked = (latency != 0).astype(np.int64)
    direct = sparse.csr_array(linked[:devices, :devices])
    relayed = np.flatnonzero(np.diff(direct.indptr) == 0)
    rows, cols = direct.tocoo().coords
    if len(relayed):
        relays = sparse.csr_array(linked[:devices, devices:])
        two_hop = (relays[relayed] @ relays.T).tocoo()
        source = relayed[two_hop.coords[0]]
        keep = source != two_hop.coords[1]
        rows = np.concatenate([rows, source[keep]])
        cols = np.concatenate([cols, two_hop.coords[1][keep]])
    overlay = sparse.csr_array((np.ones(len(rows)), (rows, cols)), shape=(devices, devices))
    overlay.sum_duplicates()
    overlay.sort_indices()
    alone = np.flatnonzero(np.diff(overlay.indptr) == 0)
    if len(alone):
        raise ProtocolError(
            f"protocols.gossip.overlay: 'graph' leaves device(s) {alone[:5].tolist()} with no device to "
            f"gossip with (no device neighbour, none behind a shared relay node); use overlay = 'random'"
        )
    return overlay.indptr.astype(np.int64), overlay.indices.astype(np.int64), relayed


def pair_transfer_s(
    graph: nx.Graph, sources: np.ndarray, targets: np.ndarray, nbytes: int, bound: np.ndarray
) -> np.ndarray:
    """Transfer time of each pair, as ``NetworkModel.transfer_s`` charges it (latency-shortest path +
    bits / its bottleneck bandwidth), from :func:`topologies.pair_path_costs` bounded by ``bound``."""
    latency, bottleneck = pair_path_costs(graph, sources, targets, bound)
    return latency + 8.0 * nbytes / bottleneck


def overlay_bounds(latency: sparse.csr_array, devices: int, indptr: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """An upper bound on the path latency of each overlay pair: its direct link, or the two links via a relay
    (``latency``: the topology's link latencies, :func:`topologies.latency_csgraph`)."""
    sources = np.repeat(np.arange(devices), np.diff(indptr))
    direct = np.asarray(latency[sources, indices]).ravel()
    relay_links = latency[:devices, devices:]
    worst = np.asarray(relay_links.max(axis=1).todense()).ravel() if relay_links.shape[1] else np.zeros(devices)
    via = worst[sources] + worst[indices]  # any relay path costs at most the two slowest relay links
    return np.where(direct > 0, direct, via)


def device_transfer_matrix(graph: nx.Graph, devices: int, nbytes: int) -> np.ndarray:
    """Transfer time between every pair of devices, ``[D, D]`` float32 (for overlay="random")."""
    out = np.empty((devices, devices), dtype=np.float32)
    for start in range(0, devices, _CHUNK):
        chunk = list(range(start, min(devices, start + _CHUNK)))
        latency = delays_from(graph, chunk)[:, :devices]
        bandwidth = path_bottleneck_bandwidth(graph, chunk)[:, :devices]
        out[start : start + len(chunk)] = latency + 8.0 * nbytes / bandwidth
    return out


# -- protocol ---------------------------------------------------------------
@dataclass(frozen=True)
class InFlight:
    """Pushes sent in one cycle and not merged yet: message m goes to ``receivers[m]`` and is due
    (merged) in cycle ``due[m]``; ``params`` holds the shared parameters it carries, ``ages`` its age."""

    due: np.ndarray
    receivers: np.ndarray
    ages: torch.Tensor
    params: ParamStack

    def subset(self, mask: np.ndarray) -> InFlight:
        rows = torch.from_numpy(mask)
        return InFlight(
            self.due[mask], self.receivers[mask], self.ages[rows], {k: v[rows] for k, v in self.params.items()}
        )


class GossipProtocol(Protocol):
    """Push gossip learning with merge-then-update, one cycle of period Δ per round (Hegedűs et al., DAIS 2019).

    ``accuracy`` is the mean over a fixed seeded sample of at most
    ``eval_devices`` device models (all of them on small fleets), with
    ``accuracy_std`` their spread; ``voted`` (default) adds ``voted_accuracy``,
    the accuracy of their majority vote (the E-Tree authors' LossObserver
    reports a voted error); ``late_fraction`` is the share of pushes sent so
    far that arrived late.
    """

    def __init__(
        self, label: str, *, overlay: str, merge: str, eval_devices: int, voted: bool, period_s: float | None
    ) -> None:
        super().__init__(label)
        self._overlay = overlay
        self._merge = merge
        self._eval_devices = eval_devices
        self._voted = voted
        self._period_s = period_s

    def setup(self, workload: Workload) -> None:
        self.workload = workload
        devices = workload.devices
        if devices < 2:
            raise ProtocolError(f"protocols.{self.label}: gossip needs at least 2 devices, got {devices}")
        self.network = NetworkModel(workload.graph)
        self.params = replicate(workload.initial, devices)
        self.ages = torch.zeros(devices, dtype=torch.float64)
        self.ready = self.network.compute_s(np.arange(devices), workload.epoch_flops)
        self.relayed = np.zeros(0, dtype=np.int64)
        if self._overlay == "graph":
            latency = latency_csgraph(workload.graph)
            self.indptr, self.indices, self.relayed = graph_overlay(latency, devices)
            bound = overlay_bounds(latency, devices, self.indptr, self.indices)
            sources = np.repeat(np.arange(devices), np.diff(self.indptr))
            self.pair_time = pair_transfer_s(workload.graph, sources, self.indices, workload.wire_bytes, bound)
            typical = np.add.reduceat(self.pair_time, self.indptr[:-1]) / np.diff(self.indptr)
        else:
            if devices > MAX_RANDOM_OVERLAY_DEVICES:
                raise ProtocolError(
                    f"protocols.{self.label}.overlay: 'random' keeps a device x device delay matrix, allowed up to "
                    f"{MAX_RANDOM_OVERLAY_DEVICES} devices, got {devices}; use overlay = 'graph'"
                )
            self.pair_time = device_transfer_matrix(workload.graph, devices, workload.wire_bytes)
            typical = self.pair_time.sum(axis=1, dtype=np.float64) / (devices - 1)  # the diagonal is 0
        self.period = self._period_s if self._period_s is not None else default_period(self.ready, typical)
        if workload.network.timing and not self.period > 0:
            raise ProtocolError(
                f"protocols.{self.label}.period_s: the derived period is {self.period} s (no compute or transfer "
                f"time); set period_s > 0"
            )
        self.phase = wake_phases(workload.seed, devices, self.period)
        self.in_flight: list[InFlight] = []
        self.senders = np.zeros(0, dtype=np.int64)  # who pushed in the last cycle
        self.pushes = self.late_pushes = 0  # sent so far, and how many of them arrived late
        keys = hashed_uniform(workload.seed, _EVAL_STREAM, np.arange(devices))
        sample = np.sort(np.argsort(keys, kind="stable")[: self._eval_devices])
        self.evaluated = torch.from_numpy(sample)

    def run_round(self, round_index: int) -> RoundCost:
        workload, devices = self.workload, self.workload.devices
        timed = workload.network.timing
        start = self.clock.now
        if timed:
            self.clock.advance(self.period)  # the cycle's crashes fire; each device is judged at its wake-up
        everyone = np.arange(devices)
        alive = self.clock.alive_mask(everyone, at=start + self.phase)
        lost = self._merge_arrivals(round_index, alive)

        awake = alive & ~self.clock.dropped(workload.seed, round_index, everyone)
        senders = np.flatnonzero(awake)
        self._train(round_index, senders)

        if self._overlay == "graph":
            slot = neighbour_choice(workload.seed, round_index, self.indptr)
            peers, transfer = self.indices[slot][senders], self.pair_time[slot][senders]
        else:
            peers = random_peers(workload.seed, round_index, devices)[senders]
            transfer = self.pair_time[senders, peers].astype(np.float64)
        if timed:
            arrival = self.phase[senders] + self.ready[senders] + transfer
            delay = merge_delay(arrival, self.phase[peers], self.period)
        else:
            delay = np.ones(len(senders), dtype=np.int64)
        if len(senders):
            picked = torch.from_numpy(senders)
            whole = len(senders) == devices  # the models themselves: rounds replace, never modify, them
            shared = workload.shared(self.params)
            carried = shared if whole else {name: tensor[picked] for name, tensor in shared.items()}
            self.in_flight.append(InFlight(round_index + delay, peers, self.ages[picked], carried))
        self.senders = senders
        late = int(np.count_nonzero(delay > 1))
        self.pushes += len(senders)
        self.late_pushes += late
        events = {name: float(n) for name, n in (("late_pushes", late), ("lost_pushes", lost)) if n}
        messages = len(senders)
        duration = self.period if timed else 0.0
        return RoundCost(duration, messages * workload.wire_bytes, messages, events or None, clocked=True)

    def _merge_arrivals(self, round_index: int, alive: np.ndarray) -> int:
        """Merge every push due this cycle into its receiver, if alive; return how many were lost."""
        arrived, waiting = [], []
        for batch in self.in_flight:
            now = batch.due == round_index
            if now.any():
                arrived.append(batch if now.all() else batch.subset(now))
            if not now.all():
                waiting.append(batch.subset(~now))
        self.in_flight = waiting
        if not arrived:
            return 0
        receivers = np.concatenate([batch.receivers for batch in arrived])
        keep = alive[receivers]
        if keep.any():
            kept = torch.from_numpy(keep)
            peers = torch.from_numpy(receivers[keep])
            sent_ages = torch.cat([batch.ages for batch in arrived])[kept]
            if len(arrived) == 1 and keep.all():  # no copy of whole models when nothing is left out
                sent = arrived[0].params
            else:
                sent = {name: torch.cat([b.params[name] for b in arrived])[kept] for name in arrived[0].params}
            aged = self._merge == "age"
            # only shared parameters travel; private ones (user embeddings) stay as their device holds them
            merged = merge_models(
                self.workload.shared(self.params),
                peers,
                self.ages if aged else None,
                sent=sent,
                sent_ages=sent_ages if aged else None,
            )
            self.params = merged | {name: self.params[name] for name in self.workload.private}
            self.ages = merge_ages(self.ages, peers, sent_ages)
        return int(np.count_nonzero(~keep))

    def _train(self, round_index: int, senders: np.ndarray) -> None:
        """One local epoch on every awake device; the others keep their models (new tensors either way)."""
        if not len(senders):
            return
        workload, picked = self.workload, torch.from_numpy(senders)
        whole = len(senders) == workload.devices
        trained = workload.train_devices(
            self.params if whole else {name: tensor[picked] for name, tensor in self.params.items()},
            picked,
            round_index,
        )
        if whole:
            self.params = trained
        else:
            self.params = {name: tensor.index_copy(0, picked, trained[name]) for name, tensor in self.params.items()}
        seen = workload.data.counts[picked].to(torch.float64) * workload.train.local_epochs
        self.ages = self.ages.index_add(0, picked, seen)

    def evaluation_models(self) -> ParamStack:
        return select(self.params, self.evaluated)

    def device_models(self) -> DeviceModels:
        return own_models(self.evaluation_models(), self.evaluated, self.workload.private)

    def evaluate(self, workload: Workload) -> dict[str, float]:
        metrics = super().evaluate(workload)
        metrics["late_fraction"] = self.late_pushes / self.pushes if self.pushes else 0.0
        if self._voted and not workload.recommender:
            metrics["voted_accuracy"] = voted_accuracy(
                workload.model, self.evaluation_models(), workload.x_test, workload.y_test
            )
        return metrics

    def state_dict(self) -> dict[str, Any]:
        """Models, ages, the pushes still in flight and the last cycle's senders; the overlay, transfer
        times, period and phases are configuration ``setup`` derives from the spec, not state."""
        in_flight = [
            {"due": b.due, "receivers": b.receivers, "ages": b.ages, "params": b.params} for b in self.in_flight
        ]
        return {
            "params": self.params,
            "ages": self.ages,
            "in_flight": in_flight,
            "senders": self.senders,
            "pushes": self.pushes,
            "late_pushes": self.late_pushes,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """``setup`` rebuilds the overlay and its timing (deterministic; no training), then the state replaces
        the initial models."""
        self.setup(self.workload)
        workload, devices = self.workload, self.workload.devices
        self.params = stack_like(state["params"], workload.initial, "params", rows=devices)
        self.ages = expect_tensor(state["ages"], "ages", torch.float64, (devices,))
        shared = workload.shared(workload.initial)
        self.in_flight = []
        for index, raw in enumerate(expect(state["in_flight"], list, "in_flight")):
            where = f"in_flight[{index}]"
            batch = expect(raw, dict, where)
            receivers = expect_ids(batch["receivers"], f"{where}.receivers", devices)
            count = len(receivers)
            self.in_flight.append(
                InFlight(
                    due=expect_array(batch["due"], f"{where}.due", np.int64, (count,)),
                    receivers=receivers,
                    ages=expect_tensor(batch["ages"], f"{where}.ages", torch.float64, (count,)),
                    params=stack_like(batch["params"], shared, f"{where}.params", rows=count),
                )
            )
        self.senders = expect_ids(state["senders"], "senders", devices)
        self.pushes = expect(state["pushes"], int, "pushes")
        self.late_pushes = expect(state["late_pushes"], int, "late_pushes")
        if not 0 <= self.late_pushes <= self.pushes:
            raise CheckpointError(f"late_pushes: got {self.late_pushes} of {self.pushes} pushes")

    def structure(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "protocol": "gossip",
            "overlay": self._overlay,
            "merge": self._merge,
            "period_s": self.period,
            "evaluated_devices": self.evaluated.tolist(),
        }
        if self._overlay == "graph":
            degree = np.diff(self.indptr)
            out["degree"] = {"min": int(degree.min()), "mean": float(degree.mean()), "max": int(degree.max())}
            out["relayed_devices"] = len(self.relayed)
        return out


@register_protocol("gossip")
def gossip(
    label: str,
    *,
    overlay: str = "random",
    merge: str = "average",
    eval_devices: int = 256,
    voted: bool = True,
    period_s: float | None = None,
) -> Protocol:
    """Gossip learning (Hegedűs et al., DAIS 2019); see the module docstring for the choices made.

    ``overlay`` defaults to random peer sampling (Hegedűs et al.; the E-Tree authors' Newscast);
    ``period_s`` is the gossip period Δ (default: the shortest with at most 5% of pushes expected
    late, see ``default_period``)."""
    if overlay not in OVERLAYS:
        raise ProtocolError(f"protocols.{label}.overlay: got {overlay!r}; choose one of: {', '.join(OVERLAYS)}")
    if merge not in MERGES:
        raise ProtocolError(f"protocols.{label}.merge: got {merge!r}; choose one of: {', '.join(MERGES)}")
    if isinstance(eval_devices, bool) or not isinstance(eval_devices, int) or eval_devices < 1:
        raise ProtocolError(f"protocols.{label}.eval_devices: got {eval_devices!r}; must be an integer >= 1")
    if not isinstance(voted, bool):
        raise ProtocolError(f"protocols.{label}.voted: got {voted!r}; must be true or false")
    if period_s is not None and (
        isinstance(period_s, bool) or not isinstance(period_s, int | float) or not 0 < period_s < math.inf
    ):
        raise ProtocolError(f"protocols.{label}.period_s: got {period_s!r}; must be a number of seconds > 0")
    return GossipProtocol(
        label,
        overlay=overlay,
        merge=merge,
        eval_devices=eval_devices,
        voted=voted,
        period_s=None if period_s is None else float(period_s),
    )
