"""Spec loading: strict keys, typed values, overrides, and a faithful round trip."""

import tomllib

import pytest
import tomli_w

from experiments.spec import SpecError, apply_overrides, load_spec, spec_from_dict


def _raw(**changes):
    raw = {"seed": 1, "rounds": 3, "topology": {"kind": "grid_2d", "devices": 9}, "protocols": [{"name": "fedavg"}]}
    raw.update(changes)
    return raw


def test_round_trip_through_toml(tiny_spec):
    spec = load_spec(tiny_spec)
    again = spec_from_dict(tomllib.loads(tomli_w.dumps(spec.to_dict())))
    assert again == spec


def test_extra_component_keys_become_options():
    spec = spec_from_dict(_raw(topology={"kind": "edge_cloud", "devices": 20, "edge_servers": 4}))
    assert spec.topology.options == {"edge_servers": 4}


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        (_raw(roundz=3), "roundz"),
        (_raw(rounds=0), "rounds"),
        (_raw(rounds=-2), "rounds"),
        (_raw(rounds="ten"), "rounds"),
        (_raw(rounds=True), "rounds"),
        (_raw(seed=-1), "seed"),
        (_raw(topology={"kind": "grid_2d", "devices": 0}), "topology.devices"),
        (_raw(topology={"kind": 5, "devices": 4}), "topology.kind"),
        (_raw(train={"lr": -0.1}), "train.lr"),
        (_raw(train={"momentum": 0.9}), "train.momentum"),
        (_raw(data={"alpha": 0}), "data.alpha"),
        (_raw(protocols=[]), "protocols"),
        (_raw(protocols=[{"label": "x"}]), "protocols[0].name"),
        (_raw(protocols=[{"name": "fedavg"}, {"name": "fedavg"}]), "protocols[1].label"),
        (_raw(topology=[1, 2]), "topology"),
    ],
)
def test_bad_specs_name_the_field(raw, field):
    with pytest.raises(SpecError) as info:
        spec_from_dict(raw)
    assert str(info.value).startswith(field)
    assert "\n" not in str(info.value)


def test_overrides_are_typed_and_address_protocols_by_label():
    raw = apply_overrides(_raw(), ["topology.devices=16", "data.dataset=mnist1d", "protocols.fedavg.participation=0.5"])
    spec = spec_from_dict(raw)
    assert spec.topology.devices == 16
    assert spec.data.dataset == "mnist1d"
    assert spec.protocols[0].options == {"participation": 0.5}


def test_bad_override_is_a_spec_error():
    with pytest.raises(SpecError, match="--set"):
        apply_overrides(_raw(), ["topology.devices"])
    with pytest.raises(SpecError, match="no protocol labelled"):
        apply_overrides(_raw(), ["protocols.gossip.rate=1"])


def test_missing_and_broken_files(tmp_path):
    with pytest.raises(SpecError, match="not found"):
        load_spec(tmp_path / "nope.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("rounds = [")
    with pytest.raises(SpecError, match="not valid TOML"):
        load_spec(broken)
