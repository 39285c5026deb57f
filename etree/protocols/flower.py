"""Flower's strategies on the real Flower simulation engine: an independent check of the in-engine ones.

A ``ServerApp`` runs one of Flower's own strategies (``strategy``: FedAvg,
McMahan et al., AISTATS 2017, Algorithm 1, by default; FedProx, FedAvgM,
FedAdam, FedYogi or FedAdagrad, built from ``flwr.serverapp.strategy`` with
their own options: ``etree.backends.flower_strategies``) and a ``ClientApp``
trains one device with the same code the engine uses (``local_train`` on a
stack of one: a device's random stream depends only on (seed, round, device
id), so it trains exactly as it would inside the whole fleet), on Flower's
Ray backend. Supernode ``partition-id`` i is device i. FedProx's clients
train with the ``proximal-mu`` the strategy sends in the train config
(``TrainConfig.prox_mu``: mu/2 ||w - w_received||^2, Li et al., MLSys 2020).
Their in-engine counterparts are ``fedavg`` with ``local = "fedprox"`` or a
``server_opt``; the simulated time and bytes charged are FedAvg's, since these
strategies send the same model the same way.

Fitting Flower to the round-by-round ``Protocol`` interface: Flower owns its
round loop, so ``setup`` runs the whole simulation (``workload.rounds``
rounds) and keeps the global model after every round (``evaluate_fn`` sees
each); ``run_round(r)`` installs round r's model and charges the simulated
time and bytes that in-engine FedAvg charges for the same round (a star tree
to the same server, timed by ``etree.trees.timing`` on the run's clock), so curves are comparable.
Flower's real wall-clock goes to the log only, never into metrics.

Models with private parameters (a recommender's user embeddings,
``Workload.private``): each node keeps its own rows in Flower's per-node
``context.state`` (a ``RecordDict`` that the simulation engine stores per node
and hands back with the node's next message), trains the global shared model
with them, stores the trained rows back and replies with the shared parameters
only, so Flower's strategy never receives, let alone averages, a user row;
``FlowerRun.sent`` lists every array name the server received and
``FlowerRun.uploads`` their shapes, per round and device, for tests to check.
Item tables travel as in-engine ``fedavg``'s with the same ``item_merge``
(``etree.trees.sparse_rows``): ``"touched"`` (the default) trains and sends only
the rows the node's round touches (``touched_items``, under ``T`` with their ids
under ``T@rows``) and Flower's FedAvg, subclassed, averages each row over its
senders (FCF, Ammad-ud-din et al., arXiv:1901.09888, 2019;
``etree.backends.flower_strategies``); ``"dense"`` sends whole tables, which
Flower's FedAvg averages as any array. Each round is charged the bytes that
in-engine ``fedavg`` charges for it, uploads sized by ``SparseRows.plan``.
Evaluation needs each device's rows as trained under Flower (every device
scores its own users, as in the in-engine protocols): each node also logs its
rows after every round it trained in ``context.state``, and after the last
round the ServerApp sends one
evaluation-only ``query.private_rows`` message per node that returns the log.
That query is the simulator reading the devices for its metrics, not protocol
traffic: it is sent after training has ended, is not aggregated and is not
counted in ``bytes_sent``.

Choices the comparison forces:

* Weighting: Flower's FedAvg weights by ``num-examples``. ``weighted=True``
  (the default, Flower's behaviour) sends true example counts;
  ``weighted=False`` sends 1 per device, the unweighted mean of the E-Tree
  paper's FL baseline.
* The server: as for in-engine FedAvg (``server_trains``, default false), a
  server that is a device neither trains nor joins the average, like the E-Tree
  authors' FL master; it is then left out of the sampling below.
* Sampling: full participation is the default and trains every device each
  round through Flower's own sampling. With ``participation < 1`` Flower's
  sampling cannot be made reproducible by seeding Python's ``random``: node
  ids come from ``os.urandom``, so the same draw picks other devices each run.
  Instead the ServerApp first asks every node its ``partition-id`` (one
  ``query`` message each), and the strategy's FedAvg sampling is replaced so
  that the round's training messages go to exactly the devices the in-engine
  FedAvg samples (``participants``: the same counter-based draw from
  ``workload.seed``). The rest of ``configure_train`` and all of the
  aggregation stay the strategy's.
* A guest that leaves no trace: telemetry, update checks and Ray usage stats
  are off and Ray runs on loopback only (``etree.backends.ray_guest``, shared with the
  Ray training backend); ``benchmarks/check_no_outbound.py`` checks this with strace.
  Ray is started here rather than by Flower's backend so that a failure is one
  clear ProtocolError before any Flower thread exists (inside ``run_simulation``
  the ServerApp thread would be left waiting for replies).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, cast

import numpy as np
import torch

from clients.classification.fleet import FleetData
from clients.params import ParamStack, replicate
from clients.recommendation.interactions import InteractionFleet
from clients.recommendation.metrics import DeviceModels
from clients.recommendation.models import Recommender
from clients.recommendation.training import ROWS, touched_items
from etree.backends.flower_strategies import (
    ITEM_ROWS,
    FlowerStrategy,
    StrategyName,
    build_strategy,
    row_tables,
    strategy_from_options,
    with_client_lr,
)
from etree.backends.local import local_train
from etree.backends.ray_guest import guest_environment, start_loopback_ray
from etree.core.errors import ProtocolError
from etree.engine.checkpoint import CheckpointError, expect, stack_like
from etree.engine.protocol import Protocol, RoundCost
from etree.engine.registry import register_protocol
from etree.engine.sampling import participants
from etree.engine.workload import Workload
from etree.network.model import NetworkModel
from etree.trees.hierarchical import load_timing_state, timing_state, tree_from_state, tree_state
from etree.trees.servers import choose_server
from etree.trees.sparse_rows import ITEM_MERGES, SparseRows
from etree.trees.timing import TreeTiming, round_bytes, round_messages
from etree.trees.tree import AggregationTree, star_tree

logger = logging.getLogger(__name__)

# Flower warnings every run of this adapter triggers on purpose; anything else still shows.
_EXPECTED_FLOWER_WARNINGS = (
    "The `run_simulation` function is deprecated",  # the Python entry point still works in 1.41
    "fraction_evaluate is set to 0.0",  # evaluation is done in-engine on the captured global models
)


@dataclass(frozen=True)
class FlowerRun:
    """What one Flower simulation produced."""

    global_models: list[ParamStack]  # index r: the global model after round r (0: initial; shared parameters)
    trained: list[list[int]]  # index r-1: the devices whose replies Flower aggregated in round r
    wall_s: float  # real seconds of the strategy's rounds inside the simulation, for logs only
    ray_session_dir: str  # Ray's session folder: its logs, and the name its processes carry
    sent: frozenset[str]  # every array name in the train replies the server received
    private_rows: dict[int, dict[str, torch.Tensor]]  # device -> its logged rows "<name>@<round>" (evaluation only)
    # index r-1: device -> the shape of every array it sent in round r
    uploads: list[dict[int, dict[str, tuple[int, ...]]]] = field(default_factory=list)


class _DropExpected(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(text in message for text in _EXPECTED_FLOWER_WARNINGS)


@contextlib.contextmanager
def _quiet_flower_logs() -> Iterator[None]:
    """Flower logs INFO lines in ANSI colour by default: keep warnings and errors, plain."""
    from flwr.supercore.logger import ConsoleHandler

    flwr_logger = logging.getLogger("flwr")
    chatty = [flwr_logger, logging.getLogger("alembic")]  # alembic: Flower's in-memory state database
    levels = [chatty_logger.level for chatty_logger in chatty]
    consoles = [h for h in flwr_logger.handlers if isinstance(h, ConsoleHandler)]
    colours = [h.colored for h in consoles]
    drop = _DropExpected()
    for chatty_logger in chatty:
        chatty_logger.setLevel(logging.WARNING)
    flwr_logger.addFilter(drop)
    for handler in consoles:
        handler.colored = False
    try:
        yield
    finally:
        for chatty_logger, level in zip(chatty, levels, strict=True):
            chatty_logger.setLevel(level)
        flwr_logger.removeFilter(drop)
        for handler, colour in zip(consoles, colours, strict=True):
            handler.colored = colour


def _client_payload(workload: Workload, weighted: bool) -> dict[str, Any]:
    """What every ClientApp call needs, shipped once into Ray's object store.

    A plain dict of torch and ``clients`` objects, so that unpickling it in a
    Ray actor imports neither ``etree`` nor what ``etree`` pulls in (seconds per actor).
    """
    return {
        "model": workload.model,
        "data": workload.data,
        "train": workload.train,
        "seed": workload.seed,
        "weighted": weighted,
        "private": {name: workload.initial[name] for name in sorted(workload.private)},  # rows before round 1
        "dtypes": {name: tensor.dtype for name, tensor in workload.initial.items()},
    }


def _client_app(payload_ref: Any) -> Any:
    """A ClientApp whose ``train`` runs the engine's local training on its own device.

    Its functions reach only ``torch``, ``clients`` and ``flwr`` (see ``_client_payload``), so the
    helpers are nested here: a module-level one would make Ray's actors import ``etree``.
    A node's private rows live in ``context.state``: ``"private"`` holds the rows it trains with,
    ``"private-history"`` the rows after each round it trained (``<name>@<round>``), read only
    by the evaluation-only ``query.private_rows``.
    """
    from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp

    app = ClientApp()

    def own_rows(context: Any, initial: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The node's private rows: as it last trained them, or the initial model's before round 1."""
        kept = context.state.array_records.get("private")
        return initial if kept is None else dict(kept.to_torch_state_dict())

    def keep_rows(context: Any, rows: dict[str, torch.Tensor], server_round: int) -> None:
        """Store the trained rows in the node's state and log them under this round."""
        context.state["private"] = ArrayRecord(rows)
        logged = context.state.array_records.get("private-history")
        history = {} if logged is None else dict(logged.to_torch_state_dict())
        history.update({f"{name}@{server_round}": tensor for name, tensor in rows.items()})
        context.state["private-history"] = ArrayRecord(history)

    @app.train()
    def train(message: Message, context: Any) -> Message:
        import ray

        payload = ray.get(payload_ref)
        data: FleetData | InteractionFleet = payload["data"]
        device = int(context.node_config["partition-id"])
        received = message.content.array_records["arrays"].to_torch_state_dict()
        # loaded into the model's own dtypes, as load_state_dict would (FedAdam's numpy update is float64)
        arrays = {name: tensor.to(payload["dtypes"][name]) for name, tensor in received.items()}
        own = own_rows(context, payload["private"]) if payload["private"] else {}
        stack = {name: tensor.unsqueeze(0) for name, tensor in (arrays | own).items()}
        config = message.content.config_records["config"]
        server_round = cast(int, config["server-round"])
        mu = config.get("proximal-mu")  # sent by FedProx only: its proximal term's weight
        train = payload["train"] if mu is None else replace(payload["train"], prox_mu=float(cast(float, mu)))
        model = payload["model"]
        tables = [name for name, kind in model.tables.items() if kind == "item"] if config.get(ITEM_ROWS) else []
        if tables:  # a compact stack: only the item rows this round touches, trained and sent (FCF)
            assert isinstance(data, InteractionFleet)
            ids = touched_items(
                model, data, torch.tensor([device]), train.local_epochs, seed=payload["seed"], round_index=server_round
            )
            stack |= {name: stack[name][:, ids[0]] for name in tables} | {ROWS: ids}
        trained = local_train(
            model,
            stack,
            data,
            torch.tensor([device]),
            train,
            seed=payload["seed"],
            round_index=server_round,
        )
        if own:  # private rows stay on the node: never in the reply
            keep_rows(context, {name: trained[name][0] for name in own}, server_round)
        examples = int(data.counts[device]) if payload["weighted"] else 1
        sent = {name: tensor[0] for name, tensor in trained.items() if name not in own and name != ROWS}
        sent |= {f"{name}{ROWS}": trained[ROWS][0] for name in tables}
        reply = RecordDict(
            {
                "arrays": ArrayRecord(sent),
                "metrics": MetricRecord({"num-examples": examples, "partition-id": device}),
            }
        )
        return Message(reply, reply_to=message)

    @app.query()
    def query(message: Message, context: Any) -> Message:
        device = int(context.node_config["partition-id"])
        return Message(RecordDict({"node": MetricRecord({"partition-id": device})}), reply_to=message)

    @app.query("private_rows")
    def private_rows(message: Message, context: Any) -> Message:
        """Evaluation only, after a strategy's last round: the node's logged private rows (not protocol
        traffic). The node hands them over and forgets them, so that the next strategy of the same
        simulation (``run_flower_strategies``) starts, as a fresh node would, from the initial rows."""
        device = int(context.node_config["partition-id"])
        content = RecordDict({"node": MetricRecord({"partition-id": device})})
        context.state.pop("private", None)
        logged = context.state.pop("private-history", None)
        if logged is not None:
            content["history"] = logged
        return Message(content, reply_to=message)

    return app


