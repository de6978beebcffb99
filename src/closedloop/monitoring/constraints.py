"""Constraints checked on every served prediction, from the version's reference: cheap
enough for the request path (a few comparisons per feature, no allocation per record).

The constraints are those the batch monitor counts (``closedloop.monitoring.signals``):
``missing_input`` (a feature null or NaN), ``nonfinite_input`` (±inf), ``out_of_range``
(outside the reference's [min, max]), ``unseen_category``, ``score_out_of_range`` (outside
[0, 1] or not finite) and ``schema_mismatch`` (the record lacks a feature the version reads).

>>> import pyarrow as pa
>>> from closedloop.monitoring.reference import fit_reference
>>> ref = fit_reference(pa.table({"x": [0.0, 10.0], "(score)": [0.1, 0.2]}))
>>> ConstraintChecker(ref).check({"x": 50.0}, 0.3)
('out_of_range',)
>>> ConstraintChecker(ref).check({"x": float("nan")}, 1.5)
('missing_input', 'score_out_of_range')
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from closedloop.monitoring.reference import Reference

_ABSENT = object()

#: Every constraint, in the order a check reports them.
CONSTRAINTS = ("missing_input", "nonfinite_input", "out_of_range", "unseen_category",
               "score_out_of_range", "schema_mismatch")


class ConstraintChecker:
    """Checks one version's served records (see module). ``keys``: each feature's key in
    the served record (its pinned column) where it differs from the reference's name."""

    def __init__(self, reference: Reference, keys: Mapping[str, str] | None = None) -> None:
        self.reference = reference
        self.keys = dict(keys or {})
        names = [n for n in reference.columns if not n.startswith("(")]
        self._numeric = [(self.keys.get(n, n), reference.columns[n].low,
                          reference.columns[n].high) for n in names
                         if reference.columns[n].kind == "numeric"]
        self._categorical = [(self.keys.get(n, n), frozenset(reference.columns[n].categories))
                             for n in names if reference.columns[n].kind == "categorical"]

    def check(self, features: Mapping[str, Any], score: float) -> tuple[str, ...]:
        """The constraints one record violates (each named once)."""
        missing = nonfinite = outside = unseen = schema = False
        for key, low, high in self._numeric:
            value = features.get(key, _ABSENT)
            try:
                if low <= value <= high:         # the common case: one comparison
                    continue
            except TypeError:                    # None, absent, or not a number
                if value is None:
                    missing = True
                else:
                    schema = True
                continue
            if value != value:
                missing = True
            elif value in (math.inf, -math.inf):
                nonfinite = True
            else:
                outside = True
        for key, known in self._categorical:
            if key not in features:
                schema = True
            elif features[key] is None:
                missing = True
            elif str(features[key]) not in known:
                unseen = True
        bad_score = not (0.0 <= score <= 1.0)        # NaN fails both comparisons
        found = (missing, nonfinite, outside, unseen, bad_score, schema)
        return tuple(name for name, hit in zip(CONSTRAINTS, found, strict=True) if hit)


__all__ = ["CONSTRAINTS", "ConstraintChecker"]
