"""A/B statistics (``stats.py``): sample-ratio mismatch, Welch tests with the delta method,
CUPED, confidence sequences, Bayesian normal summaries, power, MDE and sample size — plain
functions over per-arm sufficient statistics, usable alone, reproducing GrowthBook's engine."""

from closedloop.experiments.stats import (
    BayesianEffect,
    Cuped,
    CupedEffect,
    Effect,
    Mean,
    Prior,
    Proportion,
    SequentialEffect,
    bayesian,
    cuped,
    mde,
    power,
    sample_size,
    sequential,
    sequential_rho,
    srm,
    welch,
)

__all__ = ["BayesianEffect", "Cuped", "CupedEffect", "Effect", "Mean", "Prior", "Proportion",
           "SequentialEffect", "bayesian", "cuped", "mde", "power", "sample_size",
           "sequential", "sequential_rho", "srm", "welch"]
