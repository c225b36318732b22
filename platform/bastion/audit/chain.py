"""Appending events, and chaining them: the two halves of the write path.

`append` runs in the caller's transaction (the request's own write) and only
INSERTs the event; a trigger adds its row in the pending queue and one index
row per record id.
It reads nothing and locks nothing beyond its own new rows, so concurrent
requests never wait for each other on the audit log, and the event commits or
rolls back with the write it describes.

`chain_batch` is the sequencer's transaction: under the chain's lock (a
PostgreSQL advisory transaction lock; SQLite's single writer) it takes a batch of
pending events, gives them the next gap-free sequence numbers and hashes, inserts
the chain rows and deletes the queue rows. "Select the last hash, then insert"
from many writers forks the chain (research/crypto-audit-residency.md); one
sequencer at a time cannot, and the primary key on `seq` would refuse a fork
even if the lock were bypassed.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from sqlalchemy import Connection, delete, func, insert, select, text

from bastion.audit.encoding import (
    GENESIS,
    entry_hash,
    event_payload,
    format_time,
    header_bytes,
    sha256,
)
from bastion.audit.events import AuditEvent
from bastion.audit.tables import AUDIT

_INSERT_EVENT = insert(AUDIT.events)
_DELETE_CHUNK = 1000


def append(conn: Connection, event: AuditEvent) -> None:
    """Record `event` in the open transaction of `conn` (its database's chain).

    One INSERT: a trigger (see the audit migrations) queues the event for the
    sequencer and indexes its record ids, in the same transaction. The event is
    durable when that transaction commits and is chained shortly after. Raises
    what the database raises; a failed append must fail the caller's transaction.
    """
    conn.execute(
        _INSERT_EVENT,
        {
            "id": event.id,
            "occurred_at": event.occurred_at,
            "actor": event.actor,
            "action": event.action,
            "entity": event.entity,
            "decision": event.decision,
            "policy_version": event.policy_version,
            "request_id": event.request_id,
            "payload": event_payload(event).decode(),
        },
    )


@dataclass(frozen=True, slots=True)
class Head:
    """The end of a chain: its last sequence number (0 when empty) and hash."""

    seq: int
    hash: bytes


def lock_key(chain: str) -> int:
    """The PostgreSQL advisory lock key of a chain's sequencer (a signed 64-bit int)."""
    digest = hashlib.sha256(f"bastion.audit.sequencer:{chain}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def lock_chain(conn: Connection, chain: str, *, wait: bool) -> bool:
    """Take the chain's sequencer lock for the rest of the transaction.

    PostgreSQL: an advisory transaction lock (`wait=False`: try, and say whether it
    was taken). SQLite: the write transaction (BEGIN IMMEDIATE) already is the lock.
    """
    if conn.dialect.name != "postgresql":
        return True
    function = "pg_advisory_xact_lock" if wait else "pg_try_advisory_xact_lock"
    taken = conn.execute(text(f"SELECT {function}(:key)"), {"key": lock_key(chain)}).scalar()
    return taken is not False


def head(conn: Connection) -> Head:
    """The chain's head: its last entry, else the latest prune mark, else empty."""
    row = conn.execute(
        select(AUDIT.chain.c.seq, AUDIT.chain.c.hash).order_by(AUDIT.chain.c.seq.desc()).limit(1)
    ).first()
    if row is not None:
        return Head(row.seq, row.hash)
    prune = conn.execute(
        select(AUDIT.prunes.c.upto_seq, AUDIT.prunes.c.head_hash)
        .order_by(AUDIT.prunes.c.upto_seq.desc())
        .limit(1)
    ).first()
    if prune is not None:
        return Head(prune.upto_seq, prune.head_hash)
    return Head(0, GENESIS)


def has_pending(conn: Connection) -> bool:
    return conn.execute(select(AUDIT.pending.c.event_id).limit(1)).first() is not None


def pending_count(conn: Connection) -> int:
    return int(conn.execute(select(func.count()).select_from(AUDIT.pending)).scalar_one())


def chain_batch(conn: Connection, chain: str, limit: int) -> int:
    """Chain up to `limit` pending events; the caller holds the chain's lock.

    Returns how many were chained. Pending rows whose event is missing are left
    alone (they cannot be chained; `verify` reports events, not queue rows).
    """
    events, pending = AUDIT.events, AUDIT.pending
    rows = conn.execute(
        select(
            events.c.id,
            events.c.occurred_at,
            events.c.actor,
            events.c.action,
            events.c.entity,
            events.c.decision,
            events.c.policy_version,
            events.c.request_id,
            events.c.payload,
        )
        .select_from(pending.join(events, events.c.id == pending.c.event_id))
        .order_by(pending.c.occurred_at, pending.c.event_id)
        .limit(limit)
    ).all()
    if not rows:
        return 0
    current = head(conn)
    seq, prev = current.seq, current.hash
    entries = []
    for row in rows:
        seq += 1
        header = header_bytes(
            chain,
            seq,
            row.id,
            format_time(row.occurred_at),
            row.actor,
            row.action,
            row.entity,
            row.decision,
            row.policy_version,
            row.request_id,
        )
        payload_hash = sha256(row.payload.encode())
        digest = entry_hash(prev, header, payload_hash)
        entries.append(
            {
                "seq": seq,
                "event_id": row.id,
                "prev_hash": prev,
                "payload_hash": payload_hash,
                "hash": digest,
            }
        )
        prev = digest
    conn.execute(insert(AUDIT.chain), entries)
    ids = [row.id for row in rows]
    for start in range(0, len(ids), _DELETE_CHUNK):
        chunk = ids[start : start + _DELETE_CHUNK]
        conn.execute(delete(pending).where(pending.c.event_id.in_(chunk)))
    return len(rows)
