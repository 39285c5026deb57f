"""FedAvg on the real Flower simulation engine: an independent check of the in-engine FedAvg.

A ``ServerApp`` runs ``flwr.serverapp.strategy.FedAvg`` (McMahan et al.,
AISTATS 2017, Algorithm 1, Flower's own implementation) and a ``ClientApp``
trains one device with the same code the engine uses (``local_train`` on a
stack of one: a device's random stream depends only on (seed, round, device
id), so it trains exactly as it would inside the whole fleet), on Flower's
Ray backend. Supernode ``partition-id`` i is device i.

Fitting Flower to the round-by-round ``Protocol`` interface: Flower owns its
round loop, so ``setup`` runs the whole simulation (``workload.rounds``
rounds) and keeps the global model after every round (``evaluate_fn`` sees
each); ``run_round(r)`` installs round r's model and charges the simulated
time and bytes that in-engine FedAvg charges for the same round (a star tree
to the same server, timed by ``etree.tree_timing`` on the run's clock), so curves are comparable.
Flower's real wall-clock goes to the log only, never into metrics.

Choices the comparison forces:

* Weighting: Flower's FedAvg weights by ``num-examples``. ``weighted=True``
  (the default, Flower's behaviour) sends true example counts;
  ``weighted=False`` sends 1 per device, the unweighted mean of the E-Tree
  paper's FL baseline.
* Sampling: full participation is the default and trains every device each
  round through Flower's own sampling. With ``participation < 1`` Flower's
  sampling cannot be made reproducible by seeding Python's ``random``: node
  ids come from ``os.urandom``, so the same draw picks other devices each run.
  Instead the ServerApp first asks every node its ``partition-id`` (one
  ``query`` message each), and a FedAvg whose ``configure_train`` is replaced
  sends the round's training messages to exactly the devices the in-engine
  FedAvg samples (``participants``: the same counter-based draw from
  ``workload.seed``). Aggregation stays Flower's.
* A guest that leaves no trace: telemetry, update checks and Ray usage stats
  are off; Ray runs on loopback only (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``
  and ``_node_ip_address=127.0.0.1``), and HTTP proxy variables point at a
  closed loopback port so the cloud-metadata probe that Ray's usage-stats
  dashboard process makes even with usage stats off (``requests`` to
  169.254.169.254 and metadata.google.internal) never leaves the machine.
  ``benchmarks/check_no_outbound.py`` checks this with strace.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, cast

import torch

from clients.fleet import FleetData
from clients.models import ParamStack
from clients.training import local_train
from etree.errors import ProtocolError
from etree.fedavg import choose_server
from etree.hierarchical import participants
from etree.network import NetworkModel
from etree.protocol import Protocol, RoundCost, Workload
from etree.registry import register_protocol
from etree.tree import AggregationTree, star_tree
from etree.tree_timing import TreeTiming, round_messages

logger = logging.getLogger(__name__)

# Set for the Ray processes (they inherit the environment when ``ray.init`` starts them).
GUEST_ENVIRONMENT = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",  # silences Ray's FutureWarning about accelerators
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # node IP = loopback; a real multi-machine cluster must not set it
    "http_proxy": "http://127.0.0.1:9",  # port 9 (discard) is closed: metadata probes fail at once, locally
    "HTTP_PROXY": "http://127.0.0.1:9",
    "https_proxy": "http://127.0.0.1:9",
    "HTTPS_PROXY": "http://127.0.0.1:9",
    "no_proxy": "127.0.0.1,localhost",  # Ray's own gRPC and HTTP stay direct
    "NO_PROXY": "127.0.0.1,localhost",
}

# Flower warnings every run of this adapter triggers on purpose; anything else still shows.
_EXPECTED_FLOWER_WARNINGS = (
    "The `run_simulation` function is deprecated",  # the Python entry point still works in 1.41
    "fraction_evaluate is set to 0.0",  # evaluation is done in-engine on the captured global models
)


@dataclass(frozen=True)
class FlowerRun:
    """What one Flower simulation produced."""

    global_models: list[ParamStack]  # index r: the global model after round r (0: initial)
    trained: list[list[int]]  # index r-1: the devices whose replies Flower aggregated in round r
    wall_s: float  # real seconds of run_simulation, for logs only
    ray_session_dir: str  # Ray's session folder: its logs, and the name its processes carry


@contextlib.contextmanager
def _guest_environment() -> Iterator[None]:
    """Set ``GUEST_ENVIRONMENT`` while Flower and Ray run; restore the caller's values after."""
    saved = {name: os.environ.get(name) for name in GUEST_ENVIRONMENT}
    os.environ.update(GUEST_ENVIRONMENT)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


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


