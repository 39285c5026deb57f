"""Sparse federated recommenders (``item_merge = "touched"``, etree.trees.sparse_rows): training on the
touched rows equals training on whole tables, each item row is averaged over the devices that sent it,
the dense option is the old behaviour, bytes count only what was sent, and runs resume exactly."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import numpy as np
import pytest
import safetensors.torch
import torch
from helpers import recommender_workload
from recommender_oracle import dense_train

import etree.backends.local as local_backend
from clients.params import replicate
from clients.recommendation.metrics import DeviceModels, evaluate_devices
from clients.recommendation.training import ROWS, touched_items, train_recommender
from etree.core.errors import ProtocolError
from etree.engine.checkpoint import RunSnapshot, pack_state, unpack_state
from etree.engine.loop import prepare_protocol, run_protocol
from etree.engine.protocol import Protocol, Record
from etree.engine.workload import Workload
from etree.network.conditions import Crash, NetworkConditions
from etree.protocols import make_protocol
from etree.trees import sparse_rows
from etree.trees.sparse_rows import COUNT_BYTES, INDEX_BYTES, RowMessages, merge_messages, width_buckets

LR, EPOCHS, BATCH = 0.05, 2, 3


def protocol_round(protocol: Protocol, workload: Workload, round_index: int) -> None:
    """Round ``round_index`` of ``protocol`` (set up on ``workload`` before its first)."""
    if round_index == 1:
        prepare_protocol(protocol, workload)
    protocol.run_round(round_index)


def _item_tables(workload: Workload) -> list[str]:
    return sorted(name for name, kind in workload.model.tables.items() if kind == "item")


def _compact(workload: Workload, whole: dict[str, torch.Tensor], rows: torch.Tensor) -> dict[str, torch.Tensor]:
    """The stack of whole tables cut down to ``rows`` (sorted ids, padded with num_items)."""
    items = workload.data.num_items
    local = torch.arange(len(rows)).unsqueeze(1)
    tables = set(_item_tables(workload))
    out = {name: t[local, rows.clamp(max=items - 1)] if name in tables else t for name, t in whole.items()}
    return out | {ROWS: rows}


@pytest.mark.parametrize("kind", ["mf", "ncf"])
def test_compact_training_equals_whole_tables_on_the_touched_rows(kind: str) -> None:
    workload = recommender_workload(kind)
    model, data = workload.model, workload.data
    ids = torch.tensor([0, 3, 4, 7, 11])
    noise = torch.Generator().manual_seed(0)
    whole = {k: v + 0.01 * torch.randn(v.shape, generator=noise) for k, v in replicate(workload.initial, 5).items()}
    trained = train_recommender(model, whole, data, ids, LR, EPOCHS, BATCH, seed=5, round_index=2)
    oracle = dense_train(model, whole, data, ids, LR, EPOCHS, BATCH, seed=5, round_index=2)
    for name in whole:  # the superseded trainer's numbers (MF's gradients by hand: to float32 rounding)
        torch.testing.assert_close(trained[name], oracle[name], rtol=0, atol=1e-6)

    rows = touched_items(model, data, ids, EPOCHS, seed=5, round_index=2)
    valid = rows < data.num_items
    compact = train_recommender(
        model, _compact(workload, whole, rows), data, ids, LR, EPOCHS, BATCH, seed=5, round_index=2
    )
    local = torch.arange(len(ids)).unsqueeze(1)
    touched = torch.zeros(len(ids), data.num_items, dtype=torch.bool)
    touched[local.expand_as(rows)[valid], rows[valid]] = True
    for name in _item_tables(workload):
        on_rows = trained[name][local, rows.clamp(max=data.num_items - 1)]
        assert torch.equal(compact[name][valid], on_rows[valid])  # the same numbers on the rows it holds
        assert torch.equal(trained[name][~touched], whole[name][~touched])  # no other row moved
    for name in whole.keys() - set(_item_tables(workload)):
        assert torch.equal(compact[name], trained[name])  # user rows and dense weights alike
    assert torch.equal(compact[ROWS], rows)


def test_a_compact_stack_missing_a_touched_row_is_refused() -> None:
    workload = recommender_workload("mf")
    ids = torch.arange(3)
    rows = touched_items(workload.model, workload.data, ids, 1, seed=1, round_index=1)
    short = _compact(workload, replicate(workload.initial, 3), rows[:, 1:])
    with pytest.raises(Exception, match="lacks item rows"):
        train_recommender(workload.model, short, workload.data, ids, LR, 1, BATCH, seed=1, round_index=1)


def test_fcf_averages_each_row_over_its_senders() -> None:
    # three uploads into two segments; items 0..3, one item table of width 2 and one dense weight
    reference = {"item": torch.arange(16.0).view(2, 4, 2), "w": torch.tensor([[10.0], [20.0]])}
    messages = RowMessages(
        senders=torch.tensor([5, 6, 7]),
        owner=torch.tensor([0, 0, 1, 2]),
        items=torch.tensor([1, 2, 1, 3]),
        rows={"item": torch.tensor([[1.0, 1.0], [2.0, 2.0], [3.0, 5.0], [7.0, 7.0]])},
        weight=torch.tensor([1.0, 3.0, 2.0]),
        dense={"w": torch.tensor([[1.0], [2.0], [4.0]])},
    )
    models, counts = merge_messages(messages, torch.tensor([0, 0, 1]), reference, torch.zeros(2, 4), ["item"])
    expected = reference["item"].clone()
    expected[0, 1] = (1 * torch.tensor([1.0, 1.0]) + 3 * torch.tensor([3.0, 5.0])) / 4  # both senders, weighted
    expected[0, 2] = torch.tensor([2.0, 2.0])  # one sender: its row, not a quarter of it
    expected[1, 3] = torch.tensor([7.0, 7.0])
    assert torch.equal(models["item"], expected)  # rows nobody sent keep the reference's
    assert torch.equal(models["w"], torch.tensor([[(1 * 1.0 + 3 * 2.0) / 4], [4.0]]))
    assert counts.tolist() == [[0, 4, 1, 0], [0, 0, 0, 2]]


def _fedavg_round(workload: Workload, options: dict[str, Any]) -> tuple[Protocol, Any]:
    protocol = make_protocol("fedavg", "fedavg", {"server_trains": True} | options)
    records = list(run_protocol(protocol, workload, rounds=1, eval_every=1))
    return protocol, records


@pytest.mark.parametrize("weighted", [False, True])
def test_fedavg_global_item_rows_are_the_per_item_mean_over_senders(weighted: bool) -> None:
    workload = recommender_workload("mf", rounds=1)
    protocol, _ = _fedavg_round(workload, {"weighted": weighted})
    everyone = torch.arange(workload.devices)
    model, data = workload.model, workload.data
    trained = dense_train(
        model,
        replicate(workload.initial, workload.devices),
        data,
        everyone,
        LR,
        1,
        4,
        seed=workload.seed,
        round_index=1,
    )
    rows = touched_items(model, data, everyone, 1, seed=workload.seed, round_index=1)
    valid = rows < data.num_items
    sent = torch.zeros(workload.devices, data.num_items)
    sent[everyone.unsqueeze(1).expand_as(rows)[valid], rows[valid]] = 1.0
    weight = sent * (data.counts.float().unsqueeze(1) if weighted else 1.0)  # [D, I]
    held = protocol.device_models()
    assert held.own is None and torch.equal(held.row, torch.zeros(workload.devices, dtype=torch.int64))
    for name in _item_tables(workload):
        tail = (1,) * (trained[name].dim() - 2)
        total = weight.sum(0).view(-1, *tail)
        mean = (trained[name] * weight.view(*weight.shape, *tail)).sum(0) / total.clamp(min=1e-30)
        expected = torch.where(total > 0, mean, workload.initial[name])
        torch.testing.assert_close(held.shared[name][0], expected, rtol=0, atol=1e-6)


DENSE = [
    ("fedavg", {}),
    ("etree", {"groups": [3, 1], "ratios": [1, 2], "pretrain_epochs": 1}),
    ("hierfavg", {"kappa1": 2, "edge_servers": 3}),
]


@pytest.mark.parametrize(("name", "options"), DENSE, ids=[n for n, _ in DENSE])
def test_dense_option_is_the_old_behaviour(monkeypatch: pytest.MonkeyPatch, name: str, options: dict[str, Any]) -> None:
    """``item_merge = "dense"`` today, and with the superseded trainer: the same models to float32
    rounding, hence the same records (times and bytes exactly)."""
    workload = recommender_workload("mf", rounds=3)
    options = options | {"item_merge": "dense"}
    protocol = make_protocol(name, name, dict(options))
    today = list(run_protocol(protocol, workload, rounds=3, eval_every=1))
    held = protocol.device_models()

    def old(model, params, data, device_ids, lr, local_epochs, batch_size, *, seed, round_index):  # type: ignore[no-untyped-def]
        return dense_train(
            model, params, data, device_ids, lr, local_epochs, batch_size, seed=seed, round_index=round_index
        )

    monkeypatch.setattr(local_backend, "train_recommender", old)
    protocol = make_protocol(name, name, dict(options))
    before = list(run_protocol(protocol, workload, rounds=3, eval_every=1))
    assert today == before
    for mine, theirs in (
        (held.shared, protocol.device_models().shared),
        (held.private, protocol.device_models().private),
    ):
        for key in mine:
            torch.testing.assert_close(mine[key], theirs[key], rtol=0, atol=1e-6)
    messages = [r for r in today if r.metric == "hr@10"]
    assert all(r.bytes_sent % workload.wire_bytes == 0 for r in messages)  # whole models on the wire


def _upload_bytes(workload: Workload, devices: torch.Tensor, round_index: int) -> np.ndarray:
    shared = workload.shared(workload.initial)
    tables = _item_tables(workload)
    row = sum(shared[n][0].numel() * 4 for n in tables) + INDEX_BYTES
    dense = sum(t.numel() * 4 for n, t in shared.items() if n not in tables)
    rows = touched_items(workload.model, workload.data, devices, 1, seed=workload.seed, round_index=round_index)
    return ((rows < workload.data.num_items).sum(1) * row + dense + COUNT_BYTES).numpy()


@pytest.mark.parametrize("kind", ["mf", "ncf"])
@pytest.mark.parametrize("timing", [True, False])
def test_bytes_count_only_the_rows_sent(kind: str, timing: bool) -> None:
    """FedAvg: each device uploads its touched rows (ids and rows) and its dense weights; the server
    pushes the whole shared model down. The same bytes with and without simulated time."""
    workload = dataclasses.replace(recommender_workload(kind, rounds=1), network=NetworkConditions(timing=timing))
    protocol, records = _fedavg_round(workload, {"server_trains": False})
    server = protocol.tree.root  # type: ignore[attr-defined]
    trained = torch.tensor([d for d in range(workload.devices) if d != server])
    expected = int(_upload_bytes(workload, trained, 1).sum()) + (workload.devices - 1) * workload.wire_bytes
    assert max(r.bytes_sent for r in records) == expected
    dense = list(run_protocol(make_protocol("fedavg", "f", {"item_merge": "dense"}), workload, rounds=1, eval_every=1))
    assert max(r.bytes_sent for r in records) < max(r.bytes_sent for r in dense)  # 40 items, most of them sent
    loads = protocol.link_loads()
    if timing:  # the links' bytes: every link of a message's path carries it
        assert loads is not None and loads.bytes_sent.sum() >= expected


def test_a_head_uploads_its_rows_with_their_counts() -> None:
    """HierFAVG (one cloud aggregation per edge aggregation): an edge server sends the cloud the rows
    its devices sent, each with its row, id and count, plus its dense weights (none for MF)."""
    workload = recommender_workload("mf", rounds=1)
    protocol = make_protocol("hierfavg", "h", {"kappa2": 1, "edge_servers": 3})
    records = list(run_protocol(protocol, workload, rounds=1, eval_every=1))
    tree = protocol.tree  # type: ignore[attr-defined]
    everyone = torch.arange(workload.devices)
    rows = touched_items(workload.model, workload.data, everyone, 1, seed=workload.seed, round_index=1)
    uploads = _upload_bytes(workload, everyone, 1)
    heads, root = tree.heads[0], tree.heads[1][0]
    expected = 0
    for k, head in enumerate(heads):
        members = np.flatnonzero(tree.parents[0] == k)
        expected += int(uploads[members[members != head]].sum())
        union = torch.unique(rows[torch.from_numpy(members)])
        count = int((union < workload.data.num_items).sum())
        if head != root:
            expected += count * (4 * 33 + INDEX_BYTES + COUNT_BYTES) + workload.wire_bytes  # up, then down
    expected += int(np.sum(np.arange(workload.devices) != heads[tree.parents[0]])) * workload.wire_bytes
    assert max(r.bytes_sent for r in records) == expected


def test_a_tree_with_unit_ratios_averages_like_the_star() -> None:
    """Per-row counts make the cloud's mean of edge models the per-item mean over every sender."""
    workload = recommender_workload("mf", rounds=1)
    star, _ = _fedavg_round(workload, {})
    tree = make_protocol("hierfavg", "h", {"kappa2": 1, "edge_servers": 3, "weighted": False})
    list(run_protocol(tree, workload, rounds=1, eval_every=1))
    for name, tensor in star.device_models().shared.items():
        torch.testing.assert_close(tree.device_models().shared[name][0], tensor[0], rtol=0, atol=1e-6)


