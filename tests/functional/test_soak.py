"""Concurrency under a real server: uvicorn with two workers, mixed clients, then
proof from the databases that nothing acknowledged was lost, doubled or unaudited
(`benchmarks/soak.py`; `python -m benchmarks.soak` is the 60-second version)."""

from __future__ import annotations

from pathlib import Path

import pytest
from benchmarks.soak import soak


@pytest.mark.parametrize(
    "backend_name", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
)
def test_concurrent_clients_lose_nothing_and_audit_everything_once(
    backend_name: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    if backend_name == "postgresql":
        request.getfixturevalue("pg_databases")  # skips, or fails under CI, without PG
    result = soak(backend_name, tmp_path, clients=12, duration=6.0, workers=2)
    assert result.errors == {}, result.statuses
    assert result.problems == []
    assert result.statuses.get("create 201", 0) > 20
    assert result.statuses.get("patch 200", 0) > 5
    assert result.statuses.get("delete 204", 0) > 0
    assert result.statuses.get("dsr 201", 0) > 0
