"""One option checker behind every registry: types from the factory's annotations, finite numbers."""

from __future__ import annotations

import math
from collections.abc import Sequence

import pytest

from etree.core.errors import EtreeError, ProtocolError
from etree.core.registry import Registry, check_option
from etree.protocols import make_protocol


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("fedavg", {"participation": "abc"}, "protocols.x.participation: 'abc' is not allowed; must be float"),
        ("fedavg", {"weighted": 3}, "protocols.x.weighted: 3 is not allowed; must be bool"),
        ("etree", {"weighted": 3}, "protocols.x.weighted: 3 is not allowed; must be bool"),
        ("etree", {"delta": math.inf}, "protocols.x.delta: inf is not allowed; must be a finite number"),
        ("etree", {"groups": [8, "1"]}, "protocols.x.groups: [8, '1'] is not allowed; must be sequence of int"),
        ("gossip", {"colour": 1}, "protocols.x.colour: unknown option 'colour' for 'gossip'"),
    ],
)
def test_protocol_options_are_checked_before_the_factory_runs(name: str, options: dict, message: str) -> None:
    with pytest.raises(ProtocolError) as exc:
        make_protocol(name, "x", options)
    assert str(exc.value).startswith(message)


def test_registry_refuses_duplicates_and_lists_valid_names() -> None:
    things: Registry = Registry("thing", "things.kind")

    @things.register("a")
    def make_a(*, size: int = 1, ratios: Sequence[float] = (1.0,), note: str | None = None) -> int:
        return size

    with pytest.raises(EtreeError, match="already registered"):
        things.register("a")(make_a)
    with pytest.raises(EtreeError, match=r"^things.kind: unknown 'b'; choose one of: a$"):
        things.get("b")
    assert things.check("a", {"size": 2, "ratios": [0.5, 2], "note": None}, "things") == {
        "size": 2,
        "ratios": [0.5, 2],
        "note": None,
    }
    with pytest.raises(EtreeError, match=r"things.ratios: \[1.0, nan\] is not allowed"):
        things.check("a", {"ratios": [1.0, math.nan]}, "things")
    described = ["size: int = 1", "ratios: sequence of float = (1.0,)", "note: str | None = None"]
    assert things.describe() == {"a": described}


@pytest.mark.parametrize(
    ("value", "annotation"), [(True, int), (1, bool), ("1", float), ((1, "a"), tuple[int, ...]), (2.5, int)]
)
def test_check_option_refuses_the_wrong_type(value: object, annotation: object) -> None:
    with pytest.raises(EtreeError, match="is not allowed"):
        check_option("f", value, annotation)
