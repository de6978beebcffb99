"""``check_monitor_store``: the checks every ``MonitorStore`` passes (``MONITOR_STORE_CHECKS``,
each its own test id): actions numbered and read back whole, updated in place, kept per model;
switches set, replaced and cleared, per model; window states kept per worker, replaced,
dropped before a start."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from closedloop.backends.base import ActionRecord
from closedloop.errors import MonitoringError


def _action(model: str, alert: str, status: str = "running") -> ActionRecord:
    now = datetime.now(UTC).replace(microsecond=0)
    return ActionRecord(0, model, alert, "drift", "v1:x", "fallback", status,
                        {"psi": 0.25, "windows": [[1, 2], [2, 3]], "at": 3}, "", "test", now,
                        now)


def actions_round_trip(store: Any, p: str) -> None:
    first = store.add_action(_action(f"{p}m", "a"))
    second = store.add_action(_action(f"{p}m", "b", "awaiting_approval"))
    other = store.add_action(_action(f"{p}other", "a"))
    if not first.id < second.id or first.id == other.id:
        raise AssertionError(f"ids {first.id}, {second.id}, {other.id} are not distinct, rising")
    found = store.actions(f"{p}m")
    if [a.id for a in found] != [first.id, second.id]:
        raise AssertionError(f"actions of the model: {found}")
    got = found[0]
    if (got.alert, got.signal, got.subject, got.playbook, got.status, got.evidence,
            got.actor) != ("a", "drift", "v1:x", "fallback", "running",
                           {"psi": 0.25, "windows": [[1, 2], [2, 3]], "at": 3}, "test"):
        raise AssertionError(f"read back differently: {got}")
    if got.at.tzinfo is None:
        raise AssertionError("an action's time came back naive")
    if {a.id for a in store.actions()} < {first.id, second.id, other.id}:
        raise AssertionError("actions() without a model misses some")


def actions_update_in_place(store: Any, p: str) -> None:
    made = store.add_action(_action(f"{p}m", "a"))
    done = store.update_action(made.id, status="done", outcome="ok", actor="someone")
    if (done.id, done.status, done.outcome, done.actor) != (made.id, "done", "ok", "someone"):
        raise AssertionError(f"the update came back as {done}")
    if store.actions(f"{p}m")[-1].status != "done":
        raise AssertionError("the update was not stored")
    try:
        store.update_action(10**9, status="done", outcome="", actor="x")
    except MonitoringError:
        return
    raise AssertionError("updating an unknown action did not raise MonitoringError")


def switches_set_replace_clear(store: Any, p: str) -> None:
    model, other = f"{p}m", f"{p}other"
    store.set_switch(model, "fallback", {"action": 1, "reason": "r"})
    store.set_switch(model, "freeze:1:2", {"start": 1, "end": 2})
    store.set_switch(other, "fallback", {"action": 9})
    store.set_switch(model, "fallback", {"action": 2})            # replaced
    if store.switches(model) != {"fallback": {"action": 2}, "freeze:1:2": {"start": 1, "end": 2}}:
        raise AssertionError(f"switches: {store.switches(model)}")
    store.set_switch(model, "fallback", None)
    store.set_switch(model, "absent", None)                       # clearing nothing is fine
    if store.switches(model) != {"freeze:1:2": {"start": 1, "end": 2}}:
        raise AssertionError(f"after clearing: {store.switches(model)}")
    if store.switches(other) != {"fallback": {"action": 9}}:
        raise AssertionError("another model's switches moved")


def window_states_per_worker(store: Any, p: str) -> None:
    model, other = f"{p}m", f"{p}other"
    store.put_window_states(model, 1, "w1", {100: {"rows": 1}, 200: {"rows": 2}}, keep_since=0)
    store.put_window_states(model, 1, "w2", {200: {"rows": 5}}, keep_since=0)
    store.put_window_states(model, 2, "w1", {200: {"rows": 7}}, keep_since=0)
    store.put_window_states(other, 1, "w1", {100: {"rows": 9}}, keep_since=0)
    store.put_window_states(model, 1, "w1", {200: {"rows": 3}}, keep_since=0)   # replaced
    got = store.window_states(model, 1, [100, 200, 300])
    if got != {100: [{"rows": 1}], 200: [{"rows": 3}, {"rows": 5}]}:
        raise AssertionError(f"window states of version 1: {got}")
    if store.window_states(model, 2, [200]) != {200: [{"rows": 7}]}:
        raise AssertionError("another version's states moved")
    store.put_window_states(model, 1, "w1", {}, keep_since=200)       # 100 is dropped
    if store.window_states(model, 1, [100, 200]) != {200: [{"rows": 3}, {"rows": 5}]}:
        raise AssertionError("states before keep_since were not dropped")
    if store.window_states(other, 1, [100]) != {100: [{"rows": 9}]}:
        raise AssertionError("dropping one model's old states dropped another's")


MONITOR_STORE_CHECKS: dict[str, Callable[[Any, str], None]] = {
    "actions_round_trip": actions_round_trip,
    "actions_update_in_place": actions_update_in_place,
    "switches_set_replace_clear": switches_set_replace_clear,
    "window_states_per_worker": window_states_per_worker,
}


def check_monitor_store(store: Any, only: str | None = None) -> None:
    """The shared checks every monitor store passes (``only`` runs one)."""
    for name, check in MONITOR_STORE_CHECKS.items():
        if only is None or name == only:
            check(store, f"{name}-")


__all__ = ["MONITOR_STORE_CHECKS", "check_monitor_store"]
