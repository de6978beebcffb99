"""Stage 3 — training: models declared in code, trainers behind one protocol, runs with
lineage, time-split evaluation, reproducibility."""
