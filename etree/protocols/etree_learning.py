"""E-Tree learning (Yang et al., IEEE IoT-J 8(14), 2021): the KMA tree and the ``etree`` protocol.

The tree is built bottom-up as in the authors' ``ETreeLogicalTopology.wire``:
layer 0 (every device) is clustered by KMA (Algorithm 1; or plain delay
k-medoids, ``clustering="kmedoids"``) into ``groups[0]`` clusters whose heads
are their delay-medoids (Eq. 1), members of their own cluster; each further
layer clusters the previous layer's heads by delay k-medoids into
``groups[l]`` clusters; the last layer has one cluster whose medoid is the
root. ``groups=[8, 1]`` is the paper's 3-level tree (devices, 8 heads, root).
Optionally, public nodes shared by every cluster are chosen by Algorithm 2.

Training then runs on the synchronous tree engine (:mod:`etree.trees.hierarchical`):
``ratios=[1, 5]`` means a cluster aggregation every local epoch and a root
aggregation every 5 cluster aggregations (the authors' ``lu`` config).
"""

from __future__ import annotations

from collections.abc import Sequence

from etree.engine.protocol import Protocol
from etree.engine.registry import register_protocol
from etree.trees.hierarchical import LocalObjective
from etree.trees.kma_tree import TreeOptions, check_ratios, kma_tree_protocol
from etree.trees.server_opt import server_optimizer


# -- the protocol ------------------------------------------------------------
@register_protocol("etree")
def etree(
    label: str,
    *,
    groups: Sequence[int] = (8, 1),
    ratios: Sequence[int] = (1, 5),
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
    server_lr: float | None = None,
    server_momentum: float | None = None,
    beta1: float | None = None,
    beta2: float | None = None,
    tau: float | None = None,
    item_merge: str = "touched",
) -> Protocol:
    """E-Tree learning: synchronous aggregation over the KMA tree.

    Defaults are the authors' ``lu`` config (groups 8,1; ratios 1,5; delta
    0.09; 10 pre-training epochs; 1000 public samples); ``gamma`` 0.05 and the
    public-node merge are GUESSes. ``accuracy`` reports the root model.
    ``local = "fedprox"`` is E-Tree + FedProx: local SGD with the proximal term
    mu/2 ||w - w_received||^2 (Li et al., MLSys 2020), w_received the model the
    device holds when the round starts (its cluster's or the root's).
    ``server_opt`` steps the root, at each of its aggregations, with a server optimizer (``"avgm"``:
    FedAvgM, Hsu et al. 2019; ``"adam"``, ``"yogi"``, ``"adagrad"``: Reddi et al., ICLR 2021) tuned by ``server_lr``,
    ``server_momentum``, ``beta1``, ``beta2``, ``tau`` (None: the kind's default, Flower's;
    ``etree.trees.server_opt``).
    ``item_merge`` (recommenders): ``"touched"`` (default) sends each device's touched item rows and
    averages each row over its senders (FCF), ``"dense"`` averages whole item tables
    (``etree.trees.sparse_rows``).
    """
    opt = server_optimizer(
        label, server_opt, lr=server_lr, momentum=server_momentum, beta1=beta1, beta2=beta2, tau=tau
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
    checked = check_ratios(label, ratios, len(options.groups))
    return kma_tree_protocol(
        label,
        options,
        checked,
        weighted=weighted,
        participation=participation,
        public_merge=public_merge,
        local=local,
        mu=mu,
        server_opt=opt,
        item_merge=item_merge,
    )
