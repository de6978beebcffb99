"""A/B statistics over sufficient statistics: plain functions, usable alone.

Every function takes per-arm sufficient statistics — ``Proportion(n, sum)`` for a binomial
metric, ``Mean(n, sum, sum_squares)`` for a mean metric, ``Cuped(...)`` for a mean metric
with a pre-period covariate — so an analysis of millions of units is a few sums away from
the log (the ladder's analysis computes them in one query). The conventions are
GrowthBook's published engine (``gbstats`` 0.8.0), which the tests reproduce to 1e-9 from
``../shared/reference/ab/`` (its ``CONVENTIONS.md`` says each one):

* unit variance: ``p(1 − p)`` for a proportion (no n − 1), ``(ss − s²/n)/(n − 1)`` for a mean;
* the relative effect is ``(m_b − m_a)/|m_a|``, its variance by the delta method,
  ``v_b/(m_a² n_b) + v_a m_b²/(m_a⁴ n_a)``;
* fixed-horizon tests are Welch t tests: Satterthwaite degrees of freedom on the unit
  variances, ``p = 2(1 − T_dof(|est/se|))``, ``ci = est ± t_{dof,1−α/2}·se``;
* CUPED's θ is ``cov(post, pre)/var(pre)`` over both arms pooled; an arm's adjusted mean is
  ``post − θ·pre`` and its variance ``v_post + θ²v_pre − 2θ·cov``;
* sequential tests use the asymptotic confidence sequence of Waudby-Smith et al. (2023),
  tuned by ``N*`` (the sample size at which it is tightest): safe to look at every day;
* power and MDE are GrowthBook's (``packages/shared/src/power``), with ``n`` the total
  sample across all arms.

Distributions come from scipy; nothing here is a hand-written special function.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from scipy import stats as sps

from closedloop.errors import ExperimentError


@dataclass(frozen=True, slots=True)
class Proportion:
    """A binomial metric's arm: ``n`` units, ``sum`` of them converted."""

    n: float
    sum: float

    @property
    def mean(self) -> float:
        return self.sum / self.n

    @property
    def variance(self) -> float:
        """The unit variance ``p(1 − p)`` (no n − 1 correction)."""
        p = self.mean
        return p * (1.0 - p)


@dataclass(frozen=True, slots=True)
class Mean:
    """A mean metric's arm: ``n`` units, the ``sum`` and ``sum_squares`` of their values."""

    n: float
    sum: float
    sum_squares: float

    @property
    def mean(self) -> float:
        return self.sum / self.n

    @property
    def variance(self) -> float:
        """The unit variance ``(ss − s²/n)/(n − 1)``."""
        return (self.sum_squares - self.sum ** 2 / self.n) / (self.n - 1)


@dataclass(frozen=True, slots=True)
class Cuped:
    """A mean metric's arm with a pre-period covariate: the metric's (``post_``) and the
    covariate's (``pre_``) sums and sums of squares, and the sum of their products."""

    n: float
    post_sum: float
    post_ss: float
    pre_sum: float
    pre_ss: float
    post_pre_sp: float

    @property
    def post(self) -> Mean:
        return Mean(self.n, self.post_sum, self.post_ss)

    @property
    def pre(self) -> Mean:
        return Mean(self.n, self.pre_sum, self.pre_ss)

    @property
    def covariance(self) -> float:
        """The unit covariance of metric and covariate (n − 1)."""
        return (self.post_pre_sp - self.post_sum * self.pre_sum / self.n) / (self.n - 1)


Arm = Proportion | Mean


@dataclass(frozen=True, slots=True)
class Effect:
    """A fixed-horizon Welch test of treatment against control: the effect (absolute, or
    relative to the control's mean), its standard error, degrees of freedom, t statistic,
    two-sided p-value and the 1 − α confidence interval."""

    expected: float
    se: float
    dof: float
    t: float
    p_value: float
    ci: tuple[float, float]
    relative: bool
    alpha: float


@dataclass(frozen=True, slots=True)
class CupedEffect:
    """A Welch test on CUPED-adjusted arms, with θ and the adjusted means."""

    effect: Effect
    theta: float
    adjusted_mean_control: float
    adjusted_mean_treatment: float