@dataclass
class _Capture:
    """What the ServerApp records of one strategy's run while it goes (``FlowerRun``'s fields)."""

    models: list[ParamStack] = field(default_factory=list)
    trained: list[list[int]] = field(default_factory=list)
    sent: set[str] = field(default_factory=set)
    uploads: list[dict[int, dict[str, tuple[int, ...]]]] = field(default_factory=list)
    private_rows: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict)
    wall_s: float = 0.0


def _server_app(
    workload: Workload,
    strategies: list[tuple[FlowerStrategy, tuple[str, ...]]],
    participation: float,
    idle: np.ndarray | None,
    label: str,
    captures: list[_Capture],
) -> Any:
    """A ServerApp running each of Flower's ``strategies`` (with the item tables each merges from sparse rows,
    ``row_tables``) in turn for ``workload.rounds`` rounds, keeping
    every global model in its ``captures`` entry (and, with private parameters, reading the nodes' logged
    rows once a strategy's rounds are over)."""
    from flwr.app import ArrayRecord, MetricRecord, RecordDict
    from flwr.serverapp import Grid, ServerApp

    devices = workload.devices
    count = len(participants(workload.seed, 1, devices, participation, idle))
    dtypes = {name: tensor.dtype for name, tensor in workload.initial.items()}

    def options(capture: _Capture) -> dict[str, Any]:
        """Every strategy's FedAvg options, with a metrics hook that records into ``capture``."""

        def record_trained(replies: list[RecordDict], weight_key: str) -> MetricRecord:
            """Called once per round with the replies Flower aggregates: note whose they were."""
            by_device = {cast(int, next(iter(r.metric_records.values()))["partition-id"]): r for r in replies}
            capture.trained.append(sorted(by_device))
            capture.sent.update(name for r in replies for record in r.array_records.values() for name in record)
            shapes = {
                device: {name: tuple(a.shape) for record in r.array_records.values() for name, a in record.items()}
                for device, r in sorted(by_device.items())
            }
            capture.uploads.append(shapes)
            return MetricRecord({"clients": len(replies)})

        return {
            "fraction_train": participation,
            "fraction_evaluate": 0.0,
            "min_train_nodes": count,
            "min_evaluate_nodes": 0,
            "min_available_nodes": devices,
            "train_metrics_aggr_fn": record_trained,
        }

    def keeper(capture: _Capture) -> Callable[[int, ArrayRecord], MetricRecord | None]:
        """Flower's ``evaluate_fn`` for one strategy, keeping its models in ``capture``."""

        def keep_global(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
            """Flower's centralised evaluation hook: keep the model (accuracy is measured in-engine) in the
            clients' dtypes, and stop the run at the first round whose aggregate missed a device (Flower
            would go on)."""
            if server_round > 0:
                _check_round(workload, participation, idle, label, server_round, capture.trained)
            capture.models.append({k: t.to(dtypes[k], copy=True) for k, t in arrays.to_torch_state_dict().items()})
            return None

        return keep_global

    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Any) -> None:
        sampled: Callable[[int], list[int]] | None = None
        if participation < 1 or idle is not None:
            node_of_device = _map_devices(grid, devices, label)

            def chosen_nodes(server_round: int) -> list[int]:
                """The nodes of the devices the in-engine FedAvg samples in ``server_round``."""
                chosen = participants(workload.seed, server_round, devices, participation, idle)
                return [node_of_device[int(device)] for device in chosen]

            sampled = chosen_nodes

        shared = workload.shared(workload.initial)
        for spec, rows in strategies:
            capture = _Capture()
            captures.append(capture)
            strategy = build_strategy(spec, options(capture), sampled, rows)
            initial = ArrayRecord({name: tensor.clone() for name, tensor in shared.items()})
            started = time.perf_counter()
            strategy.start(grid=grid, initial_arrays=initial, num_rounds=workload.rounds, evaluate_fn=keeper(capture))
            capture.wall_s = time.perf_counter() - started
            if workload.private:
                capture.private_rows.update(_collect_private_rows(grid, devices, label))

    return app


