"""Stage 5's other half: breaking the feedback loop — off-policy evaluation of a policy on
traffic another one chose (``closedloop.feedback.ope``)."""
