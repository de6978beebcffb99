"""The promotion ladder over simulated traffic: a truly better candidate reaches production;
one worse on a slice, one shifted by +0.1 and one worse on a guardrail are each stopped at
the right step with the right evidence; the commands refuse what they cannot do."""

from __future__ import annotations

import pytest

import closedloop as cl
from closedloop.errors import PromotionBlocked
from tests.serving.ladder_world import LadderWorld, Traffic, write_ladder

# The fixtures live in tests/serving/ladder_world.py (imported by tests/conftest.py).


def climb(project: cl.Project, traffic: Traffic, every: int = 500) -> list[str]:
    """Serve traffic and tick the controller until the ladder stops running (or the traffic
    ends); every move, described."""
    moves = []
    while traffic.left:
        record = project.ladder.status("fraud")
        assert record is not None
        if record.status != "running":
            break
        traffic.serve(every)
        moves += [t.describe() for t in project.ladder.tick() if t.moved]
    return moves


def test_a_truly_better_candidate_climbs_to_production(laddered: LadderWorld) -> None:
    better = laddered.versions["better"]
    with cl.Project(laddered.root) as p:
        p.ladder.promote("fraud", better)
        moves = climb(p, Traffic(p))
        record = p.ladder.status("fraud")
        assert record is not None
        assert (record.step, record.status) == ("done", "promoted"), moves
        assert p.registry.aliases("fraud") == {"production": better,
                                               "previous": laddered.versions["production"]}
        events = p.ladder.history("fraud")
        steps = [e.to_step for e in events if e.action in ("start", "advance", "promote")]
        assert steps == ["gate", "shadow", "canary", "ab", "ramp", "ramp", "done"]
        # Each transition carries its evidence: the A/B test's says the candidate won.
        ab = next(e for e in events if e.action == "advance" and e.to_step == "ramp")
        primary = ab.evidence["figures"]["primary"]
        assert primary["metric"] == "missed_fraud"
        assert primary["worsening_high"] < 0              # significantly less fraud let through
        assert ab.evidence["figures"]["srm_p"] > 0.001
        # The candidate served only its share: shares grew, never shrank, then ended.
        shares = [e.share for e in events]
        assert shares == [0.0, 0.0, 0.1, 0.5, 0.5, 1.0, 0.0]
        served = p.serving.predictions("fraud", labels=False)
        assert set(served["route"].to_pylist()) <= {"production", "holdout", "canary", "ab",
                                                    "ramp"}


def test_a_candidate_worse_on_one_slice_is_stopped_at_the_gate(laddered: LadderWorld) -> None:
    with cl.Project(laddered.root) as p:
        record = p.ladder.promote("fraud", laddered.versions["slice"])
        assert (record.step, record.status, record.share) == ("gate", "rolled_back", 0.0)
        (event,) = [e for e in p.ladder.history("fraud") if e.action == "rollback"]
        figures = event.evidence["figures"]
        assert figures["overall"]["verdict"] == "pass"         # not worse overall...
        failed = [s for s in figures["slices"] if s["verdict"] == "fail"]
        assert [s["column"] for s in failed] == ["user_profile.account_age_days"]
        assert failed[0]["slice"].startswith("[-inf")         # ...but on the youngest accounts
        assert any("slice user_profile.account_age_days" in r
                   for r in event.evidence["reasons"])
        assert p.registry.aliases("fraud") == {"production": laddered.versions["production"]}


def test_a_candidate_shifted_by_a_tenth_is_held_in_shadow(laddered: LadderWorld) -> None:
    with cl.Project(laddered.root) as p:
        p.ladder.promote("fraud", laddered.versions["shifted"])
        climb(p, Traffic(p))
        record = p.ladder.status("fraud")
        assert record is not None
        assert (record.step, record.status, record.share) == ("shadow", "held", 0.0)
        (event,) = [e for e in p.ladder.history("fraud") if e.action == "hold"]
        figures = event.evidence["figures"]
        assert figures["mean_shift"] == pytest.approx(0.1, abs=0.01)
        assert figures["psi"] > figures["psi_limit"]
        assert figures["ks"] > figures["ks_limit"]
        calibration = figures["calibration"]          # mean score − label rate, each
        assert calibration["matured"] > 0
        assert calibration["candidate_gap"] - calibration["production_gap"] == pytest.approx(
            0.1, abs=0.01)
        assert calibration["change"] > 0.02           # further from the truth, beyond limit
        assert max(figures["decision_change"].values()) > 0.02
        assert figures["offline_better"] is False
        # Held, not passed: no unit was ever served by it.
        served = p.serving.predictions("fraud", labels=False)
        assert laddered.versions["shifted"] not in served["version"].to_pylist()
        # A person decides: rolling it back ends the ladder.
        p.ladder.rollback("fraud", reason="shifted scores")
        after = p.ladder.status("fraud")
        assert after is not None
        assert after.status == "rolled_back"


