"""Labeling strategies: human labels resolved by a declared rule, and weak supervision —
labeling functions combined by a label model that learns how good each function is without
ground truth.

A labeling function is a plain Python function of one row returning a class index or
``ABSTAIN`` (-1). ``apply_functions`` runs them into a label matrix (rows × functions);
``summarize`` reports each function's coverage, overlap and conflict; a label model then turns
the matrix into one label per row:

* ``MajorityVote`` — the most common vote (ties to the lower class; no vote: ``ABSTAIN``);
* ``DawidSkeneModel`` — Dawid & Skene (1979): each function has a confusion matrix
  P(vote | true class), learned with the class balance by expectation-maximisation from the
  votes alone, so a few accurate functions outweigh many noisy ones.

>>> import numpy as np
>>> votes = np.array([[1, 1, -1], [0, 1, 0], [0, -1, 0], [1, 1, 1]])
>>> MajorityVote(n_classes=2).predict(votes).tolist()
[1, 0, 0, 1]
>>> model = DawidSkeneModel(n_classes=2)
>>> model.fit(votes)
>>> model.predict(votes).tolist()
[1, 0, 0, 1]
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import numpy as np
import pyarrow as pa

from closedloop.data.instants import to_micros
from closedloop.data.tables import as_table
from closedloop.errors import DataError

ABSTAIN = -1

LabelingFunction = Callable[[Mapping[str, Any]], int | None]


def apply_functions(functions: Sequence[LabelingFunction],
                    rows: Sequence[Mapping[str, Any]], n_classes: int) -> np.ndarray[Any, Any]:
    """The label matrix: ``out[i, j]`` is function j's vote on row i (``ABSTAIN``: none; a
    function returning None abstains). A vote outside ``0..n_classes-1`` is an error."""
    out = np.full((len(rows), len(functions)), ABSTAIN, dtype=np.int64)
    for j, fn in enumerate(functions):
        name = getattr(fn, "__name__", repr(fn))
        for i, row in enumerate(rows):
            try:
                vote = fn(row)
            except Exception as exc:
                raise DataError(f"labeling function {name!r} raised {type(exc).__name__} on "
                                f"row {i}: {exc}", fix="make it return a class or None") from exc
            if vote is None or vote == ABSTAIN:
                continue
            if not isinstance(vote, int | np.integer) or not 0 <= vote < n_classes:
                raise DataError(f"labeling function {name!r} voted {vote!r} on row {i}",
                                fix=f"return a class in 0..{n_classes - 1}, or None to abstain")
            out[i, j] = vote
    return out


def _check(votes: Any, n_classes: int) -> np.ndarray[Any, Any]:
    matrix = np.asarray(votes)
    if matrix.ndim != 2 or not np.issubdtype(matrix.dtype, np.integer):
        raise DataError(f"a label matrix must be 2-D integers, not {matrix.dtype} of shape "
                        f"{matrix.shape}", fix="build it with apply_functions")
    bad = (matrix != ABSTAIN) & ((matrix < 0) | (matrix >= n_classes))
    if bad.any():
        i, j = np.argwhere(bad)[0]
        raise DataError(f"the label matrix holds vote {matrix[i, j]} (row {i}, function {j}) "
                        f"for {n_classes} classes", fix=f"votes are 0..{n_classes - 1} or -1")
    return matrix


def _counts(votes: np.ndarray[Any, Any], n_classes: int) -> np.ndarray[Any, Any]:
    """Per row, how many functions voted for each class."""
    return np.stack([(votes == k).sum(axis=1) for k in range(n_classes)], axis=1)


@dataclass(frozen=True)
class FunctionSummary:
    """How one labeling function behaves on a label matrix (shares of all rows):
    ``coverage`` it votes; ``overlap`` it votes and another function does too; ``conflict``
    another function votes for a different class."""

    function: str
    coverage: float
    overlap: float
    conflict: float


def summarize(votes: Any, names: Sequence[str] | None = None) -> list[FunctionSummary]:
    """Coverage, overlap and conflict of each function (column) of a label matrix."""
    matrix = np.asarray(votes)
    n, m = matrix.shape
    names = list(names) if names is not None else [f"lf{j}" for j in range(m)]
    voted = matrix != ABSTAIN
    out = []
    for j in range(m):
        others = np.delete(matrix, j, axis=1)
        other_voted = others != ABSTAIN
        overlap = voted[:, j] & other_voted.any(axis=1)
        conflict = voted[:, j] & (other_voted & (others != matrix[:, [j]])).any(axis=1)
        out.append(FunctionSummary(names[j], float(voted[:, j].mean()) if n else 0.0,
                                   float(overlap.mean()) if n else 0.0,
                                   float(conflict.mean()) if n else 0.0))
    return out


class MajorityVote:
    """The most common vote per row; ties go to the lower class; rows with no vote abstain."""

    def __init__(self, n_classes: int = 2) -> None:
        self.n_classes = n_classes

    def predict(self, votes: Any) -> np.ndarray[Any, Any]:
        matrix = _check(votes, self.n_classes)
        counts = _counts(matrix, self.n_classes)
        out: np.ndarray[Any, Any] = counts.argmax(axis=1)
        out[counts.sum(axis=1) == 0] = ABSTAIN
        return out


class DawidSkeneModel:
    """Dawid–Skene label model: per function a confusion matrix ``confusion_[j, true, vote]``,
    and the class balance ``class_balance_``, fitted by EM on the votes alone (started from the
    majority vote, until the mean log-likelihood gains less than ``tol``; ``smoothing`` is a
    Dirichlet pseudo-count that keeps every probability positive). ``predict_proba`` gives
    P(true class | votes); rows with no vote get the class balance, and ``predict`` abstains
    on them."""

    def __init__(self, n_classes: int = 2, max_iter: int = 500, tol: float = 1e-8,
                 smoothing: float = 0.01) -> None:
        self.n_classes = n_classes
        self.max_iter = max_iter
        self.tol = tol
        self.smoothing = smoothing

    def fit(self, votes: Any) -> None:
        matrix = _check(votes, self.n_classes)
        if matrix.shape[0] == 0:
            raise DataError("the label matrix has no rows", fix="label at least one row")
        k = self.n_classes
        onehot = np.stack([matrix == c for c in range(k)], axis=2).astype(float)  # n, m, k
        counts = onehot.sum(axis=1)
        voted = counts.sum(axis=1) > 0
        # Start from the (soft) majority vote; rows without votes carry no information.
        posterior = np.where(voted[:, None], counts + 1e-3, 1.0)
        posterior /= posterior.sum(axis=1, keepdims=True)
        self.n_iter_, previous = 0, -np.inf
        while self.n_iter_ < self.max_iter:      # until the mean log-likelihood settles
            self.n_iter_ += 1
            self._m_step(posterior, onehot)
            posterior, self.log_likelihood_ = self._posterior(onehot)
            if self.log_likelihood_ - previous < self.tol:
                break
            previous = self.log_likelihood_

    def _m_step(self, posterior: np.ndarray[Any, Any], onehot: np.ndarray[Any, Any]) -> None:
        a = self.smoothing
        self.class_balance_ = ((posterior.sum(axis=0) + a)
                               / (posterior.shape[0] + a * self.n_classes))
        # confusion[j, t, v] ∝ Σ_i P(t | i) · [vote_ij = v]
        weighted = np.einsum("it,ijv->jtv", posterior, onehot) + a
        self.confusion_ = weighted / weighted.sum(axis=2, keepdims=True)

    def _posterior(self, onehot: np.ndarray[Any, Any]) -> tuple[np.ndarray[Any, Any], float]:
        """P(true class | votes) per row, and the mean log-likelihood of the votes."""
        log_conf = np.log(self.confusion_)                               # m, t, v
        log_like = np.einsum("ijv,jtv->it", onehot, log_conf)            # abstains add 0
        log_joint = log_like + np.log(self.class_balance_)[None, :]
        top = log_joint.max(axis=1, keepdims=True)
        joint = np.exp(log_joint - top)
        total = joint.sum(axis=1, keepdims=True)
        mean_ll = float((np.log(total) + top).mean())
        out: np.ndarray[Any, Any] = joint / total
        return out, mean_ll

    def predict_proba(self, votes: Any) -> np.ndarray[Any, Any]:
        matrix = _check(votes, self.n_classes)
        if not hasattr(self, "confusion_"):
            raise DataError("this label model is not fitted", fix="call fit(votes) first")
        if matrix.shape[1] != self.confusion_.shape[0]:
            raise DataError(f"the label matrix has {matrix.shape[1]} functions, the model was "
                            f"fitted on {self.confusion_.shape[0]}",
                            fix="apply the same labeling functions")
        onehot = np.stack([matrix == c for c in range(self.n_classes)], axis=2).astype(float)
        return self._posterior(onehot)[0]

    def predict(self, votes: Any) -> np.ndarray[Any, Any]:
        matrix = _check(votes, self.n_classes)
        out: np.ndarray[Any, Any] = self.predict_proba(matrix).argmax(axis=1)
        out[(matrix == ABSTAIN).all(axis=1)] = ABSTAIN
        return out

    @property
    def accuracies_(self) -> np.ndarray[Any, Any]:
        """Each function's estimated accuracy when it votes: Σ_t P(t) · P(vote = t | t)."""
        diag = np.einsum("jtt->jt", self.confusion_)
        out: np.ndarray[Any, Any] = diag @ self.class_balance_
        return out