def _check_round(
    workload: Workload,
    participation: float,
    idle: np.ndarray | None,
    label: str,
    round_index: int,
    trained: list[list[int]],
) -> None:
    """Flower aggregated round ``round_index`` from exactly the devices the in-engine FedAvg samples.

    Flower drops a failed ClientApp's reply and averages the rest; a baseline
    that silently lost devices would not be FedAvg's, so that is an error.
    """
    expected = participants(workload.seed, round_index, workload.devices, participation, idle).tolist()
    got = trained[round_index - 1] if len(trained) >= round_index else []
    if got != expected:
        raise ProtocolError(
            f"protocols.{label}: Flower aggregated devices {got} in round {round_index}, expected {expected} "
            f"(a ClientApp failed; see the flwr log above)"
        )


def _map_devices(grid: Any, devices: int, label: str) -> dict[int, int]:
    """Ask every supernode its partition id (node ids are random): device -> node id."""
    from flwr.app import Message, MessageType, RecordDict

    while len(nodes := sorted(grid.get_node_ids())) < devices:  # supernodes register after the ServerApp starts
        time.sleep(0.1)
    queries = [Message(content=RecordDict(), message_type=MessageType.QUERY, dst_node_id=n) for n in nodes]
    node_of_device: dict[int, int] = {}
    for reply in grid.send_and_receive(queries):
        if reply.has_error():
            reason = reply.error.reason
            raise ProtocolError(f"protocols.{label}: a supernode failed to report its partition id ({reason})")
        device = cast(int, reply.content.metric_records["node"]["partition-id"])
        node_of_device[device] = reply.metadata.src_node_id
    if sorted(node_of_device) != list(range(devices)):
        raise ProtocolError(
            f"protocols.{label}: supernodes reported partitions {sorted(node_of_device)}, expected 0..{devices - 1}"
        )
    return node_of_device


