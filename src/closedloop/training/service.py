"""``project.training``: training runs with lineage, and their reproduction.

A run (``train``):

1. reads the model's rows from its ``rows`` source, in a fixed order (time, subject);
2. keeps the rows whose label window had closed by the cutoff, each labelled as known then;
3. builds the point-in-time training set and hashes its content;
4. refuses a feature that leaks (values created after the row's time) and warns of a feature
   whose univariate AUC is suspicious;
5. splits by time into train, validation and held-out test; fits; evaluates;
6. stores the model binary, the evaluation report and the bundle manifest in the artefact
   store (content-addressed), and records the run — parameters, metrics, CPU seconds, peak
   memory, packages, code version, definition hashes, seeds, data hash — in the metadata store.

Any failure ends the run as ``failed`` with its error, and nothing is registered (registering
a finished run's bundle is the registry's one transaction). ``reproduce`` rebuilds the training
set from the sources, retrains, and compares the data hash and the model's bytes with the run's;
if they differ it names the inputs that changed: data, code, environment.
"""

from __future__ import annotations

import hashlib
import json
import resource
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from closedloop.backends.base import (
    ArtefactStore,
    MetadataStore,
    OfflineEngine,
    RunRecord,
    RunStore,
)
from closedloop.data.sources import LabelSource
from closedloop.errors import (
    ClosedLoopError,
    DefinitionError,
    TrainingError,
    VersionNotFound,
)
from closedloop.features.catalog import Catalog
from closedloop.features.service import FeatureService
from closedloop.training import evaluation
from closedloop.training.build import Built, build, label_source
from closedloop.training.lineage import code_version, environment
from closedloop.training.model import Model
from closedloop.training.reference import fit_run_reference
from closedloop.training.report import EvaluationReport

Progress = Callable[[int, int, str], None]
#: Scores of the current production version on given training-set rows, if there is one:
#: its version, the scores, and the first instant it did not learn from (its test split).
Baseline = Callable[[str, pa.Table], tuple[int, np.ndarray[Any, Any], str | None] | None]

_STEPS = ("rows", "labels", "training set", "checks", "fit", "evaluate", "store")


@dataclass(frozen=True)
class TrainingRun:
    """A finished run: its id, its record (the lineage), the bundle it stored (manifest
    hash), the evaluation report, and the warnings raised along the way."""

    id: str
    model: str
    record: dict[str, Any]
    bundle: str
    report: EvaluationReport
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class Reproduction:
    """What ``reproduce`` found: whether the training data and the model are identical to the
    run's, and if not, which inputs changed."""

    run_id: str
    data_identical: bool
    model_identical: bool
    differences: tuple[str, ...] = ()
    seconds: float = 0.0

    @property
    def identical(self) -> bool:
        return self.data_identical and self.model_identical

    def summary(self) -> str:
        if self.identical:
            return (f"run {self.run_id}: identical - the rebuilt training set and the "
                    "retrained model match bit for bit")
        what = []
        if not self.data_identical:
            what.append("training data differs")
        if not self.model_identical:
            what.append("model differs")
        return f"run {self.run_id}: {', '.join(what)}: " + "; ".join(self.differences)


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _iso(micros: int) -> str:
    return datetime.fromtimestamp(micros / 1e6, tz=UTC).isoformat()