# -- human labels ---------------------------------------------------------------------------
@dataclass(frozen=True)
class HumanLabels:
    """Human annotations resolved to one label per item.

    ``labels`` has ``item``, ``label``, ``annotators`` (how many labelled the item),
    ``agreement`` (the share of them who gave the resolved label) and ``rule``;
    ``agreement_rate`` is the share of items labelled by two or more annotators on which all
    agreed, and ``pairwise_agreement`` the share of annotator pairs, over those items, that
    agree."""

    labels: pa.Table
    agreement_rate: float
    pairwise_agreement: float
    conflicts: int


def resolve_human_labels(annotations: Any, *, item: str = "item", label: str = "label",
                         annotator: str = "annotator", rule: str = "majority",
                         trust: Mapping[str, float] | None = None) -> HumanLabels:
    """Resolve annotations (a table of item, label, annotator) by a declared rule:
    ``majority`` (ties go to the most trusted annotator among the tied labels when ``trust``
    is given, else to the lowest label) or ``most_trusted`` (the label of the item's most
    trusted annotator; unknown annotators have trust 0; ties in trust go to the majority).

    >>> import pyarrow as pa
    >>> rows = pa.table({"item": [1, 1, 1, 2], "label": [1, 1, 0, 0],
    ...                  "annotator": ["a", "b", "c", "a"]})
    >>> got = resolve_human_labels(rows)
    >>> got.labels.column("label").to_pylist(), got.agreement_rate
    ([1, 0], 0.0)
    """
    table = as_table(annotations, "annotations")
    missing = [c for c in (item, label, annotator) if c not in table.column_names]
    if missing:
        raise DataError(f"the annotations have no column(s) {missing}",
                        fix=f"pass item=, label=, annotator= (columns: {table.column_names})")
    if rule not in ("majority", "most_trusted"):
        raise DataError(f"label resolution rule {rule!r} is unknown",
                        fix="use 'majority' or 'most_trusted'")
    if rule == "most_trusted" and not trust:
        raise DataError("rule 'most_trusted' needs the annotators' trust",
                        fix="pass trust={'annotator': weight, ...}")
    for column in (item, label, annotator):
        if table[column].null_count:
            raise DataError(f"column {column!r} of the annotations has "
                            f"{table[column].null_count} nulls",
                            fix="every annotation needs an item, a label and an annotator")
    weight = dict(trust or {})
    by_item: dict[Any, dict[Any, Any]] = {}
    for it, lab, who in zip(table[item].to_pylist(), table[label].to_pylist(),
                            table[annotator].to_pylist(), strict=True):
        given = by_item.setdefault(it, {})
        if who in given:
            raise DataError(f"annotator {who!r} labelled item {it!r} more than once",
                            fix="keep one label per annotator and item")
        given[who] = lab
    items, labels, counts, agreement = [], [], [], []
    unanimous = multi = pairs = agreeing = conflicts = 0
    for it, given in by_item.items():
        votes: dict[Any, int] = {}
        for lab in given.values():
            votes[lab] = votes.get(lab, 0) + 1
        top = max(votes.values())
        tied = sorted(lab for lab, n in votes.items() if n == top)
        if rule == "most_trusted":
            best = max(weight.get(who, 0.0) for who in given)
            trusted = {given[who] for who in given if weight.get(who, 0.0) == best}
            chosen = _majority(trusted, votes, given, weight)
        else:
            chosen = _majority(set(tied), votes, given, weight)
        items.append(it)
        labels.append(chosen)
        counts.append(len(given))
        agreement.append(votes[chosen] / len(given))
        if len(given) > 1:
            multi += 1
            unanimous += len(votes) == 1
            conflicts += len(votes) > 1
            n = len(given)
            pairs += n * (n - 1) // 2
            agreeing += sum(k * (k - 1) // 2 for k in votes.values())
    out = pa.table({"item": pa.array(items, table[item].type),
                    "label": pa.array(labels, table[label].type),
                    "annotators": pa.array(counts, pa.int64()),
                    "agreement": pa.array(agreement, pa.float64()),
                    "rule": pa.array([rule] * len(items), pa.string())})
    return HumanLabels(out, unanimous / multi if multi else 1.0,
                       agreeing / pairs if pairs else 1.0, conflicts)


def _majority(candidates: set[Any], votes: Mapping[Any, int], given: Mapping[Any, Any],
              weight: Mapping[str, float]) -> Any:
    """Among candidate labels: the most voted, then the one with the most trusted annotator,
    then the lowest."""
    def key(lab: Any) -> tuple[int, float, Any]:
        trusted = max((weight.get(who, 0.0) for who, v in given.items() if v == lab),
                      default=0.0)
        return (-votes[lab], -trusted, lab)
    return min(candidates, key=key)


# -- implicit feedback ----------------------------------------------------------------------
def implicit_labels(exposures: Any, events: Any, *, key: str, window: timedelta,
                    time: str = "ts", event_time: str | None = None,
                    qualifies: Callable[[Mapping[str, np.ndarray[Any, Any]]], Any] | None = None,
                    ) -> pa.Table:
    """Labels from later behaviour: an exposure (a row of ``exposures`` at ``time``) is
    positive when a qualifying event (``qualifies``: a vectorised predicate over the events'
    columns, e.g. dwell above a threshold; default every event) of the same ``key`` happens
    within the attribution window — after the exposure, at most ``window`` later — and
    negative otherwise. ``settled_at`` is the window's close: only then is a negative known,
    so training takes the label from that instant on.

    Returns the exposures' columns plus ``label`` (int64, 1/0), ``settled_at`` and
    ``event_at`` (the first qualifying event's time, null for negatives).
    """
    left = exposures if isinstance(exposures, pa.Table) else pa.table(exposures)
    right = events if isinstance(events, pa.Table) else pa.table(events)
    event_time = event_time or time
    for table, what, cols in ((left, "exposures", (key, time)),
                              (right, "events", (key, event_time))):
        missing = [c for c in cols if c not in table.column_names]
        if missing:
            raise DataError(f"the {what} have no column(s) {missing}",
                            fix=f"their columns are {table.column_names}")
    if left[key].type != right[key].type:
        raise DataError(f"key {key!r} is {left[key].type} in the exposures but "
                        f"{right[key].type} in the events", fix="cast one to the other's type")
    if not isinstance(window, timedelta) or window <= timedelta(0):
        raise DataError(f"attribution window {window!r} must be a positive timedelta",
                        fix="pass e.g. window=timedelta(minutes=30)")
    t_exp = to_micros(left[time], f"column {time!r} of the exposures").to_numpy()
    t_ev = to_micros(right[event_time], f"column {event_time!r} of the events").to_numpy()
    keep = np.ones(right.num_rows, dtype=bool)
    if qualifies is not None:
        columns = {c: right[c].to_numpy(zero_copy_only=False) for c in right.column_names}
        keep = np.asarray(qualifies(columns), dtype=bool)
        if keep.shape != (right.num_rows,):
            raise DataError(f"the events predicate returned shape {keep.shape} for "
                            f"{right.num_rows} events", fix="return one bool per event")
    w = window // timedelta(microseconds=1)
    ev_keys = right[key].to_pylist()
    by_key: dict[Any, list[int]] = {}
    for i in np.flatnonzero(keep):
        k = ev_keys[i]
        if k is not None:
            by_key.setdefault(k, []).append(int(t_ev[i]))
    sorted_times = {k: np.sort(np.array(v, dtype=np.int64)) for k, v in by_key.items()}
    first = np.full(left.num_rows, -1, dtype=np.int64)
    for k, rows in _groups(left[key].to_pylist()).items():
        times = sorted_times.get(k)
        if times is None:
            continue
        at = t_exp[rows]
        pos = np.searchsorted(times, at, side="right")        # first event strictly after
        found = pos < times.size
        hit = np.where(found, times[np.minimum(pos, times.size - 1)], -1)
        ok = found & (hit <= at + w)
        first[rows[ok]] = hit[ok]
    stamp = pa.timestamp("us", tz="UTC")
    label = (first >= 0).astype(np.int64)
    return left.append_column("label", pa.array(label)).append_column(
        "settled_at", pa.array(t_exp + w).cast(stamp)).append_column(
        "event_at", pa.array(np.where(first >= 0, first, 0), mask=first < 0).cast(stamp))


def _groups(values: Sequence[Any]) -> dict[Any, np.ndarray[Any, Any]]:
    out: dict[Any, list[int]] = {}
    for i, v in enumerate(values):
        if v is not None:
            out.setdefault(v, []).append(i)
    return {k: np.array(v, dtype=np.int64) for k, v in out.items()}
