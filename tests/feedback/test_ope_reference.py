"""The off-policy estimators reproduce Open Bandit Pipeline's numbers on its synthetic case
(``../shared/reference/ope/synthetic_case.json``: the logged rounds, the reward model's
estimates, the two evaluation policies' definitions, and obp's estimates, weight diagnostics
and bootstrap intervals), to 1e-6; loaded from the shared folder at test time."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from closedloop.errors import FeedbackError
from closedloop.feedback.ope import Logged, bootstrap_interval, normal_interval
from tests.shared_reference import require

CASE = "ope/synthetic_case.json"
TOL = 1e-6


@pytest.fixture(scope="module")
def case() -> dict[str, Any]:
    return json.loads((require(CASE) / CASE).read_text())


def _policy(case: dict[str, Any], which: str) -> np.ndarray:
    """The evaluation policy, recomputed from its definition over the true rewards."""
    q = np.asarray(case["inputs"]["expected_reward"], dtype=np.float64)
    k = q.shape[1]
    if which == "synthetic__eps_greedy_0.3_on_true_q":
        greedy = np.zeros_like(q)
        greedy[np.arange(q.shape[0]), q.argmax(axis=1)] = 1.0
        return 0.7 * greedy + 0.3 / k
    assert which == "synthetic__softmax_5q"
    z = np.exp(5 * q - (5 * q).max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def _logged(case: dict[str, Any], which: str) -> Logged:
    inputs = case["inputs"]
    return Logged(inputs["action"], inputs["reward"], inputs["pscore"], _policy(case, which),
                  inputs["q_hat"])


NAMED = {"ipw": ("ipw", {}), "snipw": ("snipw", {}), "dm": ("dm", {}), "dr": ("dr", {}),
         "sndr": ("sndr", {}), "ipw_clip_2": ("ipw", {"clip": 2.0}),
         "dr_clip_2": ("dr", {"clip": 2.0}), "switch_dr_2": ("switch_dr", {"tau": 2.0}),
         "switch_dr_5": ("switch_dr", {"tau": 5.0}), "dr_os_1": ("dr_os", {"shrink": 1.0}),
         "dr_os_10": ("dr_os", {"shrink": 10.0})}


@pytest.mark.parametrize("which", ["synthetic__eps_greedy_0.3_on_true_q",
                                   "synthetic__softmax_5q"])
def test_estimates_weights_and_intervals_match_open_bandit_pipeline(
        case: dict[str, Any], which: str) -> None:
    want = next(c for c in case["cases"] if c["id"] == which)
    logged = _logged(case, which)
    q = np.asarray(case["inputs"]["expected_reward"])
    truth = float((logged.pi_e * q).sum(axis=1).mean())
    assert truth == pytest.approx(want["ground_truth_policy_value"], abs=TOL)
    assert set(want["estimates"]) == set(NAMED)
    for name, value in want["estimates"].items():
        estimator, options = NAMED[name]
        assert logged.estimate(estimator, **options) == pytest.approx(value, abs=TOL), name
    weights = logged.weights()
    diagnostics = want["weight_diagnostics"]
    for ours, theirs in (("sum", "sum_w"), ("mean", "mean_w"), ("max", "max_w"),
                         ("min", "min_w"), ("share_zero", "share_w_zero"), ("ess", "ess")):
        assert getattr(weights, ours) == pytest.approx(diagnostics[theirs], abs=TOL), ours
    boot = case["bootstrap"]
    for name, interval in want["bootstrap_ci"].items():
        rounds = logged.round_rewards(name)
        stats = want["round_reward_stats"][name]
        assert rounds.mean() == pytest.approx(stats["round_mean"], abs=TOL)
        assert rounds.var() == pytest.approx(stats["round_var_ddof0"], abs=TOL)
        normal = normal_interval(rounds, alpha=boot["alpha"])
        assert normal.value == pytest.approx(stats["round_mean"], abs=TOL)
        assert (normal.high - normal.low) / 2 / 1.959963984540054 == pytest.approx(
            stats["stderr"], abs=TOL)
        mean, low, high = bootstrap_interval(rounds, resamples=boot["n_bootstrap_samples"],
                                             alpha=boot["alpha"], seed=boot["random_state"])
        assert (mean, low, high) == pytest.approx(
            (interval["mean"], interval["lower"], interval["upper"]), abs=TOL), name


def test_bad_logged_rounds_are_refused(case: dict[str, Any]) -> None:
    inputs = case["inputs"]
    pi_e = _policy(case, "synthetic__softmax_5q")
    bad = list(inputs["pscore"])
    bad[3] = 0.0
    with pytest.raises(FeedbackError, match=r"outside \(0, 1\]"):
        Logged(inputs["action"], inputs["reward"], bad, pi_e)
    actions = list(inputs["action"])
    actions[0] = 9
    with pytest.raises(FeedbackError, match="outside the action set"):
        Logged(actions, inputs["reward"], inputs["pscore"], pi_e)
    with pytest.raises(FeedbackError, match="needs a reward model"):
        Logged(inputs["action"], inputs["reward"], inputs["pscore"], pi_e).estimate("dr")
    with pytest.raises(FeedbackError, match="is unknown"):
        _logged(case, "synthetic__softmax_5q").estimate("magic")
