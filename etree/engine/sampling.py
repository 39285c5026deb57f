"""Participant sampling per round, from a counter-based stream (the same draw on any backend)."""

from __future__ import annotations

import numpy as np

from clients.streams import hashed_uniform

SAMPLING_SALT = 0x5A5A  # separates the participant stream from the training streams


def participants(
    seed: int, round_index: int, devices: int, participation: float, idle: np.ndarray | None = None
) -> np.ndarray:
    """The devices that train in ``round_index``: of the eligible devices (all but ``idle``, e.g.
    FedAvg's server when it does not train), ``max(1, round(participation * eligible))`` with the
    smallest counter-based keys, in id order (every eligible device when participation is 1).

    One function for every engine (in-engine trees and Flower) so their samples agree; a device's
    key does not depend on who is idle.
    """
    eligible = np.arange(devices) if idle is None else np.setdiff1d(np.arange(devices), idle)
    if participation >= 1 or not len(eligible):
        return eligible
    count = max(1, round(participation * len(eligible)))
    keys = hashed_uniform(seed, round_index, SAMPLING_SALT, eligible)
    return np.sort(eligible[np.argsort(keys, kind="stable")[:count]])
