"""``Project``: the façade the CLI and the server call. It wires settings to backends and hands
out the stage services; the logic lives in the stage folders.

>>> import tempfile, closedloop as cl
>>> with tempfile.TemporaryDirectory() as folder:
...     _ = cl.init_project(folder, name="demo")
...     with cl.Project(folder) as project:
...         print(project.settings.project.name)
demo
"""

from __future__ import annotations

import hashlib
import importlib.util
import sys
import traceback
from pathlib import Path
from types import ModuleType, TracebackType

from closedloop import declarations
from closedloop.backends.artefacts import LocalArtefactStore
from closedloop.backends.base import EventStream, OnlineStore, PredictionLog
from closedloop.backends.duckdb import DuckDBEngine
from closedloop.backends.metadata import SQLMetadataStore
from closedloop.backends.monitorstore import SQLMonitorStore
from closedloop.backends.predictions import FilePredictionLog, StreamPredictionLog
from closedloop.backends.sqlite import SQLiteOnlineStore
from closedloop.backends.sqlite_stream import SQLiteEventStream
from closedloop.config import CONFIG_FILE, DEFAULT_CONFIG, Settings, load_settings
from closedloop.data.clock import Clock
from closedloop.data.ingest import QuarantineStore
from closedloop.data.service import DataService
from closedloop.errors import ClosedLoopError, ConfigError, DefinitionError
from closedloop.features import registration
from closedloop.features.catalog import Catalog
from closedloop.features.consistency import FeatureLog
from closedloop.features.registration import Plan
from closedloop.features.service import FeatureService
from closedloop.monitoring.service import MonitoringService
from closedloop.monitoring.spec import monitors_from_module
from closedloop.registry.ladder import ladders_from_module
from closedloop.registry.service import RegistryService
from closedloop.serving.controller import LadderService
from closedloop.serving.service import ServingService
from closedloop.serving.spec import servings_from_module
from closedloop.training.model import models_from_module
from closedloop.training.service import TrainingService

DEFAULT_DEFINITIONS = '''"""Definitions of this closedloop project: entities, sources, features,
labels, models and how they are served. Uncomment and edit; `closedloop apply` checks every
name."""

import closedloop as cl

# user = cl.Entity("user", key="user_id")
# txns = cl.EventSource("transactions", path="data/transactions", timestamp="event_time",
#                       arrival="ingested_at", id="txn_id",
#                       schema={"txn_id": str, "user_id": str, "amount": float})
# # Features are named column_fn_window, the window in its largest exact unit ("7d" -> 1w).
# user_txn = cl.FeatureView("user_txn", entity=user, source=txns, version=1,
#                           aggregations=[cl.Agg("amount", "sum", windows=["1h", "7d"]),
#                                         cl.Agg("amount", "count", windows=["1d"])])
#
# # Labels arrive late: a chargeback settles up to 60 days after its transaction.
# chargebacks = cl.LabelSource("chargebacks", path="data/chargebacks", subject="txn_id",
#                              timestamp="event_time", label="is_fraud",
#                              settled_at="settled_at", max_delay="60d", default=False)
#
# # One prediction per transaction, trained only on rows whose label window has closed.
# fraud = cl.Model("fraud", features=["user_txn.amount_sum_1h", "user_txn.amount_sum_1w",
#                                     "user_txn.amount_count_1d"],
#                  label="chargebacks", rows="transactions",
#                  trainer=cl.LightGBMTrainer(seed=7))
#
# # Served over HTTP by `closedloop serve`: sticky routes by user, decisions, a fallback
# # score when the online store cannot answer in time, and a latency budget.
# serving = cl.Serving("fraud", unit="user_id", subject="txn_id",
#                      decisions=[("block", 0.9), ("review", 0.5)], default_decision="allow",
#                      fallback=0.01, budget=cl.Budget(p99_ms=50, fetch_ms=15))
'''


def init_project(path: str | Path, *, name: str | None = None,
                 definitions: str | None = None) -> Path:
    """Create a project folder: ``closedloop.toml``, a definitions module, a data folder."""
    root = Path(path)
    config = root / CONFIG_FILE
    if config.exists():
        raise ConfigError(f"{config} already exists", fix="open it with closedloop.Project")
    root.mkdir(parents=True, exist_ok=True)
    (root / "data").mkdir(exist_ok=True)
    config.write_text(DEFAULT_CONFIG.format(name=name or root.resolve().name))
    module = root / "definitions.py"
    if not module.exists():
        module.write_text(definitions if definitions is not None else DEFAULT_DEFINITIONS)
    return root


def _load_module(path: Path) -> ModuleType:
    if not path.exists():
        raise ConfigError(f"the definitions module {str(path)!r} does not exist",
                          fix="create it, or set [project] definitions in closedloop.toml")
    name = f"closedloop_definitions_{abs(hash(str(path.resolve())))}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:  # pragma: no cover - only for non-.py paths
        raise ConfigError(f"{path} is not a Python module", fix="name a .py file")
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(path.parent.resolve()))
    try:
        spec.loader.exec_module(module)
    except ClosedLoopError:
        raise
    except Exception as exc:
        where = traceback.extract_tb(exc.__traceback__)[-1]
        raise DefinitionError(
            f"the definitions module {str(path)!r} raised {type(exc).__name__}: {exc} "
            f"(line {where.lineno})",
            fix="fix the module; `python definitions.py` shows the error") from exc
    finally:
        sys.path.remove(str(path.parent.resolve()))
    return module


