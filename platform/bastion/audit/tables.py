"""The audit tables, defined once and added to both kinds of database.

Every region database and the control database hold one chain each, in the same
tables. SQLAlchemy `Table`s belong to one `MetaData`, so `define_audit_tables`
builds them on a given one; importing this module adds them to `region_metadata`
and `control_metadata` (which is what the migrations and the drift check compare
against). All SQL uses `AUDIT`, the region copy: the names are the same everywhere.

* `audit_events` — written by `append`, in the caller's transaction; only its
  `payload` may change, once, by a recorded redaction; rows go only by pruning.
* `audit_record_refs` — one row per record id of an event (the "who touched
  record X" index), written by the database's queue trigger; changed only by
  redaction and pruning; `verify` compares it with the payloads.
* `audit_pending` — the work queue of `append`, emptied by the sequencer; not
  evidence, so rows are deleted freely.
* `audit_chain` — written by the sequencer; never changed, rows go only by
  pruning below a signed prune mark.
* `audit_checkpoints`, `audit_prunes`, `audit_redactions` — insert-only.

The database enforces this with triggers and grants (`bastion.audit.ddl`).
"""

from __future__ import annotations

from typing import NamedTuple

from sqlalchemy import (
    BigInteger,
    Column,
    Index,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    UniqueConstraint,
)

from bastion.crm.tables import region_metadata
from bastion.principals.tables import control_metadata
from bastion.sqltypes import UTCDateTime

EVENT_ID_LENGTH = 30
ACTOR_LENGTH = 80


class AuditTables(NamedTuple):
    events: Table
    record_refs: Table
    pending: Table
    chain: Table
    checkpoints: Table
    prunes: Table
    redactions: Table


def define_audit_tables(metadata: MetaData) -> AuditTables:
    """Define the audit tables on `metadata` (once per MetaData)."""
    events = Table(
        "audit_events",
        metadata,
        Column("id", String(EVENT_ID_LENGTH), nullable=False),
        Column("occurred_at", UTCDateTime(), nullable=False),
        Column("actor", String(ACTOR_LENGTH), nullable=False),
        Column("action", String(140), nullable=False),
        Column("entity", String(64), nullable=False),
        Column("decision", String(5), nullable=False),
        Column("policy_version", String(64), nullable=True),
        Column("request_id", String(128), nullable=True),
        # The canonical payload bytes (encoding.payload_bytes), as text: hashed as stored.
        Column("payload", Text(), nullable=False),
        PrimaryKeyConstraint("id"),
        Index("ix_audit_events_occurred_at_id", "occurred_at", "id"),
        Index("ix_audit_events_actor_occurred_at_id", "actor", "occurred_at", "id"),
    )
    record_refs = Table(
        "audit_record_refs",
        metadata,
        Column("record_id", String(47), nullable=False),
        Column("occurred_at", UTCDateTime(), nullable=False),
        Column("event_id", String(EVENT_ID_LENGTH), nullable=False),
        # The primary key is the index "who touched record X between t1 and t2".
        PrimaryKeyConstraint("record_id", "occurred_at", "event_id"),
    )
    pending = Table(
        "audit_pending",
        metadata,
        Column("event_id", String(EVENT_ID_LENGTH), nullable=False),
        Column("occurred_at", UTCDateTime(), nullable=False),
        PrimaryKeyConstraint("event_id"),
    )
    chain = Table(
        "audit_chain",
        metadata,
        Column("seq", BigInteger(), autoincrement=False, nullable=False),
        Column("event_id", String(EVENT_ID_LENGTH), nullable=False),
        # Redundant with the previous entry's hash; kept so verify can tell an
        # inserted, removed or reordered entry from a modified one.
        Column("prev_hash", LargeBinary(32), nullable=False),
        Column("payload_hash", LargeBinary(32), nullable=False),
        Column("hash", LargeBinary(32), nullable=False),
        # One row per sequence number and per event: a fork cannot be stored.
        PrimaryKeyConstraint("seq"),
        UniqueConstraint("event_id"),
    )
    checkpoints = Table(
        "audit_checkpoints",
        metadata,
        Column("tree_size", BigInteger(), autoincrement=False, nullable=False),
        Column("origin", String(320), nullable=False),
        Column("head_hash", LargeBinary(32), nullable=False),
        Column("created_at", UTCDateTime(), nullable=False),
        Column("key_id", String(8), nullable=False),
        Column("signature", LargeBinary(64), nullable=False),
        PrimaryKeyConstraint("tree_size"),
    )
    prunes = Table(
        "audit_prunes",
        metadata,
        # Entries with seq <= upto_seq were removed; upto_seq is a checkpoint's size.
        Column("upto_seq", BigInteger(), autoincrement=False, nullable=False),
        Column("origin", String(320), nullable=False),
        Column("head_hash", LargeBinary(32), nullable=False),
        Column("cutoff", UTCDateTime(), nullable=False),
        Column("pruned_at", UTCDateTime(), nullable=False),
        Column("actor", String(ACTOR_LENGTH), nullable=False),
        Column("key_id", String(8), nullable=False),
        Column("signature", LargeBinary(64), nullable=False),
        PrimaryKeyConstraint("upto_seq"),
    )
    redactions = Table(
        "audit_redactions",
        metadata,
        Column("event_id", String(EVENT_ID_LENGTH), nullable=False),
        Column("redaction_event_id", String(EVENT_ID_LENGTH), nullable=False),
        Column("original_payload_hash", LargeBinary(32), nullable=False),
        # The update guard lets the payload change once, from the original to this.
        Column("redacted_payload_hash", LargeBinary(32), nullable=False),
        Column("redacted_at", UTCDateTime(), nullable=False),
        Column("actor", String(ACTOR_LENGTH), nullable=False),
        Column("reason", String(200), nullable=False),
        PrimaryKeyConstraint("event_id"),
    )
    return AuditTables(events, record_refs, pending, chain, checkpoints, prunes, redactions)


AUDIT = define_audit_tables(region_metadata)
CONTROL_AUDIT = define_audit_tables(control_metadata)
