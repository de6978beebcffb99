"""Definitions: parsing, hashing, versioning, and a clear error for every bad declaration."""

from __future__ import annotations

import pytest

import closedloop as cl
from closedloop.errors import DefinitionError, UnknownFeatureError
from closedloop.features.catalog import Catalog
from closedloop.features.windows import DAY, HOUR, MINUTE, SECOND, hop_for, parse_window

user = cl.Entity("user", key="user_id")
txns = cl.EventSource("txns", path="t.parquet", timestamp="ts", arrival="arr",
                      schema={"user_id": str, "amount": float, "country": str})


@pytest.mark.parametrize(("text", "micros"), [("30s", 30 * SECOND), ("5m", 5 * MINUTE),
                                              ("1h", HOUR), ("90d", 90 * DAY), ("2w", 14 * DAY)])
def test_windows_parse(text: str, micros: int) -> None:
    assert parse_window(text) == micros


@pytest.mark.parametrize("bad", ["", "1", "h", "0h", "1.5h", "1y", "-1d", "400d", 5])
def test_bad_window_names_the_value(bad: object) -> None:
    with pytest.raises(DefinitionError, match=repr(bad) if bad != 5 else "5"):
        cl.Agg("amount", "sum", windows=[bad])  # type: ignore[list-item]


def test_hop_divides_the_window_into_at_least_12_pieces() -> None:
    for text in ["1s", "13s", "125s", "5m", "10m", "1h", "90m", "1d", "7d", "30d", "90d"]:
        w = parse_window(text)
        h = hop_for(w)
        assert w % h == 0
        assert w // h >= 12 or h == SECOND


def test_feature_names_and_hash_change_with_the_definition() -> None:
    a = cl.FeatureView("v", entity=user, source=txns,
                       aggregations=[cl.Agg("amount", "sum", windows=["1h", "1d"])])
    b = cl.FeatureView("v", entity=user, source=txns,
                       aggregations=[cl.Agg("amount", "sum", windows=["1h", "2d"])])
    same = cl.FeatureView("v", entity=user, source=txns,
                          aggregations=[cl.Agg("amount", "sum", windows=["60m", "24h"])])
    assert a.feature_names == ("amount_sum_1h", "amount_sum_1d")
    assert a.hash != b.hash
    assert a.hash == same.hash            # the same windows spelled differently
    moved = cl.EventSource("txns", path="elsewhere/", timestamp="ts", arrival="arr",
                           schema=txns.schema)
    assert moved.hash == txns.hash        # where the data lives is not what it means


@pytest.mark.parametrize(("make", "match"), [
    (lambda: cl.Agg("amount", "median", windows=["1h"]), "median"),
    (lambda: cl.Agg("amount", "sum", windows="1h"), "list of windows"),
    (lambda: cl.FeatureView("v", entity=user, source=txns), "exactly one"),
    (lambda: cl.FeatureView("v-1", entity=user, source=txns, features=["amount"]), "v-1"),
    (lambda: cl.FeatureView("v", entity=user, source=txns, version=0, features=["amount"]),
     "version 0"),
    (lambda: cl.FeatureView("v", entity=user, source=txns, features=["nope"]), "nope"),
    (lambda: cl.FeatureView("v", entity=user, source=txns,
                            aggregations=[cl.Agg("country", "sum", windows=["1h"])]), "country"),
    (lambda: cl.FeatureView("v", entity=user, source=txns, features=["amount"], ttl="soon"),
     "soon"),
    (lambda: cl.FeatureView("v", entity=user, source=txns, features=["amount"],
                            defaults={"other": 0}), "other"),
    (lambda: cl.FeatureView("v", entity=user, source=txns,
                            aggregations=[cl.Agg("amount", "sum", windows=["1h", "60m"])]),
     "more than once"),
    (lambda: cl.FeatureView("v", entity=user, source=cl.TableSource(
        "t", path="x", timestamp="ts"), aggregations=[cl.Agg("a", "sum", windows=["1h"])]),
     "EventSource"),
    (lambda: cl.EventSource("s", path="", timestamp="ts"), "no path"),
    (lambda: cl.EventSource("s", path="x", timestamp="ts", schema={"a": list}), "list"),
])
def test_bad_definitions_raise_definition_errors(make, match: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(DefinitionError, match=match) as info:
        make()
    assert info.value.fix  # every error says what to do


def test_duplicate_names_are_refused() -> None:
    v1 = cl.FeatureView("v", entity=user, source=txns, features=["amount"])
    v1_other = cl.FeatureView("v", entity=user, source=txns, features=["country"])
    with pytest.raises(DefinitionError, match="defined twice"):
        Catalog([v1, v1_other])
    other_user = cl.Entity("user", key="uid")
    with pytest.raises(DefinitionError, match="two different entity"):
        Catalog([user, other_user])


def test_versions_live_side_by_side_and_references_resolve() -> None:
    v1 = cl.FeatureView("v", entity=user, source=txns, features=["amount"])
    v2 = cl.FeatureView("v", entity=user, source=txns, version=2, features=["amount", "country"])

    @cl.transform(inputs=["v@1.amount", "request.amount"])
    def diff(c):  # type: ignore[no-untyped-def]
        return c["request.amount"] - c["v@1.amount"]

    catalog = Catalog([v1, v2, diff])
    res = catalog.resolve(["v.country", "v@1.amount", "diff"])
    assert [str(r) for r in res.features] == ["v@2.country", "v@1.amount"]
    assert res.request_inputs == ("amount",)
    assert [t.name for t in res.transforms] == ["diff"]
    with pytest.raises(UnknownFeatureError, match="no version 3"):
        catalog.resolve(["v@3.amount"])
    with pytest.raises(UnknownFeatureError, match="no feature 'country'"):
        catalog.resolve(["v@1.country"])
    with pytest.raises(UnknownFeatureError, match="no feature view is named 'w'"):
        catalog.resolve(["w.amount"])
    with pytest.raises(UnknownFeatureError, match="does not parse"):
        catalog.resolve(["not a ref"])
    with pytest.raises(UnknownFeatureError, match="twice"):
        catalog.resolve(["v.amount", "v.amount"])


def test_transform_inputs_are_checked_when_the_catalog_is_built() -> None:
    @cl.transform(inputs=["v.missing"])
    def broken(c):  # type: ignore[no-untyped-def]
        return c["v.missing"]

    v1 = cl.FeatureView("v", entity=user, source=txns, features=["amount"])
    with pytest.raises(UnknownFeatureError, match="missing"):
        Catalog([v1, broken])


def test_transform_hash_follows_its_code() -> None:
    @cl.transform(inputs=["request.a"])
    def f(c):  # type: ignore[no-untyped-def]
        return c["request.a"] + 1

    @cl.transform(inputs=["request.a"], name="f")
    def g(c):  # type: ignore[no-untyped-def]
        return c["request.a"] + 2

    assert f.name == g.name == "f"
    assert f.hash != g.hash
