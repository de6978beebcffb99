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


#: A first model's features: the slow ones (a month's spending, the profile). It cannot see
#: a burst of fraud coming; the full ``FEATURES`` can.
SLOW_FEATURES = ["user_txn.amount_sum_30d", "user_txn.amount_count_30d",
                 "user_txn.amount_mean_30d", "user_txn.amount_max_30d",
                 "user_profile.lifetime_spend", "user_profile.lifetime_txns",
                 "user_profile.account_age_days"]


def with_features(definitions: str, features: list[str]) -> str:
    """The fraud project's definitions with model ``fraud`` reading ``features``."""
    start = definitions.index('"fraud", features=') + len('"fraud", features=')
    end = definitions.index("]", start)          # a list of names: no nested brackets
    return definitions[:start] + repr(features) + definitions[end + 1:]


#: How the model is served (replaceable as a whole: tests declare their own).
SERVING = '''
# Each transaction is decided on its own, so traffic is split by transaction: 2% held out
# (scored and logged, answered "allow"); decisions by score; a fallback score when the online
# store is down.
serving = cl.Serving("fraud", unit="txn_id", subject="txn_id", holdout=0.02,
                     decisions=[("block", 0.5), ("review", 0.1)], default_decision="allow",
                     fallback=0.01, budget=cl.Budget(p99_ms=50, fetch_ms=15, transform_ms=5,
                                                     inference_ms=30, post_ms=5))
'''

DEFINITIONS = DEFINITIONS.replace("__FEATURES__", "[\n        " + ",\n        ".join(
    repr(f) for f in FEATURES) + ",\n    ]").replace("__SERVING__", SERVING)

#: The world's exports (in data/) and the sources they are ingested into.
EXPORTS = {"transactions": "transactions.parquet", "profiles": "profiles.parquet",
           "chargebacks": "chargebacks.parquet"}


#: Where ``write_fraud_project(live_days=...)`` puts what happens after the history: the
#: live traffic's exports (same names as ``EXPORTS``).
LIVE = "live"

#: The demo's promotion ladder: the business's own metrics (fraud let through, a good
#: customer blocked) decide the A/B test; the rest is the defaults, sized for the demo.
LADDER = '''
# A new version reaches production only by this ladder (`closedloop promote fraud VERSION`):
# the offline gate, a shadow, a canary, an A/B test on the business's own metrics, a ramp.
missed_fraud = cl.Metric("missed_fraud", lambda c: (c["label"] == 1) & (c["decision"] == "allow"),
                         higher_is_better=False)
false_block = cl.Metric("false_block", lambda c: (c["label"] == 0) & (c["decision"] == "block"),
                        higher_is_better=False)
ladder = cl.Ladder(
    "fraud",
    gate=cl.Gate(metric="auc", margin=0.04),
    shadow=cl.Shadow(min_predictions=500),
    canary=cl.Canary(share=0.1, guardrails=cl.Guardrails(
        min_predictions=200, metrics={"decision:block": 0.05})),
    ab=cl.ABTest(share=0.5, primary="missed_fraud",
                 guardrails={"false_block": 0.005, "brier": 0.0},
                 min_units=500, mde=0.3),
    ramp=cl.Ramp(steps=(0.5, 1.0), guardrails=cl.Guardrails(min_predictions=200)),
    metrics=[missed_fraud, false_block],
)

# What production is watched for, and what happens then (`closedloop monitor fraud`): the
# amount the request carries, against the customer's usual, should never drift; if it does
# for two days of three, an upstream feed broke and the fallback answers until released.
monitor = cl.Monitor("fraud", window="1d", persistence=(2, 3), slices=["country"], alerts=[
    cl.Alert("amount feed", on="drift", columns=["amount_vs_usual"], playbook=cl.Fallback())])
'''


def write_fraud_project(folder: str | Path, *, n_users: int = 1000, seed: int = 0,
                        live_days: int = 0, compromised_share: float = 0.03,
                        ladder: bool = False) -> Path:
    """Write a fraud project: config, definitions and the generated world's Parquet exports
    under data/, ready for ``closedloop ingest`` (see ``EXPORTS``). With ``live_days``, the
    world runs that many days past its 90 and what arrives after day 90 — transactions,
    profiles, chargebacks — is written under data/live/ instead: the live traffic to replay
    (``closedloop.sim.traffic.Replay``). ``ladder``: declare the demo's ``LADDER``."""
    root = Path(folder)
    (root / "data").mkdir(parents=True, exist_ok=True)
    if live_days:
        _write_split(root / "data", n_users, seed, live_days, compromised_share)
    else:
        FraudWorld(n_users=n_users, seed=seed, compromised_share=compromised_share).write(
            root / "data")
    (root / "definitions.py").write_text(DEFINITIONS + (LADDER if ladder else ""))
    (root / "closedloop.toml").write_text(
        '[project]\nname = "fraud"\ndefinitions = "definitions.py"\n\n'
        "[online]\nlog_sample = 1.0   # log every served vector for `closedloop consistency`\n")
    return root


#: Each export's arrival column: what had arrived by an instant is what it holds by then.
ARRIVAL = {"transactions": "ingested_at", "profiles": "created_at",
           "chargebacks": "settled_at"}


def _write_split(data: Path, n_users: int, seed: int, live_days: int,
                 compromised_share: float) -> None:
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    history = FraudWorld(n_users=n_users, seed=seed).end
    world = FraudWorld(n_users=n_users, seed=seed, days=90 + live_days,
                       compromised_share=compromised_share)
    (data / LIVE).mkdir(parents=True, exist_ok=True)
    tables = world.generate()
    for source, export in EXPORTS.items():
        table = tables[source]
        column = table[ARRIVAL[source]]
        arrived = pc.less_equal(column, pa.scalar(history, column.type))
        pq.write_table(table.filter(arrived), data / export)
        pq.write_table(table.filter(pc.invert(arrived)), data / LIVE / export)