@pytest.mark.parametrize("kind", ["mf", "ncf"])
def test_devices_hold_their_own_rows_between_aggregations(kind: str) -> None:
    """HierFAVG with kappa1 = 2: after a round of local epochs only, each device is scored on the model it
    trained, kept as its own rows over its cluster's model (no per-device item table)."""
    workload = recommender_workload(kind, rounds=2)
    protocol = make_protocol("hierfavg", "h", {"kappa1": 2, "edge_servers": 3})
    records = list(run_protocol(protocol, workload, rounds=1, eval_every=1))
    held = protocol.device_models()
    assert held.own is not None and len(held.own.items) > 0
    whole = {name: tensor[held.row].clone() for name, tensor in held.shared.items()}  # per device, only here
    for name, rows in held.own.rows.items():
        whole[name][held.own.owner, held.own.items] = rows
    whole |= held.own.dense
    materialised = DeviceModels(whole, torch.arange(workload.devices), held.private, held.devices)
    expected = evaluate_devices(workload.model, materialised, workload.data)
    got = {r.metric: r.value for r in records if r.round == 1}
    assert {name: got[name] for name in expected} == expected
    # the next aggregation merges what the devices trained in both rounds; rows nobody touched stay
    protocol.run_round(2)
    both = torch.cat(
        [
            touched_items(
                workload.model, workload.data, torch.arange(workload.devices), 1, seed=workload.seed, round_index=r
            ).flatten()
            for r in (1, 2)
        ]
    )
    untouched = ~torch.isin(torch.arange(workload.data.num_items), both)
    shared = protocol.device_models().shared
    for name in _item_tables(workload):
        assert torch.equal(
            shared[name][:, untouched], workload.initial[name][untouched].expand_as(shared[name][:, untouched])
        )


