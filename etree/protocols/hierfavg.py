"""HierFAVG (Liu, Zhang, Song, Letaief, "Client-Edge-Cloud Hierarchical Federated
Learning", ICC 2020, Algorithm 1): clients train, each edge server averages its
clients every κ1 local epochs, the cloud averages the edge servers every κ2
edge aggregations; averages are weighted by data size.

HierFAVG is the two-layer special case of the E-Tree aggregation tree without
KMA: layer-1 heads are edge servers, each device joining the one nearest to it
by path latency (not KMA's accuracy-balanced clusters), the root is the cloud,
and the averages are example-weighted. It runs on the same ``TreeProtocol``
engine as E-Tree and FedAvg with ``ratios = [κ1, κ2]``.
"""

from __future__ import annotations

import numpy as np
from sklearn.cluster import KMeans

from etree.core.errors import ProtocolError
from etree.engine.protocol import Protocol
from etree.engine.registry import register_protocol
from etree.engine.workload import Workload
from etree.network.model import NetworkModel
from etree.network.placement import delay_medoid
from etree.trees.hierarchical import LocalObjective, TreeProtocol
from etree.trees.server_opt import server_optimizer
from etree.trees.tree import AggregationTree


def nearest_server(network: NetworkModel, servers: np.ndarray, devices: int) -> np.ndarray:
    """For each device, the index into ``servers`` of the one with the least path latency (ties: first)."""
    network.prepare(int(s) for s in servers)
    latency = np.stack([network.latency_s(int(s), np.arange(devices)) for s in servers])
    return np.argmin(latency, axis=0)


def spatial_aggregators(workload: Workload, count: int) -> np.ndarray:
    """``count`` aggregator devices for a topology without edge servers (our choice, not the paper's).

    A seeded k-means on device positions, then the delay-medoid of each
    cluster (E-Tree paper, Eq. 1). A throwaway ``NetworkModel`` keeps the
    medoid search's Dijkstra rows out of the protocol's cache.
    """
    devices = workload.devices
    pos = np.array([workload.graph.nodes[d]["pos"] for d in range(devices)], dtype=np.float64)
    labels = KMeans(n_clusters=count, n_init=4, random_state=workload.seed % 2**32).fit_predict(pos)
    scratch = NetworkModel(workload.graph)
    heads = [delay_medoid(scratch, np.flatnonzero(labels == k)) for k in np.unique(labels)]
    return np.array(sorted(heads), dtype=np.int64)


def edge_cloud_tree(
    workload: Workload, network: NetworkModel, edge_servers: int | None, label: str = "hierfavg"
) -> AggregationTree:
    """The client-edge-cloud tree: devices under their nearest edge server, the servers under the cloud.

    Edge servers and the cloud are the graph's ``role="edge"`` and ``role="cloud"``
    nodes (the ``edge_cloud`` topology). Without edge servers, ``edge_servers``
    aggregator devices (default ``max(1, devices // 20)``) are chosen by
    ``spatial_aggregators``; without a cloud, the root is the delay-medoid of the
    edge heads. Edge servers no device is nearest to are dropped.
    """
    graph, devices = workload.graph, workload.devices
    edges = np.array(sorted(n for n, role in graph.nodes(data="role") if role == "edge"), dtype=np.int64)
    clouds = sorted(n for n, role in graph.nodes(data="role") if role == "cloud")
    if len(edges) == 0:
        if edge_servers is not None and edge_servers > devices:
            raise ProtocolError(
                f"protocols.{label}.edge_servers: got {edge_servers}; at most the {devices} devices can be edge servers"
            )
        edges = spatial_aggregators(workload, edge_servers or max(1, devices // 20))
    nearest = nearest_server(network, edges, devices)
    used, cluster = np.unique(nearest, return_inverse=True)
    heads = edges[used]
    root = int(clouds[0]) if clouds else delay_medoid(network, heads)
    return AggregationTree(
        heads=(heads, np.array([root], dtype=np.int64)),
        parents=(cluster.astype(np.int64), np.zeros(len(heads), dtype=np.int64)),
    )


def _positive_int(label: str, option: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ProtocolError(f"protocols.{label}.{option}: got {value!r}; must be an integer >= 1")
    return value


@register_protocol("hierfavg")
def hierfavg(
    label: str,
    *,
    kappa1: int = 1,
    kappa2: int = 2,
    weighted: bool = True,
    participation: float = 1.0,
    edge_servers: int | None = None,
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
    """HierFAVG (Liu et al., ICC 2020): edge aggregation every ``kappa1`` local epochs, cloud
    aggregation every ``kappa2`` edge aggregations. ``edge_servers`` is used only on
    topologies without ``role="edge"`` nodes (see ``edge_cloud_tree``). ``local = "fedprox"``
    trains with FedProx's proximal term (weight ``mu``) toward the model each device received.
    ``server_opt`` steps the cloud with a server optimizer (``"avgm"``: FedAvgM, Hsu et al. 2019;
    ``"adam"``, ``"yogi"``, ``"adagrad"``: Reddi et al., ICLR 2021) tuned by ``server_lr``,
    ``server_momentum``, ``beta1``, ``beta2``, ``tau`` (None: the kind's default, Flower's;
    ``etree.trees.server_opt``).
    ``item_merge`` (recommenders): ``"touched"`` (default) sends each device's touched item rows and
    averages each row over its senders (FCF), ``"dense"`` averages whole item tables
    (``etree.trees.sparse_rows``).
    """
    opt = server_optimizer(
        label, server_opt, lr=server_lr, momentum=server_momentum, beta1=beta1, beta2=beta2, tau=tau
    )
    ratios = [_positive_int(label, "kappa1", kappa1), _positive_int(label, "kappa2", kappa2)]
    if edge_servers is not None:
        _positive_int(label, "edge_servers", edge_servers)

    def build(workload: Workload, network: NetworkModel) -> AggregationTree:
        return edge_cloud_tree(workload, network, edge_servers, label)

    return TreeProtocol(
        label,
        build,
        ratios=ratios,
        weighted=weighted,
        participation=participation,
        local=local,
        mu=mu,
        server_opt=opt,
        item_merge=item_merge,
    )
