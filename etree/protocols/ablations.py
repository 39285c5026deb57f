"""The E-Tree paper's ablations (Table 3): individual training and grouped aggregation.

- ``individual``: no collaboration; every device trains alone from the common
  initial model (the authors' ``SingleNodeLearningProtocol``). Accuracy is the
  mean over device models (GUESS: the paper's number is such a mean), with its
  spread. Evaluating every model of a large fleet is costly, so at most
  ``eval_devices`` devices, a fixed seeded sample, are evaluated (our choice).
- ``grouped``: E-Tree's tree without the top (the paper's "grouped
  aggregation", [DYK]): the layer-1 clusters aggregate every round and are
  never merged; accuracy is the mean over devices of the cluster model each
  holds. It builds the very same tree as ``etree`` with the same options and
  seed (the authors' ``GroupLearningProtocol`` used fixed groups of 10
  consecutive ids instead, equal in size, so their mean over the group models
  is the same mean over devices).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from clients.params import ParamStack, replicate
from clients.recommendation.metrics import DeviceModels
from etree.core.errors import ProtocolError
from etree.engine.checkpoint import stack_like
from etree.engine.protocol import Protocol, RoundCost, own_models
from etree.engine.registry import register_protocol
from etree.engine.workload import Workload
from etree.network.model import NetworkModel
from etree.trees.hierarchical import LocalObjective
from etree.trees.kma_tree import TreeOptions, check_ratios, kma_tree_protocol

EVAL_STREAM_TAG = 0x1D1  # mixed with the workload seed: the evaluated sample of devices


class IndividualProtocol(Protocol):
    """Every device runs local SGD on its own data only; nothing is ever sent."""

    def __init__(self, label: str, *, eval_devices: int = 256) -> None:
        super().__init__(label)
        if isinstance(eval_devices, bool) or not isinstance(eval_devices, int) or eval_devices < 1:
            raise ProtocolError(f"protocols.{label}.eval_devices: got {eval_devices!r}; must be an integer >= 1")
        self._eval_devices = eval_devices

    def setup(self, workload: Workload) -> None:
        self.workload = workload
        self.network = NetworkModel(workload.graph)
        self.params = replicate(workload.initial, workload.devices)
        self.devices = torch.arange(workload.devices)
        rng = np.random.default_rng(np.random.SeedSequence([workload.seed, EVAL_STREAM_TAG]))
        count = min(self._eval_devices, workload.devices)
        self.evaluated = torch.from_numpy(np.sort(rng.choice(workload.devices, size=count, replace=False)))

    def run_round(self, round_index: int) -> RoundCost:
        self.params = self.workload.train_devices(self.params, self.devices, round_index)
        ids = self.devices.numpy()
        duration = float(self.network.compute_s(ids, self.workload.epoch_flops[ids]).max(initial=0.0))
        return RoundCost(duration, 0, 0)

    def evaluation_models(self) -> ParamStack:
        return {name: tensor[self.evaluated] for name, tensor in self.params.items()}

    def device_models(self) -> DeviceModels:
        return own_models(self.evaluation_models(), self.evaluated, self.workload.private)

    def state_dict(self) -> dict[str, Any]:
        return {"params": self.params}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """``setup`` redraws the evaluated sample (seeded), then the saved models replace the initial ones."""
        self.setup(self.workload)
        self.params = stack_like(state["params"], self.workload.initial, "params", rows=self.workload.devices)


@register_protocol("individual")
def individual(label: str, *, eval_devices: int = 256) -> Protocol:
    """Individual training (paper Table 3): each device alone; accuracy = mean over (a sample of) devices."""
    return IndividualProtocol(label, eval_devices=eval_devices)


@register_protocol("grouped")
def grouped(
    label: str,
    *,
    groups: Sequence[int] = (8, 1),
    ratios: Sequence[int] | None = None,
    clustering: str = "kma",
    delta: float = 0.09,
    pretrain_epochs: int = 10,
    public_samples: int = 1000,
    max_iterations: int = 100,
    public_nodes: bool = False,
    gamma: float = 0.05,
    public_merge: str = "mean",
    weighted: bool = False,
    participation: float = 1.0,
    local: LocalObjective = "sgd",
    mu: float = 0.01,
    server_opt: str = "none",
    item_merge: str = "touched",
) -> Protocol:
    """Grouped aggregation (paper Table 3): the E-Tree tree, its top layer never aggregating.

    Options mean what they mean for ``etree`` (``local``/``mu``: FedProx); ``ratios`` defaults to 1 per
    layer (the top ratio is never used). Accuracy = mean over devices of the
    layer-1 cluster model each holds. ``server_opt`` must stay ``"none"``: the top never
    aggregates, so there is no root step for a server optimizer (use ``etree`` for one).
    ``item_merge`` (recommenders): ``"touched"`` (default) sends each device's touched item rows and
    averages each row over its senders (FCF), ``"dense"`` averages whole item tables
    (``etree.trees.sparse_rows``).
    """
    if server_opt != "none":
        raise ProtocolError(
            f"protocols.{label}.server_opt: got {server_opt!r}; grouped's top layer never aggregates, so there "
            f"is no root step for a server optimizer: use protocol 'etree' with server_opt, or 'none'"
        )
    options = TreeOptions.checked(
        label,
        groups=groups,
        clustering=clustering,
        delta=delta,
        pretrain_epochs=pretrain_epochs,
        public_samples=public_samples,
        max_iterations=max_iterations,
        public_nodes=public_nodes,
        gamma=gamma,
    )
    depth = len(options.groups)
    if depth < 2:
        raise ProtocolError(
            f"protocols.{label}.groups: got {list(options.groups)}; grouped needs at least two layers "
            f"(clusters, then the root that never aggregates), e.g. [8, 1]"
        )
    checked = check_ratios(label, [1] * depth if ratios is None else ratios, depth)
    return kma_tree_protocol(
        label,
        options,
        checked,
        weighted=weighted,
        participation=participation,
        public_merge=public_merge,
        top_aggregates=False,
        local=local,
        mu=mu,
        item_merge=item_merge,
    )
