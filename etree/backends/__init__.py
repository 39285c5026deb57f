"""Where local training runs: the training backend of a workload (``[backend]`` of the spec).

Protocols never call a trainer themselves; they call ``Workload.train_devices``,
which hands the work to the workload's :class:`Trainer`. Swapping the backend
therefore changes no protocol code (as swapping the network model changes none).
Like Flower's ``vce/backend/``: an interface (``base``), a table of
implementations (``BACKENDS``), and the Ray import guarded until it is chosen:

* ``local`` (the default): every device in this process (``LocalTrainer``);
* ``ray``: the device stack cut into contiguous shards, one per Ray actor, on
  this machine or a Ray cluster (:class:`etree.backends.ray.RayTrainer`).

A device's randomness depends only on (seed, round, epoch, device id)
(:func:`clients.train_config.epoch_order`), so which process or machine trains it
changes nothing it computes.
"""

from __future__ import annotations

from etree.backends.base import Trainer
from etree.backends.local import LocalTrainer, local_train
from etree.core.errors import ProtocolError

BACKENDS = ("local", "ray")


def make_trainer(kind: str = "local", *, workers: int = 2, address: str = "") -> Trainer:
    """The trainer of a ``[backend]`` table. Ray is imported only for ``kind = "ray"``, and started
    only when that trainer first trains (``close`` stops it)."""
    if kind == "local":
        return LocalTrainer()
    if kind == "ray":
        from etree.backends.ray import RayTrainer  # guarded: Ray is heavy and optional

        return RayTrainer(workers=workers, address=address)
    raise ProtocolError(f"backend.kind: got {kind!r}; choose one of: {', '.join(BACKENDS)}")


__all__ = ["BACKENDS", "LocalTrainer", "Trainer", "local_train", "make_trainer"]
