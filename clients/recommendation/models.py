"""Compact federated recommenders: models, batched local training and ranking metrics.

Two models, each a template like the classifiers of :mod:`clients.classification.models`
(parameters live in a stacked dict ``{name: [D, ...]}``):

* ``mf``: matrix factorisation with an item bias, trained with BPR (Rendle et
  al., "BPR: Bayesian Personalized Ranking from Implicit Feedback", UAI 2009):
  one sampled negative per positive, loss -ln sigma(s_ui - s_uj) + l2 * (|p_u|^2
  + |q_i|^2 + |q_j|^2);
* ``ncf``: NeuMF, GMF and MLP towers fused by one output layer (He et al.,
  "Neural Collaborative Filtering", WWW 2017, Sec. 3.4), trained with binary
  cross-entropy on each positive and ``negatives`` sampled negatives (4 in the paper).

Embedding tables are indexed by *user slot* (a device's users are its slots
0..U-1) or by item. The user tables are **private**: they stay on their device,
protocols never send or average them (``Recommender.private``); item tables and
dense weights are shared. A device's user table therefore means its own users
only, and its scores need its own rows.

Training is one tensor program over devices, like :mod:`clients.classification.training`:
each step gathers the embedding rows a batch touches ([D, b, ...]), runs the
model's score under ``vmap``, and scatters the rows' gradients back with
``index_put_`` (a sparse SGD step, equal to the dense one since untouched rows
get zero gradient, without [D, I, k] gradient tensors). Embedding rows take
per-sample SGD steps (the batch's gradients summed, as in Rendle et al.'s
LearnBPR), so their step does not shrink with batch size; dense weights take
the batch-mean step. Negatives are drawn on the device from counter-based
streams (:func:`clients.streams.hashed_uniform` on (seed, round, epoch, device,
position)), redrawn up to ``NEGATIVE_TRIES`` times while they hit the user's
training items.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, vmap

from clients.errors import ClientsError
from clients.params import ParamStack, init_params
from etree.core.registry import Registry

RecommenderFactory = Callable[..., "Recommender"]
RECOMMENDERS: Registry[RecommenderFactory] = Registry("recommender", "model.kind", error=ClientsError)
register_recommender = RECOMMENDERS.register  # factories fn(users, items, **options) -> Recommender


class Recommender(nn.Module):
    """Scores (user, item) pairs from embedding rows gathered by the caller.

    ``tables`` maps each embedding parameter to what indexes it (``"user"`` or
    ``"item"``); ``private`` names the parameters that never leave a device;
    ``forward(rows)`` takes ``{table: rows [n, ...]}`` and returns scores [n],
    reading any dense weights from the module (``functional_call`` swaps them).
    """

    tables: dict[str, str]
    private: frozenset[str]
    loss: str  # "bpr" or "bce"
    negatives: int
    l2: float
    init_std: float

    def forward(self, rows: dict[str, torch.Tensor]) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def pair_flops(self) -> int:
        """FLOPs (2 x multiply-adds) of scoring one pair."""
        raise NotImplementedError

    def fold_in(self) -> dict[str, str]:
        """For each private user table, the item table whose rows stand in for it (public scoring)."""
        return {name: name.replace("user", "item") for name, kind in self.tables.items() if kind == "user"}

    def row_gradients(self, rows: dict[str, torch.Tensor], valid: torch.Tensor) -> dict[str, torch.Tensor] | None:
        """Gradients of a batch's summed loss over its valid samples (``valid`` [m, b]) w.r.t. the rows
        gathered for its pairs (``rows`` {table: [m, b * (1 + negatives), ...]}), for a model without
        dense weights; None (the default): the trainer takes them from autograd."""
        return None

    def candidate_scores(
        self, dense: ParamStack, rows: dict[str, torch.Tensor], candidates: torch.Tensor
    ) -> torch.Tensor:
        """Scores [k, P, C] of k models (dense weights ``dense`` [k, ...]) for P users against their candidates
        [P, C]: ``rows`` holds each user table's rows of the P users [k, P, ...] and each item table whole
        [k, I, ...]. Every (user, candidate) pair is gathered and scored by ``forward``."""
        width = candidates.shape[1]
        gathered = {}
        for name, kind in self.tables.items():
            if kind == "user":
                user = rows[name].unsqueeze(2)
                gathered[name] = user.expand(-1, -1, width, *user.shape[3:]).flatten(1, 2)
            else:
                gathered[name] = rows[name][:, candidates.flatten()]
        return score_rows(self, dense, gathered).view(len(next(iter(rows.values()))), *candidates.shape)


class MatrixFactorisation(Recommender):
    """s(u, i) = p_u . q_i + b_i, trained with BPR."""

    private = frozenset({"user"})

    def __init__(self, users: int, items: int, dim: int, l2: float) -> None:
        super().__init__()
        self.tables = {"user": "user", "item": "item", "item_bias": "item"}
        self.loss, self.negatives, self.l2, self.init_std = "bpr", 1, l2, 0.1
        self.dim = dim
        self.user = nn.Parameter(torch.zeros(users, dim))
        self.item = nn.Parameter(torch.zeros(items, dim))
        self.item_bias = nn.Parameter(torch.zeros(items))

    def forward(self, rows: dict[str, torch.Tensor]) -> torch.Tensor:
        return (rows["user"] * rows["item"]).sum(-1) + rows["item_bias"]

    def pair_flops(self) -> int:
        return 2 * self.dim + 1

    def fold_in(self) -> dict[str, str]:
        return {"user": "item"}

    def row_gradients(self, rows: dict[str, torch.Tensor], valid: torch.Tensor) -> dict[str, torch.Tensor] | None:
        """BPR-Opt by hand (Rendle et al., UAI 2009, Sec. 4.3): with x = s_pos - s_neg, each sample's
        -ln sigma(x) gives its negative pair sigma(-x) and its positive pair minus that, and l2 adds
        2 l2 row to every row it gathered; what autograd computes, without building its graph."""
        user, item, bias = rows["user"], rows["item"], rows["item_bias"]
        width = 1 + self.negatives
        scores = ((user * item).sum(-1) + bias).view(len(bias), -1, width)  # [m, b, 1 + n]
        # d loss / d s_neg = sigma(s_neg - s_pos); torch.sigmoid rounds its vectorised body and its tail
        # differently, which would make a device's numbers depend on its batch: exp and 1 / (1 + .) do not
        pull = torch.reciprocal(1.0 + torch.exp(scores[..., :1] - scores[..., 1:])) * valid.unsqueeze(-1)
        grad = torch.cat([-pull.sum(-1, keepdim=True), pull], dim=-1).flatten(1)  # d loss / d s, per pair
        decay = (2.0 * self.l2) * valid.repeat_interleave(width, dim=1)  # [m, pairs]
        return {
            "user": grad.unsqueeze(-1) * item + decay.unsqueeze(-1) * user,
            "item": grad.unsqueeze(-1) * user + decay.unsqueeze(-1) * item,
            "item_bias": grad + decay * bias,
        }

    def candidate_scores(
        self, dense: ParamStack, rows: dict[str, torch.Tensor], candidates: torch.Tensor
    ) -> torch.Tensor:
        """One matrix product per model scores every item, then the candidates are picked (a dot product
        needs no per-pair gather)."""
        picked = candidates.unsqueeze(0).expand(len(rows["user"]), -1, -1)
        scores = torch.bmm(rows["user"], rows["item"].transpose(1, 2)).gather(2, picked)  # of [k, P, I]
        return scores + rows["item_bias"][:, candidates]


class NeuMF(Recommender):
    """NeuMF (He et al., 2017, Eq. 12): GMF p^G_u * q^G_i and an MLP over [p^M_u, q^M_i], fused."""

    private = frozenset({"gmf_user", "mlp_user"})

    def __init__(self, users: int, items: int, dim: int, layers: Sequence[int], negatives: int, l2: float) -> None:
        super().__init__()
        self.tables = {"gmf_user": "user", "gmf_item": "item", "mlp_user": "user", "mlp_item": "item"}
        self.loss, self.negatives, self.l2, self.init_std = "bce", negatives, l2, 0.01  # the paper's N(0, 0.01)
        mlp_dim = layers[0] // 2
        self.gmf_user = nn.Parameter(torch.zeros(users, dim))
        self.gmf_item = nn.Parameter(torch.zeros(items, dim))
        self.mlp_user = nn.Parameter(torch.zeros(users, mlp_dim))
        self.mlp_item = nn.Parameter(torch.zeros(items, mlp_dim))
        blocks: list[nn.Module] = []
        for width_in, width_out in itertools.pairwise(layers):
            blocks += [nn.Linear(width_in, width_out), nn.ReLU()]
        self.mlp = nn.Sequential(*blocks)
        self.predict = nn.Linear(dim + layers[-1], 1)
        self._flops = 2 * dim + sum(2 * a * b for a, b in itertools.pairwise(layers))
        self._flops += 2 * (dim + layers[-1])

    def forward(self, rows: dict[str, torch.Tensor]) -> torch.Tensor:
        gmf = rows["gmf_user"] * rows["gmf_item"]
        mlp = self.mlp(torch.cat([rows["mlp_user"], rows["mlp_item"]], dim=-1))
        return self.predict(torch.cat([gmf, mlp], dim=-1)).squeeze(-1)

    def pair_flops(self) -> int:
        return self._flops


@register_recommender("mf")
def matrix_factorisation(users: int, items: int, *, dim: int = 32, l2: float = 0.0) -> Recommender:
    """BPR matrix factorisation; ``l2`` is BPR-Opt's per-sample regulariser on the rows touched."""
    if dim < 1 or not l2 >= 0:
        raise ClientsError(f"model.dim/model.l2: got {dim}/{l2}; need dim >= 1 and l2 >= 0")
    return MatrixFactorisation(users, items, dim, float(l2))


