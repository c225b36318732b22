"""Tampering, as a database superuser could, is found by `verify` at the exact sequence number.

Each test builds the same chain — 10 entries, a signed checkpoint at 10, five more
entries — then bypasses the triggers (see `superuser`) and changes something.
"""

from __future__ import annotations

import dataclasses
import os
from datetime import timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import Connection, select, text

from bastion.audit import append
from bastion.audit.encoding import entry_hash, format_time, header_bytes, sha256
from bastion.audit.events import new_event_id
from bastion.audit.tables import AUDIT
from bastion.audit.verify import VerifyReport
from bastion.cli import main
from bastion.errors import ValidationFailed
from bastion.residency.databases import Database
from bastion.state import State
from tests.conftest import Backend
from tests.unit.audit.conftest import append_many, cli_env, make_event, superuser


@pytest.fixture
def chain(state: State) -> State:
    append_many(state, "eu", 10)
    state.audit.checkpoint("eu")
    append_many(state, "eu", 5)
    state.audit.flush("eu")
    assert state.audit.verify("eu").ok
    return state


def _problem(report: VerifyReport) -> tuple[str, int | None]:
    assert report.problem is not None, "tampering went unnoticed"
    return report.problem.kind, report.problem.seq


def _event_id(conn: Connection, seq: int) -> str:
    return str(
        conn.execute(
            text("SELECT event_id FROM audit_chain WHERE seq = :s"), {"s": seq}
        ).scalar_one()
    )


TAMPERED_COLUMNS = {
    "occurred_at": "occurred_at = occurred_at",  # replaced below with a real change
    "actor": "actor = 'system:intruder'",
    "action": "action = 'record.update'",
    "entity": "entity = 'accounts'",
    "decision": "decision = 'deny'",
    "policy_version": "policy_version = 'forged'",
    "request_id": "request_id = NULL",
    "payload": "payload = replace(payload, '192.0.2.10', '192.0.2.11')",
}


@pytest.mark.parametrize("column", sorted(TAMPERED_COLUMNS))
def test_modifying_any_field_of_a_chained_event_is_found(
    chain: State, eu: Database, column: str
) -> None:
    with superuser(eu) as conn:
        event_id = _event_id(conn, 4)
        if column == "occurred_at":
            row = conn.execute(
                select(AUDIT.events.c.occurred_at).where(AUDIT.events.c.id == event_id)
            ).one()
            conn.execute(
                AUDIT.events.update()
                .where(AUDIT.events.c.id == event_id)
                .values(
                    occurred_at=row.occurred_at.replace(
                        microsecond=(row.occurred_at.microsecond + 1) % 10**6
                    )
                )
            )
        else:
            conn.execute(
                text(f"UPDATE audit_events SET {TAMPERED_COLUMNS[column]} WHERE id = :id"),  # noqa: S608
                {"id": event_id},
            )
    assert _problem(chain.audit.verify("eu")) == ("modified", 4)


@pytest.mark.parametrize("column", ["hash", "payload_hash", "prev_hash"])
def test_modifying_a_chain_entry_is_found(chain: State, eu: Database, column: str) -> None:
    with superuser(eu) as conn:
        conn.execute(AUDIT.chain.update().where(AUDIT.chain.c.seq == 4).values({column: bytes(32)}))
    kind, seq = _problem(chain.audit.verify("eu"))
    assert seq == 4
    assert kind in ("modified", "missing")


def test_deleting_an_entry_is_found(chain: State, eu: Database) -> None:
    with superuser(eu) as conn:
        event_id = _event_id(conn, 7)
        conn.execute(text("DELETE FROM audit_chain WHERE seq = 7"))
        conn.execute(text("DELETE FROM audit_events WHERE id = :id"), {"id": event_id})
    assert _problem(chain.audit.verify("eu")) == ("missing", 7)


def test_deleting_only_the_event_row_is_found(chain: State, eu: Database) -> None:
    with superuser(eu) as conn:
        conn.execute(text("DELETE FROM audit_events WHERE id = :id"), {"id": _event_id(conn, 7)})
    assert _problem(chain.audit.verify("eu")) == ("missing", 7)


def test_deleting_an_entry_and_renumbering_is_found(chain: State, eu: Database) -> None:
    with superuser(eu) as conn:
        conn.execute(text("DELETE FROM audit_events WHERE id = :id"), {"id": _event_id(conn, 7)})
        conn.execute(text("DELETE FROM audit_chain WHERE seq = 7"))
        conn.execute(text("UPDATE audit_chain SET seq = seq + 1000 WHERE seq > 7"))
        conn.execute(text("UPDATE audit_chain SET seq = seq - 1001 WHERE seq > 1000"))
    assert _problem(chain.audit.verify("eu")) == ("missing", 7)


