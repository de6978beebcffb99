"""Fixtures of the feature tests: a project over a small card-transaction history."""

from __future__ import annotations

import pytest

import closedloop as cl
from tests.features.test_online import DEFS, _write


@pytest.fixture
def online_project(make_project):  # type: ignore[no-untyped-def]
    """The project of ``test_online.DEFS`` over 50 users' transactions, logging every served
    vector, opened afresh after the data is written."""
    p = make_project(DEFS + "\n")
    _write(p.root)
    (p.root / "closedloop.toml").write_text("[online]\nlog_sample = 1.0\n")
    p.close()
    opened = cl.Project(p.root)
    yield opened
    opened.close()
