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
from dataclasses import dataclass
from typing import Any

from closedloop.errors import RequestError
from closedloop.serving.spec import Serving

_SCALE = float(2**64)


def position(salt: bytes, unit: str) -> float:
    """A unit's position in [0, 1) under ``salt``: uniform, and independent across salts."""
    digest = hashlib.blake2b(salt + unit.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / _SCALE


#: The traffic steps of a ladder, where a share of the units goes to the candidate.
TRAFFIC_STEPS = ("canary", "ab", "ramp")


@dataclass(frozen=True, slots=True)
class LadderSplit:
    """A running ladder's hold on a model's traffic (``closedloop.registry.ladder``): the
    candidate version, the step (``shadow``: it scores every request after the response;
    a traffic step: it serves the units whose position under the ladder's own ``salt`` is
    below ``share``), and the label its predictions' records carry (``step``). The salt is
    the ladder's, not the model's: a unit's group does not depend on the holdout's, and as
    the share grows the units already on the candidate stay there."""

    candidate: int
    step: str
    share: float
    label: str
    salt: bytes

    @classmethod
    def of(cls, model: str, candidate: int, step: str, share: float, label: str,
           attempt: int) -> LadderSplit:
        salt = f"{model}\x1fladder\x1f{attempt}\x1f".encode()
        return cls(candidate, step, share if step in TRAFFIC_STEPS else 0.0, label, salt)

    def takes(self, unit: str) -> bool:
        """Whether the unit is on the candidate."""
        return self.share > 0 and position(self.salt, unit) < self.share


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
        return position(self._salt, unit)

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

    def route(self, request: Mapping[str, Any], split: LadderSplit | None = None) -> str:
        """The route of a request: ``holdout``, ``canary``, an arm's alias, the ladder's
        traffic step (its candidate's units: see ``LadderSplit``) or ``production``."""
        if not self._bounds and (split is None or split.share <= 0):
            return "production"
        unit = self.unit_of(request)
        assert unit is not None                      # routes exist only with a unit
        if self._bounds:
            at = self.position(unit)
            for edge, route in self._bounds:
                if at < edge:
                    return route
        if split is not None and split.takes(unit):
            return split.step
        return "production"