def test_width_buckets_cover_every_position_once_and_pad_little() -> None:
    widths = np.random.default_rng(0).integers(1, 500, size=300)
    buckets = width_buckets(widths)
    assert len(buckets) <= 4 and np.array_equal(np.sort(np.concatenate(buckets)), np.arange(300))
    padded = sum(len(b) * widths[b].max() for b in buckets)
    assert padded <= 1.5 * widths.sum() < len(widths) * widths.max()


# -- checkpoints -------------------------------------------------------------------
ROUNDS = 6
RESUMED = [
    ("etree", {"groups": [3, 1], "ratios": [2, 2], "pretrain_epochs": 1}),  # own rows between aggregations
    ("etree", {"groups": [3, 1], "ratios": [1, 2], "pretrain_epochs": 1, "public_nodes": True, "gamma": 0.2}),
    ("hierfavg", {"edge_servers": 3}),
    ("fedavg", {"participation": 0.5}),
]


def _faulty(kind: str) -> Workload:
    """Dropouts, a deadline whose late uploads join the next aggregation, and a root that crashes."""
    network = NetworkConditions(dropout=0.2, deadline_s=0.004, late="stale", crash=(Crash(0.02, "root"),))
    return dataclasses.replace(recommender_workload(kind, rounds=ROUNDS), network=network)


