"""Engines and stores behind small protocols (``base.py``); the only place that imports them."""
