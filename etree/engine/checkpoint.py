"""Snapshots of a protocol run between rounds, so an interrupted run continues exactly.

A snapshot names everything a run carries from one round to the next: what
``run_protocol`` keeps (round, bytes sent, event counters), the clock (simulated
time, dead nodes, crashes still to fire) and the protocol's ``state_dict()``
(model stacks, tree, late messages, ...). Nothing else is kept: the workload
(data, graph, model) and the protocol's configuration are rebuilt from the spec,
bit for bit, and every other random draw in the engine is counter-based
(``clients.streams``), so a freshly made protocol that loads the state continues
exactly as the uninterrupted run did.

A state is plain data: torch tensors, numpy arrays and JSON values (None, bool,
int, float, str, lists, dicts with str keys; a numpy ``Generator`` is saved as
``rng.bit_generator.state``). ``pack_state`` splits one into a JSON document and
a flat table of tensors (``experiments.checkpoints`` writes them as JSON and
safetensors); ``unpack_state`` joins them again and checks every tensor against
the dtype and shape the document gives. Reading either part runs no code, and a
part that does not fit is a ``CheckpointError``, never a traceback.

The contract for protocol authors is on ``Protocol.state_dict`` and
``Protocol.load_state_dict``; the checks below (``expect``, ``expect_array``,
``expect_tensor``, ``stack_like``) are what ``load_state_dict`` uses to refuse a
state that does not fit the workload.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import torch

from clients.params import ParamStack
from etree.core.errors import EtreeError
from etree.network.clock import SimClock
from etree.network.conditions import Crash

if TYPE_CHECKING:  # protocol.py documents this module's checks; importing it here would only serve types
    from etree.engine.protocol import Protocol
    from etree.engine.workload import Workload

logger = logging.getLogger(__name__)

_TENSOR, _ARRAY = "$tensor", "$array"  # a packed document's references into the tensor table
T = TypeVar("T")


class CheckpointError(EtreeError):
    """A checkpoint, or a protocol state in it, that this run cannot continue from."""


@dataclass(frozen=True)
class ClockState:
    """Everything a ``SimClock`` holds between rounds."""

    now: float
    dead: tuple[int, ...]
    died_at: dict[int, float]
    pending: tuple[Crash, ...]


@dataclass(frozen=True)
class RunSnapshot:
    """A protocol run after ``round_index`` complete rounds; ``protocol`` is its ``state_dict()``."""

    round_index: int
    sent: int
    counters: dict[str, float] = field(default_factory=dict)
    clock: ClockState = ClockState(0.0, (), {}, ())
    protocol: dict[str, Any] = field(default_factory=dict)

    def to_state(self) -> dict[str, Any]:
        """The snapshot as state (plain data, see ``pack_state``)."""
        clock = self.clock
        return {
            "round_index": self.round_index,
            "sent": self.sent,
            "counters": dict(self.counters),
            "clock": {
                "now": clock.now,
                "dead": list(clock.dead),
                "died_at": [[node, at] for node, at in sorted(clock.died_at.items())],
                "pending": [{"at_s": c.at_s, "node": c.node, "protocol": c.protocol} for c in clock.pending],
            },
            "protocol": self.protocol,
        }

    @classmethod
    def from_state(cls, state: Any) -> RunSnapshot:
        """The snapshot ``to_state`` described; a ``CheckpointError`` names the first field that does not fit."""
        state = expect(state, dict, "snapshot")
        clock = expect(_key(state, "clock", "snapshot"), dict, "snapshot.clock")
        counters = expect(_key(state, "counters", "snapshot"), dict, "snapshot.counters")
        died_at: dict[int, float] = {}
        for index, pair in enumerate(expect(_key(clock, "died_at", "snapshot.clock"), list, "snapshot.clock.died_at")):
            where = f"snapshot.clock.died_at[{index}]"
            if not isinstance(pair, list) or len(pair) != 2:
                raise CheckpointError(f"{where}: got {pair!r}; expected [node, seconds]")
            died_at[expect(pair[0], int, where)] = _number(pair[1], where)
        pending = []
        for index, raw in enumerate(expect(_key(clock, "pending", "snapshot.clock"), list, "snapshot.clock.pending")):
            where = f"snapshot.clock.pending[{index}]"
            crash = expect(raw, dict, where)
            node = _key(crash, "node", where)
            if isinstance(node, bool) or not isinstance(node, int | str):
                raise CheckpointError(f"{where}.node: got {node!r}; expected a node id or a role")
            at_s = _number(_key(crash, "at_s", where), f"{where}.at_s")
            pending.append(Crash(at_s, node, expect(_key(crash, "protocol", where), str, f"{where}.protocol")))
        dead = expect(_key(clock, "dead", "snapshot.clock"), list, "snapshot.clock.dead")
        return cls(
            round_index=expect(_key(state, "round_index", "snapshot"), int, "snapshot.round_index"),
            sent=expect(_key(state, "sent", "snapshot"), int, "snapshot.sent"),
            counters={
                expect(k, str, "snapshot.counters"): _number(v, f"snapshot.counters.{k}") for k, v in counters.items()
            },
            clock=ClockState(
                now=_number(_key(clock, "now", "snapshot.clock"), "snapshot.clock.now"),
                dead=tuple(expect(node, int, "snapshot.clock.dead") for node in dead),
                died_at=died_at,
                pending=tuple(pending),
            ),
            protocol=expect(_key(state, "protocol", "snapshot"), dict, "snapshot.protocol"),
        )


def take_snapshot(protocol: Protocol, round_index: int, sent: int, counters: dict[str, float]) -> RunSnapshot | None:
    """The run's state after ``round_index`` rounds (the clock must hold no unfinished round), a copy
    that later rounds leave alone; None, with a warning, for a protocol without ``state_dict``."""
    try:
        state = protocol.state_dict()
    except NotImplementedError:
        logger.warning("protocol %r has no state_dict: it is not checkpointed between rounds", protocol.label)
        return None
    clock = protocol.clock
    pending = tuple(clock.pending)
    clock_state = ClockState(clock.now, tuple(sorted(clock.dead)), dict(clock.died_at), pending)
    return RunSnapshot(round_index, sent, dict(counters), clock_state, copy_state(state, "state"))


def restore_snapshot(protocol: Protocol, workload: Workload, snapshot: RunSnapshot) -> SimClock:
    """Put a freshly made protocol (same spec, ``setup`` not called) into the snapshot's state
    on a new clock, with the crashes still to come rescheduled on it; returns that clock."""
    state = snapshot.clock
    clock = SimClock(workload.network, start_s=state.now)
    clock.dead = set(state.dead)
    clock.died_at = dict(state.died_at)
    protocol.clock = clock
    protocol.workload = workload
    try:
        protocol.load_state_dict(copy_state(snapshot.protocol, "state"))
    except (CheckpointError, KeyError, TypeError, ValueError, IndexError, RuntimeError, NotImplementedError) as exc:
        reason = f"missing {exc}" if isinstance(exc, KeyError) else (str(exc) or type(exc).__name__).splitlines()[0]
        raise CheckpointError(
            f"checkpoint: protocol {protocol.label!r} cannot continue from its saved state ({reason})"
        ) from exc
    clock.schedule_crashes(state.pending, protocol.resolve_node)
    return clock


# -- plain data --------------------------------------------------------------
def copy_state(value: Any, path: str) -> Any:
    """A deep copy of a state (tensors cloned, arrays copied); a ``TypeError`` names what is not state."""
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, np.ndarray):
        _check_array_dtype(value, path)
        return value.copy()
    if isinstance(value, dict):
        return {_state_key(key, path): copy_state(item, f"{path}.{key}") for key, item in value.items()}
    if isinstance(value, list):
        return [copy_state(item, f"{path}[{index}]") for index, item in enumerate(value)]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    raise TypeError(
        f"{path}: a {type(value).__name__} is not state; use tensors, numpy arrays and JSON values "
        "(lists, not tuples; Python numbers, not numpy scalars)"
    )


def pack_state(value: Any) -> tuple[Any, dict[str, torch.Tensor]]:
    """Split a state into a JSON document and a table of tensors it refers to by key, dtype and shape."""
    tensors: dict[str, torch.Tensor] = {}

    def pack(item: Any, path: str) -> Any:
        if isinstance(item, torch.Tensor):
            key = str(len(tensors))
            tensors[key] = item.detach().contiguous()
            return {_TENSOR: key, "dtype": _dtype_name(item), "shape": list(item.shape)}
        if isinstance(item, np.ndarray):
            _check_array_dtype(item, path)
            key = str(len(tensors))
            array = np.ascontiguousarray(item) if item.flags.writeable else item.copy()
            tensors[key] = torch.from_numpy(array)
            return {_ARRAY: key, "dtype": str(item.dtype), "shape": list(item.shape)}
        if isinstance(item, dict):
            return {_state_key(key, path): pack(entry, f"{path}.{key}") for key, entry in item.items()}
        if isinstance(item, list):
            return [pack(entry, f"{path}[{index}]") for index, entry in enumerate(item)]
        return copy_state(item, path)  # a JSON scalar, or the TypeError

    return pack(value, "state"), tensors


def unpack_state(document: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """The state ``pack_state`` split: each reference replaced by its tensor (or array), checked."""
    used: set[str] = set()

    def unpack(item: Any, path: str) -> Any:
        if isinstance(item, dict):
            if _TENSOR in item or _ARRAY in item:
                return _resolve(item, path)
            return {key: unpack(entry, f"{path}.{key}") for key, entry in item.items()}
        if isinstance(item, list):
            return [unpack(entry, f"{path}[{index}]") for index, entry in enumerate(item)]
        if item is None or isinstance(item, bool | int | float | str):
            return item
        raise CheckpointError(f"{path}: got a {type(item).__name__}; not state")

    def _resolve(ref: dict[str, Any], path: str) -> torch.Tensor | np.ndarray:
        kind = _TENSOR if _TENSOR in ref else _ARRAY
        key, dtype, shape = ref.get(kind), ref.get("dtype"), ref.get("shape")
        if set(ref) != {kind, "dtype", "shape"} or not isinstance(key, str) or not isinstance(shape, list):
            raise CheckpointError(f"{path}: a tensor reference needs {kind}, dtype and shape, got {sorted(ref)}")
        if key not in tensors:
            raise CheckpointError(f"{path}: tensor {key!r} is missing from the tensor file")
        if key in used:
            raise CheckpointError(f"{path}: tensor {key!r} is named twice")
        used.add(key)
        tensor = tensors[key]
        value = tensor if kind == _TENSOR else tensor.numpy()
        got = _dtype_name(value) if isinstance(value, torch.Tensor) else str(value.dtype)
        if got != dtype or list(value.shape) != shape:
            raise CheckpointError(
                f"{path}: tensor {key!r} is {got} {list(value.shape)} in the tensor file, not {dtype} {shape}"
            )
        return value

    state = unpack(document, "state")
    extra = sorted(set(tensors) - used)
    if extra:
        raise CheckpointError(f"the tensor file holds {len(extra)} tensor(s) the document does not name ({extra[:3]})")
    return state


# -- checks for load_state_dict ----------------------------------------------
def expect(value: Any, kind: type[T], where: str) -> T:
    """``value`` if it is a ``kind`` (a bool is not an int here), else a ``CheckpointError`` naming ``where``."""
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise CheckpointError(f"{where}: got {type(value).__name__}, expected {kind.__name__}")
    return value


def expect_array(value: Any, where: str, dtype: type[np.generic], shape: tuple[int | None, ...]) -> np.ndarray:
    """A numpy array of ``dtype`` shaped ``shape`` (None: any length on that axis)."""
    array = expect(value, np.ndarray, where)
    _check_shape(array.dtype == dtype, str(array.dtype), np.dtype(dtype).name, array.shape, shape, where)
    return array


def expect_tensor(value: Any, where: str, dtype: torch.dtype, shape: tuple[int | None, ...]) -> torch.Tensor:
    """A torch tensor of ``dtype`` shaped ``shape`` (None: any length on that axis)."""
    tensor = expect(value, torch.Tensor, where)
    _check_shape(tensor.dtype == dtype, _dtype_name(tensor), str(dtype), tuple(tensor.shape), shape, where)
    return tensor


def expect_ids(value: Any, where: str, bound: int) -> np.ndarray:
    """A one-dimensional integer array (of the dtype it was saved with) of ids in ``[0, bound)``."""
    ids = expect(value, np.ndarray, where)
    if ids.ndim != 1 or ids.dtype.kind not in "iu":
        raise CheckpointError(f"{where}: got {ids.dtype} {list(ids.shape)}, expected a list of integer ids")
    if len(ids) and (ids.min() < 0 or ids.max() >= bound):
        raise CheckpointError(f"{where}: ids must lie in [0, {bound}), got {ids.min()}..{ids.max()}")
    return ids


def stack_like(value: Any, like: ParamStack, where: str, *, rows: int | None = None) -> ParamStack:
    """A saved parameter stack with exactly ``like``'s names and dtypes; shaped like it, or, with
    ``rows``, ``[rows, *like's shape]`` (``like`` then being one model)."""
    saved = expect(value, dict, where)
    if sorted(saved) != sorted(like):
        raise CheckpointError(f"{where}: holds parameters {sorted(saved)}, the model has {sorted(like)}")
    out: ParamStack = {}
    for name, model in like.items():
        shape = tuple(model.shape) if rows is None else (rows, *model.shape)
        out[name] = expect_tensor(saved[name], f"{where}.{name}", model.dtype, shape)
    return out


def _key(mapping: dict[str, Any], key: str, where: str) -> Any:
    if key not in mapping:
        raise CheckpointError(f"{where}: has no {key!r}")
    return mapping[key]


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise CheckpointError(f"{where}: got {value!r}, expected a number")
    return float(value)


def _check_shape(
    dtype_ok: bool, dtype: str, want_dtype: str, shape: tuple[int, ...], want: tuple[int | None, ...], where: str
) -> None:
    fits = len(shape) == len(want) and all(w is None or s == w for s, w in zip(shape, want, strict=True))
    if not (dtype_ok and fits):
        wanted = [("*" if w is None else w) for w in want]
        raise CheckpointError(f"{where}: got {dtype} {list(shape)}, expected {want_dtype} {wanted}")


def _dtype_name(tensor: torch.Tensor) -> str:
    return str(tensor.dtype).removeprefix("torch.")


def _check_array_dtype(array: np.ndarray, path: str) -> None:
    if array.dtype.kind not in "biuf" or not array.dtype.isnative:
        raise TypeError(f"{path}: a numpy array of {array.dtype} is not state; use bool, integer or float arrays")


def _state_key(key: Any, path: str) -> str:
    if not isinstance(key, str) or key in (_TENSOR, _ARRAY):
        raise TypeError(f"{path}: key {key!r} is not state; use str keys other than {_TENSOR!r} and {_ARRAY!r}")
    return key
