"""Implicit-feedback interaction data (MovieLens) and its packing over devices.

The NCF evaluation protocol (He et al., "Neural Collaborative Filtering", WWW
2017, Sec. 4.1): every rating is an interaction (implicit feedback; a rating
threshold is an option), each user's latest interaction by timestamp is held
out for testing (leave-last-out), and the test item is ranked among 99 items
the user never interacted with, sampled once per user from the data seed.
With ``full_ranking`` the held-out item is also ranked against every item the
user has not trained on (no sampling; Krichene & Rendle, "On Sampled Metrics
for Item Recommendation", KDD 2020, show sampled metrics can reorder models),
logged as ``hr@10_full`` and ``ndcg@10_full`` so the two are never confused.

Sources, all read into the same :class:`Interactions`:

* ``ml-100k`` offline from the files the ``recbole`` package ships
  (``recbole/dataset_example/ml-100k/ml-100k.inter``; located through the
  installed distribution's file list, recbole's code is never imported;
  install it with ``pip install --no-deps recbole==1.2.1``), else from
  GroupLens' archive;
* ``ml-1m`` from GroupLens' archive (downloaded once into the cache);
* ``csv``: a user's own file with a header naming ``user_id`` (or ``user``),
  ``item_id`` (or ``item``) and optionally ``rating`` and ``timestamp``.
"""

from __future__ import annotations

import csv
import dataclasses
import http.client
import io
import os
import shutil
import tempfile
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from clients.cache import cache_dir, packaged_file
from clients.checks import check_bool, check_float, check_int
from clients.datasets import register_dataset
from clients.errors import ClientsError

SOURCES = ("ml-100k", "ml-1m", "csv")
HOLDOUTS = ("test", "validation")
GROUPLENS_URLS = {
    "ml-100k": "https://files.grouplens.org/datasets/movielens/ml-100k.zip",
    "ml-1m": "https://files.grouplens.org/datasets/movielens/ml-1m.zip",
}
# the member of each GroupLens archive holding the ratings, and its field separator
GROUPLENS_MEMBERS = {"ml-100k": ("ml-100k/u.data", "\t"), "ml-1m": ("ml-1m/ratings.dat", "::")}
RECBOLE_INTER = "recbole/dataset_example/ml-100k/ml-100k.inter"


@dataclass(frozen=True, eq=False)
class Interactions:
    """Implicit feedback with one held-out test item per user.

    Users and items are 0-based dense ids. ``train_user``/``train_item`` list the
    training interactions, grouped by user in time order; ``test_item[u]`` is
    user u's latest interaction and ``test_negatives[u]`` the items it is ranked
    against (never interacted with by u). ``full_ranking``: also rank it against
    every item u has not trained on.
    """

    name: str
    num_users: int
    num_items: int
    train_user: np.ndarray
    train_item: np.ndarray
    test_item: np.ndarray
    test_negatives: np.ndarray
    full_ranking: bool = False

    def __post_init__(self) -> None:
        where = f"data.dataset: {self.name!r}"
        for field in ("train_user", "train_item", "test_item", "test_negatives"):
            if getattr(self, field).dtype != np.int64:
                raise ClientsError(f"{where} {field} must be int64, got {getattr(self, field).dtype}")
        if self.test_item.shape != (self.num_users,) or self.test_negatives.shape[0] != self.num_users:
            raise ClientsError(f"{where} needs one test item and one row of negatives per user ({self.num_users})")
        if len(self.train_user) != len(self.train_item) or len(self.train_user) == 0:
            raise ClientsError(f"{where} has no training interactions, or users and items differ in length")

    @property
    def user_counts(self) -> np.ndarray:
        """Training interactions per user."""
        return np.bincount(self.train_user, minlength=self.num_users)


