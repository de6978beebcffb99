"""Batch scoring: every entity's score equals the offline score at the instant, a stopped
run resumes after its last written chunk, and models that need a request are refused."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

import closedloop as cl
from closedloop.errors import ServingError
from tests.serving.world import END


def _offline(project: cl.Project, keys: list[str]) -> dict[str, float]:
    loaded = project.registry.load("risk", "production")
    pins = [f["column"] for f in loaded.version.manifest["definitions"]["features"]]
    rows = pa.table({"user_id": keys,
                     "ts": pa.array([END] * len(keys), pa.timestamp("us", tz="UTC"))})
    table = project.features.training_set(rows, pins, timestamp="ts")
    table = table.rename_columns([dict(zip(pins, loaded.version.features, strict=True)).get(c, c)
                                  for c in table.column_names])
    return dict(zip(keys, loaded.predict(table).tolist(), strict=True))


def test_every_entity_is_scored_as_offline(served: cl.Project) -> None:
    steps: list[int] = []
    report = served.serving.score("risk", at=END, chunk=250,
                                  progress=lambda done, total, _: steps.append(done))
    users = sorted(set(served.data.read("transactions", ["user_id"])["user_id"].to_pylist()))
    assert report.scored == len(users)
    assert report.skipped == 0
    assert report.version == 1
    assert steps[-1] == len(users)
    assert len(steps) == -(-len(users) // 250)
    want = _offline(served, users)
    for user in users[::37]:
        stored = served.serving.stored_score("risk", user)
        assert stored is not None
        assert stored.score == pytest.approx(want[user], rel=1e-12, abs=1e-12)
        assert stored.version == 1
        assert stored.as_of == int(END.timestamp() * 1_000_000)
        # What GET /v1/models/risk/scores/KEY answers: instants as ISO UTC.
        assert stored.to_dict()["as_of"] == END.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert served.serving.stored_score("risk", "nobody") is None
    # risk is calibrated: its scores are the raw scores through the version's monotone map.
    loaded = served.registry.load("risk", "production")
    assert loaded.calibration is not None
    xs, ys = loaded.calibration
    assert xs == sorted(xs)
    assert ys == sorted(ys)
    raw = loaded.trainer.predict_proba(np.zeros((1, 3)))
    assert loaded.score(np.zeros((1, 3)))[0] == pytest.approx(float(np.interp(raw[0], xs, ys)))


def test_a_stopped_run_resumes_after_its_last_chunk(served: cl.Project) -> None:
    class Stop(Exception):
        pass

    def stop_after_two(done: int, total: int, _: str) -> None:
        if done >= 200:
            raise Stop

    with pytest.raises(Stop):
        served.serving.score("risk", at=END, chunk=100, progress=stop_after_two)
    again = served.serving.score("risk", at=END, chunk=100)
    assert again.skipped == 200
    users = set(served.data.read("transactions", ["user_id"])["user_id"].to_pylist())
    assert again.scored + again.skipped == len(users)
    assert all(served.serving.stored_score("risk", u) is not None for u in sorted(users)[::50])
    fresh = served.serving.score("risk", at=END, chunk=100, restart=True)
    assert fresh.skipped == 0
    assert fresh.scored == len(users)
    # A finished run is not resumed: the next one scores everything again.
    assert served.serving.score("risk", at=END, chunk=500).skipped == 0


def test_given_keys_only_and_models_that_need_a_request_are_refused(served: cl.Project
                                                                     ) -> None:
    report = served.serving.score("risk", at=END, keys=["u1", "u2", "u1"])
    assert report.scored == 2
    with pytest.raises(ServingError, match="request fields"):
        served.serving.score("fraud", at=END)
    with pytest.raises(ServingError, match="no model"):
        served.serving.score("nope")
