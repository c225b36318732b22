"""Appending, chaining and the append-only guards, on SQLite and PostgreSQL."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.exc import DBAPIError

from bastion.audit import append
from bastion.audit.tables import AUDIT
from bastion.residency.databases import Database
from bastion.state import State
from tests.unit.audit.conftest import append_many, make_event


def _count(database: Database, table: str) -> int:
    with database.transaction() as conn:
        return int(conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one())  # noqa: S608


def test_append_then_flush_chains_every_event_in_order(state: State, eu: Database) -> None:
    events = append_many(state, "eu", 25)
    assert _count(eu, "audit_pending") == 25
    assert state.audit.flush("eu") == 25
    assert _count(eu, "audit_pending") == 0
    with eu.transaction() as conn:
        rows = conn.execute(select(AUDIT.chain).order_by(AUDIT.chain.c.seq)).all()
    assert [r.seq for r in rows] == list(range(1, 26))
    assert [r.event_id for r in rows] == [e.id for e in events]
    assert all(rows[i].prev_hash == rows[i - 1].hash for i in range(1, 25))
    assert state.audit.verify("eu").ok


def test_an_append_in_a_rolled_back_transaction_leaves_nothing(state: State, eu: Database) -> None:
    class Abort(Exception):
        pass

    def write_then_fail() -> None:
        with eu.transaction(write=True) as conn:
            append(conn, make_event(state.clock))
            raise Abort

    with pytest.raises(Abort):
        write_then_fail()
    for table in ("audit_events", "audit_pending", "audit_record_refs"):
        assert _count(eu, table) == 0
    assert state.audit.flush("eu") == 0


def test_each_database_has_its_own_chain(state: State) -> None:
    started = state.audit.flush("control")  # what starting Bastion recorded (policy.activate)
    append_many(state, "eu", 3)
    append_many(state, "control", 2, action="token.create", entity="tokens", record_ids=[])
    assert state.audit.flush("eu") == 3
    assert state.audit.flush("us") == 0
    assert state.audit.flush("control") == 2
    assert state.audit.head_seq("eu") == 3
    assert state.audit.head_seq("control") == started + 2
    assert state.audit.verify("control").ok


@pytest.mark.parametrize(
    ("table", "statement"),
    [
        ("audit_events", "UPDATE audit_events SET actor = 'cli'"),
        ("audit_events", "UPDATE audit_events SET payload = '{}'"),
        ("audit_events", "DELETE FROM audit_events"),
        ("audit_record_refs", "DELETE FROM audit_record_refs"),
        ("audit_chain", "UPDATE audit_chain SET seq = seq + 100"),
        ("audit_chain", "DELETE FROM audit_chain"),
        ("audit_checkpoints", "DELETE FROM audit_checkpoints"),
        ("audit_checkpoints", "UPDATE audit_checkpoints SET tree_size = 99"),
    ],
)
def test_triggers_reject_changes_to_audit_evidence(
    state: State, eu: Database, table: str, statement: str
) -> None:
    append_many(state, "eu", 3)
    state.audit.checkpoint("eu")
    with pytest.raises(DBAPIError), eu.transaction(write=True) as conn:
        conn.execute(text(statement))
    assert state.audit.verify("eu").ok


@pytest.mark.postgres
def test_postgres_rejects_truncating_audit_tables(state: State, eu: Database) -> None:
    if eu.engine.dialect.name != "postgresql":
        pytest.skip("TRUNCATE triggers exist on PostgreSQL only")
    append_many(state, "eu", 2)
    state.audit.flush("eu")
    for table in ("audit_events", "audit_chain", "audit_checkpoints", "audit_record_refs"):
        with pytest.raises(DBAPIError), eu.transaction(write=True) as conn:
            conn.execute(text(f"TRUNCATE {table}"))
    assert state.audit.verify("eu").ok


def _as_application(database: Database, statement: str) -> None:
    with database.transaction(write=True) as conn:
        conn.execute(text("SET LOCAL ROLE bastion_app"))
        conn.execute(text(statement))


@pytest.mark.postgres
def test_the_application_role_may_insert_and_select_but_not_change(
    state: State, eu: Database
) -> None:
    if eu.engine.dialect.name != "postgresql":
        pytest.skip("roles exist on PostgreSQL only")
    append_many(state, "eu", 2)
    state.audit.flush("eu")
    with eu.transaction(write=True) as conn:
        conn.execute(text("SET LOCAL ROLE bastion_app"))
        append(conn, make_event(state.clock))
        assert conn.execute(select(func.count()).select_from(AUDIT.events)).scalar_one() == 3
    denied = [
        "UPDATE audit_events SET actor = 'cli'",
        "DELETE FROM audit_events",
        "UPDATE audit_chain SET hash = hash",
        "DELETE FROM audit_chain",
        "DELETE FROM audit_checkpoints",
        "INSERT INTO alembic_version_region VALUES ('x')",
        # Granted for redaction, still refused by the trigger without a redaction record.
        "UPDATE audit_events SET payload = '{}'",
    ]
    for statement in denied:
        with pytest.raises(DBAPIError):
            _as_application(eu, statement)
    # The sequencer's one deletion: the pending queue.
    with eu.transaction(write=True) as conn:
        conn.execute(text("SET LOCAL ROLE bastion_app"))
        conn.execute(text("DELETE FROM audit_pending"))


@pytest.mark.postgres
def test_concurrent_writers_and_sequencers_make_one_gap_free_chain(
    state: State, eu: Database
) -> None:
    if eu.engine.dialect.name != "postgresql":
        pytest.skip("the concurrency test runs on PostgreSQL")
    writers, per_writer = 16, 1000
    done = threading.Event()
    errors: list[BaseException] = []

    def write() -> None:
        try:
            for _ in range(per_writer):
                event = make_event(state.clock)
                with eu.transaction(write=True) as conn:
                    append(conn, event)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    def sequence() -> None:
        try:
            while not done.is_set():
                state.audit.tick("eu")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=write) for _ in range(writers)]
    sequencers = [threading.Thread(target=sequence) for _ in range(3)]
    for thread in [*threads, *sequencers]:
        thread.start()
    for thread in threads:
        thread.join()
    done.set()
    for thread in sequencers:
        thread.join()
    assert not errors
    state.audit.flush("eu")
    total = writers * per_writer
    assert _count(eu, "audit_events") == total
    assert _count(eu, "audit_pending") == 0
    with eu.transaction() as conn:
        seqs = conn.execute(text("SELECT min(seq), max(seq), count(*) FROM audit_chain")).one()
    assert tuple(seqs) == (1, total, total)
    report = state.audit.verify("eu")
    assert report.ok, report.problem
    assert report.entries == total
