"""The one error tree of closedloop (standard library only).

Every error says what was wrong, with the offending value, and what to do about it.
Only ``server/`` maps these to HTTP status codes.

>>> from closedloop.errors import DefinitionError, ClosedLoopError
>>> issubclass(DefinitionError, ClosedLoopError)
True
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class ClosedLoopError(Exception):
    """Base of every error closedloop raises on purpose.

    ``code`` is a stable, searchable identifier (``CL-...``); ``fix`` says what to do.
    """

    code = "CL-000"

    def __init__(self, message: str, *, fix: str | None = None) -> None:
        self.message = message
        self.fix = fix
        super().__init__(message if fix is None else f"{message} — fix: {fix}")


class ConfigError(ClosedLoopError):
    """closedloop.toml or the project folder is invalid."""

    code = "CL-100"


class UsageError(ConfigError):
    """A command was called with arguments it cannot use (the CLI's own checks)."""

    code = "CL-101"


class DefinitionError(ClosedLoopError):
    """A definition (entity, source, feature view, transform) is invalid or inconsistent."""

    code = "CL-200"


class UnknownFeatureError(DefinitionError):
    """A feature reference names no defined feature."""

    code = "CL-201"


class VersionConflict(DefinitionError):
    """A registered definition version was changed in place."""

    code = "CL-202"


class DataError(ClosedLoopError):
    """Data does not match what its definition declares."""

    code = "CL-300"


class SchemaMismatch(DataError):
    """A column is missing or has the wrong type."""

    code = "CL-301"


class PointInTimeError(DataError):
    """Timestamps that cannot be placed in time (naive, missing, unparseable)."""

    code = "CL-302"


class BackendError(ClosedLoopError):
    """An engine or store failed."""

    code = "CL-400"


class BackendUnavailable(BackendError):
    """An engine or store cannot be reached."""

    code = "CL-401"


class TrainingError(ClosedLoopError):
    """A training run could not be done: no matured labels, a trainer that raised, …"""

    code = "CL-600"


class LeakageError(TrainingError):
    """A feature uses values that were not available at the row's prediction time."""

    code = "CL-601"


class RegistryError(ClosedLoopError):
    """The model registry refused an operation."""

    code = "CL-500"


class VersionNotFound(RegistryError):
    """A model version or alias does not exist."""

    code = "CL-501"


class PromotionBlocked(RegistryError):
    """The promotion ladder refused a step."""

    code = "CL-502"


class LadderMoved(PromotionBlocked):
    """Another controller or command moved the ladder first: read it again."""

    code = "CL-504"


class ArtefactCorrupted(RegistryError):
    """A stored artefact does not match its content hash."""

    code = "CL-503"


class ServingError(ClosedLoopError):
    """A model could not be served: no servable version, a pinned definition missing, …"""

    code = "CL-700"


class RequestError(ServingError):
    """A prediction request is malformed: bad JSON, a missing or extra field, a wrong type,
    a value out of range, too many instances. Served as a 4xx naming the field (the server
    decides which: ``closedloop.server.app.STATUS``)."""

    code = "CL-701"

    def __init__(self, message: str, *, field: str | None = None,
                 fix: str | None = None) -> None:
        self.field = field
        super().__init__(message, fix=fix)


class Overloaded(ServingError):
    """The server sheds load: more requests are waiting than it admits."""

    code = "CL-702"


class ExperimentError(ClosedLoopError):
    """An experiment's statistics cannot be computed from what was given: too few units, a
    zero control mean for a relative effect, an invalid alpha, power or prior."""

    code = "CL-800"


class MonitoringError(ClosedLoopError):
    """A monitor cannot run as declared: a reference from another model or version, a
    statistic or rule that does not exist, an alert rule without a playbook."""

    code = "CL-900"


class FeedbackError(ClosedLoopError):
    """Logged feedback cannot be evaluated or learnt from as given: a propensity outside
    (0, 1], an action outside the action set, an estimator that does not exist."""

    code = "CL-1000"


__all__ = [
    "ArtefactCorrupted",
    "BackendError",
    "BackendUnavailable",
    "ClosedLoopError",
    "ConfigError",
    "DataError",
    "DefinitionError",
    "ExperimentError",
    "FeedbackError",
    "LadderMoved",
    "LeakageError",
    "MonitoringError",
    "Overloaded",
    "PointInTimeError",
    "PromotionBlocked",
    "RegistryError",
    "RequestError",
    "SchemaMismatch",
    "ServingError",
    "TrainingError",
    "UnknownFeatureError",
    "VersionConflict",
    "VersionNotFound",
]


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """`` — did you mean 'x'?`` for the choice closest to ``name``, or ``""`` when none is.

    >>> did_you_mean("amount_sum_7d", ["amount_sum_1w", "amount_count_1w"])
    " — did you mean 'amount_sum_1w'?"
    """
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f" — did you mean {close[0]!r}?" if close else ""