def _start_ray(num_cpus: int, label: str) -> tuple[dict[str, Any], str]:
    """Start Ray on loopback; return the init arguments and the session folder (Ray's logs live there).

    Started here rather than by Flower's backend so that a failure is one clear
    ProtocolError before any Flower thread exists (inside ``run_simulation`` the
    ServerApp thread would be left waiting for replies).
    """
    import ray
    from ray._private import ray_constants

    if ray.is_initialized():
        raise ProtocolError(
            f"protocols.{label}: Ray is already running in this process; Flower's backend shuts Ray down "
            f"when it finishes, so run the flower protocol in a process of its own"
        )
    if ray_constants.ENABLE_RAY_CLUSTER:  # read once at import: an import before ours saw no loopback setting
        logger.warning(
            "flower: Ray was imported before RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 was set; "
            "the driver may contact Ray through the host's address instead of loopback"
        )
    init_args: dict[str, Any] = {
        "include_dashboard": False,
        "num_cpus": num_cpus,
        "_node_ip_address": "127.0.0.1",
        "logging_level": "ERROR",
        "log_to_driver": False,
    }
    # As Flower's RayBackend does: workers must import what the driver can (etree, clients).
    pythonpath = os.pathsep.join([*sys.path, *filter(None, [os.environ.get("PYTHONPATH")])])
    try:
        context = ray.init(runtime_env={"env_vars": {"PYTHONPATH": pythonpath}}, **init_args)
    except Exception as error:  # Ray raises many types here (ConnectionError, RuntimeError, OSError...)
        with contextlib.suppress(Exception):
            ray.shutdown()
        reason = " ".join(str(error).split()) or type(error).__name__
        raise ProtocolError(f"protocols.{label}: Flower's Ray backend could not start ({reason})") from error
    return init_args, str(cast(Any, context).address_info["session_dir"])  # a RayContext, typed as its base


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
    }


def _client_app(payload_ref: Any) -> Any:
    """A ClientApp whose ``train`` runs the engine's local training on its own device.

    Its functions reach only ``torch``, ``clients`` and ``flwr`` (see ``_client_payload``).
    """
    from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp

    app = ClientApp()

    @app.train()
    def train(message: Message, context: Any) -> Message:
        import ray

        payload = ray.get(payload_ref)
        data: FleetData = payload["data"]
        device = int(context.node_config["partition-id"])
        arrays = message.content.array_records["arrays"].to_torch_state_dict()
        stack = {name: tensor.unsqueeze(0) for name, tensor in arrays.items()}
        server_round = cast(int, message.content.config_records["config"]["server-round"])
        trained = local_train(
            payload["model"],
            stack,
            data,
            torch.tensor([device]),
            payload["train"],
            seed=payload["seed"],
            round_index=server_round,
        )
        examples = int(data.counts[device]) if payload["weighted"] else 1
        reply = RecordDict(
            {
                "arrays": ArrayRecord({name: tensor[0] for name, tensor in trained.items()}),
                "metrics": MetricRecord({"num-examples": examples, "partition-id": device}),
            }
        )
        return Message(reply, reply_to=message)

    @app.query()
    def query(message: Message, context: Any) -> Message:
        device = int(context.node_config["partition-id"])
        return Message(RecordDict({"node": MetricRecord({"partition-id": device})}), reply_to=message)

    return app