@register_recommender("ncf")
def neural_cf(
    users: int, items: int, *, dim: int = 8, layers: Sequence[int] = (32, 16, 8), negatives: int = 4, l2: float = 0.0
) -> Recommender:
    """NeuMF with GMF size ``dim`` and MLP widths ``layers`` (input = 2 x the MLP embedding size)."""
    widths = [int(w) for w in layers]
    if dim < 1 or len(widths) < 2 or min(widths) < 1 or widths[0] % 2:
        raise ClientsError(
            f"model.dim/model.layers: got {dim}/{list(layers)}; need dim >= 1 and >= 2 positive widths, the first even"
        )
    if negatives < 1 or not l2 >= 0:
        raise ClientsError(f"model.negatives/model.l2: got {negatives}/{l2}; need negatives >= 1 and l2 >= 0")
    return NeuMF(users, items, dim, widths, int(negatives), float(l2))


def build_recommender(kind: str, users: int, items: int, **options: Any) -> Recommender:
    """Build a registered recommender for ``users`` slots per device and ``items`` items."""
    if kind not in RECOMMENDERS:
        raise ClientsError(
            f"model.kind: {kind!r} is not a recommender; with interaction data choose one of: "
            f"{', '.join(sorted(RECOMMENDERS))}"
        )
    return RECOMMENDERS.get(kind)(users, items, **RECOMMENDERS.check(kind, options, "model"))


def init_recommender(model: Recommender, seed: int) -> ParamStack:
    """One model's parameters: embeddings N(0, init_std), dense layers as :func:`clients.params.init_params`."""
    params = init_params(model, seed)
    generator = torch.Generator().manual_seed(seed + 1)
    for name in sorted(model.tables):
        params[name] = torch.randn(params[name].shape, generator=generator) * model.init_std
    if isinstance(model, MatrixFactorisation):
        params["item_bias"] = torch.zeros_like(params["item_bias"])
    return params


# ---------------------------------------------------------------------------
# training


# ---------------------------------------------------------------------------
# metrics


def gather_rows(
    params: ParamStack, model: Recommender, users: torch.Tensor, items: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Rows of every embedding table for pairs (users[d, n], items[d, n]): {table: [D, n, ...]}."""
    rows = torch.arange(users.shape[0]).unsqueeze(1)
    return {name: params[name][rows, users if kind == "user" else items] for name, kind in model.tables.items()}


def score_rows(model: Recommender, dense: ParamStack, rows: dict[str, torch.Tensor]) -> torch.Tensor:
    """Scores [D, n] of each device's pairs from its dense weights and gathered rows."""
    return vmap(lambda p, r: functional_call(model, p, (r,)))(dense, rows)