def _collect_private_rows(grid: Any, devices: int, label: str) -> dict[int, dict[str, torch.Tensor]]:
    """Evaluation only, after the last round: every node's logged private rows, by device.

    The simulator reads the devices to score them; this is not FedAvg traffic
    (nothing is aggregated, and the protocol's ``bytes_sent`` never counts it).
    """
    from flwr.app import Message, MessageType, RecordDict

    nodes = sorted(grid.get_node_ids())
    queries = [
        Message(content=RecordDict(), message_type=f"{MessageType.QUERY}.private_rows", dst_node_id=n) for n in nodes
    ]
    rows: dict[int, dict[str, torch.Tensor]] = {}
    for reply in grid.send_and_receive(queries):
        if reply.has_error():
            raise ProtocolError(
                f"protocols.{label}: a supernode failed to report its private rows ({reply.error.reason})"
            )
        device = cast(int, reply.content.metric_records["node"]["partition-id"])
        history = reply.content.array_records.get("history")
        rows[device] = {} if history is None else dict(history.to_torch_state_dict())
    if sorted(rows) != list(range(devices)):
        raise ProtocolError(
            f"protocols.{label}: private rows came from devices {sorted(rows)}, expected 0..{devices - 1}"
        )
    return rows


def run_flower_strategies(
    workload: Workload,
    strategies: Sequence[FlowerStrategy],
    *,
    participation: float = 1.0,
    idle: np.ndarray | None = None,
    weighted: bool = True,
    num_cpus: int | None = None,
    label: str = "flower",
) -> list[FlowerRun]:
    """Run each of Flower's ``strategies`` in turn for ``workload.rounds`` rounds, in ONE simulation on
    Flower's Ray backend (Ray starts once), and return every global model of each.

    Each strategy starts from the initial model, and each node from its initial private rows (the
    end-of-run query clears them), so a run is the one ``run_flower`` would give alone.
    """
    specs = [with_client_lr(strategy, workload.train.lr, label) for strategy in strategies]
    model = workload.model
    item_tables = (
        [name for name, kind in model.tables.items() if kind == "item"] if isinstance(model, Recommender) else []
    )
    rows = [row_tables(spec, item_tables, label) for spec in specs]
    cores = num_cpus or len(os.sched_getaffinity(0))
    captures: list[_Capture] = []
    with guest_environment():
        with warnings.catch_warnings():  # flwr's CLI dependency (typer) warns about click on import
            warnings.simplefilter("ignore", DeprecationWarning)
            import flwr.supercore.telemetry as telemetry
            import ray
            from flwr.simulation import run_simulation

        telemetry.FLWR_TELEMETRY_ENABLED = "0"  # read once at import: an earlier import may have seen "1"
        with _quiet_flower_logs():
            init_args, session_dir = start_loopback_ray(
                cores,
                field=f"protocols.{label}",
                engine="Flower's Ray backend",
                busy="Flower's backend shuts Ray down when it finishes, so run the flower protocol in a process "
                'of its own (and not with backend.kind = "ray")',
            )
            try:
                payload = ray.put(_client_payload(workload, weighted))
                started = time.perf_counter()
                run_simulation(
                    server_app=_server_app(
                        workload, list(zip(specs, rows, strict=True)), participation, idle, label, captures
                    ),
                    client_app=_client_app(payload),
                    num_supernodes=workload.devices,
                    backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}, "init_args": init_args},
                )
                wall = time.perf_counter() - started
            finally:
                if ray.is_initialized():  # Flower shuts Ray down itself unless it failed first
                    ray.shutdown()
    logger.info(
        "flower %s: %d rounds on %d devices took %.1f s of real time (Ray on %d CPUs, logs in %s)",
        ", ".join(spec.name for spec in specs),
        workload.rounds,
        workload.devices,
        wall,
        cores,
        session_dir,
    )
    return [
        FlowerRun(c.models, c.trained, c.wall_s, session_dir, frozenset(c.sent), c.private_rows, c.uploads)
        for c in captures
    ]