def _run(name: str, options: dict[str, Any], kind: str, resume: RunSnapshot | None) -> tuple[list[Record], list[Any]]:
    snapshots: list[RunSnapshot] = []
    protocol = make_protocol(name, name, dict(options))
    records = list(
        run_protocol(
            protocol,
            _faulty(kind),
            rounds=ROUNDS,
            eval_every=1,
            resume=resume,
            checkpoint_every=2,
            on_checkpoint=snapshots.append,
        )
    )
    return records, snapshots


def _through_format(snapshot: RunSnapshot) -> RunSnapshot:
    document, tensors = pack_state(snapshot.to_state())
    revived = safetensors.torch.load(safetensors.torch.save(tensors))
    return RunSnapshot.from_state(unpack_state(json.loads(json.dumps(document)), revived))


@pytest.mark.parametrize("kind", ["mf", "ncf"])
@pytest.mark.parametrize(("name", "options"), RESUMED, ids=[f"{n}-{i}" for i, (n, _) in enumerate(RESUMED)])
def test_a_sparse_run_resumes_exactly(name: str, options: dict[str, Any], kind: str) -> None:
    full, snapshots = _run(name, options, kind, None)
    assert [s.round_index for s in snapshots] == [2, 4]
    metrics = {r.metric for r in full}
    assert {"hr@10", "crash"} <= metrics
    for snapshot in snapshots:
        resumed, _ = _run(name, options, kind, _through_format(snapshot))
        assert resumed == [r for r in full if r.round > snapshot.round_index]


