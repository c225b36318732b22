"""Signed checkpoints, public keys, signed notes, pruning, redaction and the sequencer thread."""

from __future__ import annotations

import json
import stat
import time
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError

from bastion.audit import key_ring
from bastion.audit.chain import lock_chain
from bastion.audit.keys import AuditKeyError
from bastion.audit.notes import NoteError, parse_checkpoint, parse_note, verify_note
from bastion.audit.queries import EventFilter
from bastion.audit.retention import PrunePlan, prune
from bastion.audit.sequencer import Sequencer
from bastion.audit.settings import AuditSettings
from bastion.audit.tables import AUDIT
from bastion.errors import Conflict
from bastion.residency.databases import Database
from bastion.state import State
from tests.conftest import FrozenClock
from tests.unit.audit.conftest import CONTACT, append_many


def test_a_checkpoint_verifies_with_the_published_key_only(state: State) -> None:
    append_many(state, "eu", 4)
    checkpoint = state.audit.checkpoint("eu")
    verifier = state.audit.verifier_key("eu")
    body = verify_note(checkpoint.note, verifier)
    parsed = parse_checkpoint(body)
    assert parsed.origin == "bastion.local/audit/eu"
    assert parsed.tree_size == 4
    with state.audit.database("eu").transaction() as conn:
        head = conn.execute(text("SELECT hash FROM audit_chain WHERE seq = 4")).scalar_one()
    assert parsed.head_hash == head
    assert parsed.extensions[0].startswith("time ")
    # Another chain's key does not verify it; an edited note does not verify.
    with pytest.raises(NoteError):
        verify_note(checkpoint.note, state.audit.verifier_key("us"))
    with pytest.raises(NoteError):
        verify_note(checkpoint.note.replace("\n4\n", "\n5\n"), verifier)


def test_signed_note_round_trip(state: State) -> None:
    append_many(state, "eu", 2)
    note = state.audit.checkpoint("eu").note
    body, signatures = parse_note(note)
    assert note.startswith(body.decode())
    assert len(signatures) == 1
    assert signatures[0].name == "bastion.local/audit/eu"
    assert note.endswith("\n")
    assert note.splitlines()[-1].startswith("\u2014 bastion.local/audit/eu ")


def test_checkpointing_twice_without_new_events_returns_the_same_checkpoint(
    state: State,
) -> None:
    with pytest.raises(Conflict):
        state.audit.checkpoint("eu")
    append_many(state, "eu", 1)
    first = state.audit.checkpoint("eu")
    assert state.audit.checkpoint("eu") == first
    assert len(state.audit.checkpoints("eu")) == 1


def test_keys_are_private_files_and_production_never_creates_them(tmp_path: Path) -> None:
    settings = AuditSettings(signing_key_dir=str(tmp_path / "keys"))
    with pytest.raises(AuditKeyError, match="bastion audit keygen"):
        key_ring(settings, home=tmp_path, production=True).signing_key("eu")
    development = key_ring(settings, home=tmp_path, production=False)
    key, created = development.generate("eu")
    assert created
    assert stat.S_IMODE((tmp_path / "keys" / "eu.ed25519").stat().st_mode) == 0o600
    assert key_ring(settings, home=tmp_path, production=True).signing_key("eu").key_id == key.key_id
    assert "PRIVATE" not in repr(key)


def test_pruning_removes_old_segments_and_leaves_a_verifiable_chain(
    state: State, eu: Database, clock: FrozenClock
) -> None:
    append_many(state, "eu", 6)
    state.audit.checkpoint("eu")
    clock.advance(timedelta(days=3000))  # past the default 7-year retention
    append_many(state, "eu", 4)
    state.audit.checkpoint("eu")
    plan = state.audit.prune("eu", actor="cli", dry_run=True)
    assert (plan.upto_seq, plan.entries) == (6, 6)
    state.audit.prune("eu", actor="cli")
    state.audit.flush("eu")
    report = state.audit.verify("eu")
    assert report.ok, report.problem
    assert report.first_seq == 7
    with eu.transaction() as conn:
        assert conn.execute(text("SELECT min(seq) FROM audit_chain")).scalar_one() == 7
        prune_events = conn.execute(
            select(AUDIT.events.c.id).where(AUDIT.events.c.action == "audit.prune")
        ).all()
    assert len(prune_events) == 1
    assert state.audit.prune("eu", actor="cli").upto_seq is None  # nothing old enough now
    # Deleting beyond the prune mark is still refused.
    with pytest.raises(DBAPIError), eu.transaction(write=True) as conn:
        conn.execute(text("DELETE FROM audit_chain WHERE seq = 8"))


