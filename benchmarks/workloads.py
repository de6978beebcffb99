"""The registry of workloads: name -> module with SYSTEMS, SETUP, ANCHOR, OUTPUTS, DATA."""

from __future__ import annotations

from types import ModuleType

from benchmarks import pit, windows

WORKLOADS: dict[str, ModuleType] = {"pit": pit, "windows": windows}
