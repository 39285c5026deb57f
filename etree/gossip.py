"""Gossip learning (Hegedűs, Danner, Jelasity, "Gossip learning as a decentralized
alternative to federated learning", DAIS 2019, Algorithm 1): no server and no tree.
Every device periodically pushes its model to one peer; a receiver merges what
it got with its own model, then updates it on its local data.

One round here is one gossip cycle, all devices at once:

1. every device picks one peer of the overlay (``hashed_uniform`` on
   (seed, round, device), so a device's choice is independent of the fleet's
   size or order) and pushes the model it holds;
2. every device merges the models it received with its own (``merge_models``);
3. every device runs one local epoch (``local_train``), as in every protocol
   of this engine, so curves share an x-axis. (In Hegedűs et al. a node
   updates once per received model; a device here receives one model per
   cycle on average.)

Merging, from the paper's MERGE: ``"average"`` is the plain mean of the own
and the received models; ``"age"`` weights each model by its age ``t`` (the
number of training examples it has seen) and keeps ``t = max`` of the merged
ages. With equal local datasets and every device training every cycle all ages
stay equal, so ``"age"`` then equals ``"average"``. The paper receives one
model at a time; when several arrive in one cycle we average the own model
with all of them at once, with equal (``"average"``) or age (``"age"``)
weights. That is our choice: it is order-free, and with one message it is
exactly the paper's MERGE.

Overlays: ``"graph"`` gossips with neighbours in the topology graph (relayed
through a shared edge server where a device has no device neighbour);
``"random"`` samples any other device uniformly, an idealised peer-sampling
service (Newscast with a full cache, as in the E-Tree authors' simulator).

Timing, the synchronous-cycle approximation: gossip is asynchronous (each
device wakes on its own period), but this round-based engine gives a cycle the
duration max over devices of (one local epoch + the push to its peer). A later
version will run per-device periods with random phases in simpy. A push costs
what ``NetworkModel.transfer_s`` charges (latency-shortest path + bits / its
bottleneck bandwidth), precomputed once: per overlay pair by a bounded
Dijkstra for ``"graph"``, as a device x device matrix for ``"random"``.
"""

from __future__ import annotations

from typing import Any

import networkx as nx
import numpy as np
import torch
from scipy import sparse
from scipy.sparse import csgraph

from clients.evaluation import voted_accuracy
from clients.models import ParamStack, replicate, select
from clients.recommenders import DeviceModels
from clients.streams import hashed_uniform
from clients.training import local_train
from etree.errors import ProtocolError
from etree.network import NetworkModel
from etree.protocol import Protocol, RoundCost, Workload, own_models
from etree.registry import register_protocol
from topologies import delays_from, latency_csgraph, path_bottleneck_bandwidth

OVERLAYS = ("graph", "random")
MERGES = ("average", "age")
#: overlay="random" keeps an exact D x D device transfer-time matrix (float32):
#: 8192 devices are 256 MiB and about a minute of Dijkstra at setup.
MAX_RANDOM_OVERLAY_DEVICES = 8192
_PEER_STREAM = 0x6055  # coordinates that keep the random streams of gossip apart
_EVAL_STREAM = 0xE7A1
_CHUNK = 256  # Dijkstra sources per batch


# -- pure math --------------------------------------------------------------
def merge_models(params: ParamStack, peers: torch.Tensor, ages: torch.Tensor | None = None) -> ParamStack:
    """Every device's own model merged with the models pushed to it (Hegedűs et al., MERGE).

    Device i pushes row i of ``params`` to device ``peers[i]``. Device d's merge is
    ``(a_d w_d + sum_{i: peers[i]=d} a_i w_i) / (a_d + sum a_i)`` with ``a = 1``
    (``ages=None``, plain average) or ``a = age`` (age-weighted). A device whose
    merge has zero total age (nobody has trained yet) takes the plain average.
    A device that received nothing keeps its model. Returns new tensors.
    """
    count = len(peers)
    own = torch.ones(count, dtype=torch.float64) if ages is None else ages.to(torch.float64)
    sent = own.clone()
    total = own.clone().index_add_(0, peers, sent)
    if ages is not None:
        blank = total == 0
        own = torch.where(blank, torch.ones_like(own), own)
        sent = torch.where(blank[peers], torch.ones_like(sent), sent)
        total = own.clone().index_add_(0, peers, sent)
    own_share, sent_share = own / total, sent / total[peers]
    out: ParamStack = {}
    for name, tensor in params.items():
        shape = (-1,) + (1,) * (tensor.dim() - 1)
        merged = tensor * own_share.to(tensor.dtype).view(shape)
        out[name] = merged.index_add_(0, peers, tensor * sent_share.to(tensor.dtype).view(shape))
    return out


