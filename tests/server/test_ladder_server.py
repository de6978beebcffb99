"""The ladder through the real server: a worker picks up the ladder's split without a
restart, serves the candidate only to its share of the units, and a rollback under load
takes the candidate off the traffic with no failed request."""

from __future__ import annotations

import http.client
import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest

import closedloop as cl
from tests.server.test_app import Server, _wait, start_server, stop_server
from tests.serving.ladder_world import LadderWorld, Traffic, write_ladder


@pytest.fixture
def ladder_server(laddered: LadderWorld) -> Iterator[tuple[Server, LadderWorld]]:
    write_ladder(laddered.root, '''
ladder = cl.Ladder("fraud", gate=None, shadow=None, ab=None,
                   canary=cl.Canary(share=0.3), ramp=cl.Ramp(steps=(0.6, 1.0)))
''')
    config = laddered.root / "closedloop.toml"            # moved by the test's own hand
    config.write_text(config.read_text() + '\n[ladder]\ncontroller = "separate"\n')
    process, port = start_server(laddered.root)
    with cl.Project(laddered.root) as project:
        yield Server(port, project, process), laddered
    stop_server(process)


def _split(server: Server) -> dict[str, Any] | None:
    _, _, body = server.request("GET", "/v1/models")
    found: dict[str, Any] | None = json.loads(body)["models"][0]["ladder"]
    return found


def test_the_ladder_moves_a_running_server_and_rolls_back_under_load(
        ladder_server: tuple[Server, LadderWorld]) -> None:
    server, world = ladder_server
    p = server.project
    candidate = world.versions["better"]
    rows = Traffic(p).requests.slice(0, 2000).to_pylist()
    instances = [{**r, "event_time": r["event_time"].isoformat()} for r in rows]
    assert _split(server) is None
    p.ladder.promote("fraud", candidate)                 # no gate, no shadow: the canary
    _wait(lambda: (_split(server) or {}).get("share") == 0.3, "the canary's split")

    results: list[tuple[int, str, int]] = []             # status, route, version
    stop = threading.Event()

    def load(k: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        i = k
        while not stop.is_set():
            body = json.dumps({"instances": [instances[i % len(instances)]]}).encode()
            conn.request("POST", "/v1/models/fraud:predict", body=body)
            response = conn.getresponse()
            raw = response.read()
            if response.status == 200:
                got = json.loads(raw)["predictions"][0]
                results.append((200, got["route"], got["version"]))
            else:
                results.append((response.status, "", 0))
            i += 2
        conn.close()

    threads = [threading.Thread(target=load, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    try:
        _wait(lambda: sum(r[2] == candidate for r in results) >= 30, "canary answers")
        # The candidate serves the units the ladder's hash gives it, and no other.
        split = p.serving.split("fraud")
        assert split is not None
        for status, route, version in list(results):
            assert status == 200
            assert (route == "canary") == (version == candidate)
        served = [r for r in results if r[1] in ("canary", "production")]
        share = sum(r[1] == "canary" for r in served) / len(served)
        assert 0.15 < share < 0.45                          # 30% of the units, give or take
        p.ladder.rollback("fraud", reason="test")
        _wait(lambda: _split(server) is None, "the rollback's split")
        after = len(results)
        _wait(lambda: len(results) > after + 100, "answers after the rollback")
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert {r[0] for r in results} == {200}               # no failed request
    # Past the requests each client had in flight when the split was seen gone, production.
    assert all(r[2] != candidate for r in results[after + len(threads):])
