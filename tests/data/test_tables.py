"""Rows at the boundary: the public API takes Arrow tables, pandas 3 frames (``str`` columns
arrive as ``large_string``), pandas-2-style frames (object columns), categoricals and Arrow
string views alike, and gives the same answer for each."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pandas as pd
import pyarrow as pa
import pytest

import closedloop as cl
from closedloop.data.tables import as_table, normal_type
from tests.serving.world import END

FEATURES = ["user_txn.amount_sum_1d", "user_txn.country_last_30d"]


def _pandas3(t: pa.Table) -> Any:
    return t.to_pandas()                          # pandas 3: strings are `str` (large_string)


def _pandas2(t: pa.Table) -> Any:
    frame = t.to_pandas()                         # pandas 2's default: object columns
    for name in frame.columns:
        if pd.api.types.is_string_dtype(frame[name]):
            frame[name] = frame[name].astype(object)
    return frame


def _categorical(t: pa.Table) -> Any:
    frame = t.to_pandas()
    for name in frame.columns:
        if pd.api.types.is_string_dtype(frame[name]):
            frame[name] = frame[name].astype("category")
    return frame


def _views(t: pa.Table) -> pa.Table:
    return t.cast(pa.schema([f.with_type(pa.string_view()) if pa.types.is_string(f.type)
                             else f for f in t.schema]))


def _large(t: pa.Table) -> pa.Table:
    return t.cast(pa.schema([f.with_type(pa.large_string()) if pa.types.is_string(f.type)
                             else f for f in t.schema]))


FORMS: dict[str, Callable[[pa.Table], Any]] = {
    "arrow": lambda t: t, "arrow-large": _large, "arrow-view": _views, "pandas3": _pandas3,
    "pandas2-object": _pandas2, "categorical": _categorical}


def test_pandas_3_strings_are_large_strings() -> None:
    """The premise: pandas 3 hands Arrow `large_string`, which closedloop reads as string."""
    frame = pd.DataFrame({"k": ["a", "b"]})
    assert pa.table(frame).schema.field("k").type in (pa.large_string(), pa.string())
    assert as_table(frame).schema.field("k").type == pa.string()
    assert normal_type(pa.dictionary(pa.int8(), pa.large_string())) == pa.string()
    assert normal_type(pa.large_list(pa.large_string())) == pa.list_(pa.string())


@pytest.mark.parametrize("form", list(FORMS))
def test_the_public_api_takes_every_form_of_rows(served: cl.Project, form: str) -> None:
    convert = FORMS[form]
    rows = served.data.read("transactions", ["txn_id", "user_id", "event_time"]).slice(0, 80)
    want = served.features.training_set(rows, FEATURES, labels="chargebacks", cutoff=END)
    got = served.features.training_set(convert(rows), FEATURES, labels="chargebacks",
                                       cutoff=END)
    assert got.select(want.column_names).equals(want)
    filled = served.features.backfill(convert(want.drop_columns(["user_txn.amount_sum_1d"])),
                                      ["user_txn.amount_sum_1d"])
    assert filled.select(want.column_names).equals(want)
    matured, _ = served.data.matured(convert(rows), "chargebacks", cutoff=END)
    assert matured.num_rows == want.num_rows
    events = served.data.read("transactions").slice(0, 3)
    fresh = events.set_column(events.schema.get_field_index("txn_id"), "txn_id",
                              pa.array([f"new-{form}-{i}" for i in range(3)]))
    assert served.features.push("transactions", convert(fresh), at=END).rows == 3
    assert served.serving.publish("transactions", convert(fresh)) == 3
    report = served.data.ingest("transactions", convert(fresh.set_column(
        0, "txn_id", pa.array([f"ing-{form}-{i}" for i in range(3)]))), at=END)
    assert report.accepted == 3
