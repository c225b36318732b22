"""Redaction: once, to the announced payload, through the chain; never a silent rewrite.

The application role (`bastion_app` on PostgreSQL) must be able to redact (erasure
runs as it) but nothing more: no redaction record of its own making, no second
rewrite, no payload the chained `audit.redact` event did not announce.
"""

from __future__ import annotations

import json

import pytest
from sqlalchemy import Connection, select, text
from sqlalchemy.exc import DBAPIError

from bastion.audit import AuditEvent, append
from bastion.audit.ddl import PSEUDONYM_PATTERN
from bastion.audit.encoding import payload_bytes, sha256
from bastion.audit.queries import EventFilter
from bastion.audit.retention import PSEUDONYM_RE, redact
from bastion.audit.tables import AUDIT
from bastion.audit.verify import VerifyReport
from bastion.errors import Conflict
from bastion.residency.databases import Database
from bastion.state import State
from tests.unit.audit.conftest import CONTACT, append_many, superuser

PSEUDONYM = "psn_" + "a" * 26
OTHER = "con_eu_01jd0000000000000000000002"


def _as_application(conn: Connection) -> None:
    if conn.dialect.name == "postgresql":
        conn.execute(text("SET LOCAL ROLE bastion_app"))


def _run_as_application(
    database: Database, statement: str, params: dict[str, str] | None = None
) -> None:
    with database.transaction(write=True) as conn:
        _as_application(conn)
        conn.execute(text(statement), params or {})


def _problem(report: VerifyReport) -> tuple[str, int | None]:
    assert report.problem is not None, "the rewrite went unnoticed"
    return report.problem.kind, report.problem.seq


def _seq(database: Database, event_id: str) -> int:
    with database.transaction() as conn:
        return int(
            conn.execute(
                select(AUDIT.chain.c.seq).where(AUDIT.chain.c.event_id == event_id)
            ).scalar_one()
        )


def _payload(database: Database, event_id: str) -> str:
    with database.transaction() as conn:
        return str(
            conn.execute(
                select(AUDIT.events.c.payload).where(AUDIT.events.c.id == event_id)
            ).scalar_one()
        )


def _rewritten(pointing_at: str) -> str:
    return payload_bytes(
        record_ids=[pointing_at], fields=["last_name"], client_address=None, reason=None, details={}
    ).decode()


def test_the_pseudonym_pattern_is_the_same_in_python_and_the_database() -> None:
    assert PSEUDONYM_RE.pattern == PSEUDONYM_PATTERN


def test_the_application_role_redacts_and_the_redaction_names_both_hashes(
    state: State, eu: Database
) -> None:
    (event,) = append_many(state, "eu", 1)
    append_many(state, "eu", 2)
    with eu.transaction(write=True) as conn:
        _as_application(conn)
        original = conn.execute(
            select(AUDIT.events.c.payload).where(AUDIT.events.c.id == event.id)
        ).scalar_one()
        redaction = redact(
            conn, state.clock, "eu", event.id, actor="system:dsr", reason="dsr:erasure",
            pseudonyms={CONTACT: PSEUDONYM},
        )  # fmt: skip
    # Chained in the redaction's own transaction: nothing is left to the sequencer.
    assert _seq(eu, redaction.id) > _seq(eu, event.id)
    report = state.audit.verify("eu")
    assert report.ok, report.problem
    with eu.transaction() as conn:
        redacted = conn.execute(
            select(AUDIT.events.c.payload).where(AUDIT.events.c.id == event.id)
        ).scalar_one()
    assert redaction.details["original_sha256"] == sha256(original.encode()).hex()
    assert redaction.details["redacted_sha256"] == sha256(redacted.encode()).hex()
    assert json.loads(redacted)["record_ids"] == [PSEUDONYM]
    found = state.audit.events(["eu"], EventFilter(record_id=PSEUDONYM), limit=5).data
    assert [e["id"] for e in found] == [event.id]
    assert event.id not in [
        e["id"] for e in state.audit.events(["eu"], EventFilter(record_id=CONTACT), limit=5).data
    ]


def test_an_audit_redact_event_is_never_redacted(state: State) -> None:
    (event,) = append_many(state, "eu", 1)
    redaction = state.audit.redact("eu", event.id, actor="cli", reason="test", pseudonyms={})
    with pytest.raises(Conflict):
        state.audit.redact("eu", redaction.id, actor="cli", reason="test", pseudonyms={})


@pytest.mark.postgres
def test_the_application_role_cannot_write_redaction_or_prune_records(
    state: State, eu: Database
) -> None:
    if eu.engine.dialect.name != "postgresql":
        pytest.skip("roles exist on PostgreSQL only")
    (event,) = append_many(state, "eu", 1)
    state.audit.checkpoint("eu")
    forged = [
        "INSERT INTO audit_redactions SELECT event_id, event_id, payload_hash, payload_hash, "
        "now(), 'cli', 'x' FROM audit_chain",
        "INSERT INTO audit_prunes SELECT tree_size, origin, head_hash, now(), now(), 'cli', "
        "key_id, signature FROM audit_checkpoints",
        "UPDATE audit_events SET payload = :payload",
    ]
    for statement in forged:
        with pytest.raises(DBAPIError, match="permission denied"):
            _run_as_application(eu, statement, {"payload": _rewritten(OTHER)})
    assert state.audit.verify("eu").ok
    with eu.transaction() as conn:
        assert conn.execute(select(AUDIT.redactions)).first() is None
    assert json.loads(_payload(eu, event.id))["record_ids"] == [CONTACT]


