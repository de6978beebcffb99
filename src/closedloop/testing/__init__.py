"""Conformance checks every pluggable implementation must pass; a new implementation is one
parametrize line in ``tests/conformance/``.

* ``check_offline_engine`` — the hand-written cases of the feature semantics
  (``semantics.py``);
* ``check_online_store`` (``ONLINE_STORE_CHECKS``), ``check_event_stream``
  (``EVENT_STREAM_CHECKS``),
  ``check_metadata_store`` (``METADATA_STORE_CHECKS``) (``stores.py``);
* ``check_prediction_log`` (``PREDICTION_LOG_CHECKS``; ``logs.py``);
* ``check_trainer`` (``TRAINER_CHECKS``; ``trainers.py``).

The checks with several concerns are named checks, each runnable alone (the tests give each
its own id); ``check_*`` runs them all. Each calls only its protocol's methods.
"""

from closedloop.features.consistency import same_value
from closedloop.testing.logs import PREDICTION_LOG_CHECKS, check_prediction_log
from closedloop.testing.monitors import MONITOR_STORE_CHECKS, check_monitor_store
from closedloop.testing.semantics import (
    SemanticCase,
    check_offline_engine,
    run_case,
    semantic_cases,
)
from closedloop.testing.stores import (
    EVENT_STREAM_CHECKS,
    METADATA_STORE_CHECKS,
    ONLINE_STORE_CHECKS,
    check_event_stream,
    check_metadata_store,
    check_online_store,
)
from closedloop.testing.trainers import TRAINER_CHECKS, check_trainer

__all__ = ["EVENT_STREAM_CHECKS", "METADATA_STORE_CHECKS", "MONITOR_STORE_CHECKS",
           "ONLINE_STORE_CHECKS", "PREDICTION_LOG_CHECKS", "TRAINER_CHECKS", "SemanticCase",
           "check_event_stream", "check_metadata_store", "check_monitor_store",
           "check_offline_engine", "check_online_store", "check_prediction_log",
           "check_trainer", "run_case", "same_value", "semantic_cases"]