def _server_app(
    workload: Workload, participation: float, label: str, captured: list[ParamStack], trained: list[list[int]]
) -> Any:
    """A ServerApp running Flower's FedAvg for ``workload.rounds`` rounds, keeping every global model."""
    from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
    from flwr.serverapp import Grid, ServerApp
    from flwr.serverapp.strategy import FedAvg

    devices = workload.devices
    count = len(participants(workload.seed, 1, devices, participation))

    def record_trained(replies: list[RecordDict], weight_key: str) -> MetricRecord:
        """Called once per round with the replies Flower aggregates: note whose they were."""
        trained.append(sorted(cast(int, next(iter(r.metric_records.values()))["partition-id"]) for r in replies))
        return MetricRecord({"clients": len(replies)})

    def keep_global(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        """Flower's centralised evaluation hook: keep the model (accuracy is measured in-engine),
        and stop the run at the first round whose aggregate missed a device (Flower would go on)."""
        if server_round > 0:
            _check_round(workload, participation, label, server_round, trained)
        captured.append({name: t.clone() for name, t in arrays.to_torch_state_dict().items()})
        return None

    class SeededFedAvg(FedAvg):
        """Flower's FedAvg, training the in-engine FedAvg's sampled devices instead of a random draw."""

        def __init__(self, node_of_device: dict[int, int], **options: Any) -> None:
            super().__init__(**options)
            self.node_of_device = node_of_device

        def configure_train(
            self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
        ) -> list[Message]:
            config["server-round"] = server_round
            content = RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: config})
            chosen = participants(workload.seed, server_round, devices, participation)
            return [
                Message(content=content, message_type=MessageType.TRAIN, dst_node_id=self.node_of_device[int(d)])
                for d in chosen
            ]

    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Any) -> None:
        options: dict[str, Any] = {
            "fraction_train": participation,
            "fraction_evaluate": 0.0,
            "min_train_nodes": count,
            "min_evaluate_nodes": 0,
            "min_available_nodes": devices,
            "train_metrics_aggr_fn": record_trained,
        }
        if participation >= 1:
            strategy = FedAvg(**options)
        else:
            strategy = SeededFedAvg(_map_devices(grid, devices, label), **options)
        initial = ArrayRecord({name: tensor.clone() for name, tensor in workload.initial.items()})
        strategy.start(grid=grid, initial_arrays=initial, num_rounds=workload.rounds, evaluate_fn=keep_global)

    return app


def _check_round(
    workload: Workload, participation: float, label: str, round_index: int, trained: list[list[int]]
) -> None:
    """Flower aggregated round ``round_index`` from exactly the devices the in-engine FedAvg samples.

    Flower drops a failed ClientApp's reply and averages the rest; a baseline
    that silently lost devices would not be FedAvg's, so that is an error.
    """
    expected = participants(workload.seed, round_index, workload.devices, participation).tolist()
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


def run_flower_fedavg(
    workload: Workload,
    *,
    participation: float = 1.0,
    weighted: bool = True,
    num_cpus: int | None = None,
    label: str = "flower",
) -> FlowerRun:
    """Run Flower's FedAvg for ``workload.rounds`` rounds on its Ray backend and return every global model."""
    cores = num_cpus or len(os.sched_getaffinity(0))
    captured: list[ParamStack] = []
    trained: list[list[int]] = []
    with _guest_environment():
        with warnings.catch_warnings():  # flwr's CLI dependency (typer) warns about click on import
            warnings.simplefilter("ignore", DeprecationWarning)
            import flwr.supercore.telemetry as telemetry
            import ray
            from flwr.simulation import run_simulation

        telemetry.FLWR_TELEMETRY_ENABLED = "0"  # read once at import: an earlier import may have seen "1"
        with _quiet_flower_logs():
            init_args, session_dir = _start_ray(cores, label)
            try:
                payload = ray.put(_client_payload(workload, weighted))
                started = time.perf_counter()
                run_simulation(
                    server_app=_server_app(workload, participation, label, captured, trained),
                    client_app=_client_app(payload),
                    num_supernodes=workload.devices,
                    backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}, "init_args": init_args},
                )
                wall = time.perf_counter() - started
            finally:
                if ray.is_initialized():  # Flower shuts Ray down itself unless it failed first
                    ray.shutdown()
    logger.info(
        "flower: %d rounds on %d devices took %.1f s of real time (Ray on %d CPUs, logs in %s)",
        workload.rounds,
        workload.devices,
        wall,
        cores,
        session_dir,
    )
    return FlowerRun(captured, trained, wall, session_dir)


