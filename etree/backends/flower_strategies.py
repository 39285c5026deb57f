"""Flower's own strategies for the ``flower`` protocol: which, with which options, built how.

Each name is a class of ``flwr.serverapp.strategy`` (flwr 1.41) built with
Flower's own keyword arguments; an option left unset takes Flower's default
(the class's signature), so the run is Flower's strategy as shipped:

* ``FedAvg``: McMahan et al., AISTATS 2017, Algorithm 1.
* ``FedProx``: Li et al., MLSys 2020: FedAvg on the server; it sends
  ``proximal-mu`` in every train config and the client adds mu/2 ||w - w_t||^2.
* ``FedAvgM``: Hsu et al. 2019, server momentum on the pseudo-gradient.
* ``FedAdam``, ``FedYogi``, ``FedAdagrad``: Reddi et al., ICLR 2021,
  Algorithm 2 (FedOpt).

Where Flower's arithmetic is not the papers' letter (it is what runs, so it is
what the in-engine counterparts must match; Delta_t = aggregate - w_t):

* FedAvgM: v = beta v + (w_t - aggregate), starting from v = 0, and
  w_{t+1} = w_t - server_learning_rate v (no (1 - beta) dampening).
* FedOpt: m and v start at 0 at the first aggregation (the paper asks
  v_{-1} >= tau^2); m = beta_1 m + (1 - beta_1) Delta_t (FedAdagrad: beta_1 = 0).
* FedAdam scales eta by sqrt(1 - beta_2^(t+1)) / (1 - beta_1^(t+1)), t the
  1-based server round: an Adam bias correction, off by one round, that
  Algorithm 2 does not have. It also computes in float64 (numpy promotes the
  float64 scale), so its models come back float64; clients load them into
  their own float32 parameters, as a PyTorch client's ``load_state_dict`` does.
* FedYogi: v = v - (1 - beta_2) Delta_t^2 sign(v - Delta_t^2); FedAdagrad:
  v = v + Delta_t^2; both step w_t + eta m / (sqrt(v) + tau).

FedOpt's ``eta_l`` is the client learning rate, which Flower's strategies only
record (``summary``) and never send; the clients here train with
``train.lr``, so an unset ``eta_l`` records that, and a different one is refused
rather than silently ignored.

Recommenders with ``item_merge = "touched"`` (the default) send sparse item rows, as the in-engine
tree protocols do (FCF, Ammad-ud-din et al., arXiv:1901.09888, 2019, Sec. 3): a client replies, for
each item table ``T``, with ``T`` holding only the rows its round touched and their item ids under
``T@rows``, its dense shared parameters whole and its ``num-examples``; the server averages each
item row over the clients that sent it (``merge_item_rows``) and keeps the rows nobody sent. Only
FedAvg does this (``ItemRowFedAvg``); FedProx's proximal term is refused for
recommenders anyway, and FedAvgM's and FedOpt's server steps on such a merge have no cross-check
here, so they refuse ``item_merge = "touched"`` (``row_tables``) and take ``"dense"``: whole arrays.

flwr is imported only where a strategy is built: checking a spec never loads it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal, cast

import numpy as np

from clients.recommendation.training import ROWS
from etree.core.errors import ProtocolError

ITEM_ROWS = "item-rows"  # train config key: set, the clients reply with their touched item rows only

StrategyName = Literal["FedAvg", "FedProx", "FedAvgM", "FedAdam", "FedYogi", "FedAdagrad"]

# strategy -> the keyword arguments of its Flower class that the protocol passes through
STRATEGY_OPTIONS: dict[str, tuple[str, ...]] = {
    "FedAvg": (),
    "FedProx": ("proximal_mu",),
    "FedAvgM": ("server_learning_rate", "server_momentum"),
    "FedAdam": ("eta", "eta_l", "beta_1", "beta_2", "tau"),
    "FedYogi": ("eta", "eta_l", "beta_1", "beta_2", "tau"),
    "FedAdagrad": ("eta", "eta_l", "tau"),
}

# option -> (whether a value is valid, the rule it must follow)
_RULES: dict[str, tuple[Callable[[float], bool], str]] = {
    "proximal_mu": (lambda v: v >= 0, "must be >= 0"),
    "server_learning_rate": (lambda v: v > 0, "must be > 0"),
    "server_momentum": (lambda v: 0 <= v < 1, "must be in [0, 1)"),
    "eta": (lambda v: v > 0, "must be > 0"),
    "eta_l": (lambda v: v > 0, "must be > 0"),
    "beta_1": (lambda v: 0 <= v < 1, "must be in [0, 1)"),
    "beta_2": (lambda v: 0 <= v < 1, "must be in [0, 1)"),
    "tau": (lambda v: v > 0, "must be > 0"),
}


@dataclass(frozen=True)
class FlowerStrategy:
    """A Flower strategy by class name, with the options set for it (the rest are Flower's defaults), and how
    a recommender's item tables travel (``"touched"``: sparse rows, ``"dense"``: whole; classifiers ignore it)."""

    name: str = "FedAvg"
    options: Mapping[str, float] = field(default_factory=dict)
    item_merge: str = "touched"


def strategy_from_options(label: str, name: str, given: Mapping[str, float | None]) -> FlowerStrategy:
    """The strategy ``name`` with the options of ``given`` that are set (not None), each checked:
    an option the strategy's Flower class does not take is refused, naming the ones it does."""
    if name not in STRATEGY_OPTIONS:
        raise ProtocolError(
            f"protocols.{label}.strategy: got {name!r}; choose one of: {', '.join(sorted(STRATEGY_OPTIONS))}"
        )
    accepted = STRATEGY_OPTIONS[name]
    options: dict[str, float] = {}
    for option, value in sorted(given.items()):
        if value is None:
            continue
        if option not in accepted:
            takes = ", ".join(accepted) or "none of the strategy options"
            raise ProtocolError(
                f"protocols.{label}.{option}: got {value}; Flower's {name} does not take it (it takes {takes})"
            )
        valid, rule = _RULES[option]
        if not valid(value):
            raise ProtocolError(f"protocols.{label}.{option}: got {value}; {rule}")
        options[option] = float(value)
    return FlowerStrategy(name, options)


def with_client_lr(strategy: FlowerStrategy, lr: float, label: str) -> FlowerStrategy:
    """FedOpt's ``eta_l`` set to the clients' real learning rate ``lr`` (``train.lr``), which Flower
    only records; an explicit different ``eta_l`` would be a learning rate no client uses."""
    if "eta_l" not in STRATEGY_OPTIONS[strategy.name]:
        return strategy
    given = strategy.options.get("eta_l")
    if given is not None and given != lr:
        raise ProtocolError(
            f"protocols.{label}.eta_l: got {given}, but the clients train with train.lr = {lr} (Flower's "
            f"{strategy.name} records eta_l and never sends it); set train.lr instead, or leave eta_l unset"
        )
    return replace(strategy, options={**strategy.options, "eta_l": lr})


def row_tables(strategy: FlowerStrategy, item_tables: Sequence[str], label: str) -> tuple[str, ...]:
    """The item tables whose touched rows ``strategy``'s clients send (none: every array whole), given the
    workload's ``item_tables`` (none for a classifier). Checked before Ray starts: sparse rows are FedAvg's only."""
    if strategy.item_merge == "dense" or not item_tables:
        return ()
    if strategy.name != "FedAvg":
        raise ProtocolError(
            f"protocols.{label}.item_merge: got 'touched'; only Flower's FedAvg merges sparse item rows here "
            f"(strategy = {strategy.name!r}): set item_merge = 'dense' or strategy = 'FedAvg'"
        )
    return tuple(sorted(item_tables))


def merge_item_rows(
    current: np.ndarray, uploads: Sequence[tuple[np.ndarray, np.ndarray]], weights: Sequence[float]
) -> np.ndarray:
    """One item table after a round: each row the weighted mean of the rows sent for it, a row nobody sent
    ``current``'s (FCF, Ammad-ud-din et al., arXiv:1901.09888, 2019, Sec. 3). ``uploads[m]`` is message m's
    item ids and rows, ``weights[m]`` its ``num-examples``.

    Written on Flower's numpy arrays rather than taken from ``etree.trees.sparse_rows`` (a layer above
    this one): this adapter is the in-engine merge's independent check."""
    sums = np.zeros(current.shape, dtype=np.float64)
    total = np.zeros(len(current), dtype=np.float64)
    for (ids, rows), weight in zip(uploads, weights, strict=True):
        np.add.at(sums, ids, weight * rows.astype(np.float64))
        np.add.at(total, ids, weight)
    heard = total > 0
    merged = current.copy()
    merged[heard] = sums[heard] / total[heard].reshape(-1, *(1,) * (current.ndim - 1))
    return merged


def _item_row_fedavg(tables: tuple[str, ...]) -> type:
    """Flower's FedAvg with the item tables ``tables`` merged from sparse rows (see ``ItemRowFedAvg``)."""
    from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
    from flwr.serverapp import Grid
    from flwr.serverapp.strategy import FedAvg
    from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords

    sparse = set(tables) | {f"{name}{ROWS}" for name in tables}

    class ItemRowFedAvg(FedAvg):
        """FedAvg whose clients send only the item rows they touched (see the module docstring).

        A subclass because Flower's FedAvg averages whole arrays (``aggregate_arrayrecords`` adds every
        reply's every array), which rows of different items, in arrays of different lengths, are not.
        Flower's sampling and ``configure_train`` stay; it only keeps the model it sends (rows nobody
        sends keep its values, as FedAvgM keeps ``current_arrays``) and asks for rows (``ITEM_ROWS``).
        ``aggregate_train`` merges each item row over its senders weighted by ``num-examples`` (example
        counts when ``weighted``, else 1: the in-engine ``fedavg``'s weights) and averages the dense
        parameters with Flower's own ``aggregate_arrayrecords``.
        """

        sent_arrays: ArrayRecord | None = None

        def configure_train(
            self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
        ) -> Iterable[Message]:
            self.sent_arrays = arrays
            config[ITEM_ROWS] = True
            return super().configure_train(server_round, arrays, config, grid)

        def aggregate_train(
            self, server_round: int, replies: Iterable[Message]
        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
            valid, _ = self._check_and_log_replies(replies, is_train=True)
            if not valid or self.sent_arrays is None:
                return None, None
            contents = [message.content for message in valid]
            records = [next(iter(content.array_records.values())) for content in contents]
            metrics = [next(iter(content.metric_records.values())) for content in contents]
            weights = [cast(float, metric[self.weighted_by_key]) for metric in metrics]
            dense_only = [  # each reply's dense parameters, with its weight
                RecordDict({"arrays": ArrayRecord({k: v for k, v in record.items() if k not in sparse}), "m": metric})
                for record, metric in zip(records, metrics, strict=True)
            ]
            dense = aggregate_arrayrecords(dense_only, self.weighted_by_key)
            merged = {
                name: Array(
                    merge_item_rows(
                        self.sent_arrays[name].numpy(),
                        [(record[f"{name}{ROWS}"].numpy(), record[name].numpy()) for record in records],
                        weights,
                    )
                )
                for name in tables
            }
            arrays = ArrayRecord({k: merged[k] if k in merged else dense[k] for k in self.sent_arrays})
            return arrays, self.train_metrics_aggr_fn(contents, self.weighted_by_key)

    return ItemRowFedAvg


def build_strategy(
    strategy: FlowerStrategy,
    base_options: Mapping[str, Any],
    sampled: Callable[[int], list[int]] | None = None,
    rows: Sequence[str] = (),
) -> Any:
    """An instance of Flower's class ``strategy.name`` with ``base_options`` and the strategy's options.

    ``sampled`` (round -> the node ids to train) replaces Flower's random node
    sampling, and nothing else: the override sits just above ``FedAvg`` in the
    class's MRO, so the strategy's own ``configure_train`` still runs first
    (FedAvgM and FedOpt keep the current model there, FedProx adds ``proximal-mu``).
    ``rows``: the item tables FedAvg merges from sparse rows (``row_tables``; FedAvg only).
    """
    from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
    from flwr.serverapp import Grid
    from flwr.serverapp import strategy as flower_strategies

    cls: type = getattr(flower_strategies, strategy.name)
    options = {**base_options, **strategy.options}
    if rows:
        assert cls is flower_strategies.FedAvg, "row_tables refuses sparse rows for other strategies"
        cls = _item_row_fedavg(tuple(rows))
    if sampled is None:
        return cls(**options)
    choose = sampled

    class SampledFedAvg(flower_strategies.FedAvg):
        """FedAvg's ``configure_train`` with the nodes chosen by ``sampled`` instead of at random."""

        def configure_train(
            self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
        ) -> list[Message]:
            config["server-round"] = server_round
            content = RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: config})
            return [
                Message(content=content, message_type=MessageType.TRAIN, dst_node_id=node)
                for node in choose(server_round)
            ]

    if cls is flower_strategies.FedAvg:
        return SampledFedAvg(**options)
    return type(f"Sampled{cls.__name__}", (cls, SampledFedAvg), {})(**options)
