"""The monitor end to end on a served fraud project: three live days as they happened, then
three with the amount sent in cents. The drift alert holds from the second buggy day, its
fallback playbook runs and every worker's traffic goes to the fallback until released; the
freeze waits for approval, then training leaves the window out; a webhook is called for
real; the audit shows alert, evidence, action and outcome."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from tests.monitoring.world import DAY0, LATER, webhook

import closedloop as cl
from closedloop.errors import MonitoringError

DAY = timedelta(days=1)


def test_clean_days_hold_no_alert_and_the_bug_raises_it(monitored: cl.Project) -> None:
    clean = monitored.monitoring.check("fraud", at=DAY0 + 3 * DAY)
    assert clean.rows > 1000
    assert [w.rows > 300 for w in clean.versions[0].windows] == [True] * 3
    assert clean.firing == ()
    feature = clean.versions[0].windows[-1].drift
    assert feature is not None
    assert feature.columns["amount_vs_usual"].status == "ok"
    # The first buggy day: drifted, but one window of three is not yet an alert.
    first = monitored.monitoring.check("fraud", at=DAY0 + 4 * DAY)
    assert "amount_vs_usual" in first.versions[0].windows[-1].drift.drifted
    assert first.firing == ()
    second = monitored.monitoring.check("fraud", at=DAY0 + 5 * DAY)
    firing = {(f.alert.name, f.subject) for f in second.firing}
    assert {("amount feed", "v1:amount_vs_usual"),
            ("amount feed: freeze", "v1:amount_vs_usual")} <= firing
    # Per slice too (one Holm correction over every column of the window and its slices):
    # the bug is in every country's requests; where a country has the rows, it shows.
    sliced = {s for _, s in firing if s.startswith("v1:country=")}
    assert sliced
    assert all(s.endswith(":amount_vs_usual") for s in sliced)
    assert all(s.split(":")[1] in second.versions[0].windows[-1].slices for s in sliced)
    evidence = second.firing[0].evidence
    assert evidence["psi"] > 0.1
    assert evidence["p_value"] < 1e-6


def test_fallback_runs_and_is_released(monitored: cl.Project) -> None:
    report = monitored.monitoring.run("fraud", at=DAY0 + 5 * DAY)
    by = {a.playbook: a for a in report.actions}
    assert by["fallback"].status == "done"
    assert by["freeze_training"].status == "awaiting_approval"   # it asks for approval
    # Every prediction now goes to the fallback, and the log says why.
    instance = {"user_id": "u1", "txn_id": "t-monitor-1", "amount": 10.0, "country": "FR",
                "event_time": (DAY0 + 5 * DAY).isoformat()}
    (served,) = monitored.serving.predict("fraud", [instance])
    assert served.fallback
    assert served.score == pytest.approx(0.01)
    assert "amount feed" in (served.fallback_reason or "")
    # Running again does not act twice on the same alert.
    again = monitored.monitoring.run("fraud", at=DAY0 + 5 * DAY)
    assert again.actions == ()
    released = monitored.monitoring.release("fraud", by["fallback"].id)
    assert released.status == "released"
    (served,) = monitored.serving.predict("fraud", [{**instance, "txn_id": "t-monitor-2"}])
    assert not served.fallback
    audit = monitored.monitoring.audit("fraud")
    assert [(a.playbook, a.status) for a in audit] == [("fallback", "released"),
                                                       ("freeze_training", "awaiting_approval")]
    assert audit[0].evidence["column"] == "amount_vs_usual"
    assert "fallback" in audit[0].outcome


def test_an_approved_freeze_leaves_the_window_out_of_training(monitored: cl.Project) -> None:
    report = monitored.monitoring.run("fraud", at=DAY0 + 5 * DAY)
    freeze = next(a for a in report.actions if a.playbook == "freeze_training")
    with pytest.raises(MonitoringError, match="awaiting_approval, not done"):
        monitored.monitoring.release("fraud", freeze.id)
    done = monitored.monitoring.approve("fraud", freeze.id)
    assert done.status == "done"
    start, end = monitored.monitoring.frozen("fraud")[0]
    assert (start, end) == tuple(done.evidence["windows"][0][:1] + done.evidence["windows"][-1][1:])
    # The live days' transactions are in the history now: training leaves the frozen ones out.
    from tests.monitoring.world import LIVE

    monitored.data.ingest("transactions", monitored.root / "data" / LIVE / "transactions.parquet",
                          at=LATER)
    run = monitored.training.train("fraud", cutoff=LATER)
    maturity = run.record["lineage"]["maturity"]
    assert maturity["excluded_windows"] == [[start, end]]
    assert maturity["excluded_rows"] > 1000
    monitored.monitoring.release("fraud", freeze.id)
    assert monitored.monitoring.frozen("fraud") == []


def test_notify_posts_the_alert_to_a_real_webhook(monitored: cl.Project) -> None:
    with webhook() as (url, got):
        monitored.monitoring.monitors = {"fraud": cl.Monitor("fraud", window="1d", alerts=[
            cl.Alert("amount feed", on="drift", columns=["amount_vs_usual"],
                     playbook=cl.Notify(url))])}
        report = monitored.monitoring.run("fraud", at=DAY0 + 5 * DAY)
    (action,) = report.actions
    assert action.status == "done"
    assert action.outcome == f"notified {url}: HTTP 204"
    assert got[0]["alert"] == "amount feed"
    assert got[0]["evidence"]["column"] == "amount_vs_usual"


def test_slices_and_outcome_lag_on_matured_labels(monitored: cl.Project) -> None:
    early = monitored.monitoring.check("fraud", at=DAY0 + 3 * DAY)
    share = early.lag.matured_share(0)
    assert share is not None
    assert share < 0.05                                # chargebacks take weeks
    assert early.slices[0].column is None              # all rows: too few matured to score
    assert not early.slices[0].scored
    late = monitored.monitoring.check("fraud", at=LATER)
    assert late.rows == 0                              # nothing served in the last 3 days
    overall, *by_country = late.slices                 # the matured cohort: every live day
    assert overall.scored
    assert overall.rows > 3000
    assert overall.auc is not None
    assert overall.auc.low < overall.auc.value < overall.auc.high
    assert overall.calibration_gap is not None
    assert {s.column for s in by_country} == {"country"}
    assert sum(s.rows for s in by_country) == overall.rows
    assert any(not s.scored and "too small" in (s.reason or "") for s in by_country) or all(
        s.scored for s in by_country)
    assert 0 < overall.kpis["decision:allow"] <= 1


def test_bad_input_is_defined(monitored: cl.Project) -> None:
    with pytest.raises(cl.ClosedLoopError, match="there is no model"):
        monitored.monitoring.check("nope")
    empty = monitored.monitoring.check("fraud", at=DAY0 - 30 * DAY)   # before any traffic
    assert empty.rows == 0
    assert empty.versions == ()
    assert empty.firing == ()
    with pytest.raises(MonitoringError, match="no monitoring action 99"):
        monitored.monitoring.approve("fraud", 99)
    with pytest.raises(MonitoringError, match="names no playbook"):
        cl.Alert("silent", on="drift")


def test_the_command_line_reports_acts_and_audits(monitored: cl.Project, tmp_path: Any) -> None:
    """`closedloop monitor` as a user runs it: the report, --run, the page, the audit."""
    import subprocess
    import sys

    root = str(monitored.root)
    monitored.close()                     # the commands open the project themselves

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "closedloop", *args, "-p", root],
                              capture_output=True, text=True, check=False, timeout=300)
    at = (DAY0 + 5 * DAY).isoformat()
    page = tmp_path / "monitor.html"
    shown = cli("monitor", "fraud", "--at", at, "--html", str(page))
    assert shown.returncode == 0, shown.stderr
    assert "ALERT 'amount feed' on v1:amount_vs_usual → fallback" in shown.stdout
    assert "action" not in shown.stdout                   # nothing acted on without --run
    text = page.read_text()
    assert "Drift of version 1" in text
    assert "<svg" in text
    assert "Slices (matured predictions)" in text
    acted = cli("monitor", "fraud", "--at", at, "--run", "--actor", "tester")
    assert acted.returncode == 0, acted.stderr
    assert "fallback done" in acted.stdout
    listed = cli("alerts", "list", "fraud")
    assert "awaiting_approval" in listed.stdout
    assert "freeze_training" in listed.stdout
    bad = cli("alerts", "release", "fraud", "2")
    assert bad.returncode == 2
    assert "CL-900" in bad.stderr
    assert "awaiting_approval, not done" in bad.stderr
    assert cli("alerts", "approve", "fraud", "2").returncode == 0
    assert cli("alerts", "release", "fraud", "2").returncode == 0


def test_rollback_restores_the_previous_version(monitored: cl.Project) -> None:
    """A drift alert bound to the ladder's rollback: production goes back to previous, and
    the audit says which version serves now."""
    from tests.monitoring.world import FAST

    run = monitored.training.train("fraud", cutoff=DAY0)
    assert FAST                                          # the world's trainer: quick
    second = monitored.registry.register(run.id).version
    monitored.registry.set_alias("fraud", "production", second)
    assert monitored.registry.aliases("fraud") == {"production": second, "previous": 1}
    monitored.monitoring.monitors = {"fraud": cl.Monitor("fraud", window="1d", alerts=[
        cl.Alert("amount feed", on="drift", columns=["amount_vs_usual"],
                 playbook=cl.Rollback())])}
    report = monitored.monitoring.run("fraud", at=DAY0 + 5 * DAY)
    (action,) = report.actions
    assert action.status == "done", action.outcome
    assert action.outcome == "rolled back: production is version 1"
    assert monitored.registry.aliases("fraud")["production"] == 1


def test_a_label_for_an_unknown_prediction_is_counted(monitored: cl.Project) -> None:
    """Labels whose subject no logged prediction names (a key mismatch upstream) are counted
    and reported, never joined to anything."""
    import pyarrow as pa

    assert monitored.monitoring.check("fraud", at=LATER).unmatched_labels == 0
    when = pa.array([DAY0 + 2 * DAY] * 3, pa.timestamp("us", tz="UTC"))
    monitored.data.ingest("chargebacks", pa.table({
        "txn_id": ["nope-1", "nope-2", "nope-3"], "user_id": ["u1"] * 3, "event_time": when,
        "settled_at": pa.array([DAY0 + 3 * DAY] * 3, pa.timestamp("us", tz="UTC")),
        "is_fraud": [True, False, True]}), at=LATER)
    report = monitored.monitoring.check("fraud", at=LATER)
    assert report.unmatched_labels == 3
    from closedloop.monitoring.report import summary

    assert any("labels for no logged prediction: 3" in line for line in summary(report))