def run_flower(
    workload: Workload,
    *,
    strategy: FlowerStrategy | None = None,
    participation: float = 1.0,
    idle: np.ndarray | None = None,
    weighted: bool = True,
    num_cpus: int | None = None,
    label: str = "flower",
) -> FlowerRun:
    """Run Flower's ``strategy`` (default: FedAvg) for ``workload.rounds`` rounds on its Ray backend and
    return every global model."""
    runs = run_flower_strategies(
        workload,
        [strategy or FlowerStrategy()],
        participation=participation,
        idle=idle,
        weighted=weighted,
        num_cpus=num_cpus,
        label=label,
    )
    return runs[0]


def _rows_by_round(
    logged: dict[int, dict[str, torch.Tensor]], private: frozenset[str], label: str
) -> dict[int, tuple[torch.Tensor, ParamStack]]:
    """The nodes' logs (device -> ``{"<name>@<round>": rows}``) regrouped by round: the devices that
    trained in it and their rows stacked in that device order."""
    by_round: dict[int, dict[int, dict[str, torch.Tensor]]] = {}
    for device in sorted(logged):
        for key, tensor in logged[device].items():
            name, _, round_text = key.rpartition("@")
            if name not in private or not round_text.isdigit():
                raise ProtocolError(f"protocols.{label}: device {device} logged {key!r}, not a private row")
            by_round.setdefault(int(round_text), {}).setdefault(device, {})[name] = tensor
    out: dict[int, tuple[torch.Tensor, ParamStack]] = {}
    for round_index, rows in sorted(by_round.items()):
        devices = sorted(rows)
        stacked = {name: torch.stack([rows[d][name] for d in devices]) for name in sorted(private)}
        out[round_index] = (torch.tensor(devices, dtype=torch.int64), stacked)
    return out


