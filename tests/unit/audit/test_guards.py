"""The PostgreSQL guards hold against the application role's own session tricks.

Temporary tables are searched before `public` for unqualified names, so a role
that could create them could shadow the tables the guards consult. And the
record index and the queue are filled by the database, not by the role.
"""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from bastion.audit import append
from bastion.audit.ddl import FUNCTIONS
from bastion.residency.databases import Database
from bastion.state import State
from tests.unit.audit.conftest import append_many, make_event

BIG = 9223372036854775807


@pytest.fixture
def pg(eu: Database) -> Database:
    if eu.engine.dialect.name != "postgresql":
        pytest.skip("roles, grants and search paths are PostgreSQL's")
    return eu


def _as_application(database: Database, statement: str) -> None:
    with database.transaction(write=True) as conn:
        conn.execute(text("SET LOCAL ROLE bastion_app"))
        conn.execute(text(statement))


def _behind_shadows(database: Database, event_id: str, statement: str) -> None:
    """`statement` in a session whose temporary tables mimic a prune mark and a redaction."""
    with database.transaction(write=True) as conn:
        conn.execute(text("CREATE TEMP TABLE audit_prunes (upto_seq bigint) ON COMMIT DROP"))
        conn.execute(text("INSERT INTO pg_temp.audit_prunes VALUES (:big)"), {"big": BIG})
        conn.execute(text("CREATE TEMP TABLE audit_redactions (event_id text) ON COMMIT DROP"))
        conn.execute(text("INSERT INTO pg_temp.audit_redactions VALUES (:e)"), {"e": event_id})
        conn.execute(text(statement))


def _refs(database: Database) -> int:
    with database.transaction() as conn:
        return int(conn.execute(text("SELECT count(*) FROM audit_record_refs")).scalar_one())


@pytest.mark.postgres
def test_the_application_role_may_not_create_temporary_tables(state: State, pg: Database) -> None:
    append_many(state, "eu", 1)
    state.audit.flush("eu")
    with pytest.raises(DBAPIError, match="permission denied"):
        _as_application(pg, "CREATE TEMP TABLE audit_prunes (upto_seq bigint) ON COMMIT DROP")
    assert _refs(pg) == 1


@pytest.mark.postgres
def test_temporary_tables_do_not_shadow_the_guards_tables(state: State, pg: Database) -> None:
    """Even for a role that may create them (here the owner): the guards name `public.…`."""
    (event,) = append_many(state, "eu", 1)
    state.audit.flush("eu")
    for statement in (
        "DELETE FROM public.audit_record_refs",
        "DELETE FROM public.audit_chain",
        "UPDATE public.audit_events SET payload = '{}'",
    ):
        with pytest.raises(DBAPIError, match="append-only"):
            _behind_shadows(pg, event.id, statement)
    assert state.audit.verify("eu").ok


@pytest.mark.postgres
def test_every_audit_function_pins_its_search_path(pg: Database) -> None:
    with pg.transaction() as conn:
        rows = conn.execute(
            text(
                "SELECT p.oid::regprocedure::text, p.proconfig FROM pg_proc p "
                "JOIN pg_namespace n ON n.oid = p.pronamespace "
                "WHERE n.nspname = 'public' AND p.proname LIKE 'audit%'"
            )
        ).all()
    found = dict(rows)
    assert set(found) == {f.replace(", ", ",") for f in FUNCTIONS}
    for config in found.values():
        assert config == ["search_path=pg_catalog, public, pg_temp"]


@pytest.mark.postgres
def test_the_index_and_the_queue_are_written_by_the_database_not_the_role(
    state: State, pg: Database
) -> None:
    append_many(state, "eu", 1)
    for statement in (
        "INSERT INTO audit_record_refs SELECT 'con_eu_01jd0000000000000000000009', "
        "occurred_at, id FROM audit_events",
        "INSERT INTO audit_pending SELECT 'evt_x', now()",
        "DELETE FROM audit_record_refs",
    ):
        with pytest.raises(DBAPIError, match="permission denied"):
            _as_application(pg, statement)
    # Appending as the role still queues and indexes the event (SECURITY DEFINER trigger).
    with pg.transaction(write=True) as conn:
        conn.execute(text("SET LOCAL ROLE bastion_app"))
        append(conn, make_event(state.clock))
    assert _refs(pg) == 2
    assert state.audit.flush("eu") == 2
    assert state.audit.verify("eu").ok