@dataclass(frozen=True, slots=True)
class SequentialEffect:
    """An always-valid test: the effect, its standard error, the confidence sequence's ρ and
    half-width, its interval, e-value and p-value (``min(1, 1/e)``) — valid however often
    the arms are looked at."""

    expected: float
    se: float
    rho: float
    halfwidth: float
    ci: tuple[float, float]
    e_value: float
    p_value: float
    relative: bool
    alpha: float


@dataclass(frozen=True, slots=True)
class Prior:
    """A normal prior on the effect (on the relative effect for a relative analysis);
    ``proper=False`` is flat."""

    mean: float = 0.0
    variance: float = 1.0
    proper: bool = False


@dataclass(frozen=True, slots=True)
class BayesianEffect:
    """The normal posterior of the effect: its mean and standard deviation, the chance the
    treatment is better, the 1 − α credible interval, and the expected loss of choosing
    control (``risk[0]``) or treatment (``risk[1]``)."""

    expected: float
    stddev: float
    chance_to_win: float
    ci: tuple[float, float]
    risk: tuple[float, float]


# -- checks ---------------------------------------------------------------------------------
def _alpha(alpha: float) -> float:
    if not 0.0 < alpha < 1.0:
        raise ExperimentError(f"alpha {alpha!r} is not between 0 and 1",
                              fix="use a significance level such as 0.05")
    return alpha


def _arm(arm: Arm | Cuped, name: str) -> None:
    least = 1 if isinstance(arm, Proportion) else 2
    if not arm.n >= least:
        raise ExperimentError(f"the {name} arm has {arm.n} units; a {type(arm).__name__} "
                              f"needs at least {least}",
                              fix="wait for more units before analysing")
    if isinstance(arm, Proportion) and not 0 <= arm.sum <= arm.n:
        raise ExperimentError(f"the {name} arm has {arm.sum} conversions of {arm.n} units",
                              fix="count each unit's conversion at most once")


def _pair(control: Arm, treatment: Arm) -> None:
    if type(control) is not type(treatment):
        raise ExperimentError(f"the arms are a {type(control).__name__} and a "
                              f"{type(treatment).__name__}", fix="compare one metric's arms")
    _arm(control, "control")
    _arm(treatment, "treatment")


# -- effects --------------------------------------------------------------------------------
def _difference(mean_a: float, var_a: float, n_a: float, mean_b: float, var_b: float,
                n_b: float, relative: bool) -> tuple[float, float]:
    """The effect and its variance: absolute, or relative to the control's mean by the
    delta method."""
    if not relative:
        return mean_b - mean_a, var_b / n_b + var_a / n_a
    base = mean_a
    if base == 0:
        raise ExperimentError("the control's mean is 0, so a relative effect is undefined",
                              fix="analyse the absolute effect (relative=False)")
    variance = var_b / (base ** 2 * n_b) + var_a * mean_b ** 2 / (base ** 4 * n_a)
    return (mean_b - mean_a) / abs(base), variance


def _welch_dof(var_a: float, n_a: float, var_b: float, n_b: float) -> float:
    """Welch-Satterthwaite degrees of freedom of the two arms' unit variances."""
    a, b = var_a / n_a, var_b / n_b
    if a == b == 0:
        raise ExperimentError("both arms have zero variance (every unit has the same value)",
                              fix="wait for more units, or check the metric")
    return (a + b) ** 2 / (a ** 2 / (n_a - 1) + b ** 2 / (n_b - 1))


def _t_test(expected: float, variance: float, dof: float, relative: bool,
            alpha: float) -> Effect:
    se = math.sqrt(variance)
    if se == 0:
        raise ExperimentError("the effect's standard error is 0 (every unit has the same "
                              "value)", fix="wait for more units, or check the metric")
    t = expected / se
    p = 2.0 * float(sps.t.sf(abs(t), dof))
    half = float(sps.t.ppf(1.0 - alpha / 2.0, dof)) * se
    return Effect(expected, se, dof, t, p, (expected - half, expected + half), relative, alpha)


