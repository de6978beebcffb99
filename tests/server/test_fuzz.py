"""Fuzz the server from its own OpenAPI schema with schemathesis (valid and invalid bodies):
every answer is documented, none is a 5xx, schema-valid requests are accepted and
schema-invalid ones refused, and the worker survives it all."""

from __future__ import annotations

import shutil
import subprocess

import closedloop as cl
from tests.server.test_app import INSTANCE, Server, start_server, stop_server


def test_the_api_survives_fuzzing_from_its_schema(served: cl.Project, tmp_path) -> None:  # type: ignore[no-untyped-def]
    exe = shutil.which("schemathesis") or shutil.which("st")
    assert exe is not None, "schemathesis is part of the dev extra"
    process, port = start_server(served.root)
    try:
        result = subprocess.run(
            [exe, "run", f"http://127.0.0.1:{port}/openapi.json", "--checks", "all",
             "--mode", "all", "--max-examples", "60", "--seed", "7",
             "--generation-deterministic", "--no-color"],
            capture_output=True, text=True, timeout=600, check=False,
            cwd=tmp_path)                        # its cache stays out of the repository
        assert result.returncode == 0, result.stdout[:4000] + result.stderr[-2000:]
        assert Server(port, served, process).predict([INSTANCE])[0] == 200
    finally:
        stop_server(process)
