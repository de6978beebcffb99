"""The ladder's declaration and its state: bad declarations refused with their fix; shares
that only add units and are independent of the holdout; state moves that are atomic, audited
and never interleaved (SQLite and PostgreSQL), even under SIGKILL; one controller per ladder."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

import closedloop as cl
from closedloop.backends.base import LadderEvent, LadderRecord
from closedloop.backends.metadata import SQLMetadataStore
from closedloop.errors import DefinitionError, LadderMoved
from closedloop.serving.router import LadderSplit, Router
from closedloop.serving.spec import Serving
from tests.conftest import postgres_database


@pytest.mark.parametrize(("build", "says"), [
    (lambda: cl.Ladder("fraud", canary=cl.Canary(share=1.5)), "share 1.5 is not in (0, 1]"),
    (lambda: cl.ABTest(share=0), "share 0 is not in (0, 1]"),
    (lambda: cl.Ramp(steps=(0.25, 0.5)), "never reaches 1.0"),
    (lambda: cl.Ramp(steps=(0.5, 0.25, 1.0)), "do not grow"),
    (lambda: cl.Ladder("fraud", canary=cl.Canary(guardrails=cl.Guardrails(
        metrics={"revenue": 0.1}))), "'revenue' is not a metric"),
    (lambda: cl.Ladder("fraud", ab=cl.ABTest(primary="conversion")), "ab primary 'conversion'"),
    (lambda: cl.Shadow(min_predictions=0), "0 is not a positive count"),
    (lambda: cl.Guardrails(min_predictions=0), "0 is not a positive count"),
    (lambda: cl.Ladder("fraud", canary=cl.Canary(share=0.5)), "below an earlier step"),
    (lambda: cl.Ladder("fraud", approve=["launch"]), "'launch', which is not a step"),
    (lambda: cl.Ladder("fraud", approve=["ab"], ab=None), "which this ladder skips"),
    (lambda: cl.Ladder("fraud", ramp=None), "cannot be skipped"),
    (lambda: cl.Ladder("fraud", gate=cl.Shadow()), "not a Gate"),
    (lambda: cl.ABTest(power=1.2), "power 1.2"),
])
def test_an_invalid_ladder_is_refused_with_its_fix(build: Callable[[], object],
                                                   says: str) -> None:
    with pytest.raises(DefinitionError) as caught:
        build()
    assert says in caught.value.message
    assert caught.value.fix


def test_the_defaults_are_a_whole_ladder() -> None:
    ladder = cl.Ladder("fraud")
    assert ladder.steps == ("gate", "shadow", "canary", "ab", "ramp")
    shares = [s for _, s in ladder.shares()]
    assert shares == sorted(shares)
    assert shares[-1] == 1.0
    assert ladder.hash == cl.Ladder("fraud").hash != cl.Ladder("fraud", version=2).hash


def test_a_laddered_model_takes_no_fixed_shares(make_project: object) -> None:
    base = ('import closedloop as cl\n'
            'fraud = cl.Model("fraud", features=["v.x"], label="l", rows="r", '
            'trainer=cl.LightGBMTrainer())\n'
            'ladder = cl.Ladder("fraud")\n')
    with pytest.raises(cl.ClosedLoopError, match="fixed canary, arm or shadow"):
        make_project(base + 'serving = cl.Serving("fraud", unit="user_id", canary=0.1)\n',
                     "one")  # type: ignore[operator]
    with pytest.raises(cl.ClosedLoopError, match="names no unit"):
        make_project(base, "two")  # type: ignore[operator]


@settings(max_examples=60, deadline=None)
@given(low=st.floats(0.01, 0.99), grow=st.floats(0.0, 0.99), attempt=st.integers(1, 5))
def test_growing_a_share_only_adds_units(low: float, grow: float, attempt: int) -> None:
    high = low + (1 - low) * grow
    small = LadderSplit.of("fraud", 2, "canary", low, "x", attempt)
    large = LadderSplit.of("fraud", 2, "ramp", high, "x", attempt)
    units = [f"user-{i}" for i in range(3000)]
    on_small = {u for u in units if small.takes(u)}
    on_large = {u for u in units if large.takes(u)}
    assert on_small <= on_large


def test_the_candidate_share_is_its_share_and_independent_of_the_holdout() -> None:
    router = Router(Serving("fraud", unit="user_id", holdout=0.1))
    split = LadderSplit.of("fraud", 2, "ab", 0.3, "L1:ab", 1)
    n = 40_000
    routes = [router.route({"user_id": f"u{i}"}, split) for i in range(n)]
    held = np.array([r == "holdout" for r in routes])
    on = np.array([split.takes(f"u{i}") for i in range(n)])
    # The shares are as declared...
    assert stats.binomtest(int(held.sum()), n, 0.1).pvalue > 1e-3
    assert stats.binomtest(int(on.sum()), n, 0.3).pvalue > 1e-3
    # ...the holdout is not correlated with the candidate's group (independent salts)...
    table = [[int((held & on).sum()), int((held & ~on).sum())],
             [int((~held & on).sum()), int((~held & ~on).sum())]]
    assert stats.chi2_contingency(table).pvalue > 1e-3
    # ...and a held-out unit stays held out whatever the ladder does.
    assert all(r == "holdout" for r, h in zip(routes, held, strict=True) if h)
    assert {r for r, h, o in zip(routes, held, on, strict=True) if o and not h} == {"ab"}


def _record(model: str = "fraud", **changes: object) -> LadderRecord:
    base = {"model": model, "candidate": 2, "baseline": 1, "step": "gate",
            "status": "running", "share": 0.0, "spec": {"attempt": 1},
            "step_started_at": datetime.now(UTC), "generation": 0}
    return LadderRecord(**{**base, **changes})  # type: ignore[arg-type]


def _event(record: LadderRecord, action: str) -> LadderEvent:
    return LadderEvent(0, record.model, record.candidate, action, None, record.step,
                       record.status, record.share, "test", {"n": 1}, datetime.now(UTC))


def _store_checks(store: SQLMetadataStore) -> None:
    store.add_version("fraud", "a" * 64, "r1")
    store.add_version("fraud", "b" * 64, "r2")
    store.move_aliases("fraud", {"production": 1})
    first = store.put_ladder(_record(), _event(_record(), "start"), expect=None)
    assert first.generation == 1
    with pytest.raises(LadderMoved, match="already in a ladder"):
        store.put_ladder(_record(), _event(_record(), "start"), expect=None)
    moved = _record(step="canary", share=0.05)
    second = store.put_ladder(moved, _event(moved, "advance"), expect=1)
    assert (second.step, second.share, second.generation) == ("canary", 0.05, 2)
    with pytest.raises(LadderMoved, match="moved while"):     # decided on a stale read
        store.put_ladder(_record(status="rolled_back"), _event(moved, "rollback"), expect=1)
    done = _record(step="done", status="promoted")
    store.put_ladder(done, _event(done, "promote"), expect=2,
                     aliases={"production": 2, "previous": 1})
    assert store.aliases("fraud") == {"previous": 1, "production": 2}
    assert [e.action for e in store.ladder_events("fraud")] == ["start", "advance", "promote"]
    assert store.ladder_events("fraud")[0].evidence == {"n": 1}
    # A finished ladder makes room for the next.
    again = store.put_ladder(_record(candidate=3), _event(_record(), "start"), expect=None)
    assert again.generation == 4
    assert again.candidate == 3
    # One holder at a time; an expired lease is taken over.
    assert store.acquire_lease("ladder:fraud", "a", 30)
    assert not store.acquire_lease("ladder:fraud", "b", 30)
    assert store.acquire_lease("ladder:fraud", "a", 30)         # renewed
    store.release_lease("ladder:fraud", "a")
    assert store.acquire_lease("ladder:fraud", "b", -1)         # taken, and at once expired
    assert store.acquire_lease("ladder:fraud", "a", 30)


def test_ladder_state_on_sqlite(tmp_path: Path) -> None:
    store = SQLMetadataStore(f"sqlite:///{tmp_path / 'meta.db'}")
    try:
        _store_checks(store)
    finally:
        store.close()


@pytest.mark.postgres
def test_ladder_state_on_postgresql() -> None:
    with postgres_database() as url:
        store = SQLMetadataStore(url)
        try:
            _store_checks(store)
        finally:
            store.close()


_MOVER = textwrap.dedent('''
    import sys
    from dataclasses import replace
    from datetime import UTC, datetime
    from closedloop.backends.base import LadderEvent, LadderRecord
    from closedloop.backends.metadata import SQLMetadataStore

    store = SQLMetadataStore(sys.argv[1])
    shares = [("gate", 0.0), ("shadow", 0.0), ("canary", 0.05), ("ab", 0.5),
              ("ramp", 0.5), ("ramp", 1.0)]
    print("ready", flush=True)
    while True:                       # climb, promote (moving aliases), start again: forever
        now = datetime.now(UTC)
        found = store.ladder("fraud")
        if found is None or not found.active:
            candidate = 2 if found is None or found.candidate == 1 else 1
            rec = LadderRecord("fraud", candidate, 3 - candidate, "gate", "running", 0.0,
                               {"attempt": 1}, now, 0)
            store.put_ladder(rec, LadderEvent(0, "fraud", candidate, "start", None, "gate",
                             "running", 0.0, "mover", {}, now), expect=None)
            continue
        i = next(k for k, (s, v) in enumerate(shares) if s == found.step
                 and (s != "ramp" or v == found.share))
        if i + 1 < len(shares):
            step, share = shares[i + 1]
            after = replace(found, step=step, share=share)
            store.put_ladder(after, LadderEvent(0, "fraud", found.candidate, "advance",
                             found.step, step, "running", share, "mover", {}, now),
                             expect=found.generation)
        else:
            after = replace(found, step="done", status="promoted", share=0.0)
            store.put_ladder(after, LadderEvent(0, "fraud", found.candidate, "promote",
                             found.step, "done", "promoted", 0.0, "mover", {}, now),
                             expect=found.generation,
                             aliases={"production": found.candidate,
                                      "previous": found.baseline})
''')


def test_a_controller_killed_mid_transition_leaves_the_ladder_whole(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'meta.db'}"
    store = SQLMetadataStore(url)
    store.add_version("fraud", "a" * 64, "r1")
    store.add_version("fraud", "b" * 64, "r2")
    store.move_aliases("fraud", {"production": 1})
    script = tmp_path / "mover.py"
    script.write_text(_MOVER)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    for round_ in range(6):
        process = subprocess.Popen([sys.executable, str(script), url], env=env,
                                   stdout=subprocess.PIPE)
        assert process.stdout is not None
        assert process.stdout.readline().strip() == b"ready"
        # Let it make moves — at least as many as the round's number — then kill it.
        before = len(store.ladder_events("fraud"))
        while len(store.ladder_events("fraud")) < before + 3 + round_:
            assert process.poll() is None
        process.send_signal(signal.SIGKILL)
        process.wait()
        process.stdout.close()
        record = store.ladder("fraud")
        events = store.ladder_events("fraud")
        assert record is not None
        # The ladder is where its last audited move put it — never between two moves.
        last = events[-1]
        assert (record.step, record.status, record.share) == (last.to_step, last.status,
                                                              last.share)
        assert record.generation == len(events)
        aliases = store.aliases("fraud")
        promotions = [e for e in events if e.action == "promote"]
        if promotions:                      # the aliases moved with the last promotion
            assert aliases["production"] == promotions[-1].candidate
        # The traffic split always adds up: the candidate's share is a share.
        assert 0.0 <= record.share <= 1.0
    store.close()


def test_two_controllers_never_move_one_ladder(laddered: object) -> None:
    from closedloop.serving.controller import LadderService

    root = laddered.root  # type: ignore[attr-defined]
    versions = laddered.versions  # type: ignore[attr-defined]
    with cl.Project(root) as a, cl.Project(root) as b:
        a.ladder.promote("fraud", versions["better"])      # the gate: measured and released
        first = LadderService(a.serving, a.registry, a.metadata, holder="first")
        second = LadderService(b.serving, b.registry, b.metadata, holder="second")
        assert a.metadata.acquire_lease("ladder:fraud", "first", 30)
        assert second.tick() == []                         # the first holds the lease
        ticked = first.tick(keep=True)
        assert [t.model for t in ticked] == ["fraud"]      # waits for shadow traffic
        assert second.tick() == []                         # still the first's
        a.metadata.release_lease("ladder:fraud", "first")
        assert [t.model for t in second.tick()] == ["fraud"]


def _served(units: list[str], scores: np.ndarray) -> pa.Table:
    return pa.table({"unit": units, "score": scores,
                     "decision": ["allow"] * len(units), "fallback": [False] * len(units),
                     "latency_ms": np.ones(len(units))})


def test_the_ab_analysis_adjusts_by_each_units_pre_period() -> None:
    from closedloop.serving.evidence import metric_effect

    rng = np.random.default_rng(3)
    n = 2000
    units = [f"u{i}" for i in range(n)]
    habit = rng.normal(0.3, 0.1, n)                   # each unit's own level, before and after
    pre = _served(units, habit + rng.normal(0, 0.02, n))
    post = habit + rng.normal(0, 0.02, n)
    post[n // 2:] += 0.01                             # the candidate's true effect
    served = pa.concat_tables([pre, _served(units, post)])     # before, then the test
    test = np.arange(2 * n) >= n
    control, treated = test & (np.arange(2 * n) < n + n // 2), np.arange(2 * n) >= n + n // 2
    ladder = cl.Ladder("fraud")
    plain = metric_effect(ladder, "score", served, treated, control, alpha=0.05,
                          sequential=False)
    adjusted = metric_effect(ladder, "score", served, treated, control, alpha=0.05,
                             sequential=False, pre=~test)
    assert plain["method"] == "welch"
    assert adjusted["method"] == "cuped"
    assert adjusted["covered"] == n
    width = lambda found: found["ci"][1] - found["ci"][0]  # noqa: E731
    assert width(adjusted) < 0.5 * width(plain)       # the unit's habit explained away
    assert adjusted["ci"][0] < 0.01 < adjusted["ci"][1]
    assert adjusted["ci"][0] > 0                      # significant only once adjusted
    assert plain["ci"][0] < 0
    # A pre-period that saw too few of the units is not used.
    few = metric_effect(ladder, "score", served, treated, control, alpha=0.05,
                        sequential=False, pre=np.arange(2 * n) < 50)
    assert few["method"] == "welch"
    assert "cuped_skipped" in few