def interactions_from_table(
    name: str,
    users: np.ndarray,
    items: np.ndarray,
    timestamps: np.ndarray,
    *,
    seed: int,
    test_negatives: int = 99,
    holdout: str = "test",
) -> Interactions:
    """Leave-last-out split of raw (user, item, timestamp) rows, ids made dense in sorted raw order.

    A user's interactions are ordered by (timestamp, row order); repeated (user,
    item) pairs count once (the first). Users with fewer than two interactions
    cannot give both a training and a test item and are dropped.

    ``holdout = "validation"`` is the split for choosing settings without the
    test set: each user's latest interaction (the test item) is removed
    altogether, the one before it is held out instead, and its negatives avoid
    every item the user interacted with, the removed one included (users need
    three interactions).
    """
    negatives = check_int("data.test_negatives", test_negatives, 1)
    if holdout not in HOLDOUTS:
        raise ClientsError(f"data.holdout: got {holdout!r}; choose one of: {', '.join(HOLDOUTS)}")
    dropped = int(holdout == "validation")  # latest interactions removed before the split
    _, user = np.unique(users, return_inverse=True)
    _, item = np.unique(items, return_inverse=True)
    user, item = user.reshape(-1).astype(np.int64), item.reshape(-1).astype(np.int64)
    num_items = int(item.max()) + 1
    order = np.lexsort((np.arange(len(user)), timestamps, user))  # by user, then time, then row
    user, item = user[order], item[order]
    key = user * num_items + item
    _, first = np.unique(key, return_index=True)
    keep = np.sort(first)
    user, item = user[keep], item[keep]
    counts = np.bincount(user)
    kept_users = np.flatnonzero(counts >= 2 + dropped)
    if len(kept_users) == 0:
        raise ClientsError(f"data.dataset: {name!r} has no user with {2 + dropped} or more interactions")
    remap = np.full(len(counts), -1, dtype=np.int64)
    remap[kept_users] = np.arange(len(kept_users))
    mine = remap[user] >= 0
    user, item = remap[user[mine]], item[mine]
    num_users = len(kept_users)
    seen = np.zeros((num_users, num_items), dtype=bool)
    seen[user, item] = True  # every interaction, a removed one too: no negative is an item the user had
    if dropped:
        latest = np.r_[np.flatnonzero(np.diff(user)), len(user) - 1]
        rest = np.ones(len(user), dtype=bool)
        rest[latest] = False
        user, item = user[rest], item[rest]
    last = np.r_[np.flatnonzero(np.diff(user)), len(user) - 1]  # each user's last row
    if num_items - int(seen.sum(axis=1).max()) < negatives:
        raise ClientsError(
            f"data.test_negatives: {negatives} negatives but a user has interacted with nearly all "
            f"{num_items} items; lower it"
        )
    test = np.zeros(len(user), dtype=bool)
    test[last] = True
    rng = np.random.default_rng(seed)
    sampled = np.empty((num_users, negatives), dtype=np.int64)
    for u in range(num_users):  # per user: a few thousand users at most, ms in all
        sampled[u] = rng.choice(np.flatnonzero(~seen[u]), size=negatives, replace=False)
    return Interactions(
        name,
        num_users,
        num_items,
        user[~test].astype(np.int64),
        item[~test].astype(np.int64),
        item[test].astype(np.int64),
        sampled,
    )


# ---------------------------------------------------------------------------
# sources


def recbole_ml100k_path() -> Path | None:
    """recbole's copy of ml-100k's interactions, if the package is installed (its code is never imported)."""
    return packaged_file("recbole", RECBOLE_INTER)


