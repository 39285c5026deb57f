"""IFCA, the Iterative Federated Clustering Algorithm (Ghosh, Chung, Yin, Ramchandran, "An Efficient
Framework for Clustered Federated Learning", NeurIPS 2020, Algorithm 2, model averaging): the
server keeps k cluster models; each round every participating device scores the k models' loss
on its own training data, picks the lowest (its cluster identity), trains from that model, and
the server averages the uploads per cluster. A cluster nobody picked keeps its model.

Choices the paper leaves open, made here:

* Initialisation: cluster 0 starts from the run's initial model, clusters 1..k-1 from independent
  random initialisations drawn from the run's seed (the paper: random initialisation), so that
  ``clusters = 1`` is FedAvg exactly (tested).
* What a device holds, and is scored on, is the current model of the cluster it last chose; before
  its first round, the one with the lowest loss on its data among the initial models.
* Loss ties go to the lowest cluster index.

Everything else is FedAvg's (``server``, ``participation``, ``weighted``, ``server_trains`` mean
what they mean there), on the same star tree and its timing (``etree.trees.timing``): every live
device hears the server each round (the engine's FedAvg pushes to all), here all k models in one
message of k model sizes; an upload is one model. A device's compute time adds the k forward
passes over its data that its choice costs (a third of a training epoch's FLOPs each;
none when k = 1, where there is nothing to choose). Late uploads are dropped.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from clients.classification.evaluation import device_losses
from clients.classification.fleet import FleetData
from clients.params import ParamStack, init_params, select
from etree.core.errors import ProtocolError
from etree.engine.checkpoint import CheckpointError, expect_tensor, stack_like
from etree.engine.protocol import Protocol, RoundCost
from etree.engine.registry import register_protocol
from etree.engine.sampling import participants
from etree.engine.workload import Workload
from etree.network.model import NetworkModel
from etree.trees.aggregation import segment_mean
from etree.trees.hierarchical import load_timing_state, timing_state
from etree.trees.servers import choose_server
from etree.trees.timing import TreeTiming, round_messages
from etree.trees.tree import star_tree

_INIT_STREAM = 0x1FCA  # mixed with the workload seed: the initialisations of clusters 1..k-1


def cluster_inits(workload: Workload, clusters: int) -> ParamStack:
    """The k initial cluster models, a stack: the run's initial model, then independent draws."""
    models = [workload.initial]
    for k in range(1, clusters):
        seed = int(np.random.SeedSequence([workload.seed, _INIT_STREAM, k]).generate_state(1)[0])
        models.append(init_params(workload.model, seed))
    return {name: torch.stack([model[name] for model in models]) for name in workload.initial}


