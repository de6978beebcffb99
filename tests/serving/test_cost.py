"""Cost from measurement: CPU per 1,000 predictions by mode, predictions and log bytes per
day, training CPU; priced, the day serving overtakes training."""

from __future__ import annotations

import pytest

import closedloop as cl
from closedloop.serving.cost import cost_report, usage_record
from tests.serving.world import END

DAY = 86_400_000_000


def test_the_report_folds_usage_predictions_and_runs() -> None:
    records = [usage_record("m", "online", 2.0, 4000, 0), usage_record("m", "online", 1.0, 2000,
                                                                       DAY),
               usage_record("m", "batch", 3.0, 100_000, DAY),
               *({"kind": "prediction", "time": t} for t in (0, DAY, 2 * DAY, 4 * DAY))]
    prices = {"cpu_hour": 3.6, "gb_month": 30.0}
    report = cost_report("m", records, 8_000_000, [360.0, 3240.0], prices)
    assert report.cpu_s_per_1000 == {"online": pytest.approx(0.5), "batch": pytest.approx(0.03)}
    assert report.predictions == 106_000                        # every mode's usage counts
    assert report.predictions_per_day == pytest.approx(26_500)  # over the 4 days logged
    assert report.log_bytes_per_day == pytest.approx(2_000_000)
    assert report.training_cost == pytest.approx(3600 / 3600 * 3.6)
    # 6 CPU-s over 106,000 predictions, 26,500 a day; and 2 MB of log a day.
    serving = 6.0 / 106_000 * 26_500 / 3600 * 3.6
    data = 0.002 * 30.0 / 30
    assert report.serving_cost_per_day == pytest.approx(serving)
    assert report.data_cost_per_day == pytest.approx(data)
    assert report.overtakes_on_day == int(3.6 // (serving + data)) + 1
    unpriced = cost_report("m", records, 0, [], {})
    assert unpriced.training_cost is None
    assert unpriced.overtakes_on_day is None


def test_batch_scoring_and_training_are_measured(served: cl.Project) -> None:
    served.serving.score("risk", at=END)
    report = served.serving.cost("risk", {"cpu_hour": 0.05, "gb_month": 0.02})
    assert report.runs == 1
    assert report.training_cpu_s > 0
    assert report.cpu_s_per_1000["batch"] > 0
    assert report.training_cost == pytest.approx(report.training_cpu_s / 3600 * 0.05)
    assert report.to_dict()["model"] == "risk"
