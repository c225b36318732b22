"""Signed checkpoints: (tree size, head hash, time) of a chain, under a key outside the database.

`audit_checkpoints` is insert-only, and the application role may insert into it
(the sequencer runs as that role), so a stored row is a claim, not a fact: rows
are parsed defensively (`checkpoint_from_row` gives None for a malformed one,
which `verify` reports at its tree size) and nothing trusts a row before
`Checkpoint.signed_by` says one of the chain's keys signed it.
"""

from __future__ import annotations

import binascii
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import Connection, Row, insert, or_, select
from typing_extensions import TypedDict

from bastion.audit.chain import head
from bastion.audit.encoding import b64, format_time
from bastion.audit.keys import SigningKey
from bastion.audit.notes import NoteError, Signature, checkpoint_body, render_note
from bastion.audit.tables import AUDIT
from bastion.errors import Conflict
from bastion.wire import Timestamp, closed

_CHECKPOINTS = AUDIT.checkpoints


@closed
class AuditCheckpoint(TypedDict):
    """A signed checkpoint of a chain: its size and head hash at a time."""

    origin: str
    tree_size: int
    head_hash: str
    """base64"""
    created_at: Timestamp
    key_id: str
    """hex"""
    note: str
    """The C2SP signed note, for a witness to keep."""


@dataclass(frozen=True, slots=True)
class Checkpoint:
    origin: str
    tree_size: int
    head_hash: bytes
    created_at: datetime
    key_id: bytes
    signature: bytes

    @property
    def body(self) -> bytes:
        """The signed text (C2SP tlog-checkpoint, with a `time` extension line)."""
        return checkpoint_body(
            self.origin, self.tree_size, self.head_hash, f"time {format_time(self.created_at)}"
        )

    @property
    def note(self) -> str:
        """The checkpoint as a signed note, for third parties to keep."""
        return render_note(self.body, [Signature(self.origin, self.key_id, self.signature)])

    def to_json(self) -> AuditCheckpoint:
        return {
            "origin": self.origin,
            "tree_size": self.tree_size,
            "head_hash": b64(self.head_hash),
            "created_at": format_time(self.created_at),
            "key_id": self.key_id.hex(),
            "note": self.note,
        }

    def signed_by(self, keys: Mapping[bytes, Ed25519PublicKey]) -> bool:
        """Whether one of `keys` (public keys by key id) signed this checkpoint."""
        public = keys.get(self.key_id)
        if public is None:
            return False
        try:
            public.verify(self.signature, self.body)
        except InvalidSignature:
            return False
        return True


def checkpoint_from_row(row: Row[Any]) -> Checkpoint | None:
    """The checkpoint a stored row describes, or None when the row is malformed.

    Malformed: a key id that is not 8 hex digits, a head hash that is not 32 bytes,
    a signature that is not 64, a tree size below 1, or an origin that cannot be a
    note's first line. Such a row was not written by `write_checkpoint`.
    """
    try:
        key_id = bytes.fromhex(row.key_id)
    except (TypeError, ValueError, binascii.Error):
        return None
    if (
        len(key_id) != 4
        or not isinstance(row.head_hash, bytes)
        or len(row.head_hash) != 32
        or not isinstance(row.signature, bytes)
        or len(row.signature) != 64
        or row.tree_size < 1
        or not isinstance(row.created_at, datetime)
        or not row.origin
        or any(c.isspace() or c == "+" for c in row.origin)
    ):
        return None
    checkpoint = Checkpoint(
        origin=row.origin,
        tree_size=row.tree_size,
        head_hash=row.head_hash,
        created_at=row.created_at,
        key_id=key_id,
        signature=row.signature,
    )
    try:
        checkpoint.body  # noqa: B018 - renders, or says why it cannot
    except (NoteError, ValueError, OverflowError):
        return None
    return checkpoint


