"""Stage 4: serving — the online path, routing, the prediction log and the latency budget."""
