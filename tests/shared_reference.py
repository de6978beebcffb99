"""Where the shared reference cases are: ``$CLOSEDLOOP_REFERENCE``, else ``shared/reference``
beside the checkout, else this workplace's ``/work/shared/reference``. They are read from
there at test time, never copied into the project."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def reference_dir(marker: str) -> Path | None:
    """The reference folder that holds ``marker`` (a path inside it), or None."""
    for candidate in (os.environ.get("CLOSEDLOOP_REFERENCE"), ROOT.parent / "shared" /
                      "reference", "/work/shared/reference"):
        if candidate and (Path(candidate) / marker).is_file():
            return Path(candidate)
    return None


def require(marker: str) -> Path:
    """The folder holding ``marker``; skips the test without it (fails it under CI)."""
    found = reference_dir(marker)
    if found is None:
        message = f"../shared/reference/{marker} not found (set CLOSEDLOOP_REFERENCE)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message)
        pytest.skip(message)
    return found
