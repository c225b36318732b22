"""Audit fixtures: events, a way to append many, and a superuser who bypasses the triggers."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import structlog
from sqlalchemy import Connection, text

from bastion.audit import AuditEvent, append
from bastion.clock import Clock
from bastion.residency.databases import Database
from bastion.state import State
from tests.conftest import REPO, SECRET, Backend

CONTACT = "con_eu_01m86ch3m0fm7889axhbnh88n8"
US_CONTACT = "con_us_01m86ch3m0emt8kzargn0sax3c"
PRINCIPAL = "prn_01jd0000000000000000000000"
EVIDENCE = (
    "audit_events",
    "audit_record_refs",
    "audit_chain",
    "audit_checkpoints",
    "audit_prunes",
    "audit_redactions",
)


def make_event(clock: Clock, **overrides: Any) -> AuditEvent:
    fields: dict[str, Any] = {
        "actor": PRINCIPAL,
        "action": "record.read",
        "entity": "contacts",
        "record_ids": [CONTACT],
        "fields": ["email", "last_name"],
        "policy_version": "abc123",
        "request_id": "req-1",
        "client_address": "192.0.2.10",
        "details": {"page": 1},
        **overrides,
    }
    return AuditEvent.new(clock, **fields)


def append_many(state: State, chain: str, count: int, **overrides: Any) -> list[AuditEvent]:
    """`count` events, each appended in its own write transaction (request-style)."""
    database = state.audit.database(chain)
    if chain == "us":  # a region's log names its own records only
        overrides.setdefault("record_ids", [US_CONTACT])
    events = []
    for _ in range(count):
        event = make_event(state.clock, **overrides)
        with database.transaction(write=True) as conn:
            append(conn, event)
        events.append(event)
    return events


@contextmanager
def superuser(database: Database) -> Iterator[Connection]:
    """A transaction in which the append-only triggers do not fire, as a DBA could arrange.

    PostgreSQL: `session_replication_role = replica` (superuser only). SQLite: the
    triggers are dropped (every test works on its own copy of the database). So
    rows inserted here are not queued by the database either.
    """
    with database.transaction(write=True) as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SET LOCAL session_replication_role = replica"))
        else:
            conn.execute(text("DROP TRIGGER IF EXISTS audit_events_queue"))
            for table in EVIDENCE:
                for operation in ("update", "delete"):
                    conn.execute(text(f"DROP TRIGGER IF EXISTS {table}_{operation}"))
        yield conn


@pytest.fixture
def eu(state: State) -> Database:
    return state.audit.database("eu")


@pytest.fixture(autouse=True)
def _reset_structlog() -> Iterator[None]:
    yield
    structlog.reset_defaults()


def cli_env(backend: Backend, home: Path) -> dict[str, str]:
    """The environment that points `bastion` at the test databases and home."""
    (home / "absent.toml").write_text("")
    return {
        "BASTION_CONFIG": str(home / "absent.toml"),
        "BASTION_HOME": str(home),
        "BASTION_POLICIES": str(REPO / "policies"),
        "BASTION_SECRET_KEY": SECRET,
        "BASTION_CONTROL_URL": backend.urls["control"],
        "BASTION_REGIONS": "eu,us",
        "BASTION_REGION_EU_URL": backend.urls["eu"],
        "BASTION_REGION_US_URL": backend.urls["us"],
        "BASTION_LOG_LEVEL": "ERROR",
    }
