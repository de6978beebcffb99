"""A seeded, simulated fraud world with known ground truth.

Users and merchants with their own behaviour; card transactions over ``days`` days with
amounts, countries, devices and a daily rhythm; bursts of fraud with recognisable patterns
(a compromised card suddenly spends fast, abroad, on a new device, at risky merchants); each
transaction's arrival time a little after its event time (some late); chargebacks that settle
0–60 days after the transaction; and a nightly per-user profile snapshot.

Size is set by one parameter, ``n_users`` (about 100 transactions per user over 90 days).

>>> world = FraudWorld(n_users=50, seed=1).generate()
>>> sorted(world)
['chargebacks', 'merchants', 'profiles', 'transactions', 'users']
>>> world["transactions"].num_rows > 1000
True
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from closedloop.errors import ConfigError

SECOND = 1_000_000
MINUTE, HOUR, DAY = 60 * SECOND, 3600 * SECOND, 86400 * SECOND

COUNTRIES = np.array(["US", "GB", "DE", "FR", "ES", "IT", "NL", "BR", "IN", "NG", "RU", "CN"])
_HOME_P = np.array([0.40, 0.12, 0.10, 0.08, 0.06, 0.06, 0.05, 0.05, 0.04, 0.02, 0.01, 0.01])
CATEGORIES = np.array(["grocery", "fuel", "restaurant", "travel", "electronics", "fashion",
                       "gaming", "gift_cards", "crypto"])
_CAT_P = np.array([0.25, 0.15, 0.2, 0.07, 0.08, 0.12, 0.06, 0.04, 0.03])
_CAT_AMOUNT = np.array([0.7, 0.9, 0.6, 3.0, 2.5, 1.3, 0.8, 1.5, 2.0])
_RISKY = np.isin(CATEGORIES, ["electronics", "gift_cards", "crypto", "gaming"])
# Hour-of-day weights of legitimate activity (quiet at night, busy in the evening).
_DIURNAL = np.array([1, 0.6, 0.4, 0.3, 0.3, 0.5, 1, 2, 3, 3.5, 3.5, 4, 5, 4.5, 4, 4, 4.5, 5,
                     5.5, 5.5, 5, 4, 3, 2], dtype=float)


def _ts(micros: np.ndarray) -> pa.Array:
    return pa.array(micros.astype(np.int64), pa.int64()).cast(pa.timestamp("us", tz="UTC"))


@dataclass(frozen=True)
class FraudWorld:
    """The fraud world's parameters; ``generate()`` draws it, ``write(folder)`` stores it."""

    n_users: int = 1000
    days: int = 90
    seed: int = 0
    start: datetime = datetime(2026, 1, 1, tzinfo=UTC)
    compromised_share: float = 0.03
    late_share: float = 0.01

    def __post_init__(self) -> None:
        if not isinstance(self.n_users, int) or self.n_users < 1:
            raise ConfigError(f"n_users={self.n_users!r} is not a positive whole number",
                              fix="pass n_users=1000 or similar")
        if not 1 <= self.days <= 3650:
            raise ConfigError(f"days={self.days!r} is out of range", fix="use 1..3650 days")
        if self.start.tzinfo is None:
            raise ConfigError("start is a naive datetime", fix="pass a UTC datetime")

    @property
    def end(self) -> datetime:
        """The world's last instant: every event happened before it."""
        return self.start + timedelta(days=self.days)

    @property
    def start_us(self) -> int:
        return int(self.start.timestamp() * SECOND)

    def generate(self) -> dict[str, pa.Table]:
        """Draw the world: users, merchants, transactions, chargebacks, profiles."""
        rng = np.random.default_rng(self.seed)
        t0, span = self.start_us, self.days * DAY
        nu = self.n_users
        nm = max(20, nu // 20)
        # -- users and merchants ------------------------------------------------------------
        home = rng.choice(len(COUNTRIES), size=nu, p=_HOME_P)
        typical = rng.lognormal(3.3, 0.6, size=nu)                 # typical spend, ~27
        rate = rng.gamma(2.0, 0.55, size=nu)                       # transactions per day
        n_devices = rng.integers(1, 4, size=nu)
        signup = t0 - rng.integers(1, 2000, size=nu) * DAY
        m_cat = rng.choice(len(CATEGORIES), size=nm, p=_CAT_P)
        m_country = rng.choice(len(COUNTRIES), size=nm, p=_HOME_P)
        m_risk = np.clip(rng.beta(1, 12, size=nm) + 0.15 * _RISKY[m_cat], 0, 1)
        # -- legitimate transactions --------------------------------------------------------
        counts = rng.poisson(rate * self.days)
        user = np.repeat(np.arange(nu), counts)
        n = user.size
        day = rng.integers(0, self.days, size=n)
        hour = rng.choice(24, size=n, p=_DIURNAL / _DIURNAL.sum())
        event = t0 + day * DAY + hour * HOUR + rng.integers(0, HOUR, size=n)
        # Users shop mostly at merchants of their home country.
        local = rng.random(n) < 0.85
        merchant = rng.integers(0, nm, size=n)
        by_country = [np.flatnonzero(m_country == c) for c in range(len(COUNTRIES))]
        for c, ms in enumerate(by_country):
            pick = local & (home[user] == c)
            if ms.size and pick.any():
                merchant[pick] = rng.choice(ms, size=int(pick.sum()))
        amount = typical[user] * _CAT_AMOUNT[m_cat[merchant]] * rng.lognormal(0, 0.5, size=n)
        country = np.where(rng.random(n) < 0.97, home[user], m_country[merchant])
        device = rng.integers(0, 1 << 30, size=n) % n_devices[user]
        fraud = np.zeros(n, dtype=bool)
        # -- fraud bursts: compromised cards ------------------------------------------------
        victims = np.flatnonzero(rng.random(nu) < self.compromised_share)
        risky_merchants = np.flatnonzero(_RISKY[m_cat] | (m_risk > 0.3))
        if risky_merchants.size == 0:  # pragma: no cover - tiny worlds only
            risky_merchants = np.arange(nm)
        parts = []
        for v in victims:
            k = int(rng.integers(3, 16))
            begin = t0 + int(rng.integers(0, span - 6 * HOUR))
            gaps = rng.exponential(8 * MINUTE, size=k).astype(np.int64)
            parts.append((np.full(k, v), begin + np.cumsum(gaps), k))
        # A thin background of isolated fraud on random cards.
        lone = rng.integers(0, nu, size=max(1, n // 2000))
        parts.append((lone, t0 + rng.integers(0, span, size=lone.size), lone.size))
        f_user = np.concatenate([p[0] for p in parts]).astype(np.int64)
        f_event = np.concatenate([p[1] for p in parts]).astype(np.int64)
        f_n = f_user.size
        f_merchant = rng.choice(risky_merchants, size=f_n)
        f_amount = np.maximum(typical[f_user], 30) * rng.lognormal(1.2, 0.6, size=f_n)
        foreign = rng.choice(len(COUNTRIES), size=f_n)
        f_country = np.where(rng.random(f_n) < 0.8, foreign, home[f_user])
        f_device = n_devices[f_user] + rng.integers(0, 3, size=f_n)   # a device never seen
        user = np.concatenate([user, f_user])
        event = np.concatenate([event, f_event])
        merchant = np.concatenate([merchant, f_merchant])
        amount = np.round(np.concatenate([amount, f_amount]), 2)
        country = np.concatenate([country, f_country])
        device = np.concatenate([device, f_device])
        fraud = np.concatenate([fraud, np.ones(f_n, dtype=bool)])
        keep = event < t0 + span
        order = np.argsort(event[keep], kind="stable")
        user, event, merchant = user[keep][order], event[keep][order], merchant[keep][order]
        amount, country = amount[keep][order], country[keep][order]
        device, fraud = device[keep][order], fraud[keep][order]
        n = user.size
        # -- arrival: most within seconds, some minutes, a few hours to days late -----------
        lag = rng.integers(SECOND // 2, 30 * SECOND, size=n)
        mid = rng.random(n) < 0.09
        lag[mid] = rng.integers(MINUTE, HOUR, size=int(mid.sum()))
        late = rng.random(n) < self.late_share
        lag[late] = rng.integers(HOUR, 3 * DAY, size=int(late.sum()))
        arrival = event + lag
        txn_id = np.array([f"t{i:09d}" for i in range(n)])
        user_id = np.array([f"u{u:06d}" for u in range(nu)])
        merchant_id = np.array([f"m{m:05d}" for m in range(nm)])
        transactions = pa.table({
            "txn_id": txn_id, "user_id": user_id[user], "merchant_id": merchant_id[merchant],
            "amount": amount, "country": COUNTRIES[country],
            "device_id": np.char.add(np.char.add(user_id[user], "-d"), device.astype(str)),
            "event_time": _ts(event), "ingested_at": _ts(arrival)})
        # -- chargebacks: most fraud, a little friendly fraud; settle 0–60 days later --------
        charged = (fraud & (rng.random(n) < 0.9)) | (~fraud & (rng.random(n) < 0.0005))
        idx = np.flatnonzero(charged)
        delay = np.minimum(rng.gamma(2.0, 9.0, size=idx.size) * DAY, 60 * DAY).astype(np.int64)
        chargebacks = pa.table({
            "txn_id": txn_id[idx], "user_id": user_id[user[idx]],
            "event_time": _ts(event[idx]), "settled_at": _ts(event[idx] + delay),
            "is_fraud": fraud[idx]})
        # -- nightly profile snapshot (what the nightly job knew at midnight) ----------------
        profiles = self._profiles(rng, user, arrival, amount, nu, user_id, signup)
        users = pa.table({"user_id": user_id, "home_country": COUNTRIES[home],
                          "typical_amount": np.round(typical, 2), "signup_at": _ts(signup),
                          "compromised": np.isin(np.arange(nu), victims)})
        merchants = pa.table({"merchant_id": merchant_id, "category": CATEGORIES[m_cat],
                              "country": COUNTRIES[m_country], "risk": np.round(m_risk, 4)})
        transactions = transactions.append_column("is_fraud", pa.array(fraud))
        return {"users": users, "merchants": merchants, "transactions": transactions,
                "chargebacks": chargebacks, "profiles": profiles}

    def _profiles(self, rng: np.random.Generator, user: np.ndarray, arrival: np.ndarray,
                  amount: np.ndarray, nu: int, user_id: np.ndarray,
                  signup: np.ndarray) -> pa.Table:
        t0 = self.start_us
        snap_day = (arrival - t0) // DAY + 1            # first midnight after arrival
        nights = self.days
        spend = np.zeros((nights, nu))
        count = np.zeros((nights, nu))
        valid = snap_day < nights
        np.add.at(spend, (snap_day[valid], user[valid]), amount[valid])
        np.add.at(count, (snap_day[valid], user[valid]), 1)
        spend, count = np.cumsum(spend, axis=0), np.cumsum(count, axis=0)
        grid_d, grid_u = np.meshgrid(np.arange(nights), np.arange(nu), indexing="ij")
        d, u = grid_d.ravel(), grid_u.ravel()
        at = t0 + d * DAY
        # The nightly job writes a few minutes after midnight; now and then it reruns.
        created = at + rng.integers(MINUTE, 30 * MINUTE, size=at.size)
        table = {
            "user_id": user_id[u], "snapshot_time": at, "created_at": created,
            "lifetime_spend": np.round(spend.ravel(), 2), "lifetime_txns": count.ravel(),
            "account_age_days": (at - signup[u]) / DAY,
        }
        rerun = rng.random(at.size) < 0.01
        if rerun.any():
            extra = {k: v[rerun] for k, v in table.items()}
            extra["created_at"] = extra["created_at"] + HOUR
            extra["lifetime_spend"] = np.round(extra["lifetime_spend"] * 1.001, 2)
            table = {k: np.concatenate([v, extra[k]]) for k, v in table.items()}
        return pa.table({
            "user_id": table["user_id"], "snapshot_time": _ts(table["snapshot_time"]),
            "created_at": _ts(table["created_at"]), "lifetime_spend": table["lifetime_spend"],
            "lifetime_txns": table["lifetime_txns"].astype(np.int64),
            "account_age_days": np.round(table["account_age_days"], 3)})

    def write(self, folder: str | Path) -> dict[str, Path]:
        """Generate and write one Parquet file per table; return their paths."""
        root = Path(folder)
        root.mkdir(parents=True, exist_ok=True)
        paths = {}
        for name, table in self.generate().items():
            paths[name] = root / f"{name}.parquet"
            pq.write_table(table, paths[name])
        return paths
