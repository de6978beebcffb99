"""``project.registry``: model versions and aliases.

A version is a finished run's bundle: a manifest (content-addressed in the artefact store)
naming the model binary, the report, the features with their definition hashes, the lineage,
environment and seeds. Registering is one transaction in the metadata store, after every
artefact is in place, so there is never a half-registered version; registering the same
bundle again returns the version it already is. Loading checks every artefact against its
hash. Aliases (``production``, ``previous``, ``shadow``, ``canary``, any name) move atomically;
moving ``production`` moves ``previous`` to the version it leaves, in the same transaction.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import pyarrow as pa

from closedloop.backends.base import ArtefactStore, ModelStore, VersionRecord
from closedloop.data.sources import check_name
from closedloop.errors import MonitoringError, RegistryError, VersionNotFound
from closedloop.features.service import FeatureService
from closedloop.monitoring.reference import Reference
from closedloop.training.evaluation import calibrate
from closedloop.training.matrix import feature_matrix
from closedloop.training.report import EvaluationReport
from closedloop.training.service import TrainingService
from closedloop.training.trainers import LightGBMTrainer, SklearnTrainer, Trainer, XGBoostTrainer

_TRAINERS: dict[str, type[Any]] = {"lightgbm": LightGBMTrainer, "sklearn": SklearnTrainer,
                                   "xgboost": XGBoostTrainer}


@dataclass(frozen=True)
class ModelVersion:
    """One registered version: its number, bundle manifest and the aliases pointing at it."""

    model: str
    version: int
    bundle: str
    run_id: str
    created_at: datetime
    manifest: dict[str, Any]
    aliases: tuple[str, ...] = ()

    @property
    def features(self) -> list[str]:
        return [f["ref"] for f in self.manifest["definitions"]["features"]]

    @property
    def metrics(self) -> dict[str, Any]:
        return dict(self.manifest.get("metrics", {}))


@dataclass
class LoadedModel:
    """A version ready to score: its trainer with the binary loaded, its feature order, and
    its calibration map if it has one (part of the version: every score goes through it)."""

    version: ModelVersion
    trainer: Trainer

    @property
    def calibration(self) -> tuple[list[float], list[float]] | None:
        found = self.version.manifest.get("calibration")
        return None if found is None else (found["x"], found["y"])

    def score(self, X: Any) -> np.ndarray[Any, Any]:
        """Scores of a feature matrix (the version's order), calibrated."""
        return calibrate(self.trainer.predict_proba(X), self.calibration)

    def predict(self, table: pa.Table) -> np.ndarray[Any, Any]:
        """Scores of rows that carry the version's features (a training set or scoring rows)."""
        return self.score(feature_matrix(table, self.version.features))


class RegistryService:
    """Stage 4's start: register finished runs, resolve versions and aliases, load, compare."""

    def __init__(self, models: ModelStore, artefacts: ArtefactStore, training: TrainingService,
                 features: FeatureService) -> None:
        self.store = models
        self.artefacts = artefacts
        self.training = training
        self.features = features

    # -- versions ---------------------------------------------------------------------------
    def register(self, run_id: str) -> ModelVersion:
        """Register a finished run's bundle as the model's next version (or return the version
        it already is)."""
        run = self.training.run(run_id)
        if run.status != "finished" or "bundle" not in run.record:
            raise RegistryError(f"run {run_id} is {run.status}: only a finished run's bundle "
                                "can be registered", fix="train again, and register that run")
        bundle = run.record["bundle"]
        manifest = self._manifest(bundle)              # every artefact there and intact
        self.artefacts.get(manifest["artefact"])
        for v in self.store.versions(run.model):
            if v.bundle == bundle:
                return self._version(v)
        number = self.store.add_version(run.model, bundle, run_id)
        return self.version(run.model, number)

    def _manifest(self, bundle: str) -> dict[str, Any]:
        manifest: dict[str, Any] = json.loads(self.artefacts.get(bundle))
        return manifest

    def _version(self, record: VersionRecord) -> ModelVersion:
        aliases = tuple(a for a, v in self.store.aliases(record.model).items()
                        if v == record.version)
        return ModelVersion(record.model, record.version, record.bundle, record.run_id,
                            record.created_at, self._manifest(record.bundle), aliases)

    def versions(self, model: str | None = None) -> list[ModelVersion]:
        return [self._version(v) for v in self.store.versions(model)]

    def version(self, model: str, ref: int | str = "latest") -> ModelVersion:
        """A version by number, by alias, or ``latest``."""
        records = self.store.versions(model)
        if not records:
            raise VersionNotFound(f"model {model!r} has no registered version",
                                  fix=f"train and register it: closedloop train {model}")
        if isinstance(ref, str) and ref.isdigit():
            ref = int(ref)
        if ref == "latest":
            return self._version(records[-1])
        if isinstance(ref, str):
            aliases = self.store.aliases(model)
            if ref not in aliases:
                raise VersionNotFound(f"model {model!r} has no alias {ref!r}",
                                      fix=f"its aliases are {sorted(aliases)}")
            ref = aliases[ref]
        for v in records:
            if v.version == ref:
                return self._version(v)
        raise VersionNotFound(f"model {model!r} has no version {ref}",
                              fix=f"its versions are {[v.version for v in records]}")

    def load(self, model: str, ref: int | str = "production") -> LoadedModel:
        """A version's trainer with its binary loaded, every artefact checked on the way."""
        version = self.version(model, ref)
        kind = version.manifest["trainer"]
        spec = self.training.models.get(model)
        if spec is not None and spec.trainer.kind == kind:
            import copy

            trainer: Trainer = copy.deepcopy(spec.trainer)
        elif kind in ("lightgbm", "xgboost"):
            trainer = _TRAINERS[kind]()
        elif kind == "sklearn":
            trainer = SklearnTrainer(None)
        else:  # pragma: no cover - a bundle from a newer closedloop
            raise RegistryError(f"version {version.version} of {model!r} was trained by "
                                f"{kind!r}, which this closedloop does not know",
                                fix="upgrade closedloop")
        trainer.load(self.artefacts.get(version.manifest["artefact"]))
        return LoadedModel(version, trainer)

    def report(self, model: str, ref: int | str = "latest") -> EvaluationReport:
        version = self.version(model, ref)
        return EvaluationReport.from_json(self.artefacts.get(version.manifest["report"]).decode())

    def reference(self, model: str, ref: int | str = "production") -> Reference:
        """The version's reference distributions (fitted by its run, in its bundle): what the
        monitor compares its traffic with."""
        version = self.version(model, ref)
        found = version.manifest.get("reference")
        if found is None:
            raise MonitoringError(f"version {version.version} of {model!r} has no reference: "
                                  "it was trained before runs fitted one",
                                  fix=f"train and register it again: closedloop train {model}")
        return Reference.from_json(self.artefacts.get(found))

    # -- aliases -----------------------------------------------------------------------------
    def set_alias(self, model: str, alias: str, ref: int | str) -> ModelVersion:
        """Point ``alias`` at a version; ``production`` carries ``previous`` along."""
        check_name("alias", alias.replace("-", "_"))
        target = self.version(model, ref)
        moves: dict[str, int | None] = {alias: target.version}
        if alias == "production":
            current = self.store.aliases(model).get("production")
            if current is not None and current != target.version:
                moves["previous"] = current
        self.store.move_aliases(model, moves)
        return self.version(model, target.version)

    def remove_alias(self, model: str, alias: str) -> None:
        if alias not in self.store.aliases(model):
            raise VersionNotFound(f"model {model!r} has no alias {alias!r}",
                                  fix=f"its aliases are {sorted(self.store.aliases(model))}")
        self.store.move_aliases(model, {alias: None})

    def aliases(self, model: str) -> dict[str, int]:
        return self.store.aliases(model)

    # -- comparing ---------------------------------------------------------------------------
    def diff(self, model: str, a: int | str, b: int | str) -> VersionDiff:
        """Two versions side by side: features, definition hashes, parameters, metrics,
        training data."""
        va, vb = self.version(model, a), self.version(model, b)
        fa, fb = set(va.features), set(vb.features)
        views_a = va.manifest["definitions"]["views"]
        views_b = vb.manifest["definitions"]["views"]
        return VersionDiff(
            model, va.version, vb.version, sorted(fb - fa), sorted(fa - fb),
            sorted(k for k in set(views_a) | set(views_b) if views_a.get(k) != views_b.get(k)),
            _changed(va.manifest.get("params", {}), vb.manifest.get("params", {})),
            _changed(va.metrics, vb.metrics),
            _changed({k: v for k, v in va.manifest["lineage"].items() if k != "columns"},
                     {k: v for k, v in vb.manifest["lineage"].items() if k != "columns"}))

    def baseline(self, model: str, rows: pa.Table,
                 ) -> tuple[int, np.ndarray[Any, Any], str | None] | None:
        """The production version's scores on training-set rows, for a run's comparison,
        with the first instant it did not learn from (the start of its own test split)."""
        if "production" not in self.store.aliases(model):
            return None
        loaded = self.load(model, "production")
        needed = [f for f in loaded.version.features if f not in rows.column_names]
        table = rows
        if needed:                     # production reads features this run does not
            source = self.training.catalog.sources[loaded.version.manifest["lineage"]
                                                   ["rows_source"]]
            table = self.features.training_set(rows, needed, timestamp=source.timestamp)
        unseen = loaded.version.manifest["lineage"].get("split", {}).get("test_from")
        return loaded.version.version, loaded.predict(table), unseen


@dataclass(frozen=True, slots=True)
class VersionDiff:
    """What differs between versions ``a`` and ``b`` of a model; each of ``params``,
    ``metrics`` and ``data`` maps a key that differs to its (a, b) values."""

    model: str
    a: int
    b: int
    features_added: list[str]
    features_removed: list[str]
    definitions_changed: list[str]
    params: dict[str, tuple[Any, Any]]
    metrics: dict[str, tuple[Any, Any]]
    data: dict[str, tuple[Any, Any]]


def _changed(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}
