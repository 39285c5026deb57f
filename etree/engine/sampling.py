"""Participant sampling per round, from a counter-based stream (the same draw on any backend)."""

from __future__ import annotations

import numpy as np

from clients.streams import hashed_uniform

SAMPLING_SALT = 0x5A5A  # separates the participant stream from the training streams


def participants(seed: int, round_index: int, devices: int, participation: float) -> np.ndarray:
    """The devices that train in ``round_index``: ``max(1, round(participation * devices))``
    devices with the smallest counter-based keys, in id order (all devices when participation is 1).

    One function for every engine (in-engine trees and Flower) so their samples agree.
    """
    if participation >= 1:
        return np.arange(devices)
    count = max(1, round(participation * devices))
    keys = hashed_uniform(seed, round_index, SAMPLING_SALT, np.arange(devices))
    return np.sort(np.argsort(keys, kind="stable")[:count])