class TrainingService:
    """Stage 3 of a project: train its declared models, reproduce runs, list and compare."""

    def __init__(self, models: Mapping[str, Model], catalog: Catalog, engine: OfflineEngine,
                 features: FeatureService, metadata: MetadataStore, runs: RunStore,
                 artefacts: ArtefactStore, root: Path,
                 decision_thresholds: Callable[[str], list[float]] = lambda _: [],
                 definitions_hash: Callable[[], str] | None = None,
                 frozen: Callable[[str], list[tuple[int, int]]] = lambda _: []) -> None:
        self.models = models
        self.catalog = catalog
        self.engine = engine
        self.features = features
        self.metadata = metadata
        self.runs_store = runs
        self.artefacts = artefacts
        self.root = root
        self.definitions_hash = definitions_hash
        self.decision_thresholds = decision_thresholds    # a model's serving thresholds
        #: The windows ([start, end) µs) monitoring froze as contaminated for a model: a run
        #: leaves their rows out and records them.
        self.frozen = frozen

    def model(self, name: str) -> Model:
        try:
            return self.models[name]
        except KeyError:
            raise DefinitionError(f"there is no model {name!r}",
                                  fix=f"the models are {sorted(self.models)}") from None

    # -- lineage of the definitions -----------------------------------------------------------
    def _pins(self, model: Model) -> dict[str, Any]:
        """The definitions the model reads, each with its hash; all must be registered."""
        resolution = self.catalog.resolve(list(model.features))
        label = self._label_source(model)
        registered = {(d.kind, d.name, d.version): d.hash for d in self.metadata.definitions()}
        pins: dict[str, Any] = {"views": {}, "transforms": {}, "sources": {}}
        missing = []
        for view, _ in resolution.by_view():
            key = view.key
            pins["views"][key] = view.hash
            if registered.get(("feature_view", view.name, view.version)) != view.hash:
                missing.append(f"feature view {key}")
            pins["sources"][view.source.name] = view.source.hash
        for t in resolution.transforms:
            pins["transforms"][t.key] = t.hash
            if registered.get(("transform", t.name, t.version)) != t.hash:
                missing.append(f"transform {t.key}")
        pins["sources"][label.name] = label.hash
        if missing:
            raise TrainingError(
                f"model {model.name!r} reads {', '.join(missing)}, not registered as defined: "
                "serving could not fetch the same features",
                fix="run `closedloop apply` to register the definitions first")
        pins["features"] = [
            {"ref": ref, "column": resolution.columns[ref]} for ref in resolution.requested]
        pins["request_inputs"] = list(resolution.request_inputs)
        return pins

    def _label_source(self, model: Model) -> LabelSource:
        return label_source(self.catalog, model)

    # -- building the training set (closedloop.training.build) -------------------------------
    def _build(self, model: Model, cutoff: datetime, step: Callable[[str], None],
               excluded: list[tuple[int, int]] | None = None) -> Built:
        return build(model, cutoff, step, self.catalog, self.engine, self.features,
                     self.frozen(model.name) if excluded is None else excluded)

    # -- a run ------------------------------------------------------------------------------
    def train(self, name: str, *, cutoff: datetime | None = None, baseline: Baseline | None = None,
              progress: Progress | None = None) -> TrainingRun:
        """Train model ``name`` on the labels matured by ``cutoff`` (default: now on the
        project's clock); see the module's docstring. Returns the finished run; a failed run
        raises after recording."""
        model = self.model(name)
        when = self.features.clock.datetime(cutoff)      # the project's clock
        if when.tzinfo is None:
            raise TrainingError(f"cutoff {when!r} is naive", fix="pass an aware datetime")
        run_id = f"{name}-{datetime.now(UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"
        record: dict[str, Any] = {"model": model.spec(), "model_hash": model.hash,
                                  "cutoff": when.isoformat(), "environment": environment(),
                                  "code": code_version(self.root),
                                  "seeds": _seeds(model)}
        pins = self._pins(model)                 # refused before a run is even recorded
        record["definitions"] = pins
        if self.definitions_hash is not None:
            record["code"]["definitions_module"] = self.definitions_hash()
        self.runs_store.start_run(run_id, name, record)
        cpu0, wall0 = time.process_time(), time.perf_counter()
        stages: dict[str, float] = {}
        last = [time.perf_counter()]

        def step(what: str) -> None:
            now = time.perf_counter()
            if stages or what != _STEPS[0]:
                previous = list(stages)[-1] if stages else "setup"
                stages[previous] = stages.get(previous, 0.0) + now - last[0]
            stages.setdefault(what, 0.0)
            last[0] = now
            if progress:
                progress(_STEPS.index(what) if what in _STEPS else 0, len(_STEPS), what)

        try:
            built = self._build(model, when, step)
            step("fit")
            trainer = model.trainer
            fitted = _fit(model, built)
            y_valid = built.y[built.rows(1)]
            step("evaluate")
            both = 0 < y_valid.sum() < y_valid.size
            valid_scores = fitted.predict_proba(built.features_of(1)) if both else None
            mapping = None
            if model.calibration is not None:
                if valid_scores is None:
                    raise TrainingError(f"model {model.name!r} is calibrated on its validation "
                                        "split, which holds one class only",
                                        fix="train on a longer history, or widen the split")
                mapping = evaluation.isotonic_map(y_valid, valid_scores)
            scores = evaluation.calibrate(fitted.predict_proba(built.features_of(2)), mapping)
            report = self._evaluate(model, built, scores, y_valid, valid_scores, baseline,
                                    fitted)
            step("store")
            reference = fit_run_reference(model, run_id, built, scores)
            blob = fitted.to_bytes()
            record.update(self._lineage(model, built, blob, when))
            record["metrics"] = report.headline()
            record["warnings"] = built.warnings
            manifest = {"kind": "closedloop.bundle", "model": name, "run_id": run_id,
                        "artefact": self.artefacts.put(blob),
                        "report": self.artefacts.put(report.to_json().encode()),
                        "trainer": trainer.kind,
                        "reference": self.artefacts.put(reference.to_json()),
                        **({"calibration": {"x": mapping[0], "y": mapping[1]}}
                           if mapping is not None else {}),
                        **{k: record[k] for k in ("model", "model_hash", "definitions",
                                                  "lineage", "environment", "code", "seeds",
                                                  "params", "metrics")}}
            bundle = self.artefacts.put(json.dumps(manifest, sort_keys=True, default=str)
                                        .encode())
            now = time.perf_counter()
            stages["store"] = stages.get("store", 0.0) + now - last[0]
            record["bundle"] = bundle
            record["seconds"] = {k: round(v, 4) for k, v in stages.items()}
            record["cpu_seconds"] = round(time.process_time() - cpu0, 3)
            record["wall_seconds"] = round(time.perf_counter() - wall0, 3)
            record["peak_memory_mb"] = round(_peak_mb(), 1)
        except ClosedLoopError as exc:
            self.runs_store.end_run(run_id, "failed", record, error=f"{exc.code} {exc}")
            raise
        except Exception as exc:
            self.runs_store.end_run(run_id, "failed", record,
                                    error=f"{type(exc).__name__}: {exc}")
            raise TrainingError(f"run {run_id} failed: {type(exc).__name__}: {exc}",
                                fix="see the run's error with `closedloop runs show`") from exc
        self.runs_store.end_run(run_id, "finished", record)
        return TrainingRun(run_id, name, record, bundle, report, tuple(built.warnings))

    def _lineage(self, model: Model, built: Built, blob: bytes,
                 cutoff: datetime) -> dict[str, Any]:
        label = self._label_source(model)
        counts = {k: int((built.part == i).sum()) for i, k in enumerate(
            ("train", "validation", "test"))}
        return {
            "params": model.trainer.params(),
            "lineage": {
                "rows_source": model.rows, "label_source": label.name,
                "label_cutoff": cutoff.isoformat(),
                "time_range": [_iso(int(built.times.min())), _iso(int(built.times.max()))],
                "split": {"validation_from": _iso(built.cuts[0]),
                          "test_from": _iso(built.cuts[1]), **counts},
                "training_set_hash": built.data_hash,
                "training_set_rows": built.table.num_rows,
                "columns": built.table.column_names,
                "maturity": built.maturity,
            },
            "model_artefact_hash": hashlib.sha256(blob).hexdigest(),
        }

    def _evaluate(self, model: Model, built: Built, scores: np.ndarray[Any, Any],
                  y_valid: np.ndarray[Any, Any], valid_scores: np.ndarray[Any, Any] | None,
                  baseline: Baseline | None, fitted: Any) -> EvaluationReport:
        """The report: test metrics on ``scores`` (calibrated when the model is), validation
        metrics on the uncalibrated ``valid_scores`` the map was fitted on; the confusion
        matrix at the model's threshold and its serving's decision thresholds; feature
        importance by gain (when the trainer has it) and by permutation on the test rows."""
        test = built.rows(2)
        y_test = built.y[test]
        thresholds = [model.threshold, *self.decision_thresholds(model.name)]
        importance: dict[str, dict[str, float]] = {}
        gain = getattr(fitted, "importance", None)
        if gain is not None:                       # in the matrix's column order
            importance["gain"] = dict(zip(built.features_of(2).column_names, gain(),
                                          strict=True))
        importance["permutation"] = evaluation.permutation_importance(
            fitted.predict_proba, built.features_of(2), y_test, seed=0)
        table_test = built.table_of(2)
        slices = {}
        for column in model.slices:
            slices[column] = evaluation.slice_metrics(y_test, scores, table_test[column],
                                                      min_size=model.min_slice_size)
        fairness = {column: evaluation.fairness(y_test, scores, table_test[column],
                                                model.threshold)
                    for column in model.protected}
        validation = (evaluation.metrics(y_valid, valid_scores, curves=False).to_dict()
                      if valid_scores is not None else None)
        compared = None
        if baseline is not None:
            found = baseline(model.name, table_test)
            if found is not None:
                version, theirs, unseen_from = found
                compared = {"against_version": version,
                            **evaluation.comparison(y_test, scores, theirs)}
                if model.slices:        # the ladder's gate: non-inferior on every slice
                    compared["slices"] = {
                        column: evaluation.slice_comparisons(
                            y_test, scores, theirs, table_test[column],
                            min_size=model.min_slice_size) for column in model.slices}
                first = int(built.times[test].min())
                limit = (None if unseen_from is None else
                         int(datetime.fromisoformat(unseen_from).timestamp() * 1_000_000))
                if limit is not None and first < limit:
                    seen = int((built.times[test] < limit).sum())
                    compared["overlap_rows"] = seen
                    built.warnings.append(
                        f"production (version {version}) learned from rows up to "
                        f"{_iso(limit)[:16]}, and {seen:,} of these {y_test.size:,} test "
                        "rows are before that: the comparison favours production")
        return EvaluationReport(
            model=model.name, rows=int(y_test.size),
            test=evaluation.metrics(y_test, scores).to_dict(), validation=validation,
            slices=slices, fairness=fairness, comparison=compared,
            univariate_auc=built.univariate, warnings=list(built.warnings),
            threshold=model.threshold, min_slice_size=model.min_slice_size,
            confusion=evaluation.confusion(y_test, scores, thresholds),
            importance=importance)

    # -- reproduction ------------------------------------------------------------------------
    def run(self, run_id: str) -> RunRecord:
        """The recorded run ``run_id``: its status, times, record (lineage) and error."""
        for r in self.runs_store.runs():
            if r.id == run_id:
                return r
        raise VersionNotFound(f"there is no run {run_id!r}",
                              fix="list them with `closedloop runs list`")

    def reproduce(self, run_id: str, progress: Progress | None = None) -> Reproduction:
        """Rebuild the run's training set from the sources, retrain, compare (see module)."""
        started = time.perf_counter()
        past = self.run(run_id)
        if past.status != "finished":
            raise TrainingError(f"run {run_id} is {past.status}: only a finished run can be "
                                "reproduced", fix="reproduce a finished run")
        was = past.record
        model = self.model(past.model)
        cutoff = datetime.fromisoformat(was["cutoff"])
        differences = []
        if model.hash != was["model_hash"]:
            differences.append("code: the model's declaration changed since the run")
        pins = self._pins(model)
        if pins["views"] != was["definitions"]["views"] or \
                pins["transforms"] != was["definitions"]["transforms"]:
            differences.append("code: feature definitions changed since the run")
        now_code = code_version(self.root)
        if now_code.get("git_commit") != was["code"].get("git_commit"):
            differences.append(f"code: git commit {was['code'].get('git_commit')} -> "
                               f"{now_code.get('git_commit')}")
        env = environment()
        changed = {k: (was["environment"]["packages"].get(k), v)
                   for k, v in env["packages"].items()
                   if was["environment"]["packages"].get(k) != v}
        if changed or env["python"] != was["environment"]["python"]:
            differences.append("environment: " + ", ".join(
                f"{k} {a} -> {b}" for k, (a, b) in sorted(changed.items())) or
                f"python {was['environment']['python']} -> {env['python']}")

        def step(what: str) -> None:
            if progress:
                progress(_STEPS.index(what) if what in _STEPS else 0, len(_STEPS), what)

        excluded = [(int(a), int(b)) for a, b in
                    was["lineage"].get("maturity", {}).get("excluded_windows", [])]
        built = self._build(model, cutoff, step, excluded)       # as the run left them out
        data_same = built.data_hash == was["lineage"]["training_set_hash"]
        if not data_same:
            differences.append(
                f"data: the training set rebuilt from the sources hashes to "
                f"{built.data_hash[:12]}, the run's to {was['lineage']['training_set_hash'][:12]}"
                f" ({built.table.num_rows:,} rows now, {was['lineage']['training_set_rows']:,} "
                "then)")
        step("fit")
        fitted = _fit(model, built)
        model_same = hashlib.sha256(fitted.to_bytes()).hexdigest() == \
            was["model_artefact_hash"]
        if not model_same and data_same and not differences:
            differences.append("the trainer is not deterministic with these parameters")
        return Reproduction(run_id, data_same, model_same, tuple(differences),
                            time.perf_counter() - started)

    # -- experiment tracking ------------------------------------------------------------------
    def compare(self, a: str, b: str) -> RunComparison:
        """Two runs side by side: parameters, metrics, data and code, and what differs."""
        ra, rb = self.run(a), self.run(b)

        def flat(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
            out: dict[str, Any] = {}
            for k, v in d.items():
                if isinstance(v, Mapping):
                    out.update(flat(v, f"{prefix}{k}."))
                else:
                    out[f"{prefix}{k}"] = v
            return out

        sections: dict[str, dict[str, tuple[Any, Any]]] = {}
        for section, pick in (("params", lambda r: r.record.get("params", {})),
                              ("metrics", lambda r: r.record.get("metrics", {})),
                              ("data", lambda r: {k: v for k, v in r.record.get(
                                  "lineage", {}).items() if k != "columns"}),
                              ("code", lambda r: {**r.record.get("code", {}),
                                                  **{"model_hash": r.record.get("model_hash")},
                                                  **r.record.get("definitions", {}).get(
                                                      "views", {})}),
                              ("environment", lambda r: r.record.get("environment", {}))):
            fa, fb = flat(pick(ra)), flat(pick(rb))
            sections[section] = {k: (fa.get(k), fb.get(k)) for k in sorted(set(fa) | set(fb))}
        return RunComparison(a, b, (ra.status, rb.status), sections)


@dataclass(frozen=True, slots=True)
class RunComparison:
    """Runs ``a`` and ``b`` side by side: per section (params, metrics, data, code,
    environment), every key's (a, b) values, equal or not."""

    a: str
    b: str
    status: tuple[str, str]
    sections: dict[str, dict[str, tuple[Any, Any]]]

    def differences(self) -> dict[str, dict[str, tuple[Any, Any]]]:
        """Only the keys whose values differ, by section."""
        return {s: {k: v for k, v in rows.items() if v[0] != v[1]}
                for s, rows in self.sections.items()}


def _fit(model: Model, built: Built) -> Any:
    """A fresh copy of the declared trainer (the declaration itself is never fitted), fitted
    on the train split with the validation split beside it; a trainer's own exception
    becomes a ``TrainingError``."""
    import copy

    fitted = copy.deepcopy(model.trainer)
    train, valid = built.rows(0), built.rows(1)
    some = built.y[valid].size > 0
    try:
        fitted.fit(built.features_of(0), built.y[train],
                   X_valid=built.features_of(1) if some else None,
                   y_valid=built.y[valid] if some else None,
                   feature_names=list(model.features))
    except ClosedLoopError:
        raise
    except Exception as exc:
        raise TrainingError(f"trainer {model.trainer.kind} raised {type(exc).__name__}: {exc}",
                            fix="fix the trainer or its parameters") from exc
    return fitted


def _seeds(model: Model) -> dict[str, Any]:
    params = model.trainer.params()
    return {k: v for k, v in params.items() if "seed" in k or k == "random_state"}
