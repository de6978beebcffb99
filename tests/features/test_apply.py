"""`apply`: a plan first, registration all or nothing, registered versions immutable."""

from __future__ import annotations

import pytest

import closedloop as cl
from closedloop.errors import DefinitionError, VersionConflict

V1 = '''
import closedloop as cl
user = cl.Entity("user", key="user_id")
txns = cl.EventSource("txns", path="data/t.parquet", timestamp="ts",
                      schema={"user_id": str, "amount": float})
v = cl.FeatureView("v", entity=user, source=txns,
                   aggregations=[cl.Agg("amount", "sum", windows=["1h"])])
'''
CHANGED_IN_PLACE = V1.replace('windows=["1h"]', 'windows=["2h"]')
NEW_VERSION = V1 + '''
v2 = cl.FeatureView("v", entity=user, source=txns, version=2,
                    aggregations=[cl.Agg("amount", "sum", windows=["2h"])])
'''


def _reopen(project: cl.Project, definitions: str) -> cl.Project:
    (project.root / "definitions.py").write_text(definitions)
    project.close()
    return cl.Project(project.root)


def test_plan_then_apply_then_unchanged(make_project) -> None:  # type: ignore[no-untyped-def]
    p = make_project(V1)
    plan = p.plan()
    assert {i.action for i in plan.items} == {"add"}
    assert p.metadata.definitions() == []          # planning writes nothing
    p.apply()
    assert len(p.metadata.definitions()) == 3
    again = p.apply()
    assert {i.action for i in again.items} == {"unchanged"}
    assert len(p.metadata.definitions()) == 3


def test_changing_a_registered_version_in_place_is_refused_and_writes_nothing(make_project) -> None:  # type: ignore[no-untyped-def]
    p = make_project(V1)
    p.apply()
    before = p.metadata.definitions()
    p = _reopen(p, CHANGED_IN_PLACE + '\nother = cl.Entity("merchant", key="merchant_id")\n')
    try:
        with pytest.raises(VersionConflict, match="feature_view v v1") as info:
            p.apply()
        assert "new version" in (info.value.fix or "")
        assert p.metadata.definitions() == before    # not even the new entity
    finally:
        p.close()


def test_a_new_version_registers_beside_the_old(make_project) -> None:  # type: ignore[no-untyped-def]
    p = make_project(V1)
    p.apply()
    p = _reopen(p, NEW_VERSION)
    try:
        plan = p.apply()
        added = [(i.definition.name, i.definition.version) for i in plan.of("add")]
        assert added == [("v", 2)]
        versions = sorted(d.version for d in p.metadata.definitions() if d.name == "v")
        assert versions == [1, 2]
        assert p.catalog.resolve(["v@1.amount_sum_1h", "v.amount_sum_2h"]).features
    finally:
        p.close()


def test_a_changed_source_is_a_new_revision(make_project) -> None:  # type: ignore[no-untyped-def]
    p = make_project(V1)
    p.apply()
    changed = NEW_VERSION.replace('"amount": float}', '"amount": float, "country": str}')
    changed = changed.replace("version=2", "version=3")
    # v1 reads the changed source, so v1's hash changes too: that must be refused.
    p = _reopen(p, changed)
    try:
        with pytest.raises(VersionConflict):
            p.apply()
    finally:
        p.close()


def test_a_broken_definitions_module_is_a_clear_error(make_project) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(DefinitionError, match="ZeroDivisionError"):
        make_project("x = 1 / 0\n")


