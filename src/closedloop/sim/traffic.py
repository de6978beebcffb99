"""Live traffic from a simulated world: its transactions after the history, replayed in
event-time order through the real serving path.

``Replay`` serves each transaction at its own instant (the project's clock must be a replay
clock: ``Clock(replay=True, field="event_time")``), first pushing every event that had
arrived by then — transactions and profiles, in arrival order — into the online store, as a
stream would; so each request is served exactly as it would have been live. Its
predictions are logged, scored by a shadow, routed by a ladder: everything the serving path
does. (``write_fraud_project(live_days=...)`` writes the exports it replays.)
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from closedloop.project import Project
from closedloop.sim.fraud_project import ARRIVAL, LIVE

#: The request fields of a transaction (the fraud project's rows source).
FIELDS = ["user_id", "txn_id", "amount", "country", "event_time"]


class Replay:
    """The live exports of a fraud project (``data/live``) as requests to ``model``, in
    event-time order (see module)."""

    def __init__(self, project: Project, model: str = "fraud",
                 folder: str | Path | None = None, since: datetime | None = None) -> None:
        live = Path(folder) if folder is not None else project.root / "data" / LIVE
        txns = pq.read_table(live / "transactions.parquet")
        arrived = txns[ARRIVAL["transactions"]]
        # The requests: what happened after the history (``since``; default, when the first
        # live event arrived). A late event of the history's time is pushed, never served.
        start = pa.scalar(since if since is not None else pc.min(arrived).as_py(),
                          txns["event_time"].type)
        self.requests = txns.filter(pc.greater_equal(txns["event_time"], start)).sort_by(
            "event_time").select(FIELDS)
        self.arriving = {
            "transactions": txns.sort_by(ARRIVAL["transactions"]),
            "profiles": pq.read_table(live / "profiles.parquet").sort_by(ARRIVAL["profiles"])}
        self.pushed = dict.fromkeys(self.arriving, 0)
        self.project = project
        self.model = model
        self.sent = 0

    @property
    def left(self) -> int:
        """Requests not yet served."""
        return int(self.requests.num_rows) - self.sent

    def serve(self, n: int, batch: int = 50) -> int:
        """Serve the next ``n`` requests (fewer at the end) in batches of ``batch``: the events
        that had arrived by a batch's last instant are pushed, then the batch is served (each
        request at its own instant), logged, and shadowed; how many were served."""
        online = self.project.serving.online(self.model)
        done = 0
        while done < n and self.left:
            k = min(batch, n - done, self.left)
            rows = self.requests.slice(self.sent, k)
            last = rows["event_time"][k - 1].as_py()
            for source, table in self.arriving.items():
                column = table[ARRIVAL[source]]
                upto = int(pc.sum(pc.cast(pc.less_equal(column, pa.scalar(last, column.type)),
                                          pa.int64())).as_py() or 0)
                if upto > self.pushed[source]:
                    self.project.features.push(
                        source, table.slice(self.pushed[source], upto - self.pushed[source]),
                        at=last)
                    self.pushed[source] = upto
            online.serve([{**r, "event_time": r["event_time"].isoformat()}
                          for r in rows.to_pylist()])
            self.sent += k
            done += k
        self.project.serving.shadow.join()
        return done