def test_a_rewrite_behind_a_forged_redaction_record_fails_verify(
    state: State, eu: Database
) -> None:
    """The review's attack: a redaction row (no chained audit.redact event), then a rewrite."""
    (event,) = append_many(state, "eu", 1)
    append_many(state, "eu", 2)
    state.audit.checkpoint("eu")
    with superuser(eu) as conn:
        conn.execute(
            text(
                "INSERT INTO audit_redactions SELECT event_id, "
                "'evt_00000000000000000000000000', payload_hash, payload_hash, "
                "occurred_at, 'cli', 'x' FROM audit_chain JOIN audit_events ON id = event_id "
                "WHERE event_id = :e"
            ),
            {"e": event.id},
        )
        conn.execute(
            AUDIT.events.update()
            .where(AUDIT.events.c.id == event.id)
            .values(payload=_rewritten(OTHER))
        )
        conn.execute(AUDIT.record_refs.delete().where(AUDIT.record_refs.c.event_id == event.id))
        conn.execute(
            AUDIT.record_refs.insert().values(
                record_id=OTHER, occurred_at=event.occurred_at, event_id=event.id
            )
        )
    assert _problem(state.audit.verify("eu")) == ("modified", 1)


def test_a_redacted_payload_changed_again_fails_verify(state: State, eu: Database) -> None:
    (event,) = append_many(state, "eu", 1)
    state.audit.redact(
        "eu", event.id, actor="system:dsr", reason="dsr:erasure", pseudonyms={CONTACT: PSEUDONYM}
    )
    again = payload_bytes(
        record_ids=["psn_" + "b" * 26], fields=["email", "last_name"], client_address=None,
        reason=None, details={},
    ).decode()  # fmt: skip
    with superuser(eu) as conn:
        conn.execute(
            AUDIT.events.update().where(AUDIT.events.c.id == event.id).values(payload=again)
        )
    assert _problem(state.audit.verify("eu")) == ("modified", 1)


@pytest.mark.postgres
def test_the_database_lets_a_redaction_apply_once_only(state: State, eu: Database) -> None:
    if eu.engine.dialect.name != "postgresql":
        pytest.skip("the payload hashes are checked in SQL on PostgreSQL only")
    (event,) = append_many(state, "eu", 1)
    state.audit.redact(
        "eu", event.id, actor="system:dsr", reason="dsr:erasure", pseudonyms={CONTACT: PSEUDONYM}
    )
    again = payload_bytes(
        record_ids=[PSEUDONYM], fields=["email", "last_name"], client_address=None, reason=None,
        details={"x": 1},
    ).decode()  # fmt: skip
    # Not even the owner: the guard wants the original payload's hash as the old one.
    with pytest.raises(DBAPIError, match="append-only"), eu.transaction(write=True) as conn:
        conn.execute(
            AUDIT.events.update().where(AUDIT.events.c.id == event.id).values(payload=again)
        )
    assert state.audit.verify("eu").ok


@pytest.mark.postgres
def test_the_redaction_function_accepts_only_what_a_chained_event_announced(
    state: State, eu: Database
) -> None:
    if eu.engine.dialect.name != "postgresql":
        pytest.skip("audit_redact_event exists on PostgreSQL only")
    (event,) = append_many(state, "eu", 1)
    state.audit.flush("eu")
    with eu.transaction() as conn:
        original = conn.execute(
            select(AUDIT.chain.c.payload_hash).where(AUDIT.chain.c.event_id == event.id)
        ).scalar_one()
    honest = payload_bytes(
        record_ids=[PSEUDONYM], fields=["email", "last_name"], client_address=None, reason=None,
        details={},
    ).decode()  # fmt: skip
    widened = payload_bytes(
        record_ids=[OTHER], fields=["last_name"], client_address=None, reason=None, details={}
    ).decode()

    def attempt(announced: str, applied: str, *, chained: bool = True) -> None:
        announcement = AuditEvent.new(
            state.clock, actor="system:dsr", action="audit.redact", entity="audit",
            record_ids=[event.id], reason="dsr:erasure",
            details={
                "original_sha256": original.hex(),
                "redacted_sha256": sha256(announced.encode()).hex(),
            },
        )  # fmt: skip
        with eu.transaction(write=True) as conn:
            _as_application(conn)
            append(conn, announcement)
        if chained:
            state.audit.flush("eu")
        with pytest.raises(DBAPIError, match="redaction refused"):
            _run_as_application(
                eu, "SELECT audit_redact_event(:r, :p)", {"r": announcement.id, "p": applied}
            )

    attempt(honest, honest, chained=False)  # the announcement is not in the chain yet
    attempt(honest, widened)  # not the announced payload
    attempt(widened, widened)  # announced, but points the event at another record
    with eu.transaction() as conn:
        assert conn.execute(select(AUDIT.redactions)).first() is None
    assert state.audit.verify("eu").ok


def test_sqlite_refuses_a_payload_update_that_is_no_redaction(state: State, eu: Database) -> None:
    """SQLite cannot hash in SQL; its trigger still refuses what no redaction produces."""
    (event,) = append_many(state, "eu", 1)
    state.audit.redact("eu", event.id, actor="cli", reason="test", pseudonyms={})
    with pytest.raises(DBAPIError), eu.transaction(write=True) as conn:
        conn.execute(
            AUDIT.events.update()
            .where(AUDIT.events.c.id == event.id)
            .values(payload=_rewritten(OTHER))
        )
    assert state.audit.verify("eu").ok