def test_a_registered_version_stays_usable_after_the_code_moves_on(make_project) -> None:  # type: ignore[no-untyped-def]
    from datetime import UTC, datetime, timedelta

    import pyarrow as pa
    import pyarrow.parquet as pq

    p = make_project(V1)
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    ts = pa.array([t0, t0 + timedelta(minutes=90)], pa.timestamp("us", tz="UTC"))
    pq.write_table(pa.table({"user_id": ["a", "a"], "ts": ts, "amount": [1.0, 2.0]}),
                   p.root / "data" / "t.parquet")
    p.apply()
    only_v2 = V1.replace("version=", "").replace(
        'v = cl.FeatureView("v", entity=user, source=txns,',
        'v = cl.FeatureView("v", entity=user, source=txns, version=2,').replace(
        'windows=["1h"]', 'windows=["2h"]')
    p = _reopen(p, only_v2)
    try:
        assert [i.definition.version for i in p.apply().of("add")] == [2]
        rows = pa.table({"user_id": ["a"], "t": pa.array([t0 + timedelta(minutes=100)],
                                                         pa.timestamp("us", tz="UTC"))})
        out = p.features.training_set(rows, ["v@1.amount_sum_1h", "v.amount_sum_2h"])
        assert out["v@1.amount_sum_1h"].to_pylist() == [2.0]
        assert out["v.amount_sum_2h"].to_pylist() == [3.0]
    finally:
        p.close()


MODELLED = V1.replace('windows=["1h"]', 'windows=["1h", "7d"]') + '''
labels = cl.LabelSource("chargebacks", path="data/cb.parquet", subject="txn_id",
                        timestamp="ts", label="is_fraud", settled_at="settled_at",
                        max_delay="7d", default=False)
txn_rows = cl.EventSource("txn_rows", path="data/r.parquet", timestamp="ts", id="txn_id",
                          schema={"user_id": str, "amount": float})
m = cl.Model("fraud", features=[{features}], label="{label}", rows="{rows}",
             trainer=cl.LightGBMTrainer(num_boost_round=5))
s = cl.Serving("{served}", subject="{subject}")
'''


def _modelled(features: str = '"v.amount_sum_1w"', label: str = "chargebacks",
              rows: str = "txn_rows", served: str = "fraud", subject: str = "txn_id") -> str:
    text = MODELLED
    for key, value in {"features": features, "label": label, "rows": rows, "served": served,
                       "subject": subject}.items():
        text = text.replace("{" + key + "}", value)
    return text


def test_apply_checks_models_and_servings_and_suggests_the_closest_name(  # type: ignore[no-untyped-def]
        make_project) -> None:
    """A wrong name in a model or a serving declaration fails at apply (and in the plan),
    every one named with the closest defined name, before anything is registered."""
    p = make_project(_modelled())
    assert {i.action for i in p.plan().items} == {"add"}       # all well: the plan goes on
    cases = [
        (_modelled(features='"v.amount_sum_7d"'), "did you mean 'amount_sum_1w'?"),
        (_modelled(features='"vv.amount_sum_1w"'), "did you mean 'v'?"),
        (_modelled(label="chargeback"), "label 'chargeback' names no source — did you mean "
                                        "'chargebacks'?"),
        (_modelled(label="txns"), "label 'txns' is not a LabelSource"),
        (_modelled(rows="txn_row"), "rows 'txn_row' names no source — did you mean "
                                    "'txn_rows'?"),
        (_modelled(subject="txn"), "subject 'txn' is not a column of rows source 'txn_rows' "
                                   "— did you mean 'txn_id'?"),
    ]
    for definitions, message in cases:
        p = _reopen(p, definitions)
        for call in (p.plan, p.apply):
            with pytest.raises(DefinitionError) as refused:
                call()
            assert message in refused.value.message, (message, refused.value.message)
        assert p.metadata.definitions() == []                   # nothing registered
    # A serving declaration of no model is refused as soon as the project opens.
    (p.root / "definitions.py").write_text(_modelled(served="frau"))
    p.close()
    with pytest.raises(cl.errors.ServingError, match="did you mean 'fraud'"):
        cl.Project(p.root)
    p = _reopen(p, _modelled(features='"v.amount_sum_7d"', rows="nope"))
    with pytest.raises(DefinitionError, match="2 declaration problem"):
        p.apply()
