"""Tables at the boundary: whatever a caller passes as rows — a pyarrow Table or RecordBatch,
a pandas 2 or pandas 3 DataFrame, any object with the Arrow PyCapsule stream interface
(polars, DuckDB) — becomes one pyarrow Table in closedloop's column types, so nothing
downstream meets a type it does not expect:

- ``large_string`` and ``string_view`` (pandas 3's default ``str`` arrives as
  ``large_string``) become ``string``; ``large_binary`` and ``binary_view`` become
  ``binary``; ``large_list`` becomes ``list`` (its items normalised too);
- dictionary columns (a pandas ``category``) are decoded to their values' type.

Instants are left to ``closedloop.data.instants``, which converts them where each is read.

>>> import pyarrow as pa
>>> as_table(pa.table({"k": pa.array(["a"], pa.large_string())})).schema.field("k").type
DataType(string)
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from closedloop.errors import DataError


def normal_type(t: pa.DataType) -> pa.DataType:
    """``t`` in closedloop's column types (see module)."""
    if pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return pa.string()
    if pa.types.is_large_binary(t) or pa.types.is_binary_view(t):
        return pa.binary()
    if pa.types.is_dictionary(t):
        return normal_type(t.value_type)
    if pa.types.is_large_list(t) or pa.types.is_list(t):
        return pa.list_(normal_type(t.value_type))
    if pa.types.is_struct(t):
        return pa.struct([f.with_type(normal_type(f.type)) for f in t])
    return t


def normalise(table: pa.Table) -> pa.Table:
    """``table`` with every column in closedloop's types (the same table when it already is)."""
    schema = pa.schema([f.with_type(normal_type(f.type)) for f in table.schema],
                       metadata=table.schema.metadata)
    return table if schema.equals(table.schema) else table.cast(schema)


def is_table(value: Any) -> bool:
    """Whether ``value`` is rows ``as_table`` takes (not a path or a list of them)."""
    return (isinstance(value, pa.Table | pa.RecordBatch) or hasattr(value, "__arrow_c_stream__")
            or type(value).__name__ == "DataFrame")


def as_table(rows: Any, what: str = "rows") -> pa.Table:
    """``rows`` as a pyarrow Table in closedloop's column types (see module)."""
    if isinstance(rows, pa.Table):
        return normalise(rows)
    if isinstance(rows, pa.RecordBatch):
        return normalise(pa.Table.from_batches([rows]))
    if is_table(rows):
        try:
            return normalise(pa.table(rows))
        except (TypeError, pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise DataError(f"{what} could not be read as a table: {exc}",
                            fix="pass a pyarrow.Table or a pandas DataFrame") from exc
    raise DataError(f"{what} of type {type(rows).__name__} are not a table",
                    fix="pass a pyarrow.Table or a pandas DataFrame")
