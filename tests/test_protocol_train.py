"""Per-protocol training overrides: a ``[[protocols]]`` table's ``train = {...}`` is checked like
``[train]``, saved in the resolved spec, and changes that protocol's local training alone."""

from __future__ import annotations

import math
import tomllib

import pytest
import tomli_w
from helpers import tiny_spec_with

from experiments.runner import build_workload, protocol_workload, run_spec
from experiments.spec import SpecError, apply_overrides, spec_from_dict


def _two(*more: dict) -> list[dict]:
    """Two FedAvg tables, the second with its own learning rate (fresh dicts: overrides edit them)."""
    return [{"name": "fedavg", "label": "plain"}, {"name": "fedavg", "label": "tuned", "train": {"lr": 0.2}}, *more]


def test_the_override_is_parsed_and_saved_in_the_resolved_spec():
    spec = spec_from_dict(tiny_spec_with(protocols=_two()))
    assert [p.train for p in spec.protocols] == [{}, {"lr": 0.2}]
    assert spec.protocols[1].options == {}  # not a protocol option
    saved = spec.to_dict()["protocols"]
    assert "train" not in saved[0] and saved[1]["train"] == {"lr": 0.2}
    assert spec_from_dict(tomllib.loads(tomli_w.dumps(spec.to_dict()))) == spec


def test_set_reaches_a_protocol_s_train_table():
    raw = apply_overrides(tiny_spec_with(protocols=_two()), ["protocols.plain.train.local_epochs=3"])
    spec = spec_from_dict(raw)
    assert spec.protocols[0].train == {"local_epochs": 3} and spec.protocols[1].train == {"lr": 0.2}


@pytest.mark.parametrize(
    ("train", "field"),
    [
        ({"momentum": 0.9}, r"protocols\[0\]\.train\.momentum: unknown key; allowed: batch_size, local_epochs, lr"),
        ({"lr": 0}, r"protocols\[0\]\.train\.lr: got 0; must be > 0"),
        ({"lr": -0.1}, r"protocols\[0\]\.train\.lr"),
        ({"lr": math.inf}, r"protocols\[0\]\.train\.lr: got inf; must be a finite number"),
        ({"lr": math.nan}, r"protocols\[0\]\.train\.lr"),
        ({"local_epochs": 1.5}, r"protocols\[0\]\.train\.local_epochs: expected int"),
        ({"batch_size": 0}, r"protocols\[0\]\.train\.batch_size"),
        (0.1, r"protocols\[0\]\.train: expected a table"),
    ],
)
def test_a_bad_override_names_its_field(train, field):
    with pytest.raises(SpecError, match=field):
        spec_from_dict(tiny_spec_with(protocols=[{"name": "fedavg", "train": train}]))


def test_the_override_reaches_that_protocol_s_workload_only():
    long_epochs = {"name": "fedavg", "label": "long", "train": {"local_epochs": 2}}
    spec = spec_from_dict(tiny_spec_with(protocols=_two(long_epochs)))
    workload, _, _ = build_workload(spec)
    plain, tuned, long = (protocol_workload(workload, p) for p in spec.protocols)
    assert plain is workload
    assert (tuned.train.lr, tuned.train.local_epochs, tuned.train.batch_size) == (0.2, 1, workload.train.batch_size)
    assert tuned.data is workload.data and tuned.graph is workload.graph  # the same fleet, only training differs
    assert (long.epoch_flops == 2 * workload.epoch_flops).all()  # a round is its own local_epochs epochs


def test_an_overridden_protocol_runs_differently_and_leaves_the_others_alone():
    both = run_spec(spec_from_dict(tiny_spec_with(protocols=_two())))
    alone = run_spec(spec_from_dict(tiny_spec_with(protocols=_two()[:1])))
    plain = [r for r in both.records if r.protocol == "plain"]
    tuned = [r for r in both.records if r.protocol == "tuned"]
    assert plain == alone.records  # the other protocol trains exactly as without the override
    accuracy = {r.round: r.value for r in plain if r.metric == "accuracy"}
    tuned_accuracy = {r.round: r.value for r in tuned if r.metric == "accuracy"}
    assert tuned_accuracy[0] == accuracy[0] and tuned_accuracy[4] != accuracy[4]
