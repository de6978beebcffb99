"""Routing: sticky per unit, the declared shares (chi-square), independent across models."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from closedloop.errors import DefinitionError, RequestError
from closedloop.serving.router import Router
from closedloop.serving.spec import Serving

SPEC = Serving("fraud", unit="user_id", holdout=0.05, canary=0.1, arms={"challenger": 0.25})
SHARES = {"holdout": 0.05, "canary": 0.1, "challenger": 0.25, "production": 0.6}


def test_route_shares_match_the_declaration() -> None:
    router = Router(SPEC)
    n = 40_000
    routes = [router.route({"user_id": f"user-{i}"}) for i in range(n)]
    names = list(SHARES)
    observed = np.array([routes.count(r) for r in names])
    expected = np.array([SHARES[r] * n for r in names])
    result = stats.chisquare(observed, expected)
    assert result.pvalue > 1e-3, dict(zip(names, observed.tolist(), strict=True))


@settings(max_examples=200, deadline=None)
@given(unit=st.text(min_size=1, max_size=30) | st.integers(-(2**62), 2**62))
def test_a_unit_always_takes_the_same_route(unit: str | int) -> None:
    # A fresh router each time: sticky across processes and restarts, not only in memory.
    first = Router(SPEC).route({"user_id": unit})
    assert all(Router(SPEC).route({"user_id": unit}) == first for _ in range(3))


def test_models_route_independently() -> None:
    a = Router(Serving("a", unit="u", canary=0.5))
    b = Router(Serving("b", unit="u", canary=0.5))
    both = [(a.route({"u": i}), b.route({"u": i})) for i in range(20_000)]
    table = np.array([[sum(1 for x, y in both if x == ra and y == rb)
                       for rb in ("canary", "production")] for ra in ("canary", "production")])
    assert stats.chi2_contingency(table).pvalue > 1e-3


def test_a_request_without_its_unit_is_refused() -> None:
    with pytest.raises(RequestError) as caught:
        Router(SPEC).route({"amount": 3})
    assert caught.value.field == "user_id"
    with pytest.raises(RequestError):
        Router(SPEC).route({"user_id": [1]})
    assert Router(Serving("plain")).route({}) == "production"


@pytest.mark.parametrize("kwargs", [
    {"canary": 1.5, "unit": "u"}, {"canary": 0.6, "holdout": 0.6, "unit": "u"},
    {"canary": 0.1}, {"arms": {"production": 0.1}, "unit": "u"},
    {"decisions": [("review", 0.5), ("block", 0.9)]}, {"decisions": [("block", 2.0)]},
    {"fallback": 3.0}, {"max_instances": 0},
])
def test_a_bad_declaration_is_refused(kwargs: dict) -> None:
    with pytest.raises(DefinitionError):
        Serving("fraud", **kwargs)


def test_two_serving_declarations_of_one_model_are_refused() -> None:
    import types

    from closedloop.serving.spec import servings_from_module

    module = types.ModuleType("defs")
    module.a = Serving("fraud")  # type: ignore[attr-defined]
    module.b = Serving("fraud", holdout=0.1, unit="u")  # type: ignore[attr-defined]
    with pytest.raises(DefinitionError, match="two serving declarations"):
        servings_from_module(module)
    module.b = module.a  # type: ignore[attr-defined]  # the same declaration twice is one
    assert list(servings_from_module(module)) == ["fraud"]