def _uploads_from(value: Any, where: str) -> dict[int, dict[str, tuple[int, ...]]]:
    """One round of ``FlowerRun.uploads`` from its checkpoint form: ``[device, {name: shape}]`` pairs."""
    shapes: dict[int, dict[str, tuple[int, ...]]] = {}
    for pair in expect(value, list, where):
        device, arrays = expect(pair, list, where)
        shapes[expect(device, int, where)] = {
            name: tuple(expect(d, int, f"{where}.{name}") for d in expect(shape, list, f"{where}.{name}"))
            for name, shape in expect(arrays, dict, where).items()
        }
    return shapes


class FlowerProtocol(Protocol):
    """A Flower strategy run by Flower in ``setup``; rounds replayed with in-engine FedAvg's simulated costs."""

    def __init__(
        self,
        label: str,
        *,
        strategy: FlowerStrategy,
        server: str | int,
        participation: float,
        weighted: bool,
        server_trains: bool,
    ) -> None:
        super().__init__(label)
        if not 0 < participation <= 1:
            raise ProtocolError(f"protocols.{label}.participation: got {participation}; must be in (0, 1]")
        self.strategy = strategy
        self._server = server
        self._participation = participation
        self._weighted = weighted
        self._server_trains = server_trains

    @property
    def idle(self) -> np.ndarray | None:
        """The devices that never train: the server, when it is a device and ``server_trains`` is false."""
        server = self.tree.root
        return None if self._server_trains or server >= self.workload.devices else np.array([server])

    def setup(self, workload: Workload) -> None:
        self.workload = workload
        self.network = NetworkModel(workload.graph)
        server = choose_server(workload, self.network, self._server, self.label)
        self.tree: AggregationTree = star_tree(workload.devices, server)
        self.network.prepare(int(h) for h in self.tree.heads[0])
        self.timing = TreeTiming(self.tree, self.network, self.clock, workload.wire_bytes, failover=False)
        self.rows = self._rows()
        self.run = run_flower(
            workload,
            strategy=self.strategy,
            participation=self._participation,
            idle=self.idle,
            weighted=self._weighted,
            label=self.label,
        )
        for index in range(1, workload.rounds + 1):  # the ServerApp checked already; a run cut short shows here
            _check_round(workload, self._participation, self.idle, self.label, index, self.run.trained)
        self.current = self.run.global_models[0]
        # each device's private rows as the evaluation replays the rounds: the initial ones, then its logged ones
        self.private = replicate({name: workload.initial[name] for name in sorted(workload.private)}, workload.devices)
        self._logged = _rows_by_round(self.run.private_rows, workload.private, self.label)

    def _rows(self) -> SparseRows | None:
        """In-engine ``fedavg``'s sparse item rows on the same star, to size the uploads as it does (nothing
        else of it is used: Flower did the numerics); None where whole models travel."""
        if not self.workload.recommender or self.strategy.item_merge != "touched":
            return None
        return SparseRows(self.workload, self.tree, weighted=self._weighted, public_merge="mean")

    def run_round(self, round_index: int) -> RoundCost:
        if round_index >= len(self.run.global_models):
            raise ProtocolError(
                f"protocols.{self.label}: round {round_index} was not simulated; Flower ran "
                f"workload.rounds={len(self.run.global_models) - 1} rounds in setup"
            )
        self.current = self.run.global_models[round_index]
        if round_index in self._logged:  # the devices that trained this round hold new private rows
            devices, rows = self._logged[round_index]
            for name, tensor in rows.items():
                self.private[name][devices] = tensor
        ids = participants(self.workload.seed, round_index, self.workload.devices, self._participation, self.idle)
        size = self.workload.wire_bytes
        # touched item rows: each upload sized as in-engine fedavg sizes it (pushes down stay whole models)
        sizes = self.rows.plan(torch.from_numpy(ids), round_index) if self.rows is not None and len(ids) else None
        if not self.workload.network.timing:
            messages = round_messages(self.tree, ids, 1, True)
            sent = (
                messages * size if sizes is None else round_bytes(self.tree, ids, 1, True, sizes, self.timing.down_size)
            )
            return RoundCost(0.0, sent, messages, {"root_aggregations": 1.0}, clocked=True)
        # the in-engine FedAvg's timing, on this run's clock: the same numbers (faults are not replayed)
        compute = self.network.compute_s(ids, self.workload.epoch_flops[ids])
        outcome = self.timing.run_round(ids, compute, 1, True, sizes)
        messages = outcome.messages
        sent = messages * size if sizes is None else outcome.bytes_sent
        return RoundCost(outcome.duration_s, sent, messages, {"root_aggregations": 1.0}, clocked=True)

    def evaluation_models(self) -> ParamStack:
        return {name: tensor.unsqueeze(0) for name, tensor in self.current.items()}

    def device_models(self) -> DeviceModels:
        """Every device with Flower's global model and its own rows as Flower's nodes trained them
        (read after the run by the evaluation-only query; see the module docstring)."""
        devices = torch.arange(self.workload.devices)
        return DeviceModels(
            self.evaluation_models(), torch.zeros(len(devices), dtype=torch.int64), self.private, devices
        )

    def structure(self) -> dict[str, Any]:
        return self.tree.to_dict()

    def state_dict(self) -> dict[str, Any]:
        """What the Flower simulation of ``setup`` produced (a resumed run does not simulate again), the
        model and private rows of the current round, and the star's timing."""
        run = self.run
        logged = sorted(run.private_rows)
        return {
            "tree": tree_state(self.tree),
            "timing": timing_state(self.timing),
            "global_models": list(run.global_models),
            "trained": [[int(device) for device in devices] for devices in run.trained],
            "wall_s": float(run.wall_s),
            "ray_session_dir": run.ray_session_dir,
            "sent": sorted(run.sent),
            "uploads": [
                [[device, {name: list(shape) for name, shape in arrays.items()}] for device, arrays in shapes.items()]
                for shapes in run.uploads
            ],
            "logged_devices": logged,
            "logged_rows": [run.private_rows[device] for device in logged],
            "current": self.current,
            "private": self.private,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        workload = self.workload
        devices = workload.devices
        self.network = NetworkModel(workload.graph)
        self.tree = tree_from_state(state["tree"], workload.graph.number_of_nodes(), devices)
        self.network.prepare(int(h) for h in self.tree.heads[0])
        self.timing = TreeTiming(self.tree, self.network, self.clock, workload.wire_bytes, failover=False)
        self.rows = self._rows()
        load_timing_state(self.timing, state["timing"])
        shared = workload.shared(workload.initial)
        models = expect(state["global_models"], list, "global_models")
        if len(models) != workload.rounds + 1:
            raise CheckpointError(f"global_models: got {len(models)}, the run has {workload.rounds} rounds (+ initial)")
        trained = expect(state["trained"], list, "trained")
        logged = expect(state["logged_devices"], list, "logged_devices")
        rows = expect(state["logged_rows"], list, "logged_rows")
        if len(rows) != len(logged):
            raise CheckpointError(f"logged_rows: got {len(rows)} for {len(logged)} logged devices")
        self.run = FlowerRun(
            global_models=[stack_like(m, shared, f"global_models[{r}]") for r, m in enumerate(models)],
            trained=[
                [expect(d, int, f"trained[{r}]") for d in expect(ds, list, f"trained[{r}]")]
                for r, ds in enumerate(trained)
            ],
            wall_s=expect(state["wall_s"], float, "wall_s"),
            ray_session_dir=expect(state["ray_session_dir"], str, "ray_session_dir"),
            sent=frozenset(expect(name, str, "sent") for name in expect(state["sent"], list, "sent")),
            private_rows={
                expect(device, int, "logged_devices"): {
                    key: expect(row, torch.Tensor, f"logged_rows[{i}].{key}")
                    for key, row in expect(table, dict, f"logged_rows[{i}]").items()
                }
                for i, (device, table) in enumerate(zip(logged, rows, strict=True))
            },
            uploads=[
                _uploads_from(shapes, f"uploads[{r}]")
                for r, shapes in enumerate(expect(state["uploads"], list, "uploads"))
            ],
        )
        self.current = stack_like(state["current"], shared, "current")
        private = {name: workload.initial[name] for name in sorted(workload.private)}
        self.private = stack_like(state["private"], private, "private", rows=devices)
        self._logged = _rows_by_round(self.run.private_rows, workload.private, self.label)


@register_protocol("flower")
def flower(
    label: str,
    *,
    strategy: StrategyName = "FedAvg",
    server: str | int = "auto",
    participation: float = 1.0,
    weighted: bool = True,
    server_trains: bool = False,
    proximal_mu: float | None = None,
    server_learning_rate: float | None = None,
    server_momentum: float | None = None,
    eta: float | None = None,
    eta_l: float | None = None,
    beta_1: float | None = None,
    beta_2: float | None = None,
    tau: float | None = None,
    item_merge: str = "touched",
) -> Protocol:
    """Flower's ``strategy`` on Flower's simulation engine. Its options, Flower's names (None: Flower's
    default): FedProx ``proximal_mu``; FedAvgM ``server_learning_rate``, ``server_momentum``; FedAdam and
    FedYogi ``eta``, ``eta_l`` (must be train.lr), ``beta_1``, ``beta_2``, ``tau``; FedAdagrad ``eta``,
    ``eta_l``, ``tau``. ``weighted=True`` is Flower's example-count weighting; ``server_trains`` as for
    in-engine ``fedavg``. ``item_merge`` (recommenders) as for ``fedavg``: ``"touched"`` (default) sends each
    device's touched item rows and averages each row over its senders (FCF; FedAvg only),
    ``"dense"`` whole item tables."""
    if item_merge not in ITEM_MERGES:
        raise ProtocolError(
            f"protocols.{label}.item_merge: got {item_merge!r}; choose one of: {', '.join(ITEM_MERGES)}"
        )
    given = {
        "proximal_mu": proximal_mu,
        "server_learning_rate": server_learning_rate,
        "server_momentum": server_momentum,
        "eta": eta,
        "eta_l": eta_l,
        "beta_1": beta_1,
        "beta_2": beta_2,
        "tau": tau,
    }
    return FlowerProtocol(
        label,
        strategy=replace(strategy_from_options(label, strategy, given), item_merge=item_merge),
        server=server,
        participation=participation,
        weighted=weighted,
        server_trains=server_trains,
    )
