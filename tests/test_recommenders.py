"""Recommenders on interaction data: split, metrics, privacy of user embeddings, baselines."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import etree  # noqa: F401  (registers protocols)
from clients.errors import ClientsError
from clients.interactions import (
    Interactions,
    interactions_from_table,
    load_movielens,
    pack_interactions,
    pool_fleet,
    read_csv_interactions,
    recbole_ml100k_path,
)
from clients.recommenders import (
    DeviceModels,
    build_recommender,
    evaluate_devices,
    hit_and_ndcg,
    init_recommender,
    popularity_metrics,
    rank_of_positive,
    ranking_metrics,
    sample_negatives,
    split_private,
    train_recommender,
)
from clients.training import TrainConfig
from etree import gossip as gossip_module
from etree import hierarchical
from etree.protocol import Workload, run_protocol
from etree.registry import make_protocol
from topologies import build_topology

needs_ml100k = pytest.mark.skipif(
    recbole_ml100k_path() is None, reason="ml-100k comes from recbole: pip install --no-deps recbole==1.2.1"
)


# -- metrics -------------------------------------------------------------------
def test_hit_rate_and_ndcg_match_hand_computed_values() -> None:
    # column 0 is the held-out item; ranks by hand: 0, 2, 1 (a tie counts against it), 3
    scores = torch.tensor(
        [
            [5.0, 1.0, 2.0, 3.0],
            [1.0, 2.0, 3.0, 0.5],
            [1.0, 1.0, 0.0, 0.0],
            [0.0, 1.0, 2.0, 3.0],
        ]
    )
    ranks = rank_of_positive(scores)
    assert ranks.tolist() == [0, 2, 1, 3]
    hit, ndcg = hit_and_ndcg(ranks, k=3)
    assert hit.tolist() == [1.0, 1.0, 1.0, 0.0]
    expected = [1.0, 1 / math.log2(4), 1 / math.log2(3), 0.0]
    assert ndcg.tolist() == pytest.approx(expected)
    valid = torch.tensor([True, True, False, True])  # the third case is padding
    metrics = ranking_metrics(scores, valid, k=3)
    assert metrics["hr@3"] == pytest.approx(2 / 3)
    assert metrics["ndcg@3"] == pytest.approx((1.0 + 0.5 + 0.0) / 3)


# -- data ------------------------------------------------------------------------
def tiny_table() -> Interactions:
    # raw ids; user 30 has one interaction only (dropped); user 10 repeats item 7
    users = np.array([10, 10, 10, 10, 20, 20, 20, 30])
    items = np.array([7, 8, 9, 7, 8, 9, 11, 7])
    stamps = np.array([5.0, 1.0, 3.0, 9.0, 2.0, 8.0, 4.0, 1.0])
    return interactions_from_table("tiny", users, items, stamps, seed=0, test_negatives=1)


def test_leave_last_out_split_by_timestamp() -> None:
    data = tiny_table()
    assert data.num_users == 2 and data.num_items == 4  # items 7, 8, 9, 11 -> 0..3
    # user 10: 8@1, 9@3, 7@5 (the repeat @9 counts once, at its first time): test = 7
    # user 20: 8@2, 11@4, 9@8: test = 9
    assert data.test_item.tolist() == [0, 2]
    assert data.train_user.tolist() == [0, 0, 1, 1]
    assert data.train_item.tolist() == [1, 2, 1, 3]
    for user in range(2):  # negatives were never interacted with
        mine = set(data.train_item[data.train_user == user]) | {data.test_item[user]}
        assert not set(data.test_negatives[user]) & mine


def test_csv_source_reads_named_columns(tmp_path) -> None:
    path = tmp_path / "mine.csv"
    rows = ["a,x,5,1", "a,y,4,2", "a,w,2,3", "b,x,3,1", "b,z,1,2", "b,y,2,3", "c,z,4,1", "c,w,5,2"]
    path.write_text("user_id,item_id,rating,timestamp\n" + "\n".join(rows) + "\n")
    users, items, ratings, stamps = read_csv_interactions(path)
    assert users.tolist() == [0, 0, 0, 1, 1, 1, 2, 2] and items.tolist() == [1, 2, 0, 1, 3, 2, 3, 0]
    assert ratings.tolist()[:2] == [5.0, 4.0] and stamps.tolist()[:3] == [1.0, 2.0, 3.0]
    data = load_movielens(seed=0, source="csv", path=str(path), test_negatives=1)
    assert data.num_users == 3 and data.test_item.tolist() == [0, 2, 0]  # w, y, w: each user's latest
    kept = load_movielens(seed=0, source="csv", path=str(path), min_rating=3, test_negatives=1)
    assert kept.num_users == 2  # user b keeps one rating >= 3: no test item left, dropped
    with pytest.raises(ClientsError, match=r"data\.source"):
        load_movielens(seed=0, source="ml-10m")


def synthetic_interactions(users: int = 24, items: int = 40, per_user: int = 8, seed: int = 0) -> Interactions:
    rng = np.random.default_rng(seed)
    u = np.repeat(np.arange(users), per_user)
    i = np.concatenate([rng.choice(items, per_user, replace=False) for _ in range(users)])
    return interactions_from_table("synthetic", u, i, rng.random(len(u)), seed=seed, test_negatives=5)


def test_pack_and_pool_keep_every_user_and_interaction() -> None:
    data = synthetic_interactions()
    parts = [np.array([0, 5, 9]), np.array([1]), np.array([2, 3])]
    fleet = pack_interactions(data, parts)
    assert fleet.slots == 3 and fleet.user_ids[1].tolist() == [1, -1, -1]
    assert fleet.counts.tolist() == [int(data.user_counts[p].sum()) for p in parts]
    assert int(fleet.seen.sum()) == int(fleet.counts.sum())
    assert fleet.test_items[0, 1, 0] == data.test_item[5]
    pooled = pool_fleet(fleet)
    assert pooled.devices == 1 and int(pooled.counts[0]) == int(fleet.counts.sum())
    # device 2's slot 1 (user 3) is pooled slot 2 * 3 + 1
    assert pooled.user_ids[0, 7] == 3 and torch.equal(pooled.seen[0, 7], fleet.seen[2, 1])


def test_negatives_avoid_training_items_and_follow_their_stream() -> None:
    data = synthetic_interactions(items=12, per_user=7)
    fleet = pack_interactions(data, [np.array([u]) for u in range(data.num_users)])
    ids = np.arange(fleet.devices)
    users = torch.zeros(fleet.devices, 4, dtype=torch.int64)
    draw = sample_negatives(7, 1, 0, ids, np.arange(4), 3, fleet.seen, users, fleet.num_items)
    hits = fleet.seen[torch.arange(fleet.devices).view(-1, 1, 1), users.unsqueeze(-1), draw]
    assert hits.float().mean() < 0.15  # 6 of 12 items seen: one draw hits half the time, 4 tries 1/16
    alone = sample_negatives(7, 1, 0, ids[5:6], np.arange(4), 3, fleet.seen[5:6], users[5:6], fleet.num_items)
    assert torch.equal(alone, draw[5:6])  # a device's negatives do not depend on the rest of the fleet


# -- privacy -----------------------------------------------------------------------
def small_workload(kind: str, devices: int = 12, users_per_device: int = 2) -> Workload:
    data = synthetic_interactions(users=devices * users_per_device)
    parts = [np.arange(d * users_per_device, (d + 1) * users_per_device) for d in range(devices)]
    fleet = pack_interactions(data, parts)
    model = build_recommender(kind, fleet.slots, data.num_items)
    return Workload(
        model=model,
        initial=init_recommender(model, 1),
        data=fleet,
        x_test=torch.zeros(0, 2),
        y_test=torch.zeros(0, dtype=torch.int64),
        graph=build_topology("random_geometric", devices, seed=3),
        train=TrainConfig(lr=0.05, local_epochs=1, batch_size=4),
        seed=11,
        input_shape=(2,),
        num_classes=data.num_items,
        rounds=3,
        private=model.private,
    )


PROTOCOLS = [
    ("fedavg", {}),
    ("etree", {"groups": [3, 1], "ratios": [1, 2], "pretrain_epochs": 1}),
    ("grouped", {"groups": [3, 1], "pretrain_epochs": 1}),
    ("hierfavg", {}),
    ("gossip", {"overlay": "random"}),
    ("individual", {}),
]


@pytest.mark.parametrize("kind", ["mf", "ncf"])
@pytest.mark.parametrize(("name", "options"), PROTOCOLS)
def test_user_embeddings_are_never_sent_nor_averaged(monkeypatch, kind, name, options) -> None:
    workload = small_workload(kind)
    assert workload.private == build_recommender(kind, 2, 4).private and workload.private
    shared_bytes = sum(t.numel() * 4 for n, t in workload.initial.items() if n not in workload.private)
    assert workload.message_bytes == shared_bytes  # bytes count only what travels

    aggregated: list[set[str]] = []  # the names of every stack a head or a peer receives

    def spy(function):
        def wrapped(stack, *args, **kwargs):
            aggregated.append(set(stack))
            return function(stack, *args, **kwargs)

        return wrapped

    monkeypatch.setattr(hierarchical, "segment_mean", spy(hierarchical.segment_mean))
    monkeypatch.setattr(gossip_module, "merge_models", spy(gossip_module.merge_models))
    protocol = make_protocol(name, name, dict(options))
    records = list(run_protocol(protocol, workload, rounds=3, eval_every=1))
    assert {r.metric for r in records} >= {"hr@10", "ndcg@10"}
    assert all(not names & workload.private for names in aggregated)
    if name != "individual":
        assert aggregated  # something was aggregated, without the private names
    # each device's private rows are its own: one more round changes them exactly as local training does
    params = protocol.params  # type: ignore[attr-defined]
    before = {k: v.clone() for k, v in params.items()}
    protocol.run_round(4)
    for private in workload.private:
        assert not torch.equal(params[private][0], params[private][1])  # never averaged into one
    if name in ("fedavg", "hierfavg", "individual"):
        everyone = torch.arange(workload.devices)
        alone = train_recommender(
            workload.model, before, workload.data, everyone, 0.05, 1, 4, seed=workload.seed, round_index=4
        )
        for private in workload.private:
            assert torch.equal(protocol.params[private], alone[private])  # type: ignore[attr-defined]


def test_flower_refuses_private_parameters() -> None:
    from etree.errors import ProtocolError

    with pytest.raises(ProtocolError, match="private parameters"):
        make_protocol("flower", "flower", {}).setup(small_workload("mf"))


# -- baselines on ml-100k ---------------------------------------------------------------------
@needs_ml100k
def test_ml100k_loads_offline_from_recbole() -> None:
    data = load_movielens(seed=0)
    assert (data.num_users, data.num_items) == (943, 1682)
    assert len(data.train_user) + data.num_users == 100_000
    assert data.test_negatives.shape == (943, 99)


@needs_ml100k
def test_centralised_mf_beats_popularity_and_reaches_ncf_hit_rate() -> None:
    """Centralised BPR-MF on ml-100k: above popularity after 4 epochs, HR@10 >= 0.60 after 10."""
    data = load_movielens(seed=0)
    fleet = pack_interactions(data, [np.array([u]) for u in range(data.num_users)])
    pooled = pool_fleet(fleet)
    popularity = popularity_metrics(fleet)["hr@10"]
    assert 0.35 < popularity < 0.45  # ItemPop on ml-100k with 99 negatives
    model = build_recommender("mf", pooled.slots, data.num_items, l2=0.001)
    params = {k: v.unsqueeze(0) for k, v in init_recommender(model, 0).items()}
    params["user"] = torch.randn(1, pooled.slots, 32, generator=torch.Generator().manual_seed(0)) * 0.1
    hit_rates = []
    for epoch in range(1, 11):
        params = train_recommender(model, params, pooled, torch.tensor([0]), 0.1, 1, 256, seed=3, round_index=epoch)
        shared, private = split_private(params, model.private)
        models = DeviceModels(shared, torch.zeros(1, dtype=torch.int64), private, torch.tensor([0]))
        hit_rates.append(evaluate_devices(model, models, pooled)["hr@10"])
    assert hit_rates[3] > popularity + 0.05
    assert max(hit_rates[-3:]) >= 0.60
