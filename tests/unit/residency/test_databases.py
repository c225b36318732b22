"""PostgreSQL pooled connections: pinged only after sitting idle, replaced when dead."""

from __future__ import annotations

import psycopg
import pytest
from sqlalchemy import text

from bastion.errors import RegionUnavailable
from bastion.residency import databases
from bastion.residency.databases import Database, create_db_engine
from tests.conftest import PG_DSN

pytestmark = pytest.mark.postgres


def _kill(pid: int) -> None:
    with psycopg.connect(PG_DSN, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))


def _backend_pid(database: Database) -> int:
    with database.transaction() as conn:
        return int(conn.execute(text("SELECT pg_backend_pid()")).scalar_one())


def test_an_idle_connection_whose_server_side_died_is_replaced_at_checkout(
    pg_databases: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    database = Database("eu", create_db_engine(pg_databases["eu"], pool_size=1))
    try:
        first = _backend_pid(database)
        _kill(first)  # as by a server restart while the connection sat in the pool
        monkeypatch.setattr(databases, "IDLE_PING_SECONDS", 0.0)  # it has been idle "long"
        second = _backend_pid(database)  # no error: the ping failed, a new one was opened
        assert second != first
    finally:
        database.engine.dispose()


def test_a_connection_used_a_moment_ago_is_not_pinged_and_a_dead_one_fails_once(
    pg_databases: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The price of skipping the ping: a server gone within the last second fails one
    transaction (503), and the pool is renewed for the next."""
    database = Database("eu", create_db_engine(pg_databases["eu"], pool_size=1))
    monkeypatch.setattr(databases, "IDLE_PING_SECONDS", 3600.0)
    try:
        first = _backend_pid(database)
        _kill(first)
        with pytest.raises(RegionUnavailable):
            _backend_pid(database)
        assert _backend_pid(database) != first
    finally:
        database.engine.dispose()