def test_inserting_an_entry_is_found_even_with_a_correct_hash(chain: State, eu: Database) -> None:
    forged = make_event(chain.clock, actor="system:intruder")
    with superuser(eu) as conn:
        prev = conn.execute(text("SELECT hash FROM audit_chain WHERE seq = 5")).scalar_one()
        conn.execute(text("UPDATE audit_chain SET seq = seq + 1000 WHERE seq >= 6"))
        conn.execute(text("UPDATE audit_chain SET seq = seq - 999 WHERE seq > 1000"))
        payload = '{"client_address":null,"details":{},"fields":[],"reason":null,"record_ids":[]}'
        conn.execute(
            AUDIT.events.insert().values(
                id=forged.id, occurred_at=forged.occurred_at, actor=forged.actor,
                action=forged.action, entity=forged.entity, decision=forged.decision,
                policy_version=None, request_id=None, payload=payload,
            )
        )  # fmt: skip
        header = header_bytes(
            "eu", 6, forged.id, format_time(forged.occurred_at), forged.actor, forged.action,
            forged.entity, forged.decision, None, None,
        )  # fmt: skip
        payload_hash = sha256(payload.encode())
        conn.execute(
            AUDIT.chain.insert().values(
                seq=6, event_id=forged.id, prev_hash=prev, payload_hash=payload_hash,
                hash=entry_hash(prev, header, payload_hash),
            )
        )  # fmt: skip
    assert _problem(chain.audit.verify("eu")) == ("inserted", 6)


def test_swapping_two_entries_is_found(chain: State, eu: Database) -> None:
    with superuser(eu) as conn:
        conn.execute(text("UPDATE audit_chain SET seq = 1003 WHERE seq = 3"))
        conn.execute(text("UPDATE audit_chain SET seq = 3 WHERE seq = 8"))
        conn.execute(text("UPDATE audit_chain SET seq = 8 WHERE seq = 1003"))
    assert _problem(chain.audit.verify("eu")) == ("reordered", 3)


def test_swapping_two_events_contents_is_found(chain: State, eu: Database) -> None:
    with superuser(eu) as conn:
        a, b = _event_id(conn, 3), _event_id(conn, 8)
        conn.execute(text("UPDATE audit_chain SET event_id = 'evt_x' WHERE seq = 3"))
        conn.execute(text("UPDATE audit_chain SET event_id = :a WHERE seq = 8"), {"a": a})
        conn.execute(text("UPDATE audit_chain SET event_id = :b WHERE seq = 3"), {"b": b})
    assert _problem(chain.audit.verify("eu")) == ("modified", 3)


def test_truncating_the_tail_after_a_checkpoint_is_found(chain: State, eu: Database) -> None:
    with superuser(eu) as conn:
        conn.execute(
            text(
                "DELETE FROM audit_events WHERE id IN "
                "(SELECT event_id FROM audit_chain WHERE seq > 8)"
            )
        )
        conn.execute(text("DELETE FROM audit_chain WHERE seq > 8"))
    assert _problem(chain.audit.verify("eu")) == ("truncated", 9)


def test_forging_a_checkpoint_is_found(chain: State, eu: Database) -> None:
    with superuser(eu) as conn:
        head = conn.execute(text("SELECT hash FROM audit_chain WHERE seq = 12")).scalar_one()
        real = conn.execute(select(AUDIT.checkpoints)).one()
        conn.execute(
            AUDIT.checkpoints.insert().values(
                tree_size=12, origin=real.origin, head_hash=head, created_at=real.created_at,
                key_id=real.key_id, signature=os.urandom(64),
            )
        )  # fmt: skip
    assert _problem(chain.audit.verify("eu")) == ("bad_signature", 12)


def test_editing_a_checkpoint_breaks_its_signature(chain: State, eu: Database) -> None:
    with superuser(eu) as conn:
        conn.execute(text("UPDATE audit_checkpoints SET tree_size = 11"))
    assert _problem(chain.audit.verify("eu")) == ("bad_signature", 11)


def test_rewriting_the_chain_with_fresh_hashes_is_caught_by_the_signed_checkpoint(
    chain: State, eu: Database
) -> None:
    """A DBA who recomputes every hash after a change defeats the chain, not the signature."""
    with superuser(eu) as conn:
        conn.execute(
            text("UPDATE audit_events SET actor = 'system:intruder' WHERE id = :id"),
            {"id": _event_id(conn, 3)},
        )
        rows = conn.execute(
            select(AUDIT.chain, AUDIT.events)
            .join(AUDIT.events, AUDIT.events.c.id == AUDIT.chain.c.event_id)
            .order_by(AUDIT.chain.c.seq)
        ).all()
        prev = bytes(32)
        for row in rows:
            header = header_bytes(
                "eu", row.seq, row.id, format_time(row.occurred_at), row.actor, row.action,
                row.entity, row.decision, row.policy_version, row.request_id,
            )  # fmt: skip
            digest = entry_hash(prev, header, row.payload_hash)
            conn.execute(
                AUDIT.chain.update()
                .where(AUDIT.chain.c.seq == row.seq)
                .values(prev_hash=prev, hash=digest)
            )
            prev = digest
    assert _problem(chain.audit.verify("eu")) == ("checkpoint_mismatch", 10)


