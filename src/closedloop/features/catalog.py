"""The catalog: every definition of a project, checked together, and feature references resolved.

A feature reference is ``view.feature`` (the newest version of the view), ``view@2.feature``
(a pinned version), a transform's name, or ``request.column`` (a request-time value).

>>> import closedloop as cl
>>> user = cl.Entity("user", key="user_id")
>>> src = cl.TableSource("profile", path="p.parquet", timestamp="ts")
>>> v1 = cl.FeatureView("profile", entity=user, source=src, features=["spend"])
>>> v2 = cl.FeatureView("profile", entity=user, source=src, version=2, features=["spend", "age"])
>>> catalog = Catalog([user, src, v1, v2])
>>> [str(r) for r in catalog.resolve(["profile.age", "profile@1.spend"]).features]
['profile@2.age', 'profile@1.spend']
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any, TypeVar

from closedloop.backends.base import RegisteredDefinition
from closedloop.data.sources import AnySource, Entity, EventSource, LabelSource, TableSource
from closedloop.errors import DefinitionError, UnknownFeatureError, did_you_mean
from closedloop.features.definitions import FeatureView, Transform

_REF = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)(?:@([0-9]+))?\.([A-Za-z_][A-Za-z0-9_]*)$")

Definition = Entity | EventSource | TableSource | LabelSource | FeatureView | Transform


S = TypeVar("S")


@dataclass(frozen=True)
class FeatureRef:
    """A resolved reference to one feature of one view version."""

    view: FeatureView
    feature: str

    def __str__(self) -> str:
        return f"{self.view.key}.{self.feature}"


@dataclass(frozen=True)
class Resolution:
    """What a list of requested references needs: view features, transforms, request inputs."""

    requested: tuple[str, ...]
    features: tuple[FeatureRef, ...]          # every view feature needed (requested or input)
    transforms: tuple[Transform, ...]         # in dependency order
    request_inputs: tuple[str, ...]           # row columns read by transforms
    columns: dict[str, str]                   # requested reference -> internal key
    keys: dict[str, str]                      # every reference met (inputs too) -> internal key

    def by_view(self) -> list[tuple[FeatureView, list[str]]]:
        groups: dict[tuple[str, int], tuple[FeatureView, list[str]]] = {}
        for ref in self.features:
            key = (ref.view.name, ref.view.version)
            _, names = groups.setdefault(key, (ref.view, []))
            if ref.feature not in names:
                names.append(ref.feature)
        return list(groups.values())


class Catalog:
    """Every definition of a project, validated as a whole."""

    def __init__(self, definitions: Iterable[Any]) -> None:
        self.entities: dict[str, Entity] = {}
        self.sources: dict[str, AnySource] = {}
        self.views: dict[tuple[str, int], FeatureView] = {}
        self.transforms: dict[str, Transform] = {}
        for item in definitions:
            self._add(item)
        for view in list(self.views.values()):
            self._add(view.entity)
            self._add(view.source)
        for name in self.transforms:
            if any(v.name == name for v in self.views.values()):
                raise DefinitionError(f"transform {name!r} has the name of a feature view",
                                      fix="rename the transform or the view")
        for t in self.transforms.values():
            self.resolve(t.inputs, _checking=t.name)

    @classmethod
    def from_module(cls, module: ModuleType) -> Catalog:
        """Collect every definition a module defines at its top level."""
        found = [v for v in vars(module).values()
                 if isinstance(v, Entity | EventSource | TableSource | LabelSource | FeatureView
                                  | Transform)]
        return cls(found)

    def _add(self, item: Any) -> None:
        if isinstance(item, Entity):
            self._unique(self.entities, item.name, item, "entity")
        elif isinstance(item, EventSource | TableSource | LabelSource):
            self._unique(self.sources, item.name, item, "source")
        elif isinstance(item, FeatureView):
            key = (item.name, item.version)
            if key in self.views and self.views[key].hash != item.hash:
                raise DefinitionError(
                    f"feature view {item.name!r} version {item.version} is defined twice, "
                    "differently", fix="give one of them a new version= or another name")
            self.views[key] = item
        elif isinstance(item, Transform):
            self._unique(self.transforms, item.name, item, "transform")
        else:
            raise DefinitionError(f"{item!r} is not a closedloop definition",
                                  fix="pass Entity, EventSource, TableSource, LabelSource, "
                                      "FeatureView or Transform objects")

    @staticmethod
    def _unique(table: dict[str, Any], name: str, item: Any, kind: str) -> None:
        if name in table and table[name] is not item and table[name].hash != item.hash:
            raise DefinitionError(f"two different {kind} definitions are named {name!r}",
                                  fix=f"give each {kind} its own name")
        table.setdefault(name, item)

    def restore(self, registered: Iterable[RegisteredDefinition]) -> list[FeatureView]:
        """Add registered feature view versions that the code no longer defines.

        A model pinned to ``view@1`` keeps working after the code moved on to version 2.
        Transforms are code and cannot be restored this way.
        """
        restored = []
        for r in registered:
            if r.kind != "feature_view" or (r.name, r.version) in self.views:
                continue
            view = FeatureView.from_spec(r.spec)
            if view.hash != r.hash:
                raise DefinitionError(
                    f"registered view {r.name!r} v{r.version} rebuilds with hash {view.hash}, "
                    f"not its registered {r.hash}", fix="define that version in code again")
            self.views[(r.name, r.version)] = view
            restored.append(view)
        return restored

    def definitions(self) -> list[Definition]:
        """All definitions, in a stable order (for plans and registration)."""
        out: list[Definition] = []
        out += [self.entities[k] for k in sorted(self.entities)]
        out += [self.sources[k] for k in sorted(self.sources)]
        out += [self.views[k] for k in sorted(self.views)]
        out += [self.transforms[k] for k in sorted(self.transforms)]
        return out

    def source_of(self, name: str, kind: type[S]) -> S:
        """The source named ``name`` if it is of ``kind`` (``LabelSource``, ``EventSource``,
        …), else a DefinitionError listing the sources of that kind."""
        source = self.sources.get(name)
        if not isinstance(source, kind):
            known = sorted(n for n, s in self.sources.items() if isinstance(s, kind))
            what = getattr(kind, "kind", "such")           # "label", "event", "table"
            raise DefinitionError(f"there is no {what} source {name!r}",
                                  fix=f"the {what} sources are {known}")
        return source

    def view(self, name: str, version: int | None = None) -> FeatureView:
        versions = sorted(v for (n, v) in self.views if n == name)
        if not versions:
            names = sorted({n for n, _ in self.views})
            raise UnknownFeatureError(f"no feature view is named {name!r}"
                                      f"{did_you_mean(name, names)}",
                                      fix=f"defined views: {names}")
        if version is None:
            return self.views[(name, versions[-1])]
        if version not in versions:
            raise UnknownFeatureError(f"feature view {name!r} has no version {version}",
                                      fix=f"its versions are {versions}")
        return self.views[(name, version)]

    def resolve(self, refs: Sequence[str], *, _checking: str | None = None) -> Resolution:
        """Resolve feature references, expanding transforms into what they read."""
        if isinstance(refs, str) or not refs:
            raise UnknownFeatureError(f"feature list {refs!r} is empty or not a list",
                                      fix="ask for features=['view.feature', ...]")
        features: list[FeatureRef] = []
        transforms: list[Transform] = []
        request: list[str] = []
        columns: dict[str, str] = {}
        keys: dict[str, str] = {}

        def visit(ref: str, stack: tuple[str, ...]) -> str:
            keys[ref] = key = lookup(ref, stack)
            return key

        def lookup(ref: str, stack: tuple[str, ...]) -> str:
            if not isinstance(ref, str):
                raise UnknownFeatureError(f"feature reference {ref!r} is not a string",
                                          fix="write 'view.feature'")
            if ref.startswith("request."):
                column = ref.removeprefix("request.")
                if column not in request:
                    request.append(column)
                return ref
            if ref in self.transforms:
                t = self.transforms[ref]
                if ref in stack:
                    raise DefinitionError(f"transform {ref!r} depends on itself",
                                          fix=f"break the cycle {' -> '.join((*stack, ref))}")
                for inp in t.inputs:
                    visit(inp, (*stack, ref))
                if t not in transforms:
                    transforms.append(t)
                return ref
            match = _REF.match(ref)
            if match is None:
                where = f" (an input of transform {_checking!r})" if _checking else ""
                raise UnknownFeatureError(
                    f"feature reference {ref!r}{where} does not parse",
                    fix="write 'view.feature', 'view@2.feature', a transform name or "
                        "'request.column'")
            name, version, feature = match.group(1), match.group(2), match.group(3)
            view = self.view(name, int(version) if version else None)
            if feature not in view.feature_names:
                raise UnknownFeatureError(
                    f"feature view {view.name!r} (version {view.version}) has no feature "
                    f"{feature!r}{did_you_mean(feature, view.feature_names)}",
                    fix=f"its features are {list(view.feature_names)} (an aggregate is named "
                        "column_fn_window, its window in the largest unit that divides it "
                        "exactly: 7d is 1w, 60m is 1h)")
            fref = FeatureRef(view, feature)
            if fref not in features:
                features.append(fref)
            return str(fref)

        for ref in refs:
            if ref in columns:
                raise UnknownFeatureError(f"feature {ref!r} is asked for twice",
                                          fix="list each feature once")
            columns[ref] = visit(ref, ())
        return Resolution(tuple(refs), tuple(features), tuple(transforms), tuple(request),
                          columns, keys)
