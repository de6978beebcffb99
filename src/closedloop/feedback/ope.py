"""Off-policy evaluation: the value of an evaluation policy estimated from rounds another
(logging) policy chose, with the propensity of each action it took.

Inputs, for ``n`` logged rounds over ``k`` actions (one slot; a ranking's slots are rounds of
their own, each with its own propensity):

* ``action`` (n,): the action taken; ``reward`` (n,): what it earned;
* ``pscore`` (n,): the logging policy's probability of that action, in (0, 1];
* ``pi_e`` (n, k): the evaluation policy's probability of every action in that round;
* ``q_hat`` (n, k): a reward model's estimate of every action's reward (DM, DR and their
  variants only).

Every estimator is the mean of *round rewards* (``round_rewards``), as Open Bandit Pipeline
defines them, with ``w = pi_e(a_i | x_i) / pscore_i`` the importance weight:

* ``ipw``: ``w·r`` (``clip``: ``min(w, clip)·r``);
* ``snipw``: ``w·r / mean(w)``;
* ``dm``: ``Σ_a pi_e(a|x)·q_hat(x, a)``;
* ``dr``: ``dm + w·(r − q_hat(x, a_i))`` (``clip`` as for IPW);
* ``sndr``: ``dm + w·(r − q_hat(x, a_i)) / mean(w)``;
* ``switch_dr`` (``tau``): ``dm + 1{w ≤ tau}·w·(r − q_hat(x, a_i))``;
* ``dr_os`` (``shrink`` λ): ``dm + ŵ·(r − q_hat(x, a_i))`` with ``ŵ = λw / (w² + λ)``
  (optimistic shrinkage).

Self-normalised estimators divide by the full sample's ``mean(w)``, computed once; the
bootstrap resamples the round rewards (``bootstrap_interval``: Open Bandit Pipeline's
percentile bootstrap, bit for bit with ``numpy.random.RandomState(seed)``). The tests
reproduce ``../shared/reference/ope/`` (Open Bandit Pipeline's numbers) to 1e-6.

>>> import numpy as np
>>> pi_e = np.array([[1.0, 0.0], [1.0, 0.0]])
>>> Logged(np.array([0, 1]), np.array([1.0, 0.0]), np.array([0.5, 0.5]), pi_e).estimate("ipw")
1.0
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from closedloop.errors import FeedbackError

_F = np.ndarray[Any, np.dtype[np.float64]]
_I = np.ndarray[Any, np.dtype[np.int64]]

#: The estimators, by name.
ESTIMATORS = ("ipw", "snipw", "dm", "dr", "sndr", "switch_dr", "dr_os")
#: Those that need a reward model (``q_hat``).
MODEL_BASED = ("dm", "dr", "sndr", "switch_dr", "dr_os")


@dataclass(frozen=True)
class Interval:
    """An estimate with its interval (``low``, ``high``) at level ``1 − alpha``."""

    value: float
    low: float
    high: float
    method: str


@dataclass(frozen=True)
class Weights:
    """Diagnostics of the importance weights: how far the evaluation policy strays from the
    logging one (an effective sample size far under ``n`` means a noisy estimate)."""

    n: int
    sum: float
    mean: float
    max: float
    min: float
    share_zero: float
    ess: float                       # (Σw)² / Σw²
    clipped_share: float = 0.0       # rounds whose weight a clip lowered


class Logged:
    """Logged rounds and an evaluation policy's probabilities over them (see module)."""

    def __init__(self, action: Any, reward: Any, pscore: Any, pi_e: Any,
                 q_hat: Any | None = None) -> None:
        self.action: _I = np.asarray(action, dtype=np.int64)
        self.reward: _F = np.asarray(reward, dtype=np.float64)
        self.pscore: _F = np.asarray(pscore, dtype=np.float64)
        self.pi_e: _F = np.asarray(pi_e, dtype=np.float64)
        self.q_hat: _F | None = None if q_hat is None else np.asarray(q_hat, dtype=np.float64)
        n = self.action.size
        if self.pi_e.ndim != 2 or self.pi_e.shape[0] != n:
            raise FeedbackError(f"pi_e has shape {self.pi_e.shape}; it needs one row of "
                                f"action probabilities per round ({n})",
                                fix="pass pi_e as an (n_rounds, n_actions) array")
        if self.reward.shape != (n,) or self.pscore.shape != (n,):
            raise FeedbackError("action, reward and pscore differ in length",
                                fix="pass one value of each per logged round")
        if n == 0:
            raise FeedbackError("there are no logged rounds to evaluate on",
                                fix="log traffic first (or widen the window)")
        k = self.pi_e.shape[1]
        if ((self.action < 0) | (self.action >= k)).any():
            raise FeedbackError(f"an action is outside the action set (0..{k - 1})",
                                fix="log actions as indices of pi_e's columns")
        if not ((self.pscore > 0) & (self.pscore <= 1)).all():
            raise FeedbackError("a propensity is outside (0, 1]",
                                fix="log the logging policy's probability of the action taken")
        if self.q_hat is not None and self.q_hat.shape != self.pi_e.shape:
            raise FeedbackError(f"q_hat has shape {self.q_hat.shape}, pi_e {self.pi_e.shape}",
                                fix="estimate every action's reward in every round")
        rows = np.arange(n)
        self.w: _F = self.pi_e[rows, self.action] / self.pscore

    def _factual(self) -> tuple[_F, _F]:
        """``dm`` per round and the reward model's estimate of the action taken."""
        if self.q_hat is None:
            raise FeedbackError("this estimator needs a reward model's estimates (q_hat)",
                                fix="pass q_hat, or use ipw / snipw")
        dm: _F = (self.pi_e * self.q_hat).sum(axis=1)
        factual: _F = self.q_hat[np.arange(self.action.size), self.action]
        return dm, factual

    def round_rewards(self, estimator: str, *, clip: float | None = None,
                      tau: float | None = None, shrink: float | None = None) -> _F:
        """Each round's contribution to ``estimator`` (see module); their mean is the
        estimate."""
        w: _F = self.w if clip is None else np.minimum(self.w, clip)
        out: _F
        if estimator == "ipw":
            out = w * self.reward
            return out
        if estimator == "snipw":
            out = self.w * self.reward / float(self.w.mean())
            return out
        if estimator not in MODEL_BASED:
            raise FeedbackError(f"estimator {estimator!r} is unknown",
                                fix=f"use one of {', '.join(ESTIMATORS)}")
        dm, factual = self._factual()
        residual = self.reward - factual
        if estimator == "dm":
            return dm
        if estimator == "dr":
            return dm + w * residual
        if estimator == "sndr":
            out = dm + self.w * residual / float(self.w.mean())
            return out
        if estimator == "switch_dr":
            if tau is None or tau < 0:
                raise FeedbackError("switch_dr needs tau >= 0", fix="pass tau=...")
            return dm + np.where(self.w <= tau, self.w, 0.0) * residual
        if shrink is None or shrink < 0:
            raise FeedbackError("dr_os needs shrink >= 0", fix="pass shrink=...")
        return dm + (shrink * self.w) / (self.w ** 2 + shrink) * residual

    def estimate(self, estimator: str, **options: float) -> float:
        """The policy value ``estimator`` gives (``clip``, ``tau``, ``shrink``: see module)."""
        return float(self.round_rewards(estimator, **options).mean())

    def weights(self, clip: float | None = None) -> Weights:
        w = self.w
        return Weights(int(w.size), float(w.sum()), float(w.mean()), float(w.max()),
                       float(w.min()), float((w == 0).mean()),
                       float(w.sum() ** 2 / (w ** 2).sum()) if (w ** 2).sum() else 0.0,
                       0.0 if clip is None else float((w > clip).mean()))


