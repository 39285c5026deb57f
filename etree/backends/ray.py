"""The Ray training backend: a device stack trained in shards by Ray actors, on one machine or many.

``[backend] kind = "ray"`` gives a workload a ``RayTrainer``. On its first
call it starts Ray, puts the model and the fleet data into Ray's object store
once, and starts ``workers`` actors (one CPU each, spread over the cluster's
machines). Every training call then cuts the devices to train into
``workers`` contiguous shards (sizes differ by at most one), sends each actor
its shard of the parameter stack, and concatenates the trained shards in
order. Each actor fetches the model and the data once and keeps them; what
travels per call is each shard's parameter stack, out and back.

Same seed, same result as the local backend: a device's sample order (and a
recommender's negatives) depend only on (seed, round, epoch, device id), and
devices share no parameters, so sharding changes nothing a device computes
(``tests/test_ray_backend.py`` compares every metric of whole runs).

Where Ray runs (``[backend] address``):

* ``""`` (the default): a private Ray on this machine, started on loopback
  only with no telemetry, exactly as the Flower baseline starts it
  (``etree.backends.ray_guest``), and shut down by ``close``;
* anything else is passed to ``ray.init(address=...)``, e.g. ``"auto"`` on a
  machine of a cluster started with ``ray start``. Every machine must be able
  to import ``clients`` and ``torch`` at the driver's paths (the driver's
  ``sys.path`` is sent as ``PYTHONPATH``): the same checkout and virtual
  environment at the same path everywhere, e.g. on a shared file system.

Each actor holds the whole fleet's data (the devices it trains change from
call to call, e.g. with participation < 1), so a machine needs memory for
the fleet data once per actor it hosts.

Not shardable: Flower runs its own Ray and shuts it down when it finishes, so
a spec with ``backend.kind = "ray"`` cannot also run the ``flower`` protocol.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from typing import Any

import torch
from torch import nn

from clients.classification.fleet import FleetData
from clients.params import ParamStack
from clients.recommendation.interactions import InteractionFleet
from clients.train_config import TrainConfig
from etree.backends.local import local_train
from etree.backends.ray_guest import driver_pythonpath, guest_environment, one_line, session_dir, start_loopback_ray
from etree.core.errors import ProtocolError

logger = logging.getLogger(__name__)


def shard_bounds(count: int, shards: int) -> list[tuple[int, int]]:
    """``[start, stop)`` of ``shards`` contiguous, non-empty pieces of ``range(count)`` whose sizes
    differ by at most one (fewer pieces when ``count < shards``)."""
    pieces = min(count, shards)
    if pieces <= 0:
        return []
    size, extra = divmod(count, pieces)
    bounds, start = [], 0
    for index in range(pieces):
        stop = start + size + (index < extra)
        bounds.append((start, stop))
        start = stop
    return bounds


class _ShardWorker:
    """A Ray actor: trains the device shards it is sent, on the model and data it fetched once.

    It runs ``clients`` code only; the references arrive wrapped in a list so that Ray passes
    them unresolved and the actor fetches each object once (then keeps it).
    """

    def __init__(self) -> None:
        self._objects: dict[str, Any] = {}

    def ready(self) -> bool:
        return True

    def _fetch(self, ref: Any) -> Any:
        import ray

        key = ref.hex()
        if key not in self._objects:
            self._objects[key] = ray.get(ref)
        return self._objects[key]

    def train(
        self,
        refs: list[Any],
        params: ParamStack,
        device_ids: torch.Tensor,
        config: TrainConfig,
        seed: int,
        round_index: int,
        correction: ParamStack | None = None,
    ) -> ParamStack:
        model, data = (self._fetch(ref) for ref in refs)
        return local_train(
            model, params, data, device_ids, config, seed=seed, round_index=round_index, correction=correction
        )


class RayTrainer:
    """Trains device shards on ``workers`` Ray actors; see the module docstring."""

    def __init__(self, *, workers: int = 2, address: str = "") -> None:
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ProtocolError(f"backend.workers: got {workers!r}; must be an integer >= 1")
        self.workers = workers
        self.address = address
        self.session_dir = ""  # Ray's session folder once started (logs; its processes carry the name)
        self._actors: list[Any] = []
        self._stored: dict[int, tuple[object, Any]] = {}  # id(object) -> (object, its ObjectRef)

    def train(
        self,
        model: nn.Module,
        params: ParamStack,
        data: FleetData | InteractionFleet,
        device_ids: torch.Tensor,
        config: TrainConfig,
        *,
        seed: int,
        round_index: int,
        correction: ParamStack | None = None,
    ) -> ParamStack:
        if len(device_ids) == 0:  # nothing to ship: the local code says what an empty call returns
            return local_train(
                model, params, data, device_ids, config, seed=seed, round_index=round_index, correction=correction
            )
        self._start()  # before importing ray: a private Ray's loopback setting is read at import
        import ray

        refs = [self._store(model), self._store(data)]
        calls = [
            actor.train.remote(
                refs,
                {name: tensor[start:stop].clone() for name, tensor in params.items()},  # a view would ship it all
                device_ids[start:stop].clone(),
                config,
                seed,
                round_index,
                None if correction is None else {name: t[start:stop].clone() for name, t in correction.items()},
            )
            for actor, (start, stop) in zip(self._actors, shard_bounds(len(device_ids), self.workers), strict=False)
        ]
        shards: list[ParamStack] = []
        failures: list[Exception] = []
        for call in calls:  # every reply is read, so Ray reports no error as unhandled
            try:
                shards.append(ray.get(call))
            except ray.exceptions.RayTaskError as error:
                failures.append(error)
        if failures:  # a worker's own error, raised as the local backend raises it
            cause = getattr(failures[0], "cause", None)
            raise cause if isinstance(cause, Exception) else failures[0]
        return {name: torch.cat([shard[name] for shard in shards]) for name in params}

    def close(self) -> None:
        """Stop the actors and, for the private Ray, Ray itself (no process is left); idempotent."""
        if not self._actors:
            return
        import ray

        self._actors = []
        self._stored = {}
        if ray.is_initialized():
            ray.shutdown()

    def __enter__(self) -> RayTrainer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _store(self, value: object) -> Any:
        """The ObjectRef of ``value``, put into the object store on first use (kept alive with it)."""
        import ray

        if id(value) not in self._stored:
            self._stored[id(value)] = (value, ray.put(value))
        return self._stored[id(value)][1]

    def _start(self) -> None:
        if self._actors:
            return
        if self.address:
            self._join_cluster()
        else:
            with guest_environment():
                _, self.session_dir = start_loopback_ray(
                    self.workers,
                    field="backend",
                    engine="the Ray backend",
                    busy='the Ray backend starts a private Ray when backend.address = ""; set backend.address = '
                    '"auto" to use a running Ray instead, or run in a process of its own',
                )
        import ray

        try:
            cpus = ray.cluster_resources().get("CPU", 0.0)
            if cpus < self.workers:
                raise ProtocolError(
                    f"backend.workers: got {self.workers}; the Ray cluster has {cpus:g} CPUs and each worker "
                    f"takes one: lower backend.workers or add machines (ray start --address=HEAD:6379)"
                )
            actor_class: Any = ray.remote(num_cpus=1, scheduling_strategy="SPREAD")(_ShardWorker)
            actors = [actor_class.remote() for _ in range(self.workers)]
            ray.get([actor.ready.remote() for actor in actors])
        except Exception:
            with contextlib.suppress(Exception):
                ray.shutdown()
            raise
        self._actors = actors
        logger.info(
            "ray backend: %d workers on %s (Ray session %s)",
            self.workers,
            self.address or "a private loopback Ray",
            self.session_dir,
        )

    def _join_cluster(self) -> None:
        """Connect to the Ray at ``address`` (a cluster: no loopback settings, Ray needs the network)."""
        import ray

        if ray.is_initialized():
            raise ProtocolError(
                "backend.address: Ray is already initialised in this process; run the spec in a process of its own"
            )
        try:
            with warnings.catch_warnings():  # Ray's FutureWarning about accelerator variables (no GPUs used)
                warnings.filterwarnings("ignore", message="Tip: In future versions of Ray", category=FutureWarning)
                context = ray.init(
                    address=self.address,
                    runtime_env={"env_vars": {"PYTHONPATH": driver_pythonpath()}},
                    logging_level=logging.ERROR,
                    log_to_driver=False,
                )
        except Exception as error:
            with contextlib.suppress(Exception):
                ray.shutdown()
            raise ProtocolError(
                f"backend.address: could not join the Ray at {self.address!r} ({one_line(error)}); "
                f'start one with `ray start --head`, or set backend.address = "" for a private Ray'
            ) from error
        self.session_dir = session_dir(context)