def welch(control: Arm, treatment: Arm, *, relative: bool = True,
          alpha: float = 0.05) -> Effect:
    """The fixed-horizon Welch t test of ``treatment`` against ``control``."""
    _alpha(alpha)
    _pair(control, treatment)
    expected, variance = _difference(control.mean, control.variance, control.n,
                                     treatment.mean, treatment.variance, treatment.n,
                                     relative)
    dof = _welch_dof(control.variance, control.n, treatment.variance, treatment.n)
    return _t_test(expected, variance, dof, relative, alpha)


def cuped(control: Cuped, treatment: Cuped, *, relative: bool = True,
          alpha: float = 0.05) -> CupedEffect:
    """A Welch test on the arms adjusted by their pre-period covariate (CUPED): θ from
    both arms pooled, each arm's metric less θ times its covariate. The relative effect is
    over the control's *unadjusted* mean, its variance the delta method with the unadjusted
    means and the adjusted variances (gbstats 0.8.0; GrowthBook's main branch adds a term,
    which moves a 200-unit interval's ends by ~5e-5)."""
    _alpha(alpha)
    _arm(control, "control")
    _arm(treatment, "treatment")
    pooled = Cuped(*(getattr(control, f) + getattr(treatment, f) for f in
                     ("n", "post_sum", "post_ss", "pre_sum", "pre_ss", "post_pre_sp")))
    pre_variance = pooled.pre.variance
    if pre_variance <= 1e-12 * max(1.0, pooled.pre.mean ** 2):     # constant, up to rounding
        raise ExperimentError("the pre-period covariate is constant, so CUPED cannot use it",
                              fix="analyse without the covariate (welch)")
    theta = pooled.covariance / pre_variance

    def adjusted(arm: Cuped) -> tuple[float, float]:
        mean = arm.post.mean - theta * arm.pre.mean
        variance = (arm.post.variance + theta ** 2 * arm.pre.variance
                    - 2.0 * theta * arm.covariance)
        return mean, variance

    (mean_a, var_a), (mean_b, var_b) = adjusted(control), adjusted(treatment)
    expected, variance = _difference(mean_a, var_a, control.n, mean_b, var_b, treatment.n,
                                     False)
    if relative:       # over the control's unadjusted mean; the delta method's means are
        base, post_b = control.post.mean, treatment.post.mean      # the unadjusted ones
        if base == 0:
            raise ExperimentError("the control's mean is 0, so a relative effect is "
                                  "undefined", fix="analyse the absolute effect")
        expected /= abs(base)
        variance = var_b / (base ** 2 * treatment.n) + var_a * post_b ** 2 / (
            base ** 4 * control.n)
    dof = _welch_dof(var_a, control.n, var_b, treatment.n)
    return CupedEffect(_t_test(expected, variance, dof, relative, alpha), theta, mean_a,
                       mean_b)


def sequential_rho(alpha: float, tuning: float) -> float:
    """The confidence sequence's ρ for ``N* = tuning``."""
    log_a = -2.0 * math.log(alpha)
    return math.sqrt((log_a + math.log(log_a + 1.0)) / tuning)


def sequential(control: Arm, treatment: Arm, *, tuning: float = 5000.0,
               relative: bool = True, alpha: float = 0.05) -> SequentialEffect:
    """The always-valid test of ``treatment`` against ``control`` (an asymptotic confidence
    sequence tuned to be tightest near ``tuning`` total units)."""
    _alpha(alpha)
    _pair(control, treatment)
    if not tuning > 0:
        raise ExperimentError(f"the sequential tuning N* is {tuning!r}",
                              fix="use the total sample size the test should be tightest at")
    expected, variance = _difference(control.mean, control.variance, control.n,
                                      treatment.mean, treatment.variance, treatment.n,
                                      relative)
    se = math.sqrt(variance)
    if se == 0:
        raise ExperimentError("the effect's standard error is 0", fix="wait for more units")
    total = control.n + treatment.n
    rho = sequential_rho(alpha, tuning)
    spread = total * rho ** 2 + 1.0
    halfwidth = math.sqrt(se ** 2 * total) * math.sqrt(
        2.0 * spread * math.log(math.sqrt(spread) / alpha) / (total ** 2 * rho ** 2))
    st2 = expected ** 2 * total / se ** 2
    log_e = rho ** 2 * st2 / (2.0 * spread) - 0.5 * math.log(spread)   # in logs: a huge
    e_value = math.exp(log_e) if log_e < 700.0 else math.inf           # effect overflows
    return SequentialEffect(expected, se, rho, halfwidth,
                            (expected - halfwidth, expected + halfwidth), e_value,
                            min(1.0, math.exp(-log_e)), relative, alpha)