def test_an_event_neither_chained_nor_pending_is_found(chain: State, eu: Database) -> None:
    smuggled = make_event(chain.clock)
    with superuser(eu) as conn:
        conn.execute(
            AUDIT.events.insert().values(
                id=smuggled.id, occurred_at=smuggled.occurred_at, actor=smuggled.actor,
                action=smuggled.action, entity=smuggled.entity, decision=smuggled.decision,
                policy_version=None, request_id=None, payload="{}",
            )
        )  # fmt: skip
    report = chain.audit.verify("eu")
    assert _problem(report) == ("unchained", None)
    assert report.problem is not None
    assert report.problem.event_id == smuggled.id


def test_verify_from_a_sequence_number(chain: State, eu: Database) -> None:
    report = chain.audit.verify("eu", from_seq=5)
    assert report.ok
    assert (report.first_seq, report.entries) == (5, 11)
    with superuser(eu) as conn:
        conn.execute(
            text("UPDATE audit_events SET actor = 'cli' WHERE id = :id"), {"id": _event_id(conn, 7)}
        )
    assert _problem(chain.audit.verify("eu", from_seq=5)) == ("modified", 7)


# -- the CLI contract: exit 0 and OK, or non-zero naming the first bad sequence number --


def test_cli_verify_says_ok_then_names_the_first_bad_sequence_number(
    chain: State, eu: Database, backend: Backend, tmp_path: Path
) -> None:
    env = cli_env(backend, tmp_path)
    ok = CliRunner().invoke(main, ["audit", "verify", "--region", "eu"], env=env)
    assert ok.exit_code == 0, ok.output
    assert "eu: OK" in ok.stdout
    everything = CliRunner().invoke(main, ["audit", "verify"], env=env)
    assert everything.exit_code == 0, everything.output
    assert {line.split(":")[0] for line in everything.stdout.splitlines()} >= {
        "eu",
        "us",
        "control",
    }

    with superuser(eu) as conn:
        conn.execute(
            text("UPDATE audit_events SET decision = 'deny' WHERE id = :id"),
            {"id": _event_id(conn, 6)},
        )
    bad = CliRunner().invoke(main, ["audit", "verify", "--region", "eu"], env=env)
    assert bad.exit_code != 0
    assert "FAILED at sequence number 6" in bad.stdout
    assert "first bad sequence number: 6" in bad.stderr
    later = CliRunner().invoke(main, ["audit", "verify", "--region", "eu", "--from", "7"], env=env)
    assert later.exit_code == 0, later.output


# -- the record index ("who accessed record X") is evidence too --

FAKE_RECORD = "con_eu_01jd0000000000000000000009"


def test_a_fabricated_index_row_is_found(chain: State, eu: Database) -> None:
    with superuser(eu) as conn:
        event_id = _event_id(conn, 4)
        conn.execute(
            text(
                "INSERT INTO audit_record_refs SELECT :r, occurred_at, id FROM audit_events "
                "WHERE id = :id"
            ),
            {"r": FAKE_RECORD, "id": event_id},
        )
    assert _problem(chain.audit.verify("eu")) == ("index_mismatch", 4)


def test_a_deleted_index_row_is_found(chain: State, eu: Database) -> None:
    with superuser(eu) as conn:
        conn.execute(
            text("DELETE FROM audit_record_refs WHERE event_id = :id"), {"id": _event_id(conn, 6)}
        )
    assert _problem(chain.audit.verify("eu")) == ("index_mismatch", 6)


def test_an_index_row_moved_in_time_is_found(chain: State, eu: Database) -> None:
    with superuser(eu) as conn:
        event_id = _event_id(conn, 2)
        row = conn.execute(
            select(AUDIT.record_refs).where(AUDIT.record_refs.c.event_id == event_id)
        ).one()
        conn.execute(AUDIT.record_refs.delete().where(AUDIT.record_refs.c.event_id == event_id))
        conn.execute(
            AUDIT.record_refs.insert().values(
                record_id=row.record_id, occurred_at=row.occurred_at - timedelta(days=30),
                event_id=event_id,
            )
        )  # fmt: skip
    assert _problem(chain.audit.verify("eu")) == ("index_mismatch", 2)


