"""Decentralized parallel SGD (D-PSGD; Lian, Zhang, Zhang, Hsieh, Zhang, Liu, "Can Decentralized
Algorithms Outperform Centralized Algorithms? A Case Study for Decentralized Parallel Stochastic
Gradient Descent", NeurIPS 2017, Algorithm 1): no server and no tree. In every synchronous round
each device trains on its own data and averages its model with its neighbours' through a fixed
mixing matrix W.

Mixing: Metropolis-Hastings weights on the overlay, ``w_ij = 1 / (1 + max(deg_i, deg_j))`` for
neighbours and ``w_ii = 1 - sum_j w_ij`` (Xiao & Boyd, "Fast linear iterations for distributed
averaging", 2004; decentralizepy's ``# Metro-Hastings``): symmetric and doubly stochastic, so
the devices' mean model is kept by every mix and they reach consensus on a connected overlay.

Order (``order``), a choice the option makes explicit:

* ``"train_then_mix"`` (default): each device runs its local epoch, then averages the models its
  neighbours trained, ``x_i <- sum_j w_ij (x_j - eta g_j)``: the adapt-then-combine form of
  decentralized local SGD (Koloskova et al., "A Unified Theory of Decentralized SGD with Changing
  Topology and Local Updates", ICML 2020, Algorithm 1). On the complete overlay W = J / D and a
  round is exactly FedAvg's with every device training (tested).
* ``"concurrent"``: Lian et al.'s own order, where the gradient is taken at ``x_i`` while the
  models ``x_j`` are exchanged, ``x_i <- sum_j w_ij x_j - eta g_i(x_i)`` (with a local epoch:
  ``+ (train(x_i) - x_i)``), so communication overlaps computation.

Overlay (``overlay``): ``"topology"`` is the devices' own graph: two devices are neighbours when a
link joins them, or, for a device with no device neighbour (``edge_cloud``: devices touch only
their edge server), when they share a non-device neighbour that relays (as ``gossip``'s graph
overlay does), made symmetric. D-PSGD converges only on a connected overlay (Lian et al.:
W's spectral gap), so a disconnected one (``edge_cloud`` splits into one group per edge server) is
refused, pointing to ``"complete"``: every pair of devices, D-PSGD's centralised extreme (FedAvg).
``structure()`` reports the spectral gap ``1 - |lambda_2(W)|`` on fleets of up to 1024 devices.

Timing, as ``gossip`` times its pushes: a model sent between two devices costs what
``NetworkModel.transfer_s`` charges (latency-shortest path + bits / its bottleneck bandwidth),
precomputed once per overlay pair. With ``"train_then_mix"`` device j sends after its local
epoch, so device i is done at ``max(compute_i, max_j (compute_j + transfer_ji))``; with
``"concurrent"`` models leave at the round's start, ``max(compute_i, max_j transfer_ji)``. The
round ends when the slowest device is done (synchronous D-PSGD). Link contention is not modelled
(as for gossip): each of a device's neighbours costs one transfer, however many share a link.
Bytes: every device sends its model to each neighbour, ``2 E`` models a round.

Faults, as the tree protocols honour them: a device that drops out of a round (``[network]
dropout``) neither trains nor sends, but still mixes what reaches it; a crashed device (judged at
the round's start) does nothing. A device mixes only the neighbours' models it got: a silent
neighbour's weight stays on its own model (row-stochastic still, the mean is no longer kept exactly).

Score: the mean over a fixed seeded sample of at most ``eval_devices`` devices of each one's own
model (all of them on small fleets), as for ``gossip``.
"""

from __future__ import annotations

from typing import Any

import networkx as nx
import numpy as np
import torch
from scipy import sparse
from scipy.sparse import csgraph

from clients.params import ParamStack, replicate, select
from clients.recommendation.metrics import DeviceModels
from clients.streams import hashed_uniform
from etree.core.errors import ProtocolError
from etree.engine.checkpoint import stack_like
from etree.engine.protocol import Protocol, RoundCost, own_models
from etree.engine.registry import register_protocol
from etree.engine.workload import Workload
from etree.network.model import NetworkModel
from topologies import delays_from, latency_csgraph, pair_path_costs, path_bottleneck_bandwidth

