"""Instruction counts of the hot loops, for comparisons this noisy machine cannot make by the
clock: each loop runs under ``valgrind --tool=callgrind`` with instrumentation switched on
only around it (``callgrind_control -i on/off``), so set-up is not counted. The same tree
gives the same count to ~0.3% from run to run, whatever else the machine is doing.

    python -m benchmarks.instructions [LOOP ...] [--tree DIR]

Loops: ``push`` (20,000 events of the `push` workload in 40 batches of 500 on the windows
data at scale 0.1, each batch followed by one online read), ``online`` (2,000 single-entity
reads of the `online` workload at an explicit instant), ``online-now`` (the same at "now"),
``windows`` (the `windows` workload's training set, after one warm-up run). ``--tree`` runs
another checkout's ``src`` (for before/after: ``git worktree add /tmp/before <commit>``).
Needs valgrind (Debian's package).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

LOOPS = ("push", "online", "online-now", "windows")


def _toggle(state: str) -> None:
    subprocess.run(["callgrind_control", "-i", state, str(os.getpid())], check=True,
                   capture_output=True)


def _push() -> Callable[[], None]:
    import closedloop as cl
    from benchmarks import push, windows
    from benchmarks.data import windows_data

    data = windows_data(scale=0.1)
    root = Path(tempfile.mkdtemp(prefix="cl-instr-"))
    cl.init_project(root, definitions=windows.DEFINITIONS.format(
        path=str(data / "events.parquet"), windows=list(windows.WINDOWS), fns=windows.FNS))
    (root / "closedloop.toml").write_text("[offline]\nthreads = 1\n")
    project = cl.Project(root)
    project.features.materialize(at=push.START)
    stream = push._stream(data).slice(0, 20_000)

    def loop() -> None:
        for i in range(0, 20_000, 500):
            batch = stream.slice(i, 500)
            at = batch["ingested_at"][-1].as_py()
            project.features.push("ev", batch, at=at)
            project.features.online({"user_id": batch["user_id"][-1].as_py()},
                                    ["w.amount_count_1h"], at=at)
    return loop


def _online(at_instant: bool) -> Callable[[], None]:
    from benchmarks import online
    from benchmarks.data import pit_data

    data = pit_data()
    project = online._project(data, "sqlite")
    project.features.materialize(at=online.AT)
    users = online._users(data, 2500)
    at = online.AT if at_instant else None
    for u in users[:500]:
        project.features.online({"user_id": u}, online.REFS, at=at)

    def loop() -> None:
        for u in users[500:2500]:
            project.features.online({"user_id": u}, online.REFS, at=at)
    return loop


def _windows() -> Callable[[], None]:
    from benchmarks import windows
    from benchmarks.data import windows_data

    data = windows_data()
    windows.closedloop(data)
    return lambda: windows.closedloop(data)


def _child(name: str) -> None:
    """Inside valgrind: set the loop up, count only the loop."""
    loop = {"push": _push, "online": lambda: _online(True),
            "online-now": lambda: _online(False), "windows": _windows}[name]()
    _toggle("on")
    loop()
    _toggle("off")


def count(name: str, tree: Path) -> int:
    """The instructions the loop ``name`` executes with ``tree``'s ``src``."""
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed: apt-get install valgrind")
    out = Path(tempfile.mkdtemp()) / "callgrind.out"
    env = {**os.environ, "PYTHONPATH": f"{tree / 'src'}{os.pathsep}{tree}"}
    done = subprocess.run(["valgrind", "--tool=callgrind", "--instr-atstart=no",
                           f"--callgrind-out-file={out}", sys.executable, __file__,
                           "--child", name],
                          cwd=tree, env=env, capture_output=True, text=True)
    found = re.search(r"Collected : (\d+)", done.stderr)
    if done.returncode or found is None:
        raise SystemExit(f"{name}: valgrind failed:\n{done.stderr[-2000:]}")
    return int(found.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("loops", nargs="*", metavar="LOOP",
                        help=f"of {', '.join(LOOPS)} (default: all)")
    parser.add_argument("--tree", type=Path, default=Path(__file__).resolve().parents[1],
                        help="the checkout whose src/ to count (default: this one)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.child)
        return
    unknown = sorted(set(args.loops) - set(LOOPS))
    if unknown:
        parser.error(f"unknown loop {unknown[0]!r}: the loops are {', '.join(LOOPS)}")
    for name in args.loops or LOOPS:
        print(f"{name:12s} {count(name, args.tree.resolve()):>15,d} instructions", flush=True)


if __name__ == "__main__":
    if "--child" in sys.argv:   # run as a file under valgrind: the tree's ``benchmarks``
        sys.path.pop(0)         # package (on PYTHONPATH), not this file's folder, is imported
    main()