def read_atomic_inter(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """recbole's atomic ``.inter`` file: a typed header, then user, item, rating, timestamp per line."""
    table = np.loadtxt(path, dtype=np.float64, skiprows=1, delimiter="\t", ndmin=2)
    return table[:, 0].astype(np.int64), table[:, 1].astype(np.int64), table[:, 2], table[:, 3]


def read_grouplens(archive: Path, source: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Ratings from a GroupLens zip (``u.data`` tab-separated, ``ratings.dat`` ``::``-separated)."""
    member, separator = GROUPLENS_MEMBERS[source]
    with zipfile.ZipFile(archive) as zf:
        text = zf.read(member).decode("latin-1")
    table = np.loadtxt(io.StringIO(text.replace(separator, "\t")), dtype=np.float64, delimiter="\t", ndmin=2)
    return table[:, 0].astype(np.int64), table[:, 1].astype(np.int64), table[:, 2], table[:, 3]


def read_csv_interactions(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A user's own CSV: header with user_id/user, item_id/item, optional rating and timestamp.

    Ids may be any strings; without a timestamp the file order is the time order,
    without a rating every row counts as rating 1.
    """
    if not path.is_file():
        raise ClientsError(f"data.path: {str(path)!r} is not a file; give a CSV of interactions")
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows:
        raise ClientsError(f"data.path: {str(path)!r} holds no interactions")
    header = {name.strip().lower(): name for name in rows[0]}
    user_col = header.get("user_id", header.get("user"))
    item_col = header.get("item_id", header.get("item"))
    if user_col is None or item_col is None:
        raise ClientsError(f"data.path: {str(path)!r} needs columns user_id and item_id, has {sorted(rows[0])}")
    users = np.unique([r[user_col] for r in rows], return_inverse=True)[1].reshape(-1)
    items = np.unique([r[item_col] for r in rows], return_inverse=True)[1].reshape(-1)
    try:
        ratings = np.array([float(r[header["rating"]]) for r in rows]) if "rating" in header else np.ones(len(rows))
        stamps = (
            np.array([float(r[header["timestamp"]]) for r in rows])
            if "timestamp" in header
            else np.arange(len(rows), dtype=np.float64)
        )
    except ValueError as exc:
        raise ClientsError(f"data.path: {str(path)!r} has a rating or timestamp that is not a number ({exc})") from None
    return users.astype(np.int64), items.astype(np.int64), ratings, stamps


def fetch_grouplens(source: str, dest: Path) -> None:
    """Download a GroupLens archive to ``dest`` atomically; offline: one-line ClientsError."""
    from clients.cache import offline_error

    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=dest.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(GROUPLENS_URLS[source], timeout=60) as response:
            shutil.copyfileobj(response, out)
        if not zipfile.is_zipfile(tmp):
            raise OSError(f"{GROUPLENS_URLS[source]} did not return a zip file")
        os.replace(tmp, dest)
    except (OSError, http.client.HTTPException) as exc:
        error = offline_error(f"movielens {source}", exc)
        hint = " (or install recbole's ml-100k files: pip install --no-deps recbole==1.2.1)" * (source == "ml-100k")
        raise ClientsError(f"{error}{hint}") from None
    finally:
        Path(tmp).unlink(missing_ok=True)


@register_dataset("movielens")
def load_movielens(
    *,
    seed: int,
    devices: int = 0,
    source: str = "ml-100k",
    path: str = "",
    min_rating: float = 0.0,
    test_negatives: int = 99,
    full_ranking: bool = False,
    holdout: str = "test",
) -> Interactions:
    """The ``movielens`` dataset: MovieLens (Harper & Konstan, 2015) or a CSV as implicit feedback, leave-last-out.

    ``source``: ``ml-100k`` (offline from recbole's files, else GroupLens),
    ``ml-1m`` (GroupLens, cached) or ``csv`` (your file at ``path``). Devices
    hold users: partition ``natural`` (one user per device) or ``iid`` (users
    dealt evenly), so ``devices`` is unused here. ``min_rating`` keeps only ratings
    at least that high (0: every rating is an interaction, as in the NCF paper).
    ``full_ranking = true`` also logs ``hr@10_full``/``ndcg@10_full``: the held-out
    item ranked against every item the user has not trained on (HR@10 and NDCG@10
    stay the 99-negative NCF protocol). ``holdout = "validation"`` scores each user's second-latest
    interaction instead and removes the latest (the test item) from the data: the split to choose
    settings on (e.g. the learning rate), never looking at the test set.
    """
    threshold = check_float("data.min_rating", min_rating, 0.0, np.inf)
    full_ranking = check_bool("data.full_ranking", full_ranking)
    if source not in SOURCES:
        raise ClientsError(f"data.source: unknown {source!r}; choose one of: {', '.join(SOURCES)}")
    if source == "csv":
        if not path:
            raise ClientsError("data.path: source 'csv' needs path = '<your interactions>.csv'")
        table = read_csv_interactions(Path(path).expanduser())
        name = f"csv:{Path(path).name}"
    else:
        if path:
            raise ClientsError(f"data.path: only used with source 'csv', not {source!r}")
        local = recbole_ml100k_path() if source == "ml-100k" else None
        if local is not None:
            table = read_atomic_inter(local)
        else:
            archive = cache_dir() / "movielens" / f"{source}.zip"
            if not zipfile.is_zipfile(archive):
                fetch_grouplens(source, archive)
            table = read_grouplens(archive, source)
        name = source
    users, items, ratings, stamps = table
    keep = ratings >= threshold
    if not keep.any():
        raise ClientsError(f"data.min_rating: {min_rating!r} keeps no interaction")
    data = interactions_from_table(
        name, users[keep], items[keep], stamps[keep], seed=seed, test_negatives=test_negatives, holdout=holdout
    )
    return dataclasses.replace(data, full_ranking=full_ranking)


# ---------------------------------------------------------------------------
# devices


@dataclass(frozen=True)
class InteractionFleet:
    """The interactions of D devices, each holding the data of up to U users (one slot each).

    ``users``/``items`` [D, M]: slot and item of each training interaction
    (padding past ``counts[d]``); ``user_ids`` [D, U]: the global user in each
    slot (-1: empty); ``seen`` [D, U, I]: the slot's training items (what
    negative sampling avoids); ``test_items`` [D, U, 1 + n]: the held-out item
    then its n sampled negatives; ``full_ranking``: evaluation also ranks the
    held-out item against every item the slot has not trained on.
    """

    users: torch.Tensor
    items: torch.Tensor
    counts: torch.Tensor
    user_ids: torch.Tensor
    seen: torch.Tensor
    test_items: torch.Tensor
    num_items: int
    full_ranking: bool = False

    @property
    def devices(self) -> int:
        return int(self.counts.shape[0])

    @property
    def capacity(self) -> int:
        return int(self.items.shape[1])

    @property
    def slots(self) -> int:
        return int(self.user_ids.shape[1])

    @property
    def user_valid(self) -> torch.Tensor:
        return self.user_ids >= 0

    def nbytes(self) -> int:
        tensors = (self.users, self.items, self.counts, self.user_ids, self.seen, self.test_items)
        return sum(t.numel() * t.element_size() for t in tensors)


def pack_interactions(data: Interactions, parts: list[np.ndarray]) -> InteractionFleet:
    """Device d holds the users ``parts[d]`` (global ids), in that order as its slots 0, 1, ..."""
    devices = len(parts)
    slots = max(1, max((len(p) for p in parts), default=1))
    user_ids = np.full((devices, slots), -1, dtype=np.int64)
    device_of = np.full(data.num_users, -1, dtype=np.int64)
    slot_of = np.full(data.num_users, -1, dtype=np.int64)
    for d, users in enumerate(parts):
        user_ids[d, : len(users)] = users
        device_of[users] = d
        slot_of[users] = np.arange(len(users))
    held = device_of[data.train_user] >= 0
    device = device_of[data.train_user[held]]
    order = np.argsort(device, kind="stable")  # device-major, each user's rows kept in time order
    device = device[order]
    slot = slot_of[data.train_user[held]][order]
    item = data.train_item[held][order]
    counts = np.bincount(device, minlength=devices).astype(np.int64)
    capacity = max(1, int(counts.max(initial=0)))
    cols = np.arange(len(device)) - np.repeat(np.cumsum(counts) - counts, counts)
    users = np.zeros((devices, capacity), dtype=np.int64)
    items = np.zeros((devices, capacity), dtype=np.int64)
    users[device, cols] = slot
    items[device, cols] = item
    seen = np.zeros((devices, slots, data.num_items), dtype=bool)
    seen[device, slot, item] = True
    candidates = np.concatenate([data.test_item[:, None], data.test_negatives], axis=1)
    test_items = np.zeros((devices, slots, candidates.shape[1]), dtype=np.int64)
    valid = user_ids >= 0
    test_items[valid] = candidates[user_ids[valid]]
    return InteractionFleet(
        torch.from_numpy(users),
        torch.from_numpy(items),
        torch.from_numpy(counts),
        torch.from_numpy(user_ids),
        torch.from_numpy(seen),
        torch.from_numpy(test_items),
        data.num_items,
        data.full_ranking,
    )


def pool_fleet(fleet: InteractionFleet) -> InteractionFleet:
    """Every device's users and interactions on one device (the centralised baseline's data).

    Device d's slot s becomes pooled slot ``d * U + s``, so the pooled user table
    reshaped to [D, U, ...] gives each device's rows back.
    """
    devices, slots = fleet.devices, fleet.slots
    valid = torch.arange(fleet.capacity).unsqueeze(0) < fleet.counts.unsqueeze(1)
    offset = (torch.arange(devices) * slots).unsqueeze(1)
    users = (fleet.users + offset)[valid].unsqueeze(0)
    items = fleet.items[valid].unsqueeze(0)
    return InteractionFleet(
        users,
        items,
        fleet.counts.sum().view(1),
        fleet.user_ids.reshape(1, -1),
        fleet.seen.reshape(1, devices * slots, -1),
        fleet.test_items.reshape(1, devices * slots, -1),
        fleet.num_items,
        fleet.full_ranking,
    )
