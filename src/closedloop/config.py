"""Settings: ``closedloop.toml`` → typed settings, with embedded defaults for everything.

An empty or absent file gives a project that needs no server: DuckDB over local Parquet files
for the offline store, SQLite for metadata.

>>> settings = load_settings(None)
>>> settings.metadata.url
'sqlite:///.closedloop/metadata.db'
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from closedloop.data.clock import parse_instant
from closedloop.errors import ClosedLoopError, ConfigError

CONFIG_FILE = "closedloop.toml"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ProjectSettings(_Section):
    name: str = "closedloop-project"
    definitions: str = "definitions.py"


class OfflineSettings(_Section):
    engine: Literal["duckdb"] = "duckdb"
    memory_limit: str | None = None
    threads: int | None = Field(default=None, ge=1)
    temp_directory: str = ".closedloop/tmp"


class OnlineSettings(_Section):
    store: Literal["sqlite", "redis"] = "sqlite"
    path: str = ".closedloop/online.db"            # sqlite
    url: str = "redis://127.0.0.1:6379/0"          # redis
    prefix: str = "cl:"                            # redis: every key starts with this
    log_sample: float = Field(default=0.0, ge=0.0, le=1.0)   # share of served vectors logged
    log_flush_s: float = Field(default=5.0, gt=0.0)  # a logged vector is on disk within this
    batch_size: int = Field(default=2000, ge=1)    # entities per atomic materialization write


class ServingSettings(_Section):
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    workers: int = Field(default=1, ge=1)
    log: Literal["files", "redis"] = "files"               # redis: a stream per model
    log_mode: Literal["durable", "buffered"] = "durable"   # see backends/predictions.py
    flush_ms: float = Field(default=5.0, gt=0)             # buffered: the loss window
    fetch_timeout_ms: float = Field(default=100.0, gt=0)   # the online fetch's hard limit
    reload_s: float = Field(default=0.25, gt=0)   # how often aliases and ladders are checked
    max_inflight: int = Field(default=512, ge=1)           # per worker; beyond it a 503
    max_body_bytes: int = Field(default=1 << 20, ge=1024)


class StreamSettings(_Section):
    store: Literal["embedded", "redis"] | None = None   # none: redis when url is set
    path: str = ".closedloop/streams.db"           # embedded: the append-only log
    url: str | None = None                         # redis: Redis Streams
    prefix: str = "cl:"                            # redis: every stream name starts with this

    @property
    def backend(self) -> Literal["embedded", "redis"]:
        """The store in force: the one named, else Redis Streams if a url is set."""
        if self.store is not None:
            return self.store
        return "redis" if self.url is not None else "embedded"


class CostSettings(_Section):
    cpu_hour: float | None = Field(default=None, ge=0)    # price of one CPU-hour
    gb_month: float | None = Field(default=None, ge=0)    # price of a GB stored a month
    currency: str = "USD"


class ClockSettings(_Section):
    at: str | None = None      # "now" for every command and the server (ISO 8601, with a zone)
    replay: bool = False       # the server reads each request's own instant from `field`
    field: str | None = None   # replay: default, the model's rows source's timestamp column

    @field_validator("at")
    @classmethod
    def _instant(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                parse_instant(value, "the instant")
            except ClosedLoopError as exc:
                raise ValueError(f"{exc.message} ({exc.fix})") from None
        return value


class LadderSettings(_Section):
    controller: Literal["serve", "separate"] = "serve"   # separate: `closedloop ladder run`
    every_s: float = Field(default=5.0, gt=0)             # how often the controller measures


class MonitoringSettings(_Section):
    runner: Literal["serve", "separate", "off"] = "serve"   # where the monitors run
    checks: bool = True                     # constraints checked on every served prediction
    publish_s: float = Field(default=10.0, gt=0)   # each worker's drift counts to the monitor store
                                            # (checked every [serving] reload_s)


class MetadataSettings(_Section):
    url: str = "sqlite:///.closedloop/metadata.db"


class Settings(_Section):
    """Every setting of a project, each with its embedded default."""

    project: ProjectSettings = ProjectSettings()
    offline: OfflineSettings = OfflineSettings()
    online: OnlineSettings = OnlineSettings()
    metadata: MetadataSettings = MetadataSettings()
    serving: ServingSettings = ServingSettings()
    stream: StreamSettings = StreamSettings()
    cost: CostSettings = CostSettings()
    clock: ClockSettings = ClockSettings()
    ladder: LadderSettings = LadderSettings()
    monitoring: MonitoringSettings = MonitoringSettings()


def load_settings(path: Path | None) -> Settings:
    """Read a ``closedloop.toml``; a missing or empty file gives the defaults."""
    if path is None or not path.exists():
        return Settings()
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}",
                          fix="correct the line it names") from exc
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors())
        raise ConfigError(f"{path} has invalid settings: {problems}",
                          fix="see docs/architecture.md#configuration for the keys") from None


DEFAULT_CONFIG = '''# closedloop project settings. Every key is optional; these are the defaults.
[project]
name = "{name}"
definitions = "definitions.py"   # the Python module that declares entities, sources, features

[offline]
engine = "duckdb"                # Parquet/CSV files queried by DuckDB, out of core
# memory_limit = "2GB"           # DuckDB spills to temp_directory beyond this
temp_directory = ".closedloop/tmp"

[online]
store = "sqlite"                 # or "redis"
path = ".closedloop/online.db"   # sqlite
# url = "redis://127.0.0.1:6379/0"   # redis
# prefix = "cl:"
log_sample = 0.0                 # share of served vectors logged for `closedloop consistency`
log_flush_s = 5.0                # logged vectors reach disk within this; a crash loses at most it

[metadata]
url = "sqlite:///.closedloop/metadata.db"   # or postgresql+psycopg://host/db

[serving]
host = "127.0.0.1"
port = 8000
workers = 1
log_mode = "durable"             # acknowledge a prediction once it is fsync-ed; or "buffered"
# flush_ms = 5                   # buffered: a crash loses at most this much
fetch_timeout_ms = 100           # the online fetch's hard limit: beyond it, the fallback
# reload_s = 0.25                # how often workers check aliases and ladders (shares move)

[ladder]                         # the promotion ladders' controller
controller = "serve"             # inside `closedloop serve`; "separate": `closedloop ladder run`
every_s = 5.0                    # how often it measures each running ladder's evidence

[monitoring]                     # the monitors declared in the definitions (cl.Monitor)
runner = "serve"                 # run each every Monitor.every inside `closedloop serve` and
                                 # `closedloop stream`; "separate": `closedloop monitor --watch`
checks = true                    # every served prediction checked against its constraints
                                 # and counted for drift; the counts published every
# publish_s = 10.0               # seconds to the monitor store, where the monitors merge them

[clock]                          # where "now" comes from (default: the wall clock)
# at = "2025-06-01T00:00:00Z"    # serve, score, materialize... as of this instant (historical data)
# replay = true                  # the server reads each request's own instant from `field`
# field = "event_time"           # default: the model's rows source's timestamp column
'''