def bayesian(control: Arm, treatment: Arm, *, prior: Prior | None = None,
             relative: bool = True, alpha: float = 0.05) -> BayesianEffect:
    """The normal posterior of the effect under a normal ``prior`` (flat by default)."""
    _alpha(alpha)
    _pair(control, treatment)
    prior = prior or Prior()
    if prior.proper and not prior.variance > 0:
        raise ExperimentError(f"the prior's variance is {prior.variance!r}",
                              fix="use a positive variance, or a flat prior")
    mean, variance = _difference(control.mean, control.variance, control.n,
                                 treatment.mean, treatment.variance, treatment.n, relative)
    if variance == 0:
        raise ExperimentError("the effect's variance is 0", fix="wait for more units")
    precision = 1.0 / variance + (1.0 / prior.variance if prior.proper else 0.0)
    if prior.proper:
        mean = (mean / variance + prior.mean / prior.variance) / precision
    stddev = math.sqrt(1.0 / precision)
    low, high = sps.norm.ppf([alpha / 2.0, 1.0 - alpha / 2.0], mean, stddev)
    return BayesianEffect(mean, stddev, float(sps.norm.sf(0.0, mean, stddev)),
                          (float(low), float(high)), _risk(mean, stddev))


def _risk(mu: float, sigma: float) -> tuple[float, float]:
    """Expected loss of choosing control, then treatment: ``P(effect > 0)·E[effect |
    effect > 0]`` and ``P(effect < 0)·E[−effect | effect < 0]`` (the analytic limit when
    the posterior sits ~37 sd away from 0)."""
    if abs(mu / sigma) > 37:
        return max(mu, 0.0), max(-mu, 0.0)
    below = float(sps.norm.cdf(0.0, mu, sigma))
    z = -mu / sigma
    positive = float(sps.truncnorm.mean(z, math.inf, loc=mu, scale=sigma))
    negative = float(sps.truncnorm.mean(-math.inf, z, loc=mu, scale=sigma))
    return (1.0 - below) * positive, -below * negative


# -- design ---------------------------------------------------------------------------------
def srm(users: Sequence[float], weights: Sequence[float]) -> float:
    """The sample-ratio-mismatch p-value: a chi-square goodness-of-fit test of the units
    each arm received against the shares it was meant to (weights are normalised). A small
    value (GrowthBook flags p < 0.001) means the assignment, not the treatment, differs."""
    if len(users) != len(weights) or len(users) < 2:
        raise ExperimentError(f"{len(users)} arm counts for {len(weights)} weights",
                              fix="give one count and one weight per arm, at least two arms")
    if any(w <= 0 for w in weights) or any(u < 0 for u in users):
        raise ExperimentError("a weight is not positive or a count is negative",
                              fix="give each arm its intended share (> 0) and its units")
    total, share = float(sum(users)), float(sum(weights))
    if total == 0:
        raise ExperimentError("no unit was assigned", fix="wait for traffic")
    expected = [total * w / share for w in weights]
    statistic = sum((u - e) ** 2 / e for u, e in zip(users, expected, strict=True))
    return float(sps.chi2.sf(statistic, len(users) - 1))


def _power_variance(mean: float, variance: float, effect: float, per_arm: float) -> float:
    """The relative effect's variance with ``per_arm`` units in each arm, treatment mean
    ``mean·(1 + effect)``."""
    return _difference(mean, variance, per_arm, mean * (1.0 + effect), variance, per_arm,
                       True)[1]


def _sequential_variance(variance: float, n: float, alpha: float, tuning: float) -> float:
    """A variance widened so a fixed-horizon z test has the confidence sequence's width."""
    rho = sequential_rho(alpha, tuning)
    spread = n * rho ** 2 + 1.0
    z_seq = math.sqrt(n) * math.sqrt(2.0 * spread * math.log(math.sqrt(spread) / alpha)
                                     / (n * rho) ** 2)
    z_star = float(sps.norm.ppf(1.0 - alpha / 2.0))
    return n * (math.sqrt(variance / n) * z_seq / z_star) ** 2


