"""The simulated fraud world: seeded, sized by one parameter, with the promised structure."""

from __future__ import annotations

import numpy as np
import pyarrow.compute as pc
import pytest

from closedloop.errors import ConfigError
from closedloop.sim import FraudWorld

DAY = 86_400_000_000


@pytest.fixture(scope="module")
def world():  # type: ignore[no-untyped-def]
    return FraudWorld(n_users=400, seed=3).generate()


def _us(column):  # type: ignore[no-untyped-def]
    return pc.cast(column, "int64").to_numpy()


def test_same_seed_same_world_other_seed_other_world(world) -> None:  # type: ignore[no-untyped-def]
    again = FraudWorld(n_users=400, seed=3).generate()
    assert again["transactions"].equals(world["transactions"])
    other = FraudWorld(n_users=400, seed=4).generate()
    assert not other["transactions"].equals(world["transactions"])


def test_size_scales_with_one_parameter() -> None:
    small = FraudWorld(n_users=100).generate()["transactions"].num_rows
    large = FraudWorld(n_users=1000).generate()["transactions"].num_rows
    assert 7 < large / small < 13


def test_transactions_span_90_days_and_arrive_after_their_event(world) -> None:  # type: ignore[no-untyped-def]
    tx = world["transactions"]
    event, arrival = _us(tx["event_time"]), _us(tx["ingested_at"])
    assert (arrival > event).all()
    assert event.max() - event.min() > 85 * DAY
    lag = arrival - event
    assert 0.002 < (lag > 3_600_000_000).mean() < 0.05     # some late by more than an hour


def test_fraud_comes_in_recognisable_bursts(world) -> None:  # type: ignore[no-untyped-def]
    tx = world["transactions"]
    fraud = tx["is_fraud"].to_numpy()
    assert 0.001 < fraud.mean() < 0.02
    amount = tx["amount"].to_numpy()
    assert np.median(amount[fraud]) > 2 * np.median(amount[~fraud])
    home = dict(zip(world["users"]["user_id"].to_pylist(),
                    world["users"]["home_country"].to_pylist(), strict=True))
    abroad = np.array([home[u] != c for u, c in zip(tx["user_id"].to_pylist(),
                                                       tx["country"].to_pylist(), strict=True)])
    assert abroad[fraud].mean() > 5 * abroad[~fraud].mean()


def test_chargebacks_settle_0_to_60_days_after(world) -> None:  # type: ignore[no-untyped-def]
    cb = world["chargebacks"]
    delay = _us(cb["settled_at"]) - _us(cb["event_time"])
    assert (delay >= 0).all()
    assert (delay <= 60 * DAY).all()
    assert delay.max() > 30 * DAY
    assert cb["is_fraud"].to_numpy().mean() > 0.8


def test_profiles_are_nightly_with_a_few_reruns(world) -> None:  # type: ignore[no-untyped-def]
    p = world["profiles"]
    snap = _us(p["snapshot_time"])
    assert (snap % DAY == 0).all()
    keys = list(zip(p["user_id"].to_pylist(), snap.tolist(), strict=True))
    assert 0 < len(keys) - len(set(keys)) < 0.03 * len(keys)


def test_bad_size_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="n_users"):
        FraudWorld(n_users=0)
