"""`closedloop apply`: the plan of what changes in the metadata store, and its registration.

Feature views and transforms are versioned and immutable: a registered (name, version) whose
content hash differs is refused — bump ``version=`` and both versions stay usable. Entities and
sources are not versioned by the user: a changed one is recorded as a new revision (the views
that read it pin its spec in their own hash).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from closedloop.backends.base import MetadataStore, RegisteredDefinition
from closedloop.errors import VersionConflict
from closedloop.features.catalog import Catalog, Definition
from closedloop.features.definitions import FeatureView, Transform

Action = Literal["add", "unchanged", "revise", "conflict"]


@dataclass(frozen=True)
class PlanItem:
    action: Action
    definition: RegisteredDefinition
    registered_hash: str | None = None

    def describe(self) -> str:
        d = self.definition
        label = f"{d.kind} {d.name}" + (f" v{d.version}" if d.kind in _VERSIONED else "")
        if self.action == "conflict":
            return (f"{label}: registered with hash {self.registered_hash}, now {d.hash} — "
                    "a registered version cannot change")
        return f"{label} ({d.hash})"


@dataclass(frozen=True)
class Plan:
    items: tuple[PlanItem, ...]

    def of(self, action: Action) -> list[PlanItem]:
        return [i for i in self.items if i.action == action]

    @property
    def changes(self) -> list[PlanItem]:
        return [i for i in self.items if i.action in ("add", "revise")]


_VERSIONED = ("feature_view", "transform")


def _kind(d: Definition) -> str:
    return str(d.spec()["kind"])


def plan(catalog: Catalog, store: MetadataStore) -> Plan:
    """Compare the catalog with what the store holds. Writes nothing."""
    registered = store.definitions()
    latest: dict[tuple[str, str], RegisteredDefinition] = {}
    exact: dict[tuple[str, str, int], RegisteredDefinition] = {}
    for r in registered:
        exact[(r.kind, r.name, r.version)] = r
        if (r.kind, r.name) not in latest or latest[(r.kind, r.name)].version < r.version:
            latest[(r.kind, r.name)] = r
    items: list[PlanItem] = []
    for d in catalog.definitions():
        kind = _kind(d)
        if isinstance(d, FeatureView | Transform):
            spec = d.registered_spec() if isinstance(d, FeatureView) else d.spec()
            new = RegisteredDefinition(kind, d.name, d.version, d.hash, spec)
            old = exact.get((kind, d.name, d.version))
            if old is None:
                items.append(PlanItem("add", new))
            elif old.hash == d.hash:
                items.append(PlanItem("unchanged", new))
            else:
                items.append(PlanItem("conflict", new, old.hash))
        else:
            prev = latest.get((kind, d.name))
            version = 1 if prev is None else prev.version
            if prev is not None and prev.hash != d.hash:
                version = prev.version + 1
            new = RegisteredDefinition(kind, d.name, version, d.hash, d.spec())
            if prev is None:
                items.append(PlanItem("add", new))
            elif prev.hash == d.hash:
                items.append(PlanItem("unchanged", new))
            else:
                items.append(PlanItem("revise", new, prev.hash))
    return Plan(tuple(items))


def apply(catalog: Catalog, store: MetadataStore) -> Plan:
    """Register what the plan adds, all or nothing; refuse any in-place change."""
    result = plan(catalog, store)
    conflicts = result.of("conflict")
    if conflicts:
        names = "; ".join(c.describe() for c in conflicts)
        raise VersionConflict(f"refusing to change registered definitions in place: {names}",
                              fix="give the changed definition a new version= (the old version "
                                  "stays registered and usable)")
    store.register([i.definition for i in result.changes])
    return result
