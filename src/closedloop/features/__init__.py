"""Stage 2 — features: one definition, executed identically offline (point in time) and online."""

from closedloop.features.definitions import Agg, FeatureView, Transform, transform

__all__ = ["Agg", "FeatureView", "Transform", "transform"]
