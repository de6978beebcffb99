"""DuckDB's column types as the project's logical types (``string``, ``int64``, ``float64``,
``bool``, ``timestamp``; ``timestamp_naive`` for an instant without a zone), and back."""

from __future__ import annotations

from closedloop.data.sources import LogicalType

SQL_TYPES: dict[LogicalType, str] = {
    "string": "VARCHAR", "int64": "BIGINT", "float64": "DOUBLE", "bool": "BOOLEAN",
    "timestamp": "TIMESTAMPTZ",
}


NANO_INSTANTS = ("TIMESTAMPTZ_NS", "TIMESTAMP_NS WITH TIME ZONE")


def logical(duck_type: str) -> str:
    t = duck_type.upper()
    if t in ("VARCHAR", "STRING", "TEXT") or t.startswith("VARCHAR"):
        return "string"
    if t in ("TINYINT", "SMALLINT", "INTEGER", "BIGINT", "UTINYINT", "USMALLINT", "UINTEGER",
             "UBIGINT", "HUGEINT"):
        return "int64"
    if t in ("FLOAT", "DOUBLE", "REAL") or t.startswith("DECIMAL"):
        return "float64"
    if t == "BOOLEAN":
        return "bool"
    if t in ("TIMESTAMP WITH TIME ZONE", "TIMESTAMPTZ", *NANO_INSTANTS):
        return "timestamp"           # nanosecond instants: read to the µs (check_source)
    if t.startswith("TIMESTAMP") or t == "DATE":
        return "timestamp_naive"
    return t.lower()



COMPATIBLE = {
    "string": {"string"}, "int64": {"int64"}, "float64": {"float64", "int64"},
    "bool": {"bool"}, "timestamp": {"timestamp"},
}
