"""The serving path in process: routed scores equal the offline scores of the same version at
the same instant, decisions follow the declaration, bad requests name their field."""

from __future__ import annotations

import re

import numpy as np
import pyarrow as pa
import pytest

import closedloop as cl
from closedloop.errors import RequestError, ServingError
from closedloop.server.app import status_of
from tests.serving.world import END


def _instances(project: cl.Project, n: int = 300) -> list[dict]:
    txns = project.data.read("transactions", ["txn_id", "user_id", "amount", "country"])
    rows = txns.slice(0, n).to_pylist()
    return [{"user_id": r["user_id"], "txn_id": r["txn_id"], "amount": r["amount"],
             "country": r["country"]} for r in rows]


def _offline(project: cl.Project, instances: list[dict], alias: str) -> np.ndarray:
    loaded = project.registry.load("fraud", alias)
    rows = pa.table({"user_id": [i["user_id"] for i in instances],
                     "amount": [i["amount"] for i in instances],
                     "country": [i["country"] for i in instances],
                     "ts": pa.array([END] * len(instances), pa.timestamp("us", tz="UTC"))})
    pins = [f["column"] for f in loaded.version.manifest["definitions"]["features"]]
    table = project.features.training_set(rows, pins, timestamp="ts")
    table = table.rename_columns([dict(zip(pins, loaded.version.features, strict=True)).get(c, c)
                                  for c in table.column_names])
    return loaded.predict(table)


def test_served_scores_are_the_offline_scores_of_the_routed_version(served: cl.Project) -> None:
    predictor = served.serving.predictor("fraud")
    assert predictor.aliases == {"production": 1, "canary": 2, "shadow": 2}
    instances = _instances(served)
    out = predictor.predict(instances, at=END)
    routes = [p.route for p in out.predictions]
    assert set(routes) == {"production", "canary", "holdout"}
    production, canary = _offline(served, instances, "production"), _offline(
        served, instances, "canary")
    for i, p in enumerate(out.predictions):
        want = canary[i] if p.route == "canary" else production[i]
        assert p.score == pytest.approx(want, rel=1e-12, abs=1e-12), (i, p)
        assert p.version == (2 if p.route == "canary" else 1)
        if p.route == "holdout":
            assert p.decision == "allow"
        else:
            assert p.decision == ("block" if p.score >= 0.5 else "review" if p.score >= 0.1
                                  else "allow")
    assert set(out.latency_ms) == {"fetch", "transform", "inference", "post"}
    assert all(v >= 0 for v in out.latency_ms.values())
    # Every record carries what was served; the shadow scores the same vectors afterwards.
    assert [r.id for r in out.records] == [p.id for p in out.predictions]
    assert all(r.features is not None and len(r.features) == 16 for r in out.records)
    assert out.after is not None
    shadow = out.after()
    assert [r.id for r in shadow] == [p.id for p in out.predictions]
    assert [r.score for r in shadow] == pytest.approx(list(canary), rel=1e-12, abs=1e-12)


def test_routing_is_sticky_per_unit(served: cl.Project) -> None:
    predictor = served.serving.predictor("fraud")
    instances = _instances(served, 100)
    first = [p.route for p in predictor.predict(instances, at=END).predictions]
    again = [p.route for p in predictor.predict(instances[::-1], at=END).predictions][::-1]
    assert first == again
    by_user: dict[str, set[str]] = {}
    for row, route in zip(instances, first, strict=True):
        by_user.setdefault(row["user_id"], set()).add(route)
    assert all(len(r) == 1 for r in by_user.values())


@pytest.mark.parametrize(("instances", "field"), [
    ([], "instances"),
    ("x", "instances"),
    ([1], "instances[0]"),
    ([{"user_id": "u1", "amount": 1.0}], "instances[0].country"),
    ([{"user_id": "u1", "amount": 1.0, "country": "US", "colour": "red"}],
     "instances[0].colour"),
    ([{"user_id": "u1", "amount": [1.0], "country": "US"}], "instances[0].amount"),
])
def test_a_bad_request_names_its_field(served: cl.Project, instances: object,
                                       field: str) -> None:
    predictor = served.serving.predictor("fraud")
    with pytest.raises(RequestError) as caught:
        predictor.predict(instances)
    assert caught.value.field == field
    assert status_of(caught.value) == 400


def test_a_wrong_key_type_and_an_oversized_batch_are_refused(served: cl.Project) -> None:
    predictor = served.serving.predictor("fraud")
    with pytest.raises(RequestError, match="user_id") as caught:
        predictor.predict([{"user_id": 7, "amount": 1.0, "country": "US"}])
    assert status_of(caught.value) == 400
    many = [{"user_id": "u1", "amount": 1.0, "country": "US"}] * 1001
    with pytest.raises(RequestError, match="more than this model takes") as caught:
        predictor.predict(many)
    assert status_of(caught.value) == 400


def test_a_model_without_production_is_not_served(served: cl.Project) -> None:
    served.registry.remove_alias("fraud", "production")
    with pytest.raises(ServingError, match="no production version"):
        served.serving.predictor("fraud")
    with pytest.raises(ServingError, match="no model"):
        served.serving.predictor("nope")