def test_an_index_row_for_no_event_is_found(chain: State, eu: Database) -> None:
    with superuser(eu) as conn:
        conn.execute(
            AUDIT.record_refs.insert().values(
                record_id=FAKE_RECORD, occurred_at=chain.clock.now(),
                event_id="evt_00000000000000000000000000",
            )
        )  # fmt: skip
    report = chain.audit.verify("eu")
    assert _problem(report) == ("index_mismatch", None)
    assert report.problem is not None
    assert report.problem.event_id == "evt_00000000000000000000000000"


# -- where to start --


def test_verify_from_past_the_head_is_refused_not_reported_as_tampering(chain: State) -> None:
    report = chain.audit.verify("eu", from_seq=16)  # one past the head: nothing to walk
    assert report.ok
    assert report.entries == 0
    with pytest.raises(ValidationFailed) as refused:
        chain.audit.verify("eu", from_seq=50)
    assert [e.field for e in refused.value.errors] == ["from"]


# -- times the application chose --


def test_an_event_dated_before_the_checkpoint_it_follows_is_flagged(
    chain: State, eu: Database
) -> None:
    assert chain.audit.verify("eu").time_anomalies == 0
    backdated = make_event(chain.clock)
    backdated = dataclasses.replace(
        backdated,
        occurred_at=backdated.occurred_at - timedelta(days=365),
        id=new_event_id(backdated.occurred_at - timedelta(days=365)),
    )
    with eu.transaction(write=True) as conn:
        append(conn, backdated)
    chain.audit.flush("eu")
    report = chain.audit.verify("eu")
    assert report.ok, report.problem  # a warning: the log itself is intact
    assert (report.time_anomalies, report.first_time_anomaly_seq) == (1, 16)
    assert report.to_json()["first_time_anomaly_seq"] == 16


# -- a witness copy of a checkpoint, kept outside the database --


def _drop_checkpoints(conn: Connection) -> None:
    conn.execute(text("DELETE FROM audit_checkpoints"))


def test_a_witness_catches_a_rewrite_whose_checkpoints_were_deleted(
    chain: State, eu: Database
) -> None:
    note = chain.audit.checkpoints("eu")[0].note
    witness = chain.audit.witness("eu", note, field="against")
    assert chain.audit.verify("eu", witness=witness).ok
    with superuser(eu) as conn:
        _drop_checkpoints(conn)
        conn.execute(
            text("UPDATE audit_events SET actor = 'system:intruder' WHERE id = :id"),
            {"id": _event_id(conn, 3)},
        )
        _rehash(conn)
    assert chain.audit.verify("eu").ok  # nothing left in the database to contradict it
    assert _problem(chain.audit.verify("eu", witness=witness)) == ("checkpoint_mismatch", 10)


def test_a_witness_catches_a_truncation_whose_checkpoints_were_deleted(
    chain: State, eu: Database
) -> None:
    witness = chain.audit.witness("eu", chain.audit.checkpoint("eu").note, field="against")
    assert witness.tree_size == 15
    with superuser(eu) as conn:
        _drop_checkpoints(conn)
        conn.execute(
            text(
                "DELETE FROM audit_events WHERE id IN "
                "(SELECT event_id FROM audit_chain WHERE seq > 12)"
            )
        )
        conn.execute(
            text(
                "DELETE FROM audit_record_refs WHERE event_id NOT IN (SELECT id FROM audit_events)"
            )
        )
        conn.execute(text("DELETE FROM audit_chain WHERE seq > 12"))
    assert chain.audit.verify("eu").ok
    assert _problem(chain.audit.verify("eu", witness=witness)) == ("truncated", 13)


def test_a_witness_must_be_this_chains_signed_checkpoint(chain: State) -> None:
    note = chain.audit.checkpoints("eu")[0].note
    for bad in (note.replace("\n10\n", "\n11\n"), "not a note", note.replace("/eu", "/us")):
        with pytest.raises(ValidationFailed) as refused:
            chain.audit.witness("eu", bad, field="against")
        assert [e.field for e in refused.value.errors] == ["against"]
    with pytest.raises(ValidationFailed):
        chain.audit.witness("us", note, field="against")


def _rehash(conn: Connection) -> None:
    """Recompute every stored hash, as a DBA covering a change would."""
    rows = conn.execute(
        select(AUDIT.chain, AUDIT.events)
        .join(AUDIT.events, AUDIT.events.c.id == AUDIT.chain.c.event_id)
        .order_by(AUDIT.chain.c.seq)
    ).all()
    prev = bytes(32)
    for row in rows:
        header = header_bytes(
            "eu", row.seq, row.id, format_time(row.occurred_at), row.actor, row.action,
            row.entity, row.decision, row.policy_version, row.request_id,
        )  # fmt: skip
        digest = entry_hash(prev, header, row.payload_hash)
        conn.execute(
            AUDIT.chain.update()
            .where(AUDIT.chain.c.seq == row.seq)
            .values(prev_hash=prev, hash=digest)
        )
        prev = digest
