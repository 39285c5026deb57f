"""Recommenders on interaction data: split, metrics, privacy of user embeddings, baselines."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from helpers import recommender_workload, synthetic_interactions

from clients.errors import ClientsError
from clients.recommendation.interactions import (
    Interactions,
    interactions_from_table,
    load_movielens,
    pack_interactions,
    pool_fleet,
    read_csv_interactions,
    recbole_ml100k_path,
)
from clients.recommendation.metrics import (
    DeviceModels,
    evaluate_devices,
    full_ranks,
    hit_and_ndcg,
    popularity_metrics,
    rank_of_positive,
    ranking_metrics,
    split_private,
)
from clients.recommendation.models import build_recommender, init_recommender
from clients.recommendation.training import sample_negatives, train_recommender
from etree.engine.loop import run_protocol
from etree.protocols import gossip as gossip_module
from etree.protocols import make_protocol
from etree.trees import hierarchical, sparse_rows

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


def test_full_ranking_leaves_out_training_items_and_counts_ties_against_the_positive() -> None:
    # four items; the held-out item is 0 (score 2); item 1 (score 5) was trained on, so it does not count;
    # item 2 ties (counts against), item 3 scores lower: rank 1
    scores = torch.tensor([[2.0, 5.0, 2.0, 1.0], [0.0, 1.0, 2.0, 3.0]])
    seen = torch.tensor([[False, True, False, False], [False, False, False, False]])
    test = torch.tensor([0, 3])
    assert full_ranks(scores, test, seen).tolist() == [1, 0]
    assert not seen[0, 0]  # the input mask is not modified


def test_a_diverged_model_scores_no_hit() -> None:
    # NaN >= x is False: without care a NaN positive would outrank everything (HR@10 = NDCG@10 = 1)
    nan = math.nan
    scores = torch.tensor([[nan, 1.0, 2.0], [1.0, nan, 0.0], [nan, nan, nan]])
    assert rank_of_positive(scores).tolist() == [2, 1, 2]
    assert full_ranks(scores, torch.tensor([0, 0, 1]), torch.zeros(3, 3, dtype=torch.bool)).tolist() == [2, 1, 2]
    assert ranking_metrics(torch.full((4, 100), nan), torch.ones(4, dtype=torch.bool))["hr@10"] == 0.0


def full_ranking_fleet(full_ranking: bool = True):
    # user A trains items 1, 2 then holds out 0; user B trains 3, 5, 1 then holds out 4 (ids already dense)
    users = np.array([0, 0, 0, 1, 1, 1, 1])
    items = np.array([1, 2, 0, 3, 5, 1, 4])
    data = interactions_from_table("hand", users, items, np.arange(7.0), seed=0, test_negatives=1)
    data = dataclasses.replace(data, full_ranking=full_ranking)
    return pack_interactions(data, [np.array([0]), np.array([1])])


def test_full_ranking_metrics_by_hand() -> None:
    fleet = full_ranking_fleet()
    assert fleet.test_items[:, 0, 0].tolist() == [0, 4]
    model = build_recommender("mf", 1, 6, dim=1)
    shared = {"item": torch.tensor([0.5, 3.0, 2.0, 1.0, 0.2, 0.8]).view(1, 6, 1), "item_bias": torch.zeros(1, 6)}
    private = {"user": torch.tensor([1.0, -1.0]).view(2, 1, 1)}  # user B's scores are the items' negated
    models = DeviceModels(shared, torch.zeros(2, dtype=torch.int64), private, torch.arange(2))
    metrics = evaluate_devices(model, models, fleet)
    # A: held-out 0 scores 0.5; untrained items 3, 4, 5 score 1.0, 0.2, 0.8: rank 2
    # B: held-out 4 scores -0.2; untrained items 0, 2 score -0.5, -2.0: rank 0
    assert metrics["hr@10_full"] == 1.0
    assert metrics["ndcg@10_full"] == pytest.approx((1 / math.log2(4) + 1.0) / 2)
    assert {"hr@10", "ndcg@10"} <= set(metrics)  # the sampled numbers are still there, under their own names
    # popularity (training counts: item 1 twice, 2, 3, 5 once, 0 and 4 never): A's 0 ties 4 and trails 3, 5
    # (rank 3), B's 4 ties 0 and trails 2 (rank 2)
    popular = popularity_metrics(fleet)
    assert popular["ndcg@10_full"] == pytest.approx((1 / math.log2(5) + 1 / math.log2(4)) / 2)
    # pooled data (the centralised baseline) keeps the option; without it no full-ranking metric appears
    assert pool_fleet(fleet).full_ranking
    assert "hr@10_full" not in evaluate_devices(model, models, full_ranking_fleet(False))


def test_full_ranking_is_a_checked_data_option(tmp_path) -> None:
    path = tmp_path / "mine.csv"
    path.write_text("user,item\na,x\na,y\nb,y\nb,z\nb,w\n")
    assert load_movielens(seed=0, source="csv", path=str(path), test_negatives=1, full_ranking=True).full_ranking
    with pytest.raises(ClientsError, match=r"data\.full_ranking"):
        load_movielens(seed=0, source="csv", path=str(path), test_negatives=1, full_ranking="yes")


# -- data ------------------------------------------------------------------------
def tiny_table() -> Interactions:
    return interactions_from_table("tiny", *tiny_table_rows(), seed=0, test_negatives=1)


def tiny_table_rows() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    # raw ids; user 30 has one interaction only (dropped); user 10 repeats item 7
    users = np.array([10, 10, 10, 10, 20, 20, 20, 30])
    items = np.array([7, 8, 9, 7, 8, 9, 11, 7])
    stamps = np.array([5.0, 1.0, 3.0, 9.0, 2.0, 8.0, 4.0, 1.0])
    return users, items, stamps


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


def test_validation_holdout_never_shows_the_test_item() -> None:
    """``holdout = "validation"``: the latest interaction (the test item) is gone, the one before it is
    held out instead, and no negative is an item the user ever had."""
    data = interactions_from_table("tiny", *tiny_table_rows(), seed=0, test_negatives=1, holdout="validation")
    test = tiny_table()
    assert data.test_item.tolist() == [2, 3]  # user 10: 9@3 (7@5 removed); user 20: 11@4 (9@8 removed)
    assert data.train_item.tolist() == [1, 1]
    assert data.test_negatives.tolist() == [[3], [0]]  # the one item each user never had (removed ones count)
    assert all(test.test_item[u] not in data.train_item[data.train_user == u] for u in range(2))
    with pytest.raises(ClientsError, match=r"data\.holdout"):
        interactions_from_table("tiny", *tiny_table_rows(), seed=0, test_negatives=1, holdout="train")


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
PROTOCOLS = [
    ("fedavg", {}),
    ("fedavg", {"item_merge": "dense"}),
    ("etree", {"groups": [3, 1], "ratios": [1, 2], "pretrain_epochs": 1}),
    ("grouped", {"groups": [3, 1], "pretrain_epochs": 1}),
    ("hierfavg", {}),
    ("hierfavg", {"item_merge": "dense"}),
    ("gossip", {"overlay": "random"}),
    ("individual", {}),
]


def private_rows(protocol) -> dict[str, torch.Tensor]:
    """Every device's private rows, wherever the protocol keeps them."""
    sparse = getattr(protocol, "sparse", None)
    return sparse.private if sparse is not None else protocol.params


