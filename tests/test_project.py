"""Settings and the project façade: embedded defaults, clear errors for a bad folder or file."""

from __future__ import annotations

from pathlib import Path

import pytest

import closedloop as cl
from closedloop.config import load_settings
from closedloop.errors import ConfigError, DefinitionError


def test_absent_or_empty_config_gives_embedded_defaults(tmp_path: Path) -> None:
    assert load_settings(tmp_path / "missing.toml") == load_settings(None)
    empty = tmp_path / "closedloop.toml"
    empty.write_text("")
    settings = load_settings(empty)
    assert settings.offline.engine == "duckdb"
    assert settings.metadata.url.startswith("sqlite:///")


def test_settings_are_read(tmp_path: Path) -> None:
    path = tmp_path / "closedloop.toml"
    path.write_text('[offline]\nmemory_limit = "1GB"\nthreads = 1\n[project]\nname = "x"\n')
    settings = load_settings(path)
    assert (settings.offline.memory_limit, settings.offline.threads) == ("1GB", 1)
    assert settings.project.name == "x"


@pytest.mark.parametrize(("text", "match"), [
    ("[offline\n", "not valid TOML"),
    ("[offline]\nmemroy_limit = '1GB'\n", "offline.memroy_limit"),
    ("[offline]\nthreads = 0\n", "offline.threads"),
    ("[offline]\nengine = 'oracle'\n", "offline.engine"),
])
def test_bad_settings_name_the_key(tmp_path: Path, text: str, match: str) -> None:
    path = tmp_path / "closedloop.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=match) as info:
        load_settings(path)
    assert info.value.fix


def test_missing_folder_or_module_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        cl.Project(tmp_path / "nowhere")
    (tmp_path / "closedloop.toml").write_text('[project]\ndefinitions = "defs.py"\n')
    with pytest.raises(ConfigError, match=r"defs\.py"):
        cl.Project(tmp_path)


def test_a_definition_error_inside_the_module_keeps_its_type(make_project) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(DefinitionError, match="does not parse"):
        make_project('import closedloop as cl\ncl.Agg("x", "sum", windows=["1 hour"])\n')


def test_progress_reports_every_step(make_project, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from datetime import UTC, datetime

    import pyarrow as pa
    import pyarrow.parquet as pq

    p = make_project('''
import closedloop as cl
user = cl.Entity("user", key="user_id")
src = cl.EventSource("ev", path="data/ev.parquet", timestamp="ts", schema={"x": float})
v = cl.FeatureView("v", entity=user, source=src, aggregations=[cl.Agg("x", "sum", windows=["1h"])])
w = cl.FeatureView("w", entity=user, source=src, features=["x"])
@cl.transform(inputs=["v.x_sum_1h"])
def double(c):
    return 2 * c["v.x_sum_1h"]
''')
    ts = pa.array([datetime(2026, 1, 1, tzinfo=UTC)], pa.timestamp("us", tz="UTC"))
    pq.write_table(pa.table({"user_id": ["a"], "ts": ts, "x": [1.5]}), p.root / "data/ev.parquet")
    steps: list[tuple[int, int, str]] = []
    out = p.features.training_set(pa.table({"user_id": ["a"], "t": ts}), ["double", "w.x"],
                                  progress=lambda *s: steps.append(s))
    assert out["double"].to_pylist() == [3.0]
    assert [(d, t) for d, t, _ in steps] == [(0, 3), (1, 3), (2, 3), (3, 3)]


def test_the_init_template_uncommented_is_a_whole_project_apply_accepts(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The template shows every kind of declaration — source, view, label source, model,
    serving — and, uncommented as it stands, every name in it checks out."""
    from closedloop.project import init_project

    root = init_project(tmp_path / "p")
    text = (root / "definitions.py").read_text()
    for kind in ("cl.EventSource", "cl.FeatureView", "cl.LabelSource", "cl.Model",
                 "cl.Serving", "log_sample"):
        assert kind in text + (root / "closedloop.toml").read_text(), kind
    lines = [line[2:] if line.startswith("# ") else ("" if line == "#" else line)
             for line in text.splitlines()]
    (root / "definitions.py").write_text("\n".join(lines) + "\n")
    with cl.Project(root) as p:
        assert set(p.models) == {"fraud"}
        assert {i.action for i in p.apply().items} == {"add"}
