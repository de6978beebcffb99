"""The event log: compaction merges parts and never shows a row twice or loses one — after
each interrupted step, and when a real compaction process is SIGKILLed at random moments."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from closedloop.backends.eventlog import EventLog


def _rows(log: EventLog) -> list[int]:
    parts = log.parts()
    if not parts:
        return []
    return sorted(pa.concat_tables([pq.read_table(p) for p in parts])["x"].to_pylist())


def _fill(log: EventLog, n_parts: int, per_part: int = 3) -> list[int]:
    for i in range(n_parts):
        log.append(pa.table({"x": list(range(i * per_part, (i + 1) * per_part))}))
    return list(range(n_parts * per_part))


def test_compaction_merges_small_parts_and_keeps_every_row_once(tmp_path: Path) -> None:
    log = EventLog(tmp_path, small_rows=30)
    want = _fill(log, 6)
    big = pa.table({"x": list(range(100, 140))})       # not small: left as it is
    log.append(big)
    want += big["x"].to_pylist()
    assert len(log.parts()) == 7
    assert log.compact() == 6
    assert len(log.parts()) == 2
    assert _rows(log) == want
    log.append(pa.table({"x": [999]}))
    assert log.compact() == 2                            # the merged part is small too
    assert _rows(log) == [*want, 999]
    assert log.compact() == 0                            # one small part: nothing to do


def test_replaced_parts_are_deleted_after_the_grace_period(tmp_path: Path) -> None:
    log = EventLog(tmp_path, grace=0.0)
    want = _fill(log, 4)
    log.compact()
    assert len(list(tmp_path.glob("part-*.parquet"))) == 5      # replaced parts kept a while
    time.sleep(0.01)
    log.append(pa.table({"x": [50]}))
    log.compact()                                        # tidies the first compaction
    time.sleep(0.01)
    log.compact()
    assert len(list(tmp_path.glob("part-*.parquet"))) == 1
    assert _rows(log) == [*want, 50]


def test_every_interrupted_step_leaves_the_old_parts_or_the_merged_one(tmp_path: Path) -> None:
    log = EventLog(tmp_path)
    want = _fill(log, 3)
    names = [p.name for p in log.parts()]
    merged = pa.concat_tables([pq.read_table(p) for p in log.parts()])
    output = names[-1].removesuffix(".parquet") + "-cdead00.parquet"
    # 1. crashed while staging the merged part: nothing is in force.
    pq.write_table(merged, tmp_path / f".staged-{output}")
    assert _rows(log) == want
    # 2. crashed after the journal, before the merged part went into place.
    (tmp_path / ".compact-1.json").write_text(json.dumps({"output": output, "replaces": names}))
    assert _rows(log) == want
    # 3. crashed after the merged part went into place: it alone is live.
    os.replace(tmp_path / f".staged-{output}", tmp_path / output)
    assert [p.name for p in log.parts()] == [output]
    assert _rows(log) == want
    # 4. that merged part merged again, and deleted, while the first parts are still there.
    second = output.removesuffix(".parquet") + "-cbeef00.parquet"
    pq.write_table(merged, tmp_path / second)
    (tmp_path / ".compact-2.json").write_text(json.dumps({"output": second,
                                                          "replaces": [output]}))
    (tmp_path / output).unlink()
    assert [p.name for p in log.parts()] == [second]
    assert _rows(log) == want


def test_a_void_journal_is_dropped_and_the_log_compacts(tmp_path: Path) -> None:
    log = EventLog(tmp_path)
    want = _fill(log, 3)
    names = [p.name for p in log.parts()]
    (tmp_path / ".compact-x.json").write_text(json.dumps({"output": "part-gone.parquet",
                                                          "replaces": names}))
    (tmp_path / ".staged-part-gone.parquet").write_bytes(b"half")
    assert log.compact() == 3
    assert not (tmp_path / ".compact-x.json").exists()
    assert not list(tmp_path.glob(".staged-*"))
    assert _rows(log) == want


_COMPACT_LOOP = """
import sys, pyarrow as pa
from closedloop.backends.eventlog import EventLog
log = EventLog(sys.argv[1], grace=0.0)
i = int(sys.argv[2])
while True:
    log.append(pa.table({"x": list(range(i, i + 5))}))
    i += 5
    print(i, flush=True)
    log.compact()
"""


def test_a_compaction_killed_at_random_moments_loses_and_repeats_nothing(tmp_path: Path) -> None:
    log = EventLog(tmp_path)
    want = _fill(log, 40, per_part=5)
    rng = random.Random(7)
    for _ in range(12):
        proc = subprocess.Popen([sys.executable, "-c", _COMPACT_LOOP, str(tmp_path),
                                 str(len(want) + 10_000 * (_ + 1))], stdout=subprocess.PIPE,
                                text=True)
        assert proc.stdout is not None
        proc.stdout.readline()                           # it is running
        time.sleep(rng.uniform(0, 0.3))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        got = _rows(log)
        assert len(got) == len(set(got)), "a row is shown twice"
        assert set(want) <= set(got), "a row was lost"
        want = got                                       # what the killed loop appended stays
    assert log.compact() >= 0
    assert _rows(log) == want
