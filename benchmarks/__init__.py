"""Side-by-side benchmarks: closedloop, its anchors and a hand-written floor on the same data."""