def test_a_forged_prune_record_is_found(state: State, eu: Database) -> None:
    append_many(state, "eu", 5)
    checkpoint = state.audit.checkpoint("eu")
    with eu.transaction(write=True) as conn:
        # Insert-only, so the application could try this: a prune record it did not sign.
        conn.execute(
            AUDIT.prunes.insert().values(
                upto_seq=3, origin=checkpoint.origin, head_hash=bytes(32),
                cutoff=checkpoint.created_at, pruned_at=checkpoint.created_at, actor="cli",
                key_id=checkpoint.key_id.hex(), signature=bytes(64),
            )
        )  # fmt: skip
        pruned = "SELECT event_id FROM audit_chain WHERE seq <= 3"
        conn.execute(text(f"DELETE FROM audit_events WHERE id IN ({pruned})"))  # noqa: S608
        conn.execute(text("DELETE FROM audit_chain WHERE seq <= 3"))
    report = state.audit.verify("eu")
    assert report.problem is not None
    assert (report.problem.kind, report.problem.seq) == ("bad_signature", 3)


def test_redaction_pseudonymises_a_payload_and_the_chain_still_verifies(
    state: State, eu: Database
) -> None:
    (event,) = append_many(state, "eu", 1)
    append_many(state, "eu", 2)
    state.audit.checkpoint("eu")
    pseudonym = "psn_" + "a" * 26
    redaction = state.audit.redact(
        "eu", event.id, actor="system:dsr", reason="dsr:erasure", pseudonyms={CONTACT: pseudonym}
    )
    state.audit.flush("eu")
    assert state.audit.verify("eu").ok
    page = state.audit.events(["eu"], EventFilter(record_id=pseudonym), limit=10)
    assert [e["id"] for e in page.data] == [event.id]
    redacted = page.data[0]
    assert redacted["redacted"] is True
    assert redacted["record_ids"] == [pseudonym]
    assert redacted["client_address"] is None
    assert redacted["fields"] == ["email", "last_name"]
    still_named = state.audit.events(["eu"], EventFilter(record_id=CONTACT), limit=10).data
    assert event.id not in [e["id"] for e in still_named]
    logged = state.audit.events(["eu"], EventFilter(action="audit.redact"), limit=10).data
    assert [e["id"] for e in logged] == [redaction.id]
    assert logged[0]["record_ids"] == [event.id]
    with pytest.raises(Conflict):
        state.audit.redact("eu", event.id, actor="system:dsr", reason="again", pseudonyms={})
    # A payload change without a redaction record is still refused.
    other = state.audit.events(["eu"], EventFilter(action="record.read"), limit=10).data[0]
    assert other["id"] != event.id
    with pytest.raises(DBAPIError), eu.transaction(write=True) as conn:
        conn.execute(
            text("UPDATE audit_events SET payload = '{}' WHERE id = :id"), {"id": other["id"]}
        )


def test_the_background_sequencer_chains_and_checkpoints(state: State) -> None:
    state.audit.start()
    try:
        append_many(state, "us", 3)
        state.audit.notify("us")
        deadline = time.monotonic() + 10
        while state.audit.head_seq("us") < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert state.audit.head_seq("us") == 3
        while not state.audit.checkpoints("us") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert state.audit.checkpoints("us")[0].tree_size == 3  # the first one is due at once
    finally:
        state.audit.stop()
    assert state.audit.verify("us").ok


def test_export_lines_carry_hashes_and_only_names_and_ids(state: State) -> None:
    append_many(state, "eu", 3)
    state.audit.flush("eu")
    lines = [json.dumps(e) for e in state.audit.export("eu", EventFilter())]
    assert len(lines) == 3
    first = json.loads(lines[0])
    assert first["seq"] == 1
    assert first["hash"]
    assert first["record_ids"] == [CONTACT]


# -- rows the application role may insert into audit_checkpoints are claims, not facts --


def _insert_as_application(database: Database, statement: str) -> None:
    with database.transaction(write=True) as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SET LOCAL ROLE bastion_app"))
        conn.execute(text(statement))


_BACKDATED = (
    "INSERT INTO audit_checkpoints (tree_size, origin, head_hash, created_at, key_id, signature) "
    "SELECT seq, 'bastion.local/audit/eu', hash, '2000-01-01 00:00:00.000000', '00000000', "
    "{zeros} FROM audit_chain WHERE seq = 15"
)


def _zeros(database: Database) -> str:
    return (
        "'\\x" + "00" * 64 + "'::bytea"
        if database.engine.dialect.name == "postgresql"
        else "zeroblob(64)"
    )


