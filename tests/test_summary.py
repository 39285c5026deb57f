"""summary.md compares protocols at equal rounds, equal simulated time and equal bytes."""

import numpy as np

from experiments.metrics_file import Series
from experiments.summary import equal_cost_lines, value_at


def _series(rounds, seconds, nbytes, values) -> Series:
    return Series(np.array(rounds), np.array(seconds, float), np.array(nbytes), np.array(values, float))


def test_value_at_is_the_last_evaluation_within_the_budget() -> None:
    s = _series([0, 1, 2], [0.0, 1.0, 2.0], [0, 10, 20], [0.1, 0.5, 0.9])
    assert value_at(s, "sim_time_s", 1.5) == 0.5
    assert value_at(s, "sim_time_s", 2.0) == 0.9
    assert value_at(s, "bytes_sent", 9) == 0.1
    assert np.isnan(value_at(_series([1], [1.0], [5], [0.3]), "sim_time_s", 0.5))


def test_equal_budgets_come_from_the_communicating_protocols() -> None:
    fast = _series([0, 1, 2], [0.0, 1.0, 2.0], [0, 100, 200], [0.1, 0.6, 0.8])
    slow = _series([0, 1, 2, 3], [0.0, 3.0, 6.0, 9.0], [0, 10, 20, 30], [0.1, 0.7, 0.8, 0.95])
    alone = _series([0, 3], [0.0, 0.01], [0, 0], [0.1, 0.4])  # individual training: no bytes, done at once
    lines = equal_cost_lines({"fast": fast, "slow": slow, "alone": alone}, "accuracy")
    assert "| protocol | at round 2 | at 2 s | at 30 B |" in lines
    assert "| fast | 0.8000 | 0.8000 | 0.1000 |" in lines  # at 30 bytes fast has only its start
    assert "| slow | 0.8000 | 0.1000 | 0.9500 |" in lines  # at 2 s slow has not finished a round
    assert "| alone | 0.1000 | 0.4000 | 0.4000 |" in lines  # at round 2 it still holds its round-0 model
