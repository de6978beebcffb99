"""The checks of the stores: online stores, event streams, metadata stores."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from closedloop.backends.base import (
    OnlineStore,
)

_NS, _OTHER = "__check@1", "__check@2"
_KEYS = [f"k{i}" for i in range(300)]


def _fresh(store: OnlineStore) -> None:
    store.clear(_NS)
    store.clear(_OTHER)


def online_writes_land_and_delete(store: OnlineStore) -> None:
    """Writes land, a None deletes, the last item for a key wins; reads keep their order and
    namespaces apart."""
    assert store.read([]) == []
    assert store.read([(_NS, "absent")]) == [None]
    blob = bytes(range(256))
    store.write([(_NS, "a", b"1"), (_NS, "b", blob), (_OTHER, "a", b"other")])
    assert store.read([(_NS, "b"), (_OTHER, "a"), (_NS, "a"), (_NS, "zz")]) == [
        blob, b"other", b"1", None], "read must keep order and namespaces apart"
    store.write([(_NS, "a", b"2"), (_NS, "b", None)])
    assert store.read([(_NS, "a"), (_NS, "b")]) == [b"2", None], "overwrite and delete"
    store.write([(_NS, "x", b"1"), (_NS, "x", None), (_NS, "y", None), (_NS, "y", b"2")])
    assert store.read([(_NS, "x"), (_NS, "y")]) == [None, b"2"], "the last item for a key wins"


def online_many_keys_in_one_read(store: OnlineStore) -> None:
    """300 and 1,234 keys in one read, present and absent ones mixed."""
    many = [(_NS, k) for k in _KEYS]
    store.write([(_NS, k, k.encode()) for k in _KEYS])
    assert store.read(many) == [k.encode() for k in _KEYS], "300 keys in one read"
    lots = [(_NS, f"big{i}") for i in range(1_234)]
    store.write([(_NS, k, k.encode()) for _, k in lots[::2]])
    assert store.read(lots) == [k.encode() if i % 2 == 0 else None
                                for i, (_, k) in enumerate(lots)], "1,234 keys in one read"


def online_read_async_answers_as_read(store: OnlineStore) -> None:
    """The event-loop read answers as the blocking one, also many at once on one loop."""
    import asyncio

    many = [(_NS, k) for k in _KEYS]
    lots = [(_NS, f"big{i}") for i in range(1_234)]
    store.write([(_NS, k, k.encode()) for k in _KEYS])
    store.write([(_NS, k, k.encode()) for _, k in lots[::3]])

    async def on_a_loop() -> tuple[Any, ...]:
        try:
            return (await store.read_async(many), await store.read_async([]),
                    list(await asyncio.gather(*(store.read_async(lots[i::7])
                                                for i in range(7)))))
        finally:
            await store.aclose()

    one, none, gathered = asyncio.run(on_a_loop())
    assert one == store.read(many), "read_async answers as read"
    assert none == []
    assert gathered == [store.read(lots[i::7]) for i in range(7)], (
        "concurrent read_async calls each get their own reply")


def online_writes_are_never_seen_in_part(store: OnlineStore) -> None:
    """A reader running beside a writer never sees two versions in one read (``write`` and
    the bulk ``write_values`` alike)."""
    import threading

    many = [(_NS, k) for k in _KEYS]
    torn: list[list[bytes | None]] = []
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            got = store.read(many)
            if len(set(got)) != 1:
                torn.append(got)

    store.write([(_NS, k, b"v0") for k in _KEYS])
    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for version in range(1, 40):
            if version % 2:
                store.write([(_NS, k, f"v{version}".encode()) for k in _KEYS])
            else:                                        # the bulk form is atomic as well
                store.write_values(_NS, _KEYS, [f"v{version}".encode()] * len(_KEYS))
    finally:
        stop.set()
        thread.join()
    assert not torn, f"a read saw a write in part: {sorted(set(map(repr, torn[0])))[:3]}"


def online_write_values(store: OnlineStore) -> None:
    """``write_values`` sets one namespace's keys as ``write`` would, and refuses a length
    mismatch, changing nothing."""
    blob = bytes(range(256))
    store.write_values(_OTHER, ["p", "q"], [b"1", blob])
    store.write_values(_OTHER, [], [])
    assert store.read([(_OTHER, "q"), (_NS, "p"), (_OTHER, "p")]) == [blob, None, b"1"]
    refused = None
    try:
        store.write_values(_OTHER, ["p", "q"], [b"2"])
    except Exception as exc:  # any error of the store's own is right
        refused = str(exc)
    assert refused is not None, "write_values must refuse two keys for one value"
    assert "values" in refused, f"a mismatch is named: {refused}"
    assert store.read([(_OTHER, "p")]) == [b"1"], "a refused write_values changes nothing"


def online_update_merges_and_loses_nothing(store: OnlineStore) -> None:
    """``update`` hands ``merge`` the current values in order, writes back what it returns
    (None leaves a key as it is), and never loses an update made beside it."""
    _check_update(store, _NS)


def online_clear_is_per_namespace(store: OnlineStore) -> None:
    """``clear`` clears one namespace only."""
    store.write([(_NS, "k1", b"1"), (_OTHER, "a", b"other")])
    store.clear(_NS)
    assert store.read([(_NS, "k1"), (_OTHER, "a")]) == [None, b"other"], "clear is per namespace"


#: The online store's named checks, each run on a fresh pair of namespaces.
ONLINE_STORE_CHECKS: dict[str, Callable[[OnlineStore], None]] = {
    "writes_land_and_delete": online_writes_land_and_delete,
    "many_keys_in_one_read": online_many_keys_in_one_read,
    "read_async_answers_as_read": online_read_async_answers_as_read,
    "writes_are_never_seen_in_part": online_writes_are_never_seen_in_part,
    "write_values": online_write_values,
    "update_merges_and_loses_nothing": online_update_merges_and_loses_nothing,
    "clear_is_per_namespace": online_clear_is_per_namespace,
}


def check_online_store(store: OnlineStore, only: str | None = None) -> None:
    """Raise AssertionError unless ``store`` behaves as the OnlineStore protocol says
    (``ONLINE_STORE_CHECKS``; ``only`` runs one of them). Touches only the namespaces
    ``__check@1`` and ``__check@2``, cleared before and after each check."""
    for name, check in ONLINE_STORE_CHECKS.items():
        if only is not None and name != only:
            continue
        _fresh(store)
        try:
            check(store)
        finally:
            _fresh(store)


def _check_update(store: OnlineStore, ns: str) -> None:
    """``update`` hands ``merge`` the current values in order, writes back what it returns
    (None leaves a key as it is), and never loses an update made beside it."""
    import threading

    store.write([(ns, "u1", b"1")])
    seen: list[list[bytes | None]] = []

    def merge(values: list[bytes | None]) -> list[bytes | None]:
        seen.append(list(values))
        return [b"one", None, b"three"]

    store.update([(ns, "u1"), (ns, "u2"), (ns, "u3")], merge)
    assert seen[-1] == [b"1", None, None], "merge gets the current values, in order"
    assert store.read([(ns, "u1"), (ns, "u2"), (ns, "u3")]) == [b"one", None, b"three"]

    def bump(values: list[bytes | None]) -> list[bytes | None]:
        return [str(int(v or b"0") + 1).encode() for v in values]

    store.write([(ns, "n1", b"0"), (ns, "n2", b"0")])
    rounds, errors = 60, []

    def worker() -> None:
        try:
            for _ in range(rounds):
                store.update([(ns, "n1"), (ns, "n2")], bump)
        except Exception as exc:  # surfaced below, with the store's own message
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, f"update raised beside another update: {errors[0]!r}"
    got = store.read([(ns, "n1"), (ns, "n2")])
    assert got == [str(3 * rounds).encode()] * 2, f"an update was lost: {got}"


def metadata_definitions(store: Any, p: str = "") -> None:
    """Definitions round-trip; registering a registered version again is a
    ``VersionConflict`` that leaves nothing of itself behind. (``p`` prefixes every name.)"""
    from closedloop.backends.base import RegisteredDefinition
    from closedloop.errors import VersionConflict

    def mine() -> list[Any]:
        return sorted((d for d in store.definitions() if d.name.startswith(p)),
                      key=lambda d: d.kind)

    d1 = RegisteredDefinition("entity", f"{p}user", 1, "h1", {"kind": "entity", "name": "u"})
    d2 = RegisteredDefinition("feature_view", f"{p}v", 1, "h2", {"nested": {"a": [1, 2]}})
    store.register([d1, d2])
    if mine() != [d1, d2]:
        raise AssertionError(f"definitions did not round-trip: {mine()}")
    try:
        store.register([RegisteredDefinition("entity", f"{p}other", 1, "h3", {}), d1])
    except VersionConflict:
        pass
    else:
        raise AssertionError("registering a version twice did not raise VersionConflict")
    if len(mine()) != 2:
        raise AssertionError("a refused register left part of itself behind")


def _runs(store: Any, p: str) -> None:
    store.start_run(f"{p}r1", f"{p}fraud", {"params": {"lr": 0.1}})
    store.start_run(f"{p}r2", f"{p}fraud", {})
    store.start_run(f"{p}r3", f"{p}churn", {})


def metadata_runs(store: Any, p: str = "") -> None:
    """Runs are running, then finished or failed; records round-trip as JSON, times are
    aware, ``runs(model)`` filters, ending an unknown run is ``VersionNotFound``."""
    from closedloop.errors import VersionNotFound

    _runs(store, p)
    store.end_run(f"{p}r1", "finished", {"params": {"lr": 0.1}, "metrics": {"auc": 0.9}})
    store.end_run(f"{p}r2", "failed", {}, error="TrainingError: boom")
    runs = {r.id.removeprefix(p): r for r in store.runs() if r.id.startswith(p)}
    if (runs["r1"].status, runs["r2"].status, runs["r3"].status) != (
            "finished", "failed", "running"):
        raise AssertionError(f"run statuses are wrong: {runs}")
    if runs["r1"].record["metrics"] != {"auc": 0.9} or runs["r2"].error != "TrainingError: boom":
        raise AssertionError("run records or errors did not round-trip")
    if runs["r1"].started_at.tzinfo is None or runs["r1"].ended_at is None:
        raise AssertionError("run times must be aware datetimes")
    if [r.id for r in store.runs(f"{p}churn")] != [f"{p}r3"]:
        raise AssertionError("runs(model) did not filter")
    try:
        store.end_run(f"{p}nope", "finished", {})
    except VersionNotFound:
        pass
    else:
        raise AssertionError("ending an unknown run did not raise VersionNotFound")


def _versions(store: Any, p: str) -> list[int]:
    _runs(store, p)
    return [store.add_version(f"{p}fraud", f"b{i}", f"{p}r1") for i in range(3)]


def metadata_versions(store: Any, p: str = "") -> None:
    """Versions are numbered 1, 2, … per model and round-trip."""
    numbers = _versions(store, p)
    if numbers != [1, 2, 3] or store.add_version(f"{p}churn", "c", f"{p}r3") != 1:
        raise AssertionError(f"versions were numbered {numbers}")
    if [v.bundle for v in store.versions(f"{p}fraud")] != ["b0", "b1", "b2"]:
        raise AssertionError("versions did not round-trip")


def metadata_aliases(store: Any, p: str = "") -> None:
    """Aliases move atomically: a move naming a missing version is refused with nothing
    moved; a removed alias is gone; every move is in the history."""
    from closedloop.errors import VersionNotFound

    _versions(store, p)
    model = f"{p}fraud"
    store.move_aliases(model, {"production": 1})
    store.move_aliases(model, {"production": 2, "previous": 1, "shadow": 3})
    try:
        store.move_aliases(model, {"canary": 3, "production": 9})
    except VersionNotFound:
        pass
    else:
        raise AssertionError("an alias to a missing version did not raise VersionNotFound")
    if store.aliases(model) != {"previous": 1, "production": 2, "shadow": 3}:
        raise AssertionError(f"aliases are {store.aliases(model)} after a refused move")
    store.move_aliases(model, {"shadow": None})
    if "shadow" in store.aliases(model):
        raise AssertionError("removing an alias left it in place")
    history = [(m.alias, m.version, m.previous) for m in store.alias_history(model)]
    if history != [("production", 1, None), ("production", 2, 1), ("previous", 1, None),
                   ("shadow", 3, None), ("shadow", None, 3)]:
        raise AssertionError(f"alias history is {history}")


#: The metadata store's named checks; each names what it writes with a prefix of its own.
METADATA_STORE_CHECKS: dict[str, Callable[[Any, str], None]] = {
    "definitions": metadata_definitions,
    "runs": metadata_runs,
    "versions": metadata_versions,
    "aliases": metadata_aliases,
}


def check_metadata_store(store: Any, only: str | None = None) -> None:
    """The shared checks every metadata store must pass (``METADATA_STORE_CHECKS``; ``only``
    runs one), on an empty store."""
    if store.definitions() != []:
        raise AssertionError("the store is not empty")
    for name, check in METADATA_STORE_CHECKS.items():
        if only is None or name == only:
            check(store, f"{name}-")


_BLOB = bytes(range(256))


def _published(stream: Any, name: str) -> list[str]:
    """Ten records on a fresh stream ``name``, the first with every byte value."""
    return list(stream.publish(name, [{"e": b"0", "blob": _BLOB}] + [
        {"e": str(i).encode()} for i in range(1, 10)]))


def stream_records_come_back_in_order(stream: Any, name: str) -> None:
    """Published records come back in order, with their bytes; an empty publish is
    nothing."""
    assert stream.read_all(name) == []
    ids = _published(stream, name)
    assert len(ids) == len(set(ids)) == 10
    assert stream.publish(name, []) == []
    assert [r for _, r in stream.read_all(name)][:1] == [{"e": b"0", "blob": _BLOB}]
    assert [i for i, _ in stream.read_all(name)] == ids, "read_all keeps order"


def stream_groups_share_and_each_sees_all(stream: Any, name: str) -> None:
    """Each record goes to one consumer of a group, in order, and to every group."""
    stream.ensure_group(name, "g")
    stream.ensure_group(name, "g")                          # twice is fine
    stream.ensure_group(name, "h")
    _published(stream, name)
    first = stream.read_group(name, "g", "c1", 4, 0)
    second = stream.read_group(name, "g", "c2", 100, 0)
    assert [r["e"] for _, r in first + second] == [str(i).encode() for i in range(10)], \
        "a group's consumers share the records, each once, in order"
    assert stream.read_group(name, "g", "c1", 100, 0) == []
    assert len(stream.read_group(name, "h", "c1", 100, 0)) == 10, "every group sees all"


def stream_block_ms_waits(stream: Any, name: str) -> None:
    """A read with ``block_ms`` on an empty group waits (at least about that long), and
    returns nothing."""
    import time

    stream.ensure_group(name, "g")
    t0 = time.monotonic()
    assert stream.read_group(name, "g", "c1", 10, 150) == []
    assert time.monotonic() - t0 >= 0.12, "block_ms waits"


def stream_pending_records_are_claimed_once_idle(stream: Any, name: str) -> None:
    """A record read but not acknowledged stays pending: once idle long enough another
    consumer claims it (not before); acknowledged, nothing is pending."""
    import time

    stream.ensure_group(name, "g")
    _published(stream, name)
    first = stream.read_group(name, "g", "c1", 4, 0)         # c1 dies with these pending
    stream.ack(name, "g", [i for i, _ in stream.read_group(name, "g", "c2", 100, 0)])
    time.sleep(0.05)                                          # idle for at least 50 ms
    assert stream.claim(name, "g", "c3", 60.0) == [], "not yet idle long enough"
    claimed = stream.claim(name, "g", "c3", 0.02)
    assert [i for i, _ in claimed] == [i for i, _ in first], "the unacknowledged ones"
    assert claimed[0][1] == {"e": b"0", "blob": _BLOB}
    stream.ack(name, "g", [i for i, _ in claimed])
    time.sleep(0.05)
    assert stream.claim(name, "g", "c3", 0.0) == [], "acknowledged: nothing pending"
    later = stream.publish(name, [{"e": b"10"}])
    assert [i for i, _ in stream.read_group(name, "g", "c1", 10, 0)] == later


#: The event stream's named checks, each on a stream of its own.
EVENT_STREAM_CHECKS: dict[str, Callable[[Any, str], None]] = {
    "records_come_back_in_order": stream_records_come_back_in_order,
    "groups_share_and_each_sees_all": stream_groups_share_and_each_sees_all,
    "block_ms_waits": stream_block_ms_waits,
    "pending_records_are_claimed_once_idle": stream_pending_records_are_claimed_once_idle,
}


def check_event_stream(stream: Any, name: str = "__check-stream",
                       only: str | None = None) -> None:
    """Raise AssertionError unless ``stream`` behaves as the EventStream protocol says
    (``EVENT_STREAM_CHECKS``; ``only`` runs one of them). Each check uses the stream
    ``<name>:<check>`` only, deleted before and after."""
    for check, run in EVENT_STREAM_CHECKS.items():
        if only is not None and check != only:
            continue
        own = f"{name}:{check}"
        stream.delete(own)
        try:
            run(stream, own)
        finally:
            stream.delete(own)