def write_checkpoint(
    conn: Connection,
    key: SigningKey,
    now: datetime,
    verifiers: Mapping[bytes, Ed25519PublicKey] | None = None,
) -> Checkpoint | None:
    """Sign and store a checkpoint of the chain's head; the caller holds the chain's lock.

    None for an empty chain. When the head already has a checkpoint, that one is
    returned (one checkpoint per tree size) if it is well-formed, signed by one of
    `verifiers` (default: `key`) and of this head; otherwise `Conflict`, since a
    row cannot be replaced (`verify` names it).
    """
    current = head(conn)
    if current.seq == 0:
        return None
    existing = conn.execute(
        select(_CHECKPOINTS).where(_CHECKPOINTS.c.tree_size == current.seq)
    ).first()
    if existing is not None:
        found = checkpoint_from_row(existing)
        keys = verifiers if verifiers is not None else {key.key_id: key.private.public_key()}
        if found is None or not found.signed_by(keys) or found.head_hash != current.hash:
            raise Conflict(
                f"the checkpoint stored at tree size {current.seq} is not a valid checkpoint "
                "of this chain; run `bastion audit verify`"
            )
        return found
    unsigned = Checkpoint(key.name, current.seq, current.hash, now, key.key_id, b"")
    checkpoint = Checkpoint(
        key.name, current.seq, current.hash, now, key.key_id, key.sign(unsigned.body)
    )
    conn.execute(
        insert(_CHECKPOINTS).values(
            tree_size=checkpoint.tree_size,
            origin=checkpoint.origin,
            head_hash=checkpoint.head_hash,
            created_at=checkpoint.created_at,
            key_id=checkpoint.key_id.hex(),
            signature=checkpoint.signature,
        )
    )
    return checkpoint


def list_checkpoints(
    conn: Connection,
    *,
    after: int | None = None,
    limit: int | None = None,
    newest_first: bool = False,
) -> list[Checkpoint]:
    """Well-formed checkpoints by tree size (ascending, or newest first), after a tree size.

    Malformed rows are left out (they cannot be rendered as notes), and do not
    count towards `limit`; `verify` reports them. Signatures are not checked here:
    a reader checks the notes.
    """
    order = _CHECKPOINTS.c.tree_size.desc() if newest_first else _CHECKPOINTS.c.tree_size
    found: list[Checkpoint] = []
    while True:
        query = select(_CHECKPOINTS).order_by(order)
        if after is not None:
            query = query.where(
                _CHECKPOINTS.c.tree_size < after
                if newest_first
                else _CHECKPOINTS.c.tree_size > after
            )
        if limit is None:
            return [c for c in map(checkpoint_from_row, conn.execute(query)) if c is not None]
        wanted = limit - len(found)
        rows = conn.execute(query.limit(wanted)).all()
        found += [c for c in map(checkpoint_from_row, rows) if c is not None]
        if len(rows) < wanted or len(found) >= limit:
            return found
        after = rows[-1].tree_size  # some were malformed: read on past them


def stored_checkpoints(conn: Connection, *, after: int) -> dict[int, Checkpoint | None]:
    """Every row with a tree size above `after` or below 1, by tree size (None: malformed)."""
    query = select(_CHECKPOINTS).where(
        or_(_CHECKPOINTS.c.tree_size > after, _CHECKPOINTS.c.tree_size < 1)
    )
    return {row.tree_size: checkpoint_from_row(row) for row in conn.execute(query)}


def checkpoint_due(
    conn: Connection, now: datetime, *, every_events: int, interval: timedelta
) -> bool:
    """Whether the chain has grown since its last checkpoint by enough events or time.

    Only checkpoints at or below the head count: a row claiming a larger tree size
    (forged, or from a restored backup) must not stop checkpointing; nor may one
    dated further in the future than `interval`.
    """
    current = head(conn)
    if current.seq == 0:
        return False
    last = conn.execute(
        select(_CHECKPOINTS.c.tree_size, _CHECKPOINTS.c.created_at)
        .where(_CHECKPOINTS.c.tree_size <= current.seq)
        .order_by(_CHECKPOINTS.c.tree_size.desc())
        .limit(1)
    ).first()
    if last is None:
        return True
    if current.seq <= last.tree_size:
        return False
    age: timedelta = now - last.created_at
    grown: int = current.seq - last.tree_size
    # A checkpoint dated in the future (a forged row, a skewed clock) does not
    # postpone the next one.
    return grown >= every_events or age >= interval or age < -interval


def prune_body(
    origin: str, upto: int, head_hash: bytes, pruned_at: datetime, cutoff: datetime
) -> bytes:
    """The signed text of a prune record: a checkpoint of the prune point, plus the cutoff."""
    return checkpoint_body(
        origin,
        upto,
        head_hash,
        f"time {format_time(pruned_at)}",
        f"pruned-before {format_time(cutoff)}",
    )
