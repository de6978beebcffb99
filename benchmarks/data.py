"""Benchmark data, generated once per size into benchmarks/.data/ (never committed)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from closedloop.features.materialize import RECORD_FORMAT
from closedloop.sim import FraudWorld

DATA = Path(__file__).parent / ".data"
SECOND = 1_000_000
DAY = 86_400 * SECOND
T0 = 1_767_225_600 * SECOND          # 2026-01-01T00:00Z
FEATURES_A = [f"a{i}" for i in range(5)]
FEATURES_B = [f"b{i}" for i in range(5)]


def _ts(values: np.ndarray) -> pa.Array:
    return pa.array(values.astype(np.int64), pa.int64()).cast(pa.timestamp("us", tz="UTC"))


def _done(folder: Path) -> bool:
    return (folder / "done.json").exists()


def project_built(folder: Path) -> bool:
    """A workload's cached project is there, its online store in this build's record layout
    (an older one is rebuilt, not served)."""
    done = folder / "done.json"
    return done.exists() and json.loads(done.read_text()).get("records") == RECORD_FORMAT


def _user_ids(n: int) -> np.ndarray:
    return np.char.add("u", np.arange(n).astype(str))


def pit_data(scale: float = 1.0, seed: int = 7) -> Path:
    """Two snapshot tables of ~1M rows (5 floats each) over 90 days for 10k users, shuffled;
    table A repeats ~1% of (user, time) with a later created time; table B is read with a
    2-day TTL; 100k label rows at random times."""
    folder = DATA / f"pit-{scale:g}"
    if _done(folder):
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    n_users, n_rows, n_labels = int(10_000 * scale), int(1_000_000 * scale), int(100_000 * scale)
    users = _user_ids(n_users)
    for name, cols, dup in (("a", FEATURES_A, 0.01), ("b", FEATURES_B, 0.0)):
        base = n_rows - int(n_rows * dup)
        uid = rng.integers(0, n_users, size=base)
        ts = T0 + rng.integers(0, 90 * DAY, size=base)
        created = ts + rng.integers(0, 3600 * SECOND, size=base)
        if dup:
            pick = rng.integers(0, base, size=n_rows - base)
            uid = np.concatenate([uid, uid[pick]])
            ts = np.concatenate([ts, ts[pick]])
            created = np.concatenate([created, created[pick] + rng.integers(
                1, 3600 * SECOND, size=pick.size)])
        order = rng.permutation(uid.size)
        table = {"user_id": users[uid[order]], "event_timestamp": _ts(ts[order])}
        if name == "a":
            table["created"] = _ts(created[order])
        for c in cols:
            values = np.round(rng.normal(100, 30, size=uid.size), 6)
            values[rng.random(uid.size) < 0.01] = np.nan      # a few missing values
            table[c] = pa.array(values[order], from_pandas=True)
        pq.write_table(pa.table(table), folder / f"{name}.parquet", row_group_size=128_000)
    labels = pa.table({
        "label_id": np.arange(n_labels, dtype=np.int64),
        "user_id": users[rng.integers(0, n_users, size=n_labels)],
        "event_timestamp": _ts(T0 + rng.integers(0, 92 * DAY, size=n_labels)),
        "label": rng.integers(0, 2, size=n_labels)})
    pq.write_table(labels, folder / "labels.parquet")
    (folder / "done.json").write_text(json.dumps({"scale": scale, "seed": seed}))
    return folder


def windows_data(scale: float = 1.0, seed: int = 11) -> Path:
    """One ~1M-row event table (the fraud world's transactions, with arrival times) and 100k
    label rows at random times."""
    folder = DATA / f"windows-{scale:g}"
    if _done(folder):
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    world = FraudWorld(n_users=max(10, int(10_000 * scale)), seed=seed).generate()
    tx = world["transactions"].select(["txn_id", "user_id", "amount", "event_time",
                                       "ingested_at"])
    rng = np.random.default_rng(seed)
    tx = tx.take(rng.permutation(tx.num_rows))
    pq.write_table(tx, folder / "events.parquet", row_group_size=128_000)
    users = world["users"]["user_id"].to_numpy(zero_copy_only=False)
    n_labels = int(100_000 * scale)
    labels = pa.table({
        "label_id": np.arange(n_labels, dtype=np.int64),
        "user_id": users[rng.integers(0, users.size, size=n_labels)],
        "event_timestamp": _ts(T0 + rng.integers(0, 90 * DAY, size=n_labels))})
    pq.write_table(labels, folder / "labels.parquet")
    (folder / "done.json").write_text(json.dumps({"scale": scale, "seed": seed}))
    return folder


def ingest_data(scale: float = 1.0, seed: int = 13) -> Path:
    """Two event files of 5M rows each (id, user, amount, country, event and arrival times):
    ``held.parquet``, the store's contents before the run, and ``new.parquet``, the file
    ingested, whose first 10% of ids repeat held ones (a replay) and whose rows are shuffled."""
    folder = DATA / f"ingest-{scale:g}"
    if _done(folder):
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    n = int(5_000_000 * scale)
    rng = np.random.default_rng(seed)
    countries = np.array(["US", "GB", "DE", "FR", "BR", "IN"])
    for name, first in (("held", 0), ("new", int(n * 0.9))):
        ids = np.arange(first, first + n)
        rng.shuffle(ids)
        event = T0 + rng.integers(0, 90 * DAY, size=n)
        table = pa.table({
            "txn_id": np.char.add("t", ids.astype(str)),
            "user_id": np.char.add("u", rng.integers(0, 100_000, size=n).astype(str)),
            "amount": np.round(rng.lognormal(3.3, 0.6, size=n), 2),
            "country": countries[rng.integers(0, countries.size, size=n)],
            "event_time": _ts(event), "ingested_at": _ts(event + rng.integers(0, 60, n) * SECOND)})
        pq.write_table(table, folder / f"{name}.parquet")
    (folder / "done.json").write_text(json.dumps({"rows": n}))
    return folder


def train_data(scale: float = 1.0, seed: int = 17) -> Path:
    """1M card events over 90 days for 20k users (the rows scored and the source of their 20
    windowed features), and chargeback labels for ~2% of them settling 1–7 days later; fraud
    is likelier for large amounts and during a user's bursts."""
    folder = DATA / f"train-{scale:g}"
    if _done(folder):
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    n, users = int(1_000_000 * scale), max(100, int(20_000 * scale))
    rng = np.random.default_rng(seed)
    user = rng.integers(0, users, size=n)
    event = np.sort(T0 + rng.integers(0, 90 * DAY, size=n))
    amount = np.round(rng.lognormal(3.3, 0.8, size=n), 2)
    risk = 1 / (1 + np.exp(-(np.log(amount) - 5.5) * 2)) * 0.2 + 0.004
    fraud = rng.random(n) < risk
    ids = np.char.add("e", np.arange(n).astype(str))
    pq.write_table(pa.table({
        "txn_id": ids, "user_id": np.char.add("u", user.astype(str)), "amount": amount,
        "event_time": _ts(event), "ingested_at": _ts(event + rng.integers(1, 30, n) * SECOND)}),
        folder / "events.parquet")
    settled = event[fraud] + rng.integers(1, 8, size=int(fraud.sum())) * DAY
    pq.write_table(pa.table({"txn_id": ids[fraud], "event_time": _ts(event[fraud]),
                             "settled_at": _ts(settled), "is_fraud": np.ones(int(fraud.sum()),
                                                                              dtype=bool)}),
                   folder / "labels.parquet")
    (folder / "done.json").write_text(json.dumps({"rows": n, "frauds": int(fraud.sum())}))
    return folder


def private_project(data: Path, tag: str, redis_prefix: str | None = None,
                    extra: str = "") -> Path:
    """A throwaway copy of a workload's project (``data / "project"``), with its online store
    moved to Redis under ``redis_prefix`` when given, and ``extra`` TOML appended. Remove
    its parent folder, and ``redis_cleanup(prefix)``, when done."""
    import shutil
    import tempfile

    root = Path(tempfile.mkdtemp(prefix=f"cl-bench-{tag}-")) / "project"
    shutil.copytree(data / "project", root)
    config = root / "closedloop.toml"
    lines = config.read_text().splitlines() if config.exists() else []
    if redis_prefix is not None:
        ours = ['store = "redis"', f'prefix = "{redis_prefix}"']
        out, section = [], ""
        for line in lines:
            text = line.strip()
            if text.startswith("["):
                section = text
            if section == "[online]" and text.split("=")[0].strip() in ("store", "prefix"):
                continue                         # ours replace them
            out.append(line)
            if text == "[online]":
                out += ours
        lines = out if "[online]" in (t.strip() for t in out) else ["[online]", *ours, *out]
    config.write_text("\n".join(lines) + "\n" + extra)
    return root


def redis_cleanup(prefix: str) -> None:
    """Delete the Redis keys under ``prefix`` (and only those)."""
    import redis

    client = redis.Redis()
    keys = list(client.scan_iter(match=f"{prefix}*", count=10_000))
    for i in range(0, len(keys), 10_000):
        client.delete(*keys[i:i + 10_000])
    client.close()