@pytest.mark.parametrize("name", ["fedavg", "etree", "hierfavg", "grouped"])
def test_item_merge_is_a_checked_option(name: str) -> None:
    with pytest.raises(
        ProtocolError, match=rf"protocols\.{name}\.item_merge: got 'rows'; choose one of: touched, dense"
    ):
        make_protocol(name, name, {"item_merge": "rows"})


def test_late_uploads_join_the_next_aggregation(monkeypatch: pytest.MonkeyPatch) -> None:
    """``late = "stale"``: an upload past the deadline is not in its round's average but in the next one's."""
    network = NetworkConditions(deadline_s=0.03, late="stale")  # 3 of 11 uploads late
    workload = dataclasses.replace(recommender_workload("mf", rounds=4), network=network)
    joined: dict[int, list[int]] = {}  # round -> the late uploads its aggregation averaged
    late: dict[int, list[int]] = {}  # round -> the uploads that missed its deadline
    now = [0]
    aggregate, keep = sparse_rows.SparseRows.aggregate, sparse_rows.SparseRows.keep_stale

    def spy_aggregate(self: sparse_rows.SparseRows, fresh: RowMessages | None, top: int, *, stale: bool = False) -> Any:
        if stale:
            joined[now[0]] = [] if self.stale is None else sorted(self.stale.senders.tolist())
        return aggregate(self, fresh, top, stale=stale)

    def spy_keep(self: sparse_rows.SparseRows, held: RowMessages) -> None:
        late[now[0]] = sorted(held.senders.tolist())
        keep(self, held)

    monkeypatch.setattr(sparse_rows.SparseRows, "aggregate", spy_aggregate)
    monkeypatch.setattr(sparse_rows.SparseRows, "keep_stale", spy_keep)
    protocol = make_protocol("fedavg", "fedavg", {})
    for round_index in range(1, 5):
        now[0] = round_index
        protocol_round(protocol, workload, round_index)
    assert any(late.values()) and not all(len(v) == workload.devices - 1 for v in late.values())
    assert joined == {r: late.get(r - 1, []) for r in range(1, 5)}
