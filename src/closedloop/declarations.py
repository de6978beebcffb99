"""The check ``plan`` and ``apply`` run over every declaration that is not registered itself:
each model's features, label and rows source, and each serving declaration — so a wrong name
fails at ``apply``, with the closest name suggested, not later at ``train`` or ``serve``."""

from __future__ import annotations

from collections.abc import Mapping

from closedloop.data.ingest import declared_columns
from closedloop.data.sources import LabelSource
from closedloop.errors import ClosedLoopError, DefinitionError, did_you_mean
from closedloop.features.catalog import Catalog
from closedloop.serving.spec import Serving
from closedloop.training.model import Model


def problems(catalog: Catalog, models: Mapping[str, Model],
             servings: Mapping[str, Serving]) -> list[str]:
    """Every problem found, one line each (empty: all is well)."""
    found: list[str] = []
    sources = catalog.sources
    labels = sorted(n for n, s in sources.items() if isinstance(s, LabelSource))
    for name, model in models.items():
        try:
            catalog.resolve(list(model.features))
        except ClosedLoopError as exc:
            found.append(f"model {name!r}: {exc.message}")
        if not isinstance(sources.get(model.label), LabelSource):
            what = "is not a LabelSource" if model.label in sources else "names no source"
            found.append(f"model {name!r}: label {model.label!r} {what}"
                         f"{did_you_mean(model.label, labels)} (label sources: {labels})")
        if model.rows not in sources:
            found.append(f"model {name!r}: rows {model.rows!r} names no source"
                         f"{did_you_mean(model.rows, sources)} (sources: {sorted(sources)})")
    for name, serving in servings.items():
        served = models.get(serving.model)
        if served is None:                  # refused when the project opens (ServingService)
            continue
        rows = sources.get(served.rows)
        if rows is not None and serving.subject is not None:
            columns = declared_columns(rows)
            if serving.subject not in columns:
                found.append(f"serving of {name!r}: subject {serving.subject!r} is not a "
                             f"column of rows source {rows.name!r}"
                             f"{did_you_mean(serving.subject, columns)}")
    return found


def check(catalog: Catalog, models: Mapping[str, Model],
          servings: Mapping[str, Serving]) -> None:
    """Refuse the declarations when ``problems`` finds any, naming them all."""
    found = problems(catalog, models, servings)
    if found:
        raise DefinitionError(f"{len(found)} declaration problem(s): " + "; ".join(found),
                              fix="correct the names in the definitions module (an aggregate "
                                  "is named column_fn_window: 7d is spelled 1w)")
