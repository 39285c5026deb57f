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

flwr is imported only inside ``build_strategy``: checking a spec never loads it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from etree.core.errors import ProtocolError

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
    """A Flower strategy by class name, with the options set for it (the rest are Flower's defaults)."""

    name: str = "FedAvg"
    options: Mapping[str, float] = field(default_factory=dict)


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
    return FlowerStrategy(strategy.name, {**strategy.options, "eta_l": lr})


def build_strategy(
    strategy: FlowerStrategy,
    base_options: Mapping[str, Any],
    sampled: Callable[[int], list[int]] | None = None,
) -> Any:
    """An instance of Flower's class ``strategy.name`` with ``base_options`` and the strategy's options.

    ``sampled`` (round -> the node ids to train) replaces Flower's random node
    sampling, and nothing else: the override sits just above ``FedAvg`` in the
    class's MRO, so the strategy's own ``configure_train`` still runs first
    (FedAvgM and FedOpt keep the current model there, FedProx adds ``proximal-mu``).
    """
    from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
    from flwr.serverapp import Grid
    from flwr.serverapp import strategy as flower_strategies

    cls: type = getattr(flower_strategies, strategy.name)
    options = {**base_options, **strategy.options}
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
