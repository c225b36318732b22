"""Region tables of duplicate detection and merges.

`duplicate_pairs` is the review queue a scan fills: two records of one entity that
look like the same person, with a score and the reasons (field names and how they
matched, never values). `merges` records each merge so it can be audited and, within
its window, undone; what it keeps to undo a merge holds ciphertexts and ids only.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    Column,
    Float,
    Index,
    PrimaryKeyConstraint,
    String,
    Table,
    UniqueConstraint,
)
from sqlalchemy.dialects.postgresql import JSONB

from bastion.crm.tables import region_metadata
from bastion.residency.ids import ID_MAX_LENGTH
from bastion.sqltypes import UTCDateTime

_JSON = JSON().with_variant(JSONB(), "postgresql")

duplicate_pairs = Table(
    "duplicate_pairs",
    region_metadata,
    Column("id", String(ID_MAX_LENGTH), nullable=False),
    Column("region", String(16), nullable=False),
    Column("entity", String(32), nullable=False),
    # The pair in id order (record_id < candidate_id), so a pair is found once.
    Column("record_id", String(ID_MAX_LENGTH), nullable=False, index=True),
    Column("candidate_id", String(ID_MAX_LENGTH), nullable=False, index=True),
    Column("score", Float(), nullable=False),
    # {field: {match, similarity}}: keyed by field so the queue scores a pair in SQL
    # from the fields its reader may read (`quality.queue.reader_score`).
    Column("reasons", _JSON, nullable=False),
    # open -> dismissed | merged
    Column("status", String(16), nullable=False),
    Column("found_at", UTCDateTime(), nullable=False),
    Column("reviewed_by", String(64), nullable=True),
    Column("reviewed_at", UTCDateTime(), nullable=True),
    PrimaryKeyConstraint("id"),
    UniqueConstraint("entity", "record_id", "candidate_id"),
    Index("ix_duplicate_pairs_status_score", "status", "score"),
)

merges = Table(
    "merges",
    region_metadata,
    Column("id", String(ID_MAX_LENGTH), nullable=False),
    Column("region", String(16), nullable=False),
    Column("entity", String(32), nullable=False),
    Column("survivor_id", String(ID_MAX_LENGTH), nullable=False, index=True),
    Column("loser_ids", _JSON, nullable=False),
    # Which record each chosen field came from: {field: record id}.
    Column("choices", _JSON, nullable=False),
    # What moved to the survivor, to move it back: [{entity, id, field, from}]; `from`
    # (the loser) is dropped once the merge is closed (undone or final).
    Column("moved", _JSON, nullable=False),
    # The survivor's stored columns before the merge (ciphertexts as stored, base64);
    # emptied ({}) once the merge is closed: only an undo needs them.
    Column("survivor_before", _JSON, nullable=False),
    Column("merged_by", String(64), nullable=False),
    Column("merged_at", UTCDateTime(), nullable=False),
    Column("undo_until", UTCDateTime(), nullable=False, index=True),
    # merged -> undone | final (the window passed; the losers' data was shredded)
    Column("status", String(16), nullable=False),
    Column("undone_by", String(64), nullable=True),
    Column("undone_at", UTCDateTime(), nullable=True),
    PrimaryKeyConstraint("id"),
)