class FlowerFedAvg(Protocol):
    """FedAvg run by Flower in ``setup``; rounds replayed with in-engine FedAvg's simulated costs."""

    def __init__(self, label: str, *, server: str | int, participation: float, weighted: bool) -> None:
        super().__init__(label)
        if not 0 < participation <= 1:
            raise ProtocolError(f"protocols.{label}.participation: got {participation}; must be in (0, 1]")
        self._server = server
        self._participation = participation
        self._weighted = weighted

    def setup(self, workload: Workload) -> None:
        if workload.private:
            raise ProtocolError(
                f"protocols.{self.label}: Flower's ClientApp keeps no per-device state between rounds, so a model "
                f"with private parameters ({', '.join(sorted(workload.private))}) cannot run on it yet; "
                f"use the in-engine fedavg"
            )
        self.workload = workload
        self.network = NetworkModel(workload.graph)
        server = choose_server(workload, self.network, self._server, self.label)
        self.tree: AggregationTree = star_tree(workload.devices, server)
        self.network.prepare(int(h) for h in self.tree.heads[0])
        self.timing = TreeTiming(self.tree, self.network, self.clock, workload.wire_bytes, failover=False)
        self.run = run_flower_fedavg(
            workload, participation=self._participation, weighted=self._weighted, label=self.label
        )
        for index in range(1, workload.rounds + 1):  # the ServerApp checked already; a run cut short shows here
            _check_round(workload, self._participation, self.label, index, self.run.trained)
        self.current = self.run.global_models[0]

    def run_round(self, round_index: int) -> RoundCost:
        if round_index >= len(self.run.global_models):
            raise ProtocolError(
                f"protocols.{self.label}: round {round_index} was not simulated; Flower ran "
                f"workload.rounds={len(self.run.global_models) - 1} rounds in setup"
            )
        self.current = self.run.global_models[round_index]
        ids = participants(self.workload.seed, round_index, self.workload.devices, self._participation)
        size = self.workload.wire_bytes
        if not self.workload.network.timing:
            messages = round_messages(self.tree, ids, 1, True)
            return RoundCost(0.0, messages * size, messages, {"root_aggregations": 1.0}, clocked=True)
        # the in-engine FedAvg's timing, on this run's clock: the same numbers (faults are not replayed)
        outcome = self.timing.run_round(ids, self.network.compute_s(ids, self.workload.epoch_flops[ids]), 1, True)
        messages = outcome.messages
        return RoundCost(outcome.duration_s, messages * size, messages, {"root_aggregations": 1.0}, clocked=True)

    def evaluation_models(self) -> ParamStack:
        return {name: tensor.unsqueeze(0) for name, tensor in self.current.items()}

    def structure(self) -> dict[str, Any]:
        return self.tree.to_dict()


@register_protocol("flower")
def flower(label: str, *, server: str | int = "auto", participation: float = 1.0, weighted: bool = True) -> Protocol:
    """FedAvg on Flower's simulation engine; ``weighted=True`` is Flower's example-count weighting."""
    return FlowerFedAvg(label, server=server, participation=participation, weighted=weighted)