class IFCAProtocol(Protocol):
    """IFCA with model averaging over a star (see the module docstring)."""

    def __init__(
        self, label: str, *, clusters: int, server: str | int, participation: float, weighted: bool, server_trains: bool
    ) -> None:
        super().__init__(label)
        self._clusters = clusters
        self._server = server
        self._participation = participation
        self._weighted = weighted
        self._server_trains = server_trains

    def setup(self, workload: Workload) -> None:
        self._build(workload)
        self.models = cluster_inits(workload, self._clusters)
        self.choice = self._choose(torch.arange(workload.devices))

    def _build(self, workload: Workload) -> None:
        """The star, its timing and what the rounds read (set-up and ``load_state_dict``)."""
        if not isinstance(workload.data, FleetData):
            raise ProtocolError(
                f"protocols.{self.label}: IFCA picks clusters by classification loss; a recommender workload "
                f"has none here: use fedavg"
            )
        if workload.network.late == "stale" and workload.network.deadline_s > 0:
            raise ProtocolError(
                f"network.late: got 'stale'; protocol {self.label!r} (IFCA) drops late uploads: use late = 'drop'"
            )
        self.workload = workload
        self.fleet = workload.data
        self.network = NetworkModel(workload.graph)
        self.tree = star_tree(workload.devices, choose_server(workload, self.network, self._server, self.label))
        self.network.prepare([self.tree.root])
        size = workload.wire_bytes
        self.timing = TreeTiming(
            self.tree, self.network, self.clock, size, failover=False, down_size=self._clusters * size
        )
        self.weights = workload.data.counts.to(torch.float32) if self._weighted else None
        root = self.tree.root
        self.idle = None if self._server_trains or root >= workload.devices else np.array([root])
        per_model = workload.epoch_flops / (3 * workload.train.local_epochs)  # one forward pass over the data
        self.choose_flops = per_model * self._clusters if self._clusters > 1 else np.zeros(workload.devices)

    def _choose(self, devices: torch.Tensor) -> torch.Tensor:
        """Each device's cluster: the model with the lowest loss on its own data (ties: lowest index)."""
        if self._clusters == 1 or not len(devices):
            return torch.zeros(len(devices), dtype=torch.int64)
        losses = device_losses(self.workload.model, self.models, self.fleet, devices)
        return losses.argmin(dim=1)

    def run_round(self, round_index: int) -> RoundCost:
        workload, root = self.workload, self.tree.root
        ids = participants(workload.seed, round_index, workload.devices, self._participation, self.idle)
        if workload.network.dropout > 0 or self.clock.dead or self.timing.lost[0]:
            keep = ~self.clock.dropped(workload.seed, round_index, ids) & self.clock.alive_mask(ids)
            ids = ids[keep & ~self.timing.orphaned(ids)]
        active = torch.from_numpy(ids)
        if workload.network.timing:
            compute = self.network.compute_s(ids, workload.epoch_flops[ids] + self.choose_flops[ids])
            outcome = self.timing.run_round(ids, compute, 1, False)
            duration, messages, delivered, top = outcome.duration_s, outcome.messages, outcome.delivered, outcome.top
        else:
            duration, messages, top = 0.0, round_messages(self.tree, ids, 1, False), 1
            delivered = np.ones(len(ids), dtype=bool)
        uploads = int(np.count_nonzero(ids != root)) if messages else 0
        sent = uploads * workload.wire_bytes + (messages - uploads) * self._clusters * workload.wire_bytes
        events = {"root_aggregations": 1.0} if top == 1 else None  # counted as FedAvg counts them
        cost = RoundCost(duration, sent, messages, events, clocked=True)
        if not len(ids):
            return cost
        choice = self._choose(active)
        trained = workload.train_devices(select(self.models, choice), active, round_index)
        self.choice[active] = choice
        kept = torch.from_numpy(delivered)
        if bool(kept.any()):
            rows = active[kept]
            weights = None if self.weights is None else self.weights[rows]
            averaged = segment_mean({k: v[kept] for k, v in trained.items()}, choice[kept], self._clusters, weights)
            heard = torch.bincount(choice[kept], minlength=self._clusters) > 0
            self.models = {
                name: torch.where(heard.view(-1, *[1] * (tensor.dim() - 1)), tensor, self.models[name])
                for name, tensor in averaged.items()
            }
        return cost

    def evaluation_models(self) -> ParamStack:
        """The k cluster models; ``holders`` counts the devices whose cluster each is."""
        return self.models

    def holders(self) -> torch.Tensor:
        return torch.bincount(self.choice, minlength=self._clusters)

    def evaluate(self, workload: Workload) -> dict[str, float]:
        """What devices hold (``Protocol.evaluate``), and ``clusters_held``: how many clusters some
        device holds (IFCA's clusters can collapse into fewer)."""
        return super().evaluate(workload) | {"clusters_held": float(int((self.holders() > 0).sum()))}

    def resolve_node(self, node: str | int) -> int | None:
        """``server``/``root``: the server; an int: that node; ``head`` means nothing on a star."""
        if node in ("server", "root"):
            return self.tree.root
        return node if isinstance(node, int) else None

    def structure(self) -> dict[str, Any]:
        return self.tree.to_dict() | {"protocol": "ifca", "clusters": self._clusters}

    def state_dict(self) -> dict[str, Any]:
        """The cluster models, each device's cluster and what the star's timing learnt (a lost server)."""
        return {"models": self.models, "choice": self.choice, "timing": timing_state(self.timing)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        workload = self.workload
        self._build(workload)
        self.models = stack_like(state["models"], workload.initial, "models", rows=self._clusters)
        self.choice = expect_tensor(state["choice"], "choice", torch.int64, (workload.devices,))
        if len(self.choice) and not 0 <= int(self.choice.min()) <= int(self.choice.max()) < self._clusters:
            raise CheckpointError(f"choice: clusters must lie in [0, {self._clusters})")
        load_timing_state(self.timing, state["timing"])


@register_protocol("ifca")
def ifca(
    label: str,
    *,
    clusters: int = 2,
    server: str | int = "auto",
    participation: float = 1.0,
    weighted: bool = False,
    server_trains: bool = False,
) -> Protocol:
    """IFCA (Ghosh et al., NeurIPS 2020, Algorithm 2 with model averaging) with ``clusters`` models;
    the other options are FedAvg's. See the module docstring for the choices made."""
    if isinstance(clusters, bool) or not isinstance(clusters, int) or clusters < 1:
        raise ProtocolError(f"protocols.{label}.clusters: got {clusters!r}; must be an integer >= 1")
    if not 0 < participation <= 1:
        raise ProtocolError(f"protocols.{label}.participation: got {participation}; must be in (0, 1]")
    return IFCAProtocol(
        label,
        clusters=clusters,
        server=server,
        participation=participation,
        weighted=weighted,
        server_trains=server_trains,
    )
