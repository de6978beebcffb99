"""Stage 1 — data and labels: entities and the sources that feed every later stage."""

from closedloop.data.sources import Entity, EventSource, Source, TableSource

__all__ = ["Entity", "EventSource", "Source", "TableSource"]