def bootstrap_interval(rounds: Any, *, resamples: int = 1000, alpha: float = 0.05,
                       seed: int = 12345) -> tuple[float, float, float]:
    """The percentile bootstrap of the mean of ``rounds``: (mean of the resampled means,
    lower, upper), exactly as Open Bandit Pipeline draws it (``RandomState(seed).choice``
    per resample, ``np.percentile`` with linear interpolation)."""
    values = np.asarray(rounds, dtype=np.float64)
    if resamples < 1 or not 0 < alpha < 1:
        raise FeedbackError("the bootstrap needs resamples >= 1 and alpha in (0, 1)",
                            fix="pass e.g. resamples=1000, alpha=0.05")
    rng = np.random.RandomState(seed)
    means = np.empty(resamples)
    for b in range(resamples):
        means[b] = rng.choice(values, size=values.size).mean()
    low, high = np.percentile(means, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return float(means.mean()), float(low), float(high)


def normal_interval(rounds: Any, *, alpha: float = 0.05) -> Interval:
    """The mean of ``rounds`` with a normal (CLT) interval from their standard error."""
    from scipy.stats import norm

    values = np.asarray(rounds, dtype=np.float64)
    mean = float(values.mean())
    se = float(values.std(ddof=1) / np.sqrt(values.size)) if values.size > 1 else float("inf")
    z = float(norm.ppf(1 - alpha / 2))
    return Interval(mean, mean - z * se, mean + z * se, "normal")


__all__ = ["ESTIMATORS", "MODEL_BASED", "Interval", "Logged", "Weights", "bootstrap_interval",
           "normal_interval"]
