"""One SQLAlchemy engine per region (and one for the control database).

A `Database` is the only way code opens a transaction. Connection failures,
timeouts and lock waits surface as `RegionUnavailable` for *that* database only,
so one region being down never fails requests for another.

Engines are created with `hide_parameters=True`: SQLAlchemy otherwise puts bound
parameters (field values) into exception messages, and exceptions reach logs.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import structlog
from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, DisconnectionError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from bastion.errors import NotFound, RegionUnavailable

log = structlog.get_logger("bastion.residency")

CONTROL = "control"
_WRITE = "bastion_write"
# How long a writer waits its turn behind this process's other SQLite writers.
_WRITER_QUEUE_SECONDS = 30.0


def create_db_engine(
    url: str,
    *,
    connect_timeout: int = 3,
    pool_size: int = 10,
    lock_timeout_ms: int = 10_000,
    statement_timeout_ms: int = 30_000,
) -> Engine:
    """An engine with Bastion's transaction semantics on SQLite and PostgreSQL.

    SQLite: WAL, foreign keys on, a busy timeout, and SQLAlchemy emitting BEGIN
    itself (`BEGIN IMMEDIATE` for writes, so two writers queue on the lock instead
    of deadlocking on a read-to-write upgrade). PostgreSQL: bounded connect and
    statement timeouts, and a ping of idle pooled connections so a restarted server
    is picked up again (`ping_idle_connections`).
    """
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        engine = create_engine(
            parsed,
            hide_parameters=True,
            pool_size=pool_size,
            max_overflow=pool_size,
            pool_timeout=connect_timeout,
            connect_args={"timeout": connect_timeout, "check_same_thread": False},
        )
        _sqlite_transactions(engine, busy_ms=connect_timeout * 1000)
        return engine
    engine = create_engine(
        parsed,
        hide_parameters=True,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_timeout=connect_timeout,
        connect_args={
            "connect_timeout": connect_timeout,
            "options": (
                f"-c statement_timeout={int(statement_timeout_ms)} "
                f"-c lock_timeout={int(lock_timeout_ms)}"
            ),
        },
    )
    ping_idle_connections(engine)
    return engine


# A connection back in the pool for less than this is used without a ping.
IDLE_PING_SECONDS = 1.0


def ping_idle_connections(engine: Engine) -> None:
    """Ping a pooled connection at checkout if it sat idle for `IDLE_PING_SECONDS`,
    and replace it if the ping fails (a restarted or failed-over server).

    SQLAlchemy's `pool_pre_ping` pings at every checkout: one more round trip for
    every transaction, a fifth of a simple read on PostgreSQL. A connection used a
    moment ago is almost certainly alive; if the server went away within that moment,
    the statement fails, the request answers 503, and SQLAlchemy drops the pool's
    connections (a disconnect error invalidates them all)."""

    @event.listens_for(engine, "checkin")
    def _returned(_dbapi_connection: Any, record: Any) -> None:
        record.info["bastion_returned_at"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _checked_out(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        returned = record.info.get("bastion_returned_at")
        if returned is not None and time.monotonic() - returned < IDLE_PING_SECONDS:
            return
        try:
            alive = engine.dialect.do_ping(dbapi_connection)
        except engine.dialect.loaded_dbapi.Error:
            alive = False
        if not alive:
            # The pool discards this connection and checks out (or opens) another.
            raise DisconnectionError("an idle pooled connection failed its ping")


def _sqlite_transactions(engine: Engine, *, busy_ms: int) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy, not the sqlite3 module, decide when transactions begin.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        # Checkpoint every ~40 MB of WAL instead of ~4 MB: an audited read dirties a few
        # index pages (record_refs), and rewriting the same hot pages into the database
        # ten times as often was a fifth of a list request's time.
        cursor.execute("PRAGMA wal_autocheckpoint=10000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={int(busy_ms)}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        write = conn.get_execution_options().get(_WRITE, False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


@dataclass(frozen=True, slots=True)
class Database:
    """A named database (a region's, or the control database) and its engine."""

    name: str
    engine: Engine
    _writers: threading.RLock | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.engine.url.get_backend_name() == "sqlite":
            # SQLite has one writer. Queueing this process's writers on a lock, rather
            # than on SQLite's busy handler (which backs off and retries in no order),
            # keeps waits short and fair; other processes still meet the busy timeout.
            object.__setattr__(self, "_writers", threading.RLock())

    @contextmanager
    def transaction(self, *, write: bool = False) -> Iterator[Connection]:
        """One transaction: committed if the block succeeds, rolled back if it raises.

        Raises `RegionUnavailable` when the database cannot be reached or a lock or
        statement timeout expires. Other database errors propagate unchanged.
        """
        if write and self._writers is not None:
            if not self._writers.acquire(timeout=_WRITER_QUEUE_SECONDS):
                log.warning("database_unavailable", database=self.name, cause="WriterQueueTimeout")
                raise RegionUnavailable(self.name)
            try:
                with self._transaction(write=True) as conn:
                    yield conn
            finally:
                self._writers.release()
            return
        with self._transaction(write=write) as conn:
            yield conn

    @contextmanager
    def _transaction(self, *, write: bool) -> Iterator[Connection]:
        try:
            with self.engine.connect() as conn:
                if write:
                    conn.execution_options(**{_WRITE: True})
                with conn.begin():
                    yield conn
        except (OperationalError, PoolTimeout) as exc:
            raise self._unavailable(exc) from None
        except DBAPIError as exc:
            if exc.connection_invalidated:
                raise self._unavailable(exc) from None
            raise

    def ping(self) -> bool:
        try:
            with self.transaction() as conn:
                conn.execute(text("SELECT 1"))
        except RegionUnavailable:
            return False
        return True

    def _unavailable(self, exc: Exception) -> RegionUnavailable:
        # Only the class names: a driver message may quote SQL or values.
        cause = type(getattr(exc, "orig", None) or exc).__name__
        log.warning("database_unavailable", database=self.name, cause=cause)
        return RegionUnavailable(self.name)


class Regions:
    """The configured regions' databases, in configuration order."""

    def __init__(self, databases: Mapping[str, Database]) -> None:
        self._databases = dict(databases)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._databases)

    def __contains__(self, name: object) -> bool:
        return name in self._databases

    def get(self, name: str) -> Database:
        """The region's database. An unknown region is a 404: nothing is queried."""
        database = self._databases.get(name)
        if database is None:
            raise NotFound(f"unknown region {name!r}")
        return database

    def dispose(self) -> None:
        for database in self._databases.values():
            database.engine.dispose()