def _design(mean: float, variance: float, n: float, variations: int, alpha: float,
            tuning: float) -> None:
    _alpha(alpha)
    if mean == 0 or not variance > 0 or not n > 0 or variations < 2 or tuning < 0:
        raise ExperimentError(
            f"mean {mean!r}, variance {variance!r}, n {n!r}, {variations} variations, "
            f"tuning {tuning!r}",
            fix="give a non-zero mean, a positive variance and sample, at least 2 "
                "variations and a tuning ≥ 0 (0: a fixed-horizon test)")


def power(*, mean: float, variance: float, effect: float, n: float, variations: int = 2,
          alpha: float = 0.05, sequential_tuning: float = 0.0) -> float:
    """The chance a two-sided test detects a relative ``effect`` with ``n`` units in all,
    split evenly over ``variations`` arms (``sequential_tuning`` > 0: a sequential test)."""
    _design(mean, variance, n, variations, alpha, sequential_tuning)
    return _power(mean, variance, effect, n, variations, alpha, sequential_tuning)


def _power(mean: float, variance: float, effect: float, n: float, variations: int,
           alpha: float, sequential_tuning: float) -> float:
    per_arm = n / variations
    v = _power_variance(mean, variance, effect, per_arm)
    if sequential_tuning > 0:
        v = _sequential_variance(v, 2.0 * per_arm, alpha, sequential_tuning)
    se = math.sqrt(v)
    z_star = float(sps.norm.ppf(1.0 - alpha / 2.0))
    standardized = effect / se
    return float(1.0 - sps.norm.cdf(z_star - standardized)
                 + sps.norm.cdf(-z_star - standardized))


def mde(*, mean: float, variance: float, power: float = 0.8, n: float, variations: int = 2,
        alpha: float = 0.05, sequential_tuning: float = 0.0) -> float:
    """The smallest relative effect detected with chance ``power`` by ``n`` units in all."""
    _design(mean, variance, n, variations, alpha, sequential_tuning)
    if not alpha < power < 1:
        raise ExperimentError(f"power {power!r} is not between alpha ({alpha}) and 1",
                              fix="ask for a power such as 0.8")
    per_arm = n / variations
    z = float(sps.norm.ppf(1.0 - alpha / 2.0) - sps.norm.ppf(1.0 - power))
    v = variance
    if sequential_tuning > 0:
        v = _sequential_variance(variance, 2.0 * per_arm, alpha, sequential_tuning)
    if per_arm <= v * z ** 2 / mean ** 2:
        raise ExperimentError(f"{n:g} units cannot reach power {power} at any effect",
                              fix="add units or remove variations")
    sigma2 = v / per_arm
    a = 1.0 - z ** 2 * sigma2 / mean ** 2
    b = -2.0 * mean
    c = mean ** 2 - z ** 2 * sigma2
    root = (-b + math.sqrt(b ** 2 - 4.0 * a * c)) / (2.0 * a)
    return (root - mean) / mean


def sample_size(*, mean: float, variance: float, effect: float, power: float = 0.8,
                variations: int = 2, alpha: float = 0.05,
                sequential_tuning: float = 0.0) -> int:
    """The fewest units in all (split evenly) for which ``power(...)`` reaches ``power``
    at a relative ``effect``: the smallest whole multiple of ``variations`` (bisection on
    the power, which grows with n)."""
    _design(mean, variance, variations, variations, alpha, sequential_tuning)  # n: any > 0
    if not alpha < power < 1 or effect == 0:
        raise ExperimentError(f"power {power!r}, effect {effect!r}",
                              fix="ask for a power between alpha and 1 and a non-zero effect")

    def enough(per_arm: int) -> bool:
        return _power(mean, variance, effect, per_arm * variations, variations, alpha,
                      sequential_tuning) >= power

    high = 2
    while not enough(high):
        high *= 2
        if high > 1 << 50:
            raise ExperimentError(f"no sample reaches power {power} at effect {effect}",
                                  fix="ask for a larger effect")
    low = max(1, high // 2)
    while low < high:
        mid = (low + high) // 2
        if enough(mid):
            high = mid
        else:
            low = mid + 1
    return high * variations
