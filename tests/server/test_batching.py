"""Requests already queued are served as one batch: each gets what it would have got alone,
the batch is one log append, and a request that fails inside a merged batch fails alone."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

import closedloop as cl
from closedloop.errors import RequestError
from closedloop.server.app import ServingApp
from closedloop.server.batching import MERGE_INSTANCES


def _instances(users: list[str], n: int, first: int = 0) -> list[list[dict[str, Any]]]:
    return [[{"user_id": users[(first + i) % len(users)], "txn_id": f"b{first + i}",
              "amount": 5.0 + (first + i) % 50, "country": "US" if i % 3 else "FR"}]
            for i in range(n)]


@pytest.fixture
def app(served: cl.Project) -> Iterator[ServingApp]:
    app = ServingApp(served, ["fraud"])
    app.start()
    yield app
    app.stop()


def _users(project: cl.Project) -> list[str]:
    users: list[str] = project.data.read("transactions", ["user_id"])["user_id"].to_pylist()
    return users[:40]


def test_queued_requests_merge_and_each_gets_its_own_answer(served: cl.Project,
                                                            app: ServingApp) -> None:
    predictor = app.online["fraud"]
    requests = _instances(_users(served), 30)
    requests[7] = requests[7] + _instances(_users(served), 2, first=100)[0]  # 2 instances

    async def go() -> list[Any]:
        batcher = app._batcher("fraud")
        waiting = [batcher.submit(predictor, rows) for rows in requests]
        return list(await asyncio.gather(*waiting))
    results = asyncio.run(go())
    served_batches = {id(s) for s, _, _ in results}
    assert len(served_batches) == 1, "all were queued together: one batch"
    for rows, (batch, first, last) in zip(requests, results, strict=True):
        mine = batch.predictions[first:last]
        assert len(mine) == len(rows)
        alone = predictor.predictor.predict(rows).predictions
        assert [(p.score, p.route, p.decision, p.version) for p in mine] == [
            (p.score, p.route, p.decision, p.version) for p in alone]
    logged = [r for r in served.prediction_log.records("fraud") if r["kind"] == "prediction"]
    batch = results[0][0]
    ids = {p.id for p in batch.predictions}
    assert ids <= {r["id"] for r in logged}, "the batch was logged before its answers"


def test_a_request_failing_inside_a_merged_batch_fails_alone(served: cl.Project,
                                                             app: ServingApp) -> None:
    predictor = app.online["fraud"]
    requests = _instances(_users(served), 12)
    # Passed the request check in the handler, yet its transform cannot take it.
    requests[5] = [{**requests[5][0], "amount": "a lot"}]

    async def go() -> list[Any]:
        batcher = app._batcher("fraud")
        waiting = [batcher.submit(predictor, rows) for rows in requests]
        return list(await asyncio.gather(*waiting, return_exceptions=True))
    results = asyncio.run(go())
    assert isinstance(results[5], RequestError)
    assert "amount_vs_usual" in results[5].message
    for i, result in enumerate(results):
        if i != 5:
            batch, first, last = result
            assert last - first == 1
            assert batch.predictions[first].score == predictor.predictor.predict(
                requests[i]).predictions[0].score


def test_the_wait_behind_the_batch_ahead_is_measured_and_reported(served: cl.Project,
                                                                  app: ServingApp) -> None:
    """Two requests arrive together; the first fills a batch, so the second waits it out.
    The second's record says so — its queue holds the whole first batch — its total holds
    its queue, and ``budget`` reports the queue and names the total when it is over."""
    predictor = app.online["fraud"]
    full = [row for [row] in _instances(_users(served), MERGE_INSTANCES)]
    alone = _instances(_users(served), 1, first=500)[0]

    async def go() -> list[Any]:
        batcher = app._batcher("fraud")
        return list(await asyncio.gather(batcher.submit(predictor, full),
                                         batcher.submit(predictor, alone)))
    (first, _, _), (second, at, _) = asyncio.run(go())
    assert first is not second, "the first filled its batch: the second went next"
    ahead = first.records[0].latency_ms
    mine = second.records[at].latency_ms
    stages = ("fetch", "transform", "inference", "post")
    assert mine["queue"] >= sum(ahead[s] for s in stages)    # it waited out the batch ahead
    assert mine["request"] >= mine["queue"] + sum(mine[s] for s in stages)
    assert ahead["queue"] <= mine["queue"]
    report = served.serving.budget("fraud")
    assert report.served == report.predictions == MERGE_INSTANCES + 1
    assert report.queue.p99_ms >= ahead["queue"]
    assert report.total.p99_ms >= report.queue.p99_ms