class Project:
    """A closedloop project folder: its settings, its definitions, its stores."""

    def __init__(self, path: str | Path = ".", *, clock: Clock | None = None) -> None:
        self.root = Path(path)
        if not self.root.is_dir():
            raise ConfigError(f"project folder {str(path)!r} does not exist",
                              fix="create one with `closedloop init`")
        self.settings: Settings = load_settings(self.root / CONFIG_FILE)
        module = _load_module(self.root / self.settings.project.definitions)
        c = self.settings.clock
        #: Where every "now" comes from (closedloop.data.clock): ``clock``, else [clock].
        self.clock = clock or Clock.of(c.at, replay=c.replay, field=c.field)
        self.catalog = Catalog.from_module(module)
        offline = self.settings.offline
        temp = Path(offline.temp_directory)
        self.engine = DuckDBEngine(
            root=self.root, memory_limit=offline.memory_limit, threads=offline.threads,
            temp_directory=str(temp if temp.is_absolute() else self.root / temp),
            log_root=str(self.root / ".closedloop" / "log"))
        self.metadata = SQLMetadataStore(self.settings.metadata.url, root=self.root)
        self.online_store = self._online_store()
        # Registered versions the code no longer defines stay usable.
        self.catalog.restore(self.metadata.definitions())
        sample = self.settings.online.log_sample
        self.feature_log = FeatureLog(self.root / ".closedloop" / "feature_log", sample=sample,
                                      flush_s=self.settings.online.log_flush_s)
        keys: dict[str, list[str]] = {}
        for view in self.catalog.views.values():        # rows without a view's key are refused
            keys.setdefault(view.source.name, [])
            if view.entity.key not in keys[view.source.name]:
                keys[view.source.name].append(view.entity.key)
        self.data = DataService(self.catalog.sources, self.engine,
                                QuarantineStore(self.root / ".closedloop" / "quarantine"), keys,
                                clock=self.clock)
        self.features = FeatureService(self.catalog, self.engine, self.online_store,
                                       self.feature_log if sample > 0 else None,
                                       batch_size=self.settings.online.batch_size,
                                       clock=self.clock)
        self.models = models_from_module(module)
        self.artefacts = LocalArtefactStore(self.root / ".closedloop" / "artefacts")
        definitions = self.root / self.settings.project.definitions
        self.monitor_store = SQLMonitorStore(self.metadata)
        self.training = TrainingService(
            self.models, self.catalog, self.engine, self.features, self.metadata,
            self.metadata, self.artefacts, self.root,
            definitions_hash=lambda: hashlib.sha256(definitions.read_bytes()).hexdigest(),
            decision_thresholds=lambda name: [t for _, t in self.serving.serving(name).decisions],
            frozen=lambda name: self.monitoring.frozen(name))
        self.registry = RegistryService(self.metadata, self.artefacts, self.training,
                                        self.features)
        serving = self.settings.serving
        self.prediction_log: PredictionLog
        if serving.log == "redis":
            if self.settings.stream.backend != "redis":
                raise ConfigError("[serving] log = \"redis\" needs the Redis of [stream] url",
                                  fix='set [stream] url = "redis://127.0.0.1:6379/0"')
            stream = self._event_stream()
            self.prediction_log = StreamPredictionLog(stream, mode=serving.log_mode,
                                                      flush_ms=serving.flush_ms)
        else:
            self.prediction_log = FilePredictionLog(self.root / ".closedloop" / "predictions",
                                                mode=serving.log_mode, flush_ms=serving.flush_ms)
        self.serving = ServingService(servings_from_module(module), self.models,
                                      self.registry, self.features, self.catalog,
                                      self.prediction_log,
                                      scoring=self.root / ".closedloop" / "scoring",
                                      events=self._event_stream(),
                                      ladders=ladders_from_module(module),
                                      ladder_store=self.metadata,
                                      switches=self.monitor_store)
        #: The promotion ladders: commands, controller, evidence (``serving/controller.py``).
        self.ladder = LadderService(self.serving, self.registry, self.metadata)
        #: The monitors: drift, constraints, outcome lag, slices, alerts → playbooks.
        self.monitoring = MonitoringService(monitors_from_module(module), self.serving,
                                            self.registry, self.ladder, self.monitor_store,
                                            self.clock, self.metadata)

    def _online_store(self) -> OnlineStore:
        online = self.settings.online
        if online.store == "redis":
            from closedloop.backends.redis import RedisOnlineStore

            return RedisOnlineStore(online.url, prefix=online.prefix,
                                    read_timeout=self.settings.serving.fetch_timeout_ms / 1000)
        path = Path(online.path)
        return SQLiteOnlineStore(path if path.is_absolute() else self.root / path)

    def _event_stream(self) -> EventStream:
        stream = self.settings.stream
        if stream.backend == "embedded":
            path = Path(stream.path)
            return SQLiteEventStream(path if path.is_absolute() else self.root / path)
        from closedloop.backends.redis_stream import RedisEventStream

        return RedisEventStream(stream.url or "redis://127.0.0.1:6379/0", prefix=stream.prefix)

    def plan(self) -> Plan:
        """What ``apply`` would register, without writing anything; every model and serving
        declaration is checked first (``closedloop.declarations``)."""
        declarations.check(self.catalog, self.models, self.serving.servings)
        return registration.plan(self.catalog, self.metadata)

    def apply(self) -> Plan:
        """Register the definitions, once every model and serving declaration checks out;
        refuse to change a registered version in place."""
        declarations.check(self.catalog, self.models, self.serving.servings)
        return registration.apply(self.catalog, self.metadata)

    def close(self) -> None:
        self.serving.close()
        self.prediction_log.close()
        if self.serving.events is not None:
            self.serving.events.close()
        self.features.close()
        self.feature_log.flush()
        self.engine.close()
        self.metadata.close()
        self.online_store.close()

    def __enter__(self) -> Project:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