@pytest.mark.parametrize("kind", ["mf", "ncf"])
@pytest.mark.parametrize(("name", "options"), PROTOCOLS, ids=[f"{n}-{o.get('item_merge', '')}" for n, o in PROTOCOLS])
def test_user_embeddings_are_never_sent_nor_averaged(monkeypatch, kind, name, options) -> None:
    workload = recommender_workload(kind)
    assert workload.private == build_recommender(kind, 2, 4).private and workload.private
    shared_bytes = sum(t.numel() * 4 for n, t in workload.initial.items() if n not in workload.private)
    assert workload.message_bytes == shared_bytes  # bytes count only what travels

    aggregated: list[set[str]] = []  # the names of every stack a head or a peer receives

    def spy(function, names=set):
        def wrapped(stack, *args, **kwargs):
            aggregated.append(names(stack))
            return function(stack, *args, **kwargs)

        return wrapped

    monkeypatch.setattr(hierarchical, "segment_mean", spy(hierarchical.segment_mean))
    monkeypatch.setattr(gossip_module, "merge_models", spy(gossip_module.merge_models))
    sent = lambda messages: set(messages.rows) | set(messages.dense)  # noqa: E731 - what uploads carry
    monkeypatch.setattr(sparse_rows, "merge_messages", spy(sparse_rows.merge_messages, sent))
    protocol = make_protocol(name, name, dict(options))
    records = list(run_protocol(protocol, workload, rounds=3, eval_every=1))
    assert {r.metric for r in records} >= {"hr@10", "ndcg@10"}
    assert all(not names & workload.private for names in aggregated)
    if name != "individual":
        assert aggregated  # something was aggregated, without the private names
    # each device's private rows are its own: one more round changes them exactly as local training does
    before = {k: v.clone() for k, v in private_rows(protocol).items()}
    held = protocol.device_models()
    protocol.run_round(4)
    after = private_rows(protocol)
    for private in workload.private:
        assert not torch.equal(after[private][0], after[private][1])  # never averaged into one
    if name in ("fedavg", "hierfavg", "individual"):
        everyone = torch.arange(workload.devices)
        start = {k: v[held.row] for k, v in held.shared.items()} | before  # every device holds its model
        alone = train_recommender(
            workload.model, start, workload.data, everyone, 0.05, 1, 4, seed=workload.seed, round_index=4
        )
        idle = [protocol.tree.root] if name == "fedavg" else []  # type: ignore[attr-defined]
        assert all(device < workload.devices for device in idle)  # FedAvg's server is a device: it does not train
        for private in workload.private:
            expected = alone[private].clone()
            expected[idle] = before[private][idle]
            if kind == "mf":
                assert torch.equal(after[private], expected)
            else:  # NeuMF's MLP runs as batched matmuls, which round differently over other device groups
                torch.testing.assert_close(after[private], expected, rtol=0, atol=1e-6)


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