def test_pruning_refuses_an_unsigned_back_dated_checkpoint_inserted_after_verify(
    state: State, eu: Database, clock: FrozenClock
) -> None:
    append_many(state, "eu", 10)
    state.audit.checkpoint("eu")
    append_many(state, "eu", 5)
    state.audit.flush("eu")
    cutoff = clock.now() - timedelta(days=state.settings.audit.retention_days)
    verifiers = state.audit.keys.verifiers("eu")
    assert state.audit.verify("eu").ok  # the operator's verify, before the row appears
    _insert_as_application(eu, _BACKDATED.format(zeros=_zeros(eu)))
    plan = PrunePlan("eu", cutoff, 15, 15, 0)  # what the earlier, unlocked plan said

    def prune_in_a_locked_transaction() -> None:
        with eu.transaction(write=True) as conn:
            lock_chain(conn, "eu", wait=True)
            prune(conn, plan, state.audit.keys.signing_key("eu"), verifiers, clock, actor="cli")

    with pytest.raises(Conflict, match="tree size 15"):
        prune_in_a_locked_transaction()
    with pytest.raises(Conflict):
        state.audit.prune("eu", actor="cli")
    assert state.audit.head_seq("eu") == 15
    with eu.transaction() as conn:
        assert conn.execute(text("SELECT count(*) FROM audit_chain")).scalar_one() == 15


def test_a_malformed_checkpoint_row_is_reported_not_raised(state: State, eu: Database) -> None:
    append_many(state, "eu", 3)
    state.audit.checkpoint("eu")
    _insert_as_application(
        eu,
        "INSERT INTO audit_checkpoints SELECT 4, 'x', head_hash, created_at, 'zzzzzzzz', "
        "signature FROM audit_checkpoints",
    )
    append_many(state, "eu", 2)
    state.audit.checkpoint("eu")
    report = state.audit.verify("eu")
    assert report.problem is not None
    assert (report.problem.kind, report.problem.seq) == ("bad_signature", 4)
    # Listed (and paged) past it: the well-formed ones.
    assert [c.tree_size for c in state.audit.checkpoints("eu", limit=2)] == [5, 3]


def test_the_sequencer_survives_a_bad_row_and_keeps_checkpointing(
    state: State, eu: Database, clock: FrozenClock
) -> None:
    append_many(state, "eu", 2)
    state.audit.checkpoint("eu")
    # A well-formed row claiming a tree size far beyond the head, and a malformed one.
    _insert_as_application(
        eu,
        "INSERT INTO audit_checkpoints SELECT 3000000, origin, head_hash, created_at, "
        "'zzzzzzzz', signature FROM audit_checkpoints",
    )
    _insert_as_application(
        eu,
        "INSERT INTO audit_checkpoints SELECT 2000000, origin, head_hash, created_at, key_id, "
        "signature FROM audit_checkpoints WHERE tree_size = 2",
    )
    clock.advance(timedelta(seconds=state.settings.audit.checkpoint_interval_seconds + 1))
    state.audit.start()
    try:
        append_many(state, "eu", 3)
        state.audit.notify("eu")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and 5 not in [
            c.tree_size for c in state.audit.checkpoints("eu")
        ]:
            time.sleep(0.05)
        assert state.audit.head_seq("eu") == 5
        assert 5 in [c.tree_size for c in state.audit.checkpoints("eu")]
        health = state.audit.health()
        assert health.sequencer == "running"
        assert health.ok, health.to_json()
    finally:
        state.audit.stop()


def test_health_reports_an_old_backlog_and_a_dead_sequencer(
    state: State, clock: FrozenClock
) -> None:
    for chain in state.audit.chains:
        state.audit.flush(chain)
    append_many(state, "us", 2)
    fresh = state.audit.health()
    us = next(c for c in fresh.chains if c.chain == "us")
    assert (us.pending, us.head_seq, us.ok) == (2, 0, True)
    clock.advance(timedelta(seconds=state.settings.audit.max_backlog_age_seconds + 1))
    stale = state.audit.health()
    assert not stale.ok
    assert stale.to_json()["chains"][[c.chain for c in stale.chains].index("us")]["ok"] is False
    state.audit.flush("us")
    assert state.audit.health().ok

    class Broken:
        chains = ("us",)

        def tick(self, chain: str) -> int:
            raise RuntimeError(chain)

    sequencer = Sequencer(Broken(), 0.05)
    sequencer.run_once()  # an unexpected error is counted, not raised
    assert sequencer.status("us").failures == 1
    assert sequencer.status("us").last_error == "RuntimeError"


def test_a_signing_key_others_may_read_is_refused(tmp_path: Path) -> None:
    settings = AuditSettings(signing_key_dir=str(tmp_path / "keys"))
    key_ring(settings, home=tmp_path, production=False).generate("eu")
    (tmp_path / "keys" / "eu.ed25519").chmod(0o644)
    with pytest.raises(AuditKeyError, match="chmod 600"):
        key_ring(settings, home=tmp_path, production=True).signing_key("eu")