def test_the_budget_report_reads_the_prediction_log(served: cl.Project) -> None:
    predictor = served.serving.predictor("fraud")
    for _ in range(5):
        out = predictor.predict(_instances(served, 20), at=END)
        served.prediction_log.append("fraud", out.records).result()
    report = served.serving.budget("fraud")
    assert report.predictions == 100
    assert set(report.stages) == {"fetch", "transform", "inference", "post"}
    assert report.stages["fetch"].budget_ms is None          # no stage budget declared
    assert report.total.budget_ms == 50.0                   # the default p99
    assert report.stages["inference"].p99_ms >= report.stages["inference"].p50_ms
    assert report.total.p99_ms > 0
    table = served.prediction_log.read("fraud")
    assert table.num_rows == 100
    assert {"id", "score", "decision", "route", "version", "latency_ms"} <= set(
        table.column_names)


def test_predictions_join_their_labels_when_they_arrive(served: cl.Project) -> None:
    from datetime import UTC, datetime

    labels = served.data.labels("chargebacks")
    fraud = labels.filter(pa.compute.equal(labels["is_fraud"], True)).slice(0, 3)
    txns = served.data.read("transactions", ["txn_id", "user_id", "amount", "country"])
    wanted = set(fraud["txn_id"].to_pylist())
    rows = [r for r in txns.to_pylist() if r["txn_id"] in wanted]
    rows.append({**rows[0], "txn_id": "never-labelled"})
    predictor = served.serving.predictor("fraud")
    out = predictor.predict(rows, at=END)
    served.prediction_log.append("fraud", out.records).result()
    shadows = out.after() if out.after else []
    served.prediction_log.append("fraud", shadows).result()
    table = served.serving.predictions("fraud", at=END)
    assert table.num_rows == len(rows)
    assert table["id"].to_pylist() == [p.id for p in out.predictions]
    # A prediction's time is the instant its features were read at.
    assert set(table["time"].to_pylist()) == {END}
    by_subject = dict(zip(table["subject"].to_pylist(), table["label"].to_pylist(), strict=True))
    assert all(by_subject[t] is True for t in wanted)
    # Predicted at END and looked at then: its 60-day window is open, so no label yet — not
    # a negative.
    assert by_subject["never-labelled"] is None
    later = served.serving.predictions("fraud", at=datetime(2099, 1, 1, tzinfo=UTC))
    assert dict(zip(later["subject"].to_pylist(), later["label"].to_pylist(),
                    strict=True))["never-labelled"] is False
    assert table["shadow_version"].to_pylist() == [2] * len(rows)
    assert table["shadow_score"].to_pylist() == [r.score for r in shadows]


def _declare(project: cl.Project, extra: str) -> cl.Project:
    """The project reopened with its fraud serving declaration given ``extra`` arguments."""
    definitions = project.root / "definitions.py"
    text = definitions.read_text()
    declared = re.search(r'default_decision="allow", fallback=0\.01[^)]*\)', text)
    assert declared is not None
    definitions.write_text(text.replace(declared.group(0),
                                        f'default_decision="allow", fallback=0.01, {extra})'))
    project.close()
    return cl.Project(project.root)


def test_each_prediction_says_which_features_were_missing_and_why(served: cl.Project) -> None:
    known = _instances(served, 1)[0]
    unknown = {**known, "user_id": "nobody-at-all"}
    out = served.serving.predictor("fraud").predict([known, unknown], at=END)
    seen, unseen = out.predictions
    columns = served.serving.predictor("fraud").versions["production"].columns
    view_columns = [c for c in columns if c.startswith("user_")]
    assert view_columns
    assert set(unseen.missing or {}) >= set(view_columns)
    assert {unseen.missing[c] for c in view_columns} == {"no_record"}   # type: ignore[index]
    assert all(seen.missing is None or seen.missing.get(c) != "no_record" for c in columns)
    assert not unseen.fallback                         # the default: score it anyway
    assert out.records[1].missing == unseen.missing
    assert unseen.to_dict()["missing"] == unseen.missing


def test_the_declaration_says_what_too_much_missing_does(served: cl.Project) -> None:
    known = _instances(served, 1)[0]
    unknown = {**known, "user_id": "nobody-at-all"}
    project = _declare(served, 'on_missing="fallback", max_missing=0.3')
    out = project.serving.predictor("fraud").predict([known, unknown], at=END)
    seen, unseen = out.predictions
    assert not seen.fallback
    assert unseen.fallback
    assert unseen.score == 0.01
    assert "features missing" in (unseen.fallback_reason or "")
    assert out.records[1].fallback_reason == unseen.fallback_reason
    project = _declare(project, 'on_missing="reject"')
    with pytest.raises(RequestError, match=r"instance 1: .* features missing"):
        project.serving.predictor("fraud").predict([known, unknown], at=END)
    project.close()
    with pytest.raises(cl.errors.DefinitionError, match="on_missing"):
        cl.Serving("fraud", on_missing="drop")
    with pytest.raises(cl.errors.DefinitionError, match="max_missing"):
        cl.Serving("fraud", max_missing=1.5)
