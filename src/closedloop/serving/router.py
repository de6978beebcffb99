"""Deterministic, sticky routing of requests by a hash of their unit id.

A unit's position is the first 8 bytes of BLAKE2b(model, unit) as a fraction of 2^64: the
same unit always lands at the same position (sticky across requests, workers and restarts),
positions of different models are independent, and positions are uniform, so each route's
share of units is its declared share. Routes take consecutive intervals: holdout, canary,
then each A/B arm in declaration order; production the rest.

>>> from closedloop.serving.spec import Serving
>>> r = Router(Serving("fraud", unit="user_id", canary=0.1, holdout=0.05))
>>> r.route({"user_id": "u1"}) == r.route({"user_id": "u1"})
True
>>> sorted({r.route({"user_id": f"u{i}"}) for i in range(200)})
['canary', 'holdout', 'production']
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from closedloop.errors import RequestError
from closedloop.serving.spec import Serving

_SCALE = float(2**64)


class Router:
    """Routes of one model's requests (see module)."""

    def __init__(self, serving: Serving) -> None:
        self.serving = serving
        self.unit = serving.unit
        self._salt = serving.model.encode() + b"\x1f"
        bounds: list[tuple[float, str]] = []
        edge = 0.0
        for route, share in (("holdout", serving.holdout), ("canary", serving.canary),
                             *serving.arms.items()):
            if share > 0:
                edge += share
                bounds.append((edge, route))
        self._bounds = bounds

    def position(self, unit: str) -> float:
        """The unit's position in [0, 1)."""
        digest = hashlib.blake2b(self._salt + unit.encode(), digest_size=8).digest()
        return int.from_bytes(digest, "big") / _SCALE

    def unit_of(self, request: Mapping[str, Any]) -> str | None:
        """The request's unit id as text (None when the model routes no traffic)."""
        if self.unit is None:
            return None
        value = request.get(self.unit)
        if value is None:
            raise RequestError(f"the request has no {self.unit!r}, the unit this model routes "
                               "by", field=self.unit, fix=f"send {self.unit!r}")
        if isinstance(value, bool) or not isinstance(value, str | int):
            raise RequestError(f"unit {self.unit!r} is {value!r}; it must be a string or an "
                               "integer", field=self.unit, fix="send the id as text")
        return str(value)

    def route(self, request: Mapping[str, Any]) -> str:
        """The route of a request: ``holdout``, ``canary``, an arm's alias or
        ``production``."""
        if not self._bounds:
            return "production"
        unit = self.unit_of(request)
        assert unit is not None                      # bounds exist only with a unit
        at = self.position(unit)
        for edge, route in self._bounds:
            if at < edge:
                return route
        return "production"
