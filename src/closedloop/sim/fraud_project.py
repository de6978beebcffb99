"""A ready-made closedloop project over the simulated fraud world (used by ``closedloop demo``)."""

from __future__ import annotations

from pathlib import Path

from closedloop.sim.fraud import FraudWorld

DEFINITIONS = '''"""The fraud project: card transactions, nightly profiles, and their features."""

import numpy as np

import closedloop as cl

user = cl.Entity("user", key="user_id")

# The sources' rows live in the offline store, filled by `closedloop ingest` from the exports
# in data/ (their landing folders hold nothing else).
transactions = cl.EventSource(
    "transactions", path="landing/transactions", timestamp="event_time",
    arrival="ingested_at", id="txn_id",
    schema={"txn_id": str, "user_id": str, "merchant_id": str, "amount": float,
            "country": str},
)

# A nightly profile is usable from when the job wrote it (created_at), not from the midnight it
# describes: its timestamp is the write time, so training never sees it earlier than serving.
profiles = cl.TableSource(
    "profiles", path="landing/profiles", timestamp="created_at",
    schema={"user_id": str, "lifetime_spend": float, "lifetime_txns": int,
            "account_age_days": float},
)

# Chargebacks: a transaction's fraud label, known only when the chargeback settles, up to 60
# days later; a transaction with no chargeback 60 days on was not fraud.
chargebacks = cl.LabelSource(
    "chargebacks", path="landing/chargebacks", subject="txn_id", timestamp="event_time",
    label="is_fraud", settled_at="settled_at", max_delay="60d", default=False, id="txn_id",
    schema={"txn_id": str, "is_fraud": bool},
)

user_txn = cl.FeatureView(
    "user_txn", entity=user, source=transactions, version=1,
    aggregations=[
        cl.Agg("amount", "sum", windows=["1h", "1d", "30d"]),
        cl.Agg("amount", "count", windows=["10m", "1h", "1d", "30d"]),
        cl.Agg("amount", "mean", windows=["30d"]),
        cl.Agg("amount", "max", windows=["1d", "30d"]),
        cl.Agg("amount", "stddev", windows=["30d"]),
        cl.Agg("country", "last", windows=["30d"]),
    ],
)

user_profile = cl.FeatureView(
    "user_profile", entity=user, source=profiles, version=1,
    features=["lifetime_spend", "lifetime_txns", "account_age_days"], ttl="2d",
)


@cl.transform(inputs=["request.amount", "user_txn.amount_mean_30d"])
def amount_vs_usual(c):
    """How far this amount is above the user's usual (log ratio; 0 when there is no history)."""
    usual = np.nan_to_num(c["user_txn.amount_mean_30d"], nan=0.0)
    return np.log1p(c["request.amount"]) - np.log1p(usual)


@cl.transform(inputs=["request.country", "user_txn.country_last_30d"])
def new_country(c):
    """1.0 when the transaction's country differs from the last one seen in 30 days."""
    last = c["user_txn.country_last_30d"]
    return (last != None) & (c["request.country"] != last)  # noqa: E711 - elementwise on arrays


fraud = cl.Model(
    "fraud", features=__FEATURES__, label="chargebacks", rows="transactions",
    trainer=cl.LightGBMTrainer(num_boost_round=150, learning_rate=0.05, num_leaves=15, seed=7),
    slices=["country", "user_profile.account_age_days"], protected=["country"],
    description="Card fraud, scored at the transaction; labels are chargebacks.",
)
__SERVING__'''

FEATURES = [  # the model's features, written into the definitions above
    "user_txn.amount_sum_1h", "user_txn.amount_sum_1d", "user_txn.amount_sum_30d",
    "user_txn.amount_count_10m", "user_txn.amount_count_1h", "user_txn.amount_count_1d",
    "user_txn.amount_count_30d", "user_txn.amount_mean_30d", "user_txn.amount_max_1d",
    "user_txn.amount_max_30d", "user_txn.amount_stddev_30d", "user_profile.lifetime_spend",
    "user_profile.lifetime_txns", "user_profile.account_age_days", "amount_vs_usual",
    "new_country",
]


#: How the model is served (replaceable as a whole: tests declare their own).
SERVING = '''
# Served by user: 2% held out (scored and logged, answered "allow"); decisions by score; a
# fallback score when the online store is down.
serving = cl.Serving("fraud", unit="user_id", subject="txn_id", holdout=0.02,
                     decisions=[("block", 0.5), ("review", 0.1)], default_decision="allow",
                     fallback=0.01, budget=cl.Budget(p99_ms=50, fetch_ms=15, transform_ms=5,
                                                     inference_ms=30, post_ms=5))
'''

DEFINITIONS = DEFINITIONS.replace("__FEATURES__", "[\n        " + ",\n        ".join(
    repr(f) for f in FEATURES) + ",\n    ]").replace("__SERVING__", SERVING)

#: The world's exports (in data/) and the sources they are ingested into.
EXPORTS = {"transactions": "transactions.parquet", "profiles": "profiles.parquet",
           "chargebacks": "chargebacks.parquet"}


def write_fraud_project(folder: str | Path, *, n_users: int = 1000, seed: int = 0) -> Path:
    """Write a fraud project: config, definitions and the generated world's Parquet exports
    under data/, ready for ``closedloop ingest`` (see ``EXPORTS``)."""
    root = Path(folder)
    (root / "data").mkdir(parents=True, exist_ok=True)
    FraudWorld(n_users=n_users, seed=seed).write(root / "data")
    (root / "definitions.py").write_text(DEFINITIONS)
    (root / "closedloop.toml").write_text(
        '[project]\nname = "fraud"\ndefinitions = "definitions.py"\n\n'
        "[online]\nlog_sample = 1.0   # log every served vector for `closedloop consistency`\n")
    return root
