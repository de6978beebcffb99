"""Simulated worlds with known ground truth, for the demo, the tests and the benchmarks."""

from closedloop.sim.fraud import FraudWorld

__all__ = ["FraudWorld"]