def merge_ages(ages: torch.Tensor, peers: torch.Tensor) -> torch.Tensor:
    """Age after the merge: the largest of the own and the received ages (Hegedűs et al., MERGE)."""
    return ages.clone().scatter_reduce_(0, peers, ages, reduce="amax", include_self=True)


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
def graph_overlay(graph: nx.Graph, devices: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each device's gossip partners as CSR arrays ``(indptr, indices)``, and who needed a relay.

    Partners are the device's device neighbours in the graph. A device with
    none (in ``edge_cloud`` devices touch only their edge server) gossips with
    the devices that share a non-device neighbour with it, the traffic being
    relayed by that node (e.g. its edge server). A device with neither has no
    one to gossip with: a ``ProtocolError`` suggests ``overlay="random"``.
    """
    adjacency = latency_csgraph(graph)
    linked = (adjacency != 0).astype(np.int64)
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
    """Transfer time (latency-shortest path + bits / its bottleneck bandwidth) for each pair.

    Same cost model as ``NetworkModel.transfer_s``, but for many scattered
    pairs: ``bound[i]`` is an upper bound on the latency of pair i, so Dijkstra
    stops there (``limit``) and costs a local ball, not a full row. The
    bottleneck is read by walking each pair's predecessor chain, all pairs at once.
    """
    latency = latency_csgraph(graph)
    bandwidth = nx.to_scipy_sparse_array(graph, nodelist=range(graph.number_of_nodes()), weight="bandwidth_bps")
    bandwidth = sparse.csr_array(bandwidth)
    bandwidth.sort_indices()
    n = graph.number_of_nodes()
    codes = np.repeat(np.arange(n, dtype=np.int64), np.diff(bandwidth.indptr)) * n + bandwidth.indices
    out = np.empty(len(sources))
    order = np.argsort(bound, kind="stable")  # batches of similar bounds keep each ball small
    unique, first = np.unique(sources[order], return_index=True)
    by_bound = unique[np.argsort(first, kind="stable")]
    for start in range(0, len(by_bound), _CHUNK):
        chunk = by_bound[start : start + _CHUNK]
        row_of = np.full(n, -1)
        row_of[chunk] = np.arange(len(chunk))
        mine = np.flatnonzero(row_of[sources] >= 0)
        limit = float(bound[mine].max()) * (1 + 1e-9)
        dist, pred = csgraph.dijkstra(latency, directed=True, indices=chunk, limit=limit, return_predecessors=True)
        rows, here, goal = row_of[sources[mine]], targets[mine].copy(), sources[mine]
        found = dist[rows, here]
        if not np.all(np.isfinite(found)):
            raise ProtocolError("gossip: a pair is farther than its latency bound (internal error)")
        slowest = np.full(len(mine), np.inf)
        walking = here != goal
        while walking.any():
            step = np.flatnonzero(walking)
            back = pred[rows[step], here[step]]
            link = np.searchsorted(codes, back * n + here[step])
            slowest[step] = np.minimum(slowest[step], bandwidth.data[link])
            here[step] = back
            walking = here != goal
        out[mine] = found + 8.0 * nbytes / slowest
    return out


def overlay_bounds(graph: nx.Graph, devices: int, indptr: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """An upper bound on the path latency of each overlay pair: its direct link, or the two links via a relay."""
    latency = latency_csgraph(graph)
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
class GossipProtocol(Protocol):
    """Push gossip learning with merge-then-update, one cycle per round (Hegedűs et al., DAIS 2019).

    ``accuracy`` is the mean over a fixed seeded sample of at most
    ``eval_devices`` device models (all of them on small fleets), with
    ``accuracy_std`` their spread; ``voted`` adds the accuracy of their majority
    vote (the E-Tree authors' LossObserver reports a voted error).
    """

    def __init__(self, label: str, *, overlay: str, merge: str, eval_devices: int, voted: bool) -> None:
        super().__init__(label)
        self._overlay = overlay
        self._merge = merge
        self._eval_devices = eval_devices
        self._voted = voted

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
            self.indptr, self.indices, self.relayed = graph_overlay(workload.graph, devices)
            bound = overlay_bounds(workload.graph, devices, self.indptr, self.indices)
            sources = np.repeat(np.arange(devices), np.diff(self.indptr))
            self.pair_time = pair_transfer_s(workload.graph, sources, self.indices, workload.message_bytes, bound)
        else:
            if devices > MAX_RANDOM_OVERLAY_DEVICES:
                raise ProtocolError(
                    f"protocols.{self.label}.overlay: 'random' keeps a device x device delay matrix, allowed up to "
                    f"{MAX_RANDOM_OVERLAY_DEVICES} devices, got {devices}; use overlay = 'graph'"
                )
            self.pair_time = device_transfer_matrix(workload.graph, devices, workload.message_bytes)
        keys = hashed_uniform(workload.seed, _EVAL_STREAM, np.arange(devices))
        sample = np.sort(np.argsort(keys, kind="stable")[: self._eval_devices])
        self.evaluated = torch.from_numpy(sample)

    def run_round(self, round_index: int) -> RoundCost:
        workload, devices = self.workload, self.workload.devices
        if self._overlay == "graph":
            slot = neighbour_choice(workload.seed, round_index, self.indptr)
            peers_np, transfer = self.indices[slot], self.pair_time[slot]
        else:
            peers_np = random_peers(workload.seed, round_index, devices)
            transfer = self.pair_time[np.arange(devices), peers_np].astype(np.float64)
        peers = torch.from_numpy(peers_np)
        aged = self._merge == "age"
        # only shared parameters travel; private ones (user embeddings) stay as their device holds them
        merged = merge_models(workload.shared(self.params), peers, self.ages if aged else None)
        merged |= {name: self.params[name] for name in workload.private}
        self.ages = merge_ages(self.ages, peers)
        everyone = torch.arange(devices)
        self.params = local_train(
            workload.model,
            merged,
            workload.data,
            everyone,
            workload.train,
            seed=workload.seed,
            round_index=round_index,
        )
        self.ages = self.ages + workload.data.counts.to(torch.float64) * workload.train.local_epochs
        duration = float(np.max(self.ready + transfer))
        return RoundCost(duration, devices * workload.message_bytes, devices)

    def evaluation_models(self) -> ParamStack:
        return select(self.params, self.evaluated)

    def device_models(self) -> DeviceModels:
        return own_models(self.evaluation_models(), self.evaluated, self.workload.private)

    def evaluate(self, workload: Workload) -> dict[str, float]:
        metrics = super().evaluate(workload)
        if self._voted and not workload.recommender:
            metrics["voted_accuracy"] = voted_accuracy(
                workload.model, self.evaluation_models(), workload.x_test, workload.y_test
            )
        return metrics

    def structure(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "protocol": "gossip",
            "overlay": self._overlay,
            "merge": self._merge,
            "evaluated_devices": self.evaluated.tolist(),
        }
        if self._overlay == "graph":
            degree = np.diff(self.indptr)
            out["degree"] = {"min": int(degree.min()), "mean": float(degree.mean()), "max": int(degree.max())}
            out["relayed_devices"] = len(self.relayed)
        return out


@register_protocol("gossip")
def gossip(
    label: str, *, overlay: str = "graph", merge: str = "average", eval_devices: int = 256, voted: bool = False
) -> Protocol:
    """Gossip learning (Hegedűs et al., DAIS 2019); see the module docstring for the choices made."""
    if overlay not in OVERLAYS:
        raise ProtocolError(f"protocols.{label}.overlay: got {overlay!r}; choose one of: {', '.join(OVERLAYS)}")
    if merge not in MERGES:
        raise ProtocolError(f"protocols.{label}.merge: got {merge!r}; choose one of: {', '.join(MERGES)}")
    if isinstance(eval_devices, bool) or not isinstance(eval_devices, int) or eval_devices < 1:
        raise ProtocolError(f"protocols.{label}.eval_devices: got {eval_devices!r}; must be an integer >= 1")
    if not isinstance(voted, bool):
        raise ProtocolError(f"protocols.{label}.voted: got {voted!r}; must be true or false")
    return GossipProtocol(label, overlay=overlay, merge=merge, eval_devices=eval_devices, voted=voted)
