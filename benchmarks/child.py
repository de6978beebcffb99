"""One system run in a fresh process: ``python -m benchmarks.child WORKLOAD SYSTEM DATA OUT``.

Prints ``{"seconds": ..., "peak_mb": ...}``.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from benchmarks.workloads import WORKLOADS


def main() -> None:
    workload, system, data, out = sys.argv[1:5]
    module = WORKLOADS[workload]
    fn = module.SYSTEMS[system]
    job: Callable[[], Any]
    if system in module.SETUP:
        job = fn(Path(data))            # set-up outside the timing; returns the timed job
    else:
        def job() -> object:
            return fn(Path(data))
    start = time.perf_counter()
    result = job()
    seconds = time.perf_counter() - start
    # A system may return (table, figures) to report more than its wall time (p50_ms, per_s).
    table, figures = result if isinstance(result, tuple) else (result, {})
    pq.write_table(table, out)
    print(json.dumps({"seconds": seconds, "peak_mb": _peak_mb(), **figures}))


def _peak_mb() -> float:
    """This process's peak resident memory (VmHWM: per address space, reset by exec, unlike
    getrusage's ru_maxrss, which a child inherits from a large parent)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    import resource  # not Linux: fall back to ru_maxrss

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


if __name__ == "__main__":
    main()
