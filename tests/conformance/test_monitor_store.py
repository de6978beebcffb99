"""The monitor store's shared checks on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest

from closedloop.backends.metadata import SQLMetadataStore
from closedloop.backends.monitorstore import SQLMonitorStore
from closedloop.testing import MONITOR_STORE_CHECKS, check_monitor_store
from tests.conformance.test_metadata_store import metadata_url  # noqa: F401  (fixture)


@pytest.mark.parametrize("check", list(MONITOR_STORE_CHECKS))
def test_monitor_store_conformance(metadata_url: str, check: str) -> None:  # noqa: F811
    metadata = SQLMetadataStore(metadata_url)
    try:
        check_monitor_store(SQLMonitorStore(metadata), only=check)
    finally:
        metadata.close()
