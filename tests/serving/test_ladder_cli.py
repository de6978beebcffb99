"""The ladder's commands, run as a user runs them (a real subprocess), and its report page:
self-contained HTML with the charts of every step's evidence."""

from __future__ import annotations

import json
from html.parser import HTMLParser

import closedloop as cl
from tests.serving.ladder_world import LadderWorld, Traffic
from tests.test_cli import run


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.sources: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.sources += [v or "" for k, v in attrs if k in ("src", "href")]


def test_promote_status_report_and_rollback_from_the_command_line(
        laddered: LadderWorld) -> None:
    root = str(laddered.root)
    better = laddered.versions["better"]
    promoted = run("promote", "fraud", str(better), "-p", root, "--actor", "alice")
    assert promoted.returncode == 0, promoted.stderr
    assert f"fraud v{better} (against v1): shadow, running" in promoted.stderr
    again = run("promote", "fraud", str(better), "-p", root)
    assert again.returncode == 2
    assert "already in a ladder" in again.stderr
    assert "closedloop ladder rollback fraud" in again.stderr          # the fix
    not_waiting = run("ladder", "approve", "fraud", "-p", root)
    assert not_waiting.returncode == 2
    assert "not waiting for an approval" in not_waiting.stderr
    with cl.Project(laddered.root) as p:
        traffic = Traffic(p)
        while p.ladder.status("fraud").status == "running" and traffic.left:  # type: ignore[union-attr]
            traffic.serve(500)
            p.ladder.tick()
    status = run("ladder", "status", "fraud", "-p", root, "--json")
    assert status.returncode == 0, status.stderr
    state = json.loads(status.stdout)
    assert state["ladder"]["status"] == "promoted"
    assert state["transitions"][0]["actor"] == "alice"
    assert [t["to"] for t in state["transitions"]][-1] == "done"
    written = run("ladder", "report", "fraud", "-p", root)
    assert written.returncode == 0, written.stderr
    page = (laddered.root / ".closedloop" / "reports" / "ladder-fraud.html").read_text()
    parsed = _Page()
    parsed.feed(page)
    assert parsed.tags.count("svg") >= 4        # share, gate, shadow histograms, A/B effects
    assert parsed.sources == []                 # nothing to fetch: it opens offline
    for text in ("shadow: ", "offline gate", "ab: effect on each metric", "promote"):
        assert text in page
    # Rolling back a promotion restores the previous version, and the audit says so.
    back = run("ladder", "rollback", "fraud", "-p", root, "--reason", "a regression")
    assert back.returncode == 0, back.stderr
    with cl.Project(laddered.root) as p:
        assert p.registry.aliases("fraud") == {"production": 1, "previous": better}
        last = p.ladder.history("fraud")[-1]
        assert (last.action, last.evidence["reason"]) == ("rollback", "a regression")
    none = run("ladder", "status", "nosuch", "-p", root)
    assert none.returncode == 2
    assert "no model 'nosuch'" in none.stderr
