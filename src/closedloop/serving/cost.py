"""What a model costs: training, serving and data, from measurement.

Every mode of inference appends ``usage`` records to the prediction log — the process CPU
seconds it spent and the predictions it made (the server every few seconds and at shutdown,
batch scoring and streaming at the end of a run). From them, per model:

* **CPU seconds per 1,000 predictions**, per mode (online, batch, stream);
* **predictions per day**: every mode's predictions (as their usage counts them) over the
  days the log spans (at least one);
* **bytes per day** of prediction log: its segments' size over the same days;
* **training**: the CPU seconds of the model's finished runs.

With a price sheet (``[cost] cpu_hour``, ``gb_month``), each becomes money: training once,
serving and data per day, and the day serving (with its data) overtakes training.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

_DAY_US = 86_400_000_000


def usage_record(model: str, mode: str, cpu_s: float, predictions: int, time_us: int,
                 ) -> dict[str, Any]:
    return {"kind": "usage", "model": model, "mode": mode, "cpu_s": round(cpu_s, 6),
            "predictions": predictions, "time": time_us}


@dataclass(frozen=True)
class CostReport:
    """One model's measured costs (see module); money is None without a price sheet."""

    model: str
    training_cpu_s: float
    runs: int
    cpu_s_per_1000: dict[str, float]
    predictions: int
    predictions_per_day: float
    log_bytes_per_day: float
    currency: str
    training_cost: float | None
    serving_cost_per_day: float | None
    data_cost_per_day: float | None

    @property
    def overtakes_on_day(self) -> int | None:
        """The first day on which the cumulative serving and data cost exceeds training's."""
        if self.training_cost is None or not self.serving_cost_per_day:
            return None
        daily = self.serving_cost_per_day + (self.data_cost_per_day or 0.0)
        return max(1, math.floor(self.training_cost / daily) + 1)

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "training_cpu_s": self.training_cpu_s, "runs": self.runs,
                "cpu_s_per_1000": self.cpu_s_per_1000, "predictions": self.predictions,
                "predictions_per_day": self.predictions_per_day,
                "log_bytes_per_day": self.log_bytes_per_day, "currency": self.currency,
                "training_cost": self.training_cost,
                "serving_cost_per_day": self.serving_cost_per_day,
                "data_cost_per_day": self.data_cost_per_day,
                "overtakes_on_day": self.overtakes_on_day}


def cost_report(model: str, records: Iterable[Mapping[str, Any]], log_bytes: int,
                training_cpu_s: Iterable[float], prices: Mapping[str, Any]) -> CostReport:
    """Fold a model's log records, its log's size and its runs' CPU into a report."""
    cpu: dict[str, float] = {}
    made: dict[str, int] = {}
    times: list[int] = []
    logged = 0
    for r in records:
        kind = r.get("kind")
        if kind == "usage":
            cpu[r["mode"]] = cpu.get(r["mode"], 0.0) + float(r["cpu_s"])
            made[r["mode"]] = made.get(r["mode"], 0) + int(r["predictions"])
            times.append(int(r["time"]))
        elif kind == "prediction":
            logged += 1
            times.append(int(r["time"]))
    per_1000 = {mode: 1000 * cpu[mode] / made[mode] for mode in cpu if made.get(mode)}
    days = max(1.0, (max(times) - min(times)) / _DAY_US) if times else 1.0
    predictions = sum(made.values()) or logged      # every mode's, as their usage counts
    per_day = predictions / days
    bytes_per_day = log_bytes / days
    runs = list(training_cpu_s)
    train_cpu = float(sum(runs))
    cpu_hour, gb_month = prices.get("cpu_hour"), prices.get("gb_month")
    serving_cpu_per_day = (sum(cpu.values()) / max(1, sum(made.values()))) * per_day
    return CostReport(
        model=model, training_cpu_s=train_cpu, runs=len(runs), cpu_s_per_1000=per_1000,
        predictions=predictions, predictions_per_day=per_day, log_bytes_per_day=bytes_per_day,
        currency=str(prices.get("currency", "USD")),
        training_cost=None if cpu_hour is None else train_cpu / 3600 * cpu_hour,
        serving_cost_per_day=(None if cpu_hour is None
                              else serving_cpu_per_day / 3600 * cpu_hour),
        # Each day's log is kept: a day of log costs its bytes for a month, per month.
        data_cost_per_day=(None if gb_month is None
                           else bytes_per_day / 1e9 * gb_month / 30))