OVERLAYS = ("topology", "complete")
ORDERS = ("train_then_mix", "concurrent")
#: overlay="complete" keeps every device pair's transfer time (float64): 4096 devices are 128 MiB
MAX_COMPLETE_DEVICES = 4096
SPECTRAL_GAP_DEVICES = 1024  # structure() reports W's spectral gap up to this many devices (a dense eigensolve)
_EVAL_STREAM = 0xD95D  # the evaluated sample of devices
_CHUNK = 256  # Dijkstra sources per batch


# -- pure math --------------------------------------------------------------
def metropolis_hastings(indptr: np.ndarray, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Metropolis-Hastings weights of a symmetric graph in CSR form (``indptr``, ``indices``): per
    stored edge (i, j) ``w_ij = 1 / (1 + max(deg_i, deg_j))``, and per node ``w_ii = 1 - sum_j w_ij``."""
    degree = np.diff(indptr)
    rows = np.repeat(np.arange(len(degree)), degree)
    weights = 1.0 / (1.0 + np.maximum(degree[rows], degree[indices]))
    return weights, 1.0 - np.bincount(rows, weights, minlength=len(degree))


def mix(params: ParamStack, matrix: sparse.csr_array, self_weights: np.ndarray) -> ParamStack:
    """Every device's model averaged with its neighbours': ``x_i <- w_ii x_i + sum_j W_ij x_j``
    (``matrix`` holds the off-diagonal weights), in float64, returned in each tensor's dtype."""
    out: ParamStack = {}
    own = self_weights[:, None]
    for name, tensor in params.items():
        flat = tensor.reshape(len(tensor), -1).to(torch.float64).numpy()
        out[name] = torch.from_numpy(matrix @ flat + own * flat).to(tensor.dtype).view_as(tensor)
    return out


# -- overlay ----------------------------------------------------------------
def topology_overlay(graph: nx.Graph, devices: int, label: str) -> tuple[np.ndarray, np.ndarray, int]:
    """The ``"topology"`` overlay as symmetric CSR arrays ``(indptr, indices)`` and how many devices
    needed a relay (see the module docstring); refused unless it is connected."""
    nodes = graph.number_of_nodes()
    ends = np.array(list(graph.edges()), dtype=np.int64).reshape(-1, 2)
    both = np.concatenate([ends, ends[:, ::-1]])
    linked = sparse.csr_array((np.ones(len(both)), (both[:, 0], both[:, 1])), shape=(nodes, nodes))
    direct = sparse.csr_array(linked[:devices, :devices])
    relayed = np.flatnonzero(np.diff(direct.indptr) == 0)
    rows, cols = direct.tocoo().coords
    if len(relayed):
        relays = sparse.csr_array(linked[:devices, devices:])
        two_hop = (relays[relayed] @ relays.T).tocoo()
        source = relayed[two_hop.coords[0]]
        keep = source != two_hop.coords[1]
        rows = np.concatenate([rows, source[keep], two_hop.coords[1][keep]])
        cols = np.concatenate([cols, two_hop.coords[1][keep], source[keep]])
    overlay = sparse.csr_array((np.ones(len(rows)), (rows, cols)), shape=(devices, devices))
    overlay.sum_duplicates()
    overlay.sort_indices()
    parts, _ = csgraph.connected_components(overlay, directed=False)
    if parts > 1:
        raise ProtocolError(
            f"protocols.{label}.overlay: 'topology' splits the {devices} devices into {parts} groups that share "
            f"no device link nor relay (edge_cloud: one per edge server); D-PSGD needs a connected overlay to "
            f"reach consensus: use overlay = 'complete'"
        )
    return overlay.indptr.astype(np.int64), overlay.indices.astype(np.int64), len(relayed)


def complete_overlay(devices: int) -> tuple[np.ndarray, np.ndarray]:
    """Every pair of devices, as CSR arrays ``(indptr, indices)`` (no self-loops)."""
    indptr = np.arange(devices + 1, dtype=np.int64) * (devices - 1)
    grid = np.broadcast_to(np.arange(devices - 1, dtype=np.int64), (devices, devices - 1))
    indices = grid + (grid >= np.arange(devices)[:, None])  # skip the diagonal
    return indptr, indices.reshape(-1)


def pair_times(graph: nx.Graph, indptr: np.ndarray, indices: np.ndarray, nbytes: int, complete: bool) -> np.ndarray:
    """Transfer time of one model between each overlay pair (CSR order), as ``NetworkModel.transfer_s``
    charges it: latency-shortest path + bits / its bottleneck bandwidth."""
    devices = len(indptr) - 1
    sources = np.repeat(np.arange(devices), np.diff(indptr))
    if complete:  # full rows, in chunks of sources
        out = np.empty(len(indices))
        for start in range(0, devices, _CHUNK):
            chunk = list(range(start, min(devices, start + _CHUNK)))
            latency = delays_from(graph, chunk)[:, :devices]
            bandwidth = path_bottleneck_bandwidth(graph, chunk)[:, :devices]
            rows = slice(indptr[start], indptr[chunk[-1] + 1])
            local = sources[rows] - start
            out[rows] = latency[local, indices[rows]] + 8.0 * nbytes / bandwidth[local, indices[rows]]
        return out
    # bounded Dijkstra per pair: the direct link, or the two slowest relay links of a relayed pair
    latency_graph = latency_csgraph(graph)
    direct = np.asarray(latency_graph[sources, indices]).ravel()
    relay_links = latency_graph[:devices, devices:]
    worst = np.asarray(relay_links.max(axis=1).todense()).ravel() if relay_links.shape[1] else np.zeros(devices)
    bound = np.where(direct > 0, direct, worst[sources] + worst[indices])
    latency, bottleneck = pair_path_costs(graph, sources, indices, bound)
    return latency + 8.0 * nbytes / bottleneck


# -- protocol ---------------------------------------------------------------
class DPSGDProtocol(Protocol):
    """Synchronous D-PSGD with Metropolis-Hastings mixing (see the module docstring)."""

    def __init__(self, label: str, *, overlay: str, order: str, eval_devices: int) -> None:
        super().__init__(label)
        self._overlay = overlay
        self._order = order
        self._eval_devices = eval_devices

    def setup(self, workload: Workload) -> None:
        self.workload = workload
        devices = workload.devices
        if devices < 2:
            raise ProtocolError(f"protocols.{self.label}: D-PSGD needs at least 2 devices, got {devices}")
        complete = self._overlay == "complete"
        if complete and devices > MAX_COMPLETE_DEVICES:
            raise ProtocolError(
                f"protocols.{self.label}.overlay: 'complete' keeps every device pair's transfer time, allowed up to "
                f"{MAX_COMPLETE_DEVICES} devices, got {devices}; use overlay = 'topology' (or fedavg)"
            )
        self.relayed = 0
        if complete:
            self.indptr, self.indices = complete_overlay(devices)
        else:
            self.indptr, self.indices, self.relayed = topology_overlay(workload.graph, devices, self.label)
        self.degree = np.diff(self.indptr)
        self.rows = np.repeat(np.arange(devices), self.degree)  # the receiver of each stored pair
        self.weights, self.self_weights = metropolis_hastings(self.indptr, self.indices)
        self.pair_time = pair_times(workload.graph, self.indptr, self.indices, workload.wire_bytes, complete)
        network = NetworkModel(workload.graph)
        self.compute = network.compute_s(np.arange(devices), workload.epoch_flops)
        self.params = replicate(workload.initial, devices)
        keys = hashed_uniform(workload.seed, _EVAL_STREAM, np.arange(devices))
        self.evaluated = torch.from_numpy(np.sort(np.argsort(keys, kind="stable")[: self._eval_devices]))

    def run_round(self, round_index: int) -> RoundCost:
        workload, devices = self.workload, self.workload.devices
        everyone = np.arange(devices)
        alive = self.clock.alive_mask(everyone)
        sending = alive & ~self.clock.dropped(workload.seed, round_index, everyone)
        senders = np.flatnonzero(sending)
        before = self.params
        trained = self._train(round_index, senders)
        # a device mixes only what reached it: a silent neighbour's weight stays on its own model
        heard = np.where(sending[self.indices] & alive[self.rows], self.weights, 0.0)
        own = 1.0 - np.bincount(self.rows, heard, minlength=devices)
        matrix = sparse.csr_array((heard, self.indices, self.indptr), shape=(devices, devices))
        shared = workload.shared(trained)
        if self._order == "train_then_mix":
            mixed = mix(shared, matrix, own)
        else:  # Lian et al.: mix the models of the round's start, then add each device's own update
            start = mix(workload.shared(before), matrix, own)
            mixed = {name: start[name] + (tensor - before[name]) for name, tensor in shared.items()}
        self.params = mixed | {name: trained[name] for name in workload.private}
        messages = int(self.degree[senders].sum())
        duration = self._duration(sending, alive) if workload.network.timing else 0.0
        self.clock.advance(duration)
        return RoundCost(duration, messages * workload.wire_bytes, messages, clocked=True)

    def _train(self, round_index: int, senders: np.ndarray) -> ParamStack:
        """One local epoch of every sending device; the others keep their models (new tensors either way)."""
        workload = self.workload
        if not len(senders):
            return {name: tensor.clone() for name, tensor in self.params.items()}
        picked = torch.from_numpy(senders)
        if len(senders) == workload.devices:
            return workload.train_devices(self.params, picked, round_index)
        trained = workload.train_devices(select(self.params, picked), picked, round_index)
        return {name: tensor.index_copy(0, picked, trained[name]) for name, tensor in self.params.items()}

    def _duration(self, sending: np.ndarray, alive: np.ndarray) -> float:
        """When the slowest live device has its own epoch done and every model sent to it."""
        sent_at = self.compute[self.indices] if self._order == "train_then_mix" else 0.0
        arrival = np.where(sending[self.indices], sent_at + self.pair_time, 0.0)
        done = np.maximum(np.maximum.reduceat(arrival, self.indptr[:-1]), np.where(sending, self.compute, 0.0))
        return float(done[alive].max(initial=0.0))

    def evaluation_models(self) -> ParamStack:
        return select(self.params, self.evaluated)

    def device_models(self) -> DeviceModels:
        return own_models(self.evaluation_models(), self.evaluated, self.workload.private)

    def state_dict(self) -> dict[str, Any]:
        """The device models: the overlay, weights and transfer times are derived from the spec."""
        return {"params": self.params}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """``setup`` rebuilds the overlay and its timing (deterministic, no training), then the saved
        models replace the initial ones."""
        self.setup(self.workload)
        self.params = stack_like(state["params"], self.workload.initial, "params", rows=self.workload.devices)

    def spectral_gap(self) -> float | None:
        """``1 - |lambda_2(W)|``, how fast mixing reaches consensus (Lian et al.'s rho is ``|lambda_2|^2``);
        None past ``SPECTRAL_GAP_DEVICES`` devices."""
        devices = self.workload.devices
        if devices > SPECTRAL_GAP_DEVICES:
            return None
        matrix = sparse.csr_array((self.weights, self.indices, self.indptr), shape=(devices, devices)).toarray()
        matrix[np.diag_indices(devices)] = self.self_weights
        moduli = np.sort(np.abs(np.linalg.eigvalsh(matrix)))
        return float(1.0 - moduli[-2])

    def structure(self) -> dict[str, Any]:
        return {
            "protocol": "dpsgd",
            "overlay": self._overlay,
            "order": self._order,
            "edges": int(len(self.indices) // 2),
            "degree": {"min": int(self.degree.min()), "mean": float(self.degree.mean()), "max": int(self.degree.max())},
            "relayed_devices": self.relayed,
            "spectral_gap": self.spectral_gap(),
            "evaluated_devices": self.evaluated.tolist(),
        }


@register_protocol("dpsgd")
def dpsgd(
    label: str,
    *,
    overlay: str = "topology",
    order: str = "train_then_mix",
    eval_devices: int = 256,
) -> Protocol:
    """D-PSGD (Lian et al., NeurIPS 2017) with Metropolis-Hastings weights; ``overlay`` is the devices'
    graph (``"topology"``) or every pair (``"complete"``: FedAvg); ``order`` trains then mixes
    (Koloskova et al. 2020, the default) or mixes the round's starting models (``"concurrent"``,
    Lian et al.'s Algorithm 1); see the module docstring."""
    if overlay not in OVERLAYS:
        raise ProtocolError(f"protocols.{label}.overlay: got {overlay!r}; choose one of: {', '.join(OVERLAYS)}")
    if order not in ORDERS:
        raise ProtocolError(f"protocols.{label}.order: got {order!r}; choose one of: {', '.join(ORDERS)}")
    if isinstance(eval_devices, bool) or not isinstance(eval_devices, int) or eval_devices < 1:
        raise ProtocolError(f"protocols.{label}.eval_devices: got {eval_devices!r}; must be an integer >= 1")
    return DPSGDProtocol(label, overlay=overlay, order=order, eval_devices=eval_devices)