def test_a_candidate_worse_on_a_guardrail_is_rolled_back_in_canary(
        laddered: LadderWorld) -> None:
    write_ladder(laddered.root, '''
ladder = cl.Ladder("fraud", shadow=None, ab=None,
                   canary=cl.Canary(share=0.1, guardrails=cl.Guardrails(
                       min_predictions=150, metrics={"decision:block": 0.05})),
                   ramp=cl.Ramp(steps=(0.5, 1.0)))
''')
    blocker = laddered.versions["blocker"]
    with cl.Project(laddered.root) as p:
        p.ladder.promote("fraud", blocker)
        climb(p, Traffic(p))
        record = p.ladder.status("fraud")
        assert record is not None
        assert (record.step, record.status, record.share) == ("canary", "rolled_back", 0.0)
        (event,) = [e for e in p.ladder.history("fraud") if e.action == "rollback"]
        block = event.evidence["figures"]["metrics"]["decision:block"]
        assert block["worsening_low"] > 0.05
        assert event.actor == "controller"
        # It served its canary share, then nothing: the requests after the rollback are
        # production's.
        before = p.serving.predictions("fraud", labels=False)["version"].to_pylist()
        assert 0 < before.count(blocker) < 0.2 * len(before)
        assert p.serving.split("fraud") is None
        traffic = Traffic(p)
        traffic.sent = len(before)
        traffic.serve(500)
        after = p.serving.predictions("fraud", labels=False)["version"].to_pylist()
        assert len(after) == len(before) + 500
        assert after[len(before):].count(blocker) == 0


def test_the_commands_refuse_what_they_cannot_do(laddered: LadderWorld) -> None:
    v = laddered.versions
    with cl.Project(laddered.root) as p:
        with pytest.raises(PromotionBlocked, match="production already"):
            p.ladder.promote("fraud", v["production"])
        with pytest.raises(PromotionBlocked, match="no ladder running"):
            p.ladder.approve("fraud")
        with pytest.raises(PromotionBlocked, match="no previous version"):
            p.ladder.rollback("fraud")
        p.ladder.promote("fraud", v["better"])
        with pytest.raises(PromotionBlocked, match="already in a ladder"):
            p.ladder.promote("fraud", v["shifted"])
        with pytest.raises(PromotionBlocked, match="not waiting for an approval"):
            p.ladder.approve("fraud")
        paused = p.ladder.pause("fraud")
        assert paused.status == "paused"
        assert p.ladder.tick() == []                  # a paused ladder is not moved
        with pytest.raises(PromotionBlocked, match="paused already"):
            p.ladder.pause("fraud")
        assert p.ladder.resume("fraud").status == "running"


def test_a_step_that_needs_approval_waits_for_it(laddered: LadderWorld) -> None:
    write_ladder(laddered.root, '''
ladder = cl.Ladder("fraud", gate=cl.Gate(margin=0.04), shadow=None, ab=None, approve=["canary"],
                   canary=cl.Canary(share=0.1, guardrails=cl.Guardrails(min_predictions=100)),
                   ramp=cl.Ramp(steps=(1.0,), guardrails=cl.Guardrails(min_predictions=100)))
''')
    with cl.Project(laddered.root) as p:
        p.ladder.promote("fraud", laddered.versions["better"])
        traffic = Traffic(p)
        climb(p, traffic)
        record = p.ladder.status("fraud")
        assert record is not None
        assert (record.step, record.status) == ("canary", "waiting")
        assert p.ladder.approve("fraud", actor="alice").step == "ramp"
        climb(p, traffic)
        events = p.ladder.history("fraud")
        assert [e.action for e in events] == ["start", "advance", "wait", "approve",
                                              "promote"]
        assert events[3].actor == "alice"
        # Rolling back with no ladder running restores the previous version at once.
        p.ladder.rollback("fraud")
        assert p.registry.aliases("fraud")["production"] == laddered.versions["production"]
        assert p.ladder.history("fraud")[-1].action == "rollback"


def test_promoting_a_version_whose_features_are_not_servable_is_refused(
        laddered: LadderWorld) -> None:
    text = (laddered.root / "definitions.py").read_text()
    # The view the versions were trained on changes under them: not servable any more.
    (laddered.root / "definitions.py").write_text(text.replace(
        'cl.Agg("amount", "sum"', 'cl.Agg("amount", "min", windows=["1h"]), cl.Agg("amount", "sum"',
        1))
    with cl.Project(laddered.root) as p, pytest.raises(PromotionBlocked,
                                                       match="cannot be served"):
        p.ladder.promote("fraud", laddered.versions["better"])
