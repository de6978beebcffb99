"""Shared fixtures. Service tests mark themselves; under CI=true a missing service fails them."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

import closedloop as cl

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.fixture
def project_dir(tmp_path: Path) -> Path:
    """An empty project folder made by ``init_project``."""
    return cl.init_project(tmp_path / "proj", name="test")


@pytest.fixture
def make_project(tmp_path: Path) -> Iterator[object]:
    """Write definitions into a fresh project folder and open it."""
    opened: list[cl.Project] = []

    def make(definitions: str, name: str = "proj") -> cl.Project:
        root = cl.init_project(tmp_path / name, name="test", definitions=definitions)
        project = cl.Project(root)
        opened.append(project)
        return project

    yield make
    for p in opened:
        p.close()
