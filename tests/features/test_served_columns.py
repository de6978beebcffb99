"""A served batch's transform inputs are the arrays Arrow would build (the fast path of
``_column`` against Arrow itself): same dtype, same values, NaN where a float is missing."""

from __future__ import annotations

import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from closedloop.features.transforms import _column

_values = st.lists(st.none() | st.floats(allow_nan=False) | st.text(max_size=5)
                   | st.integers(-5, 5) | st.booleans(), min_size=1, max_size=8)


@settings(max_examples=400, deadline=None)
@given(values=_values, typed=st.booleans())
def test_served_columns_are_what_arrow_builds(values: list, typed: bool) -> None:
    arrow_type = pa.float64() if typed else None
    try:
        want = pa.array(values, type=arrow_type, from_pandas=True).to_numpy(
            zero_copy_only=False)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError):
        return                                   # Arrow refuses: nothing to agree on
    got = _column(values, arrow_type)
    assert got.dtype == want.dtype
    assert got.shape == want.shape
    for g, w in zip(got.tolist(), want.tolist(), strict=True):
        assert (g == w) or (g != g and w != w) or (g is None and w is None), (g, w)
