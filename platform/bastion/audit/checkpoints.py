"""Signed checkpoints: (tree size, head hash, time) of a chain, under a key outside the database."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Row, insert, select

from bastion.audit.chain import head
from bastion.audit.encoding import b64, format_time
from bastion.audit.keys import SigningKey
from bastion.audit.notes import Signature, checkpoint_body, render_note
from bastion.audit.tables import AUDIT

_CHECKPOINTS = AUDIT.checkpoints


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

    def to_json(self) -> dict[str, Any]:
        return {
            "origin": self.origin,
            "tree_size": self.tree_size,
            "head_hash": b64(self.head_hash),
            "created_at": format_time(self.created_at),
            "key_id": self.key_id.hex(),
            "note": self.note,
        }

    @classmethod
    def from_row(cls, row: Row[Any]) -> Checkpoint:
        return cls(
            origin=row.origin,
            tree_size=row.tree_size,
            head_hash=row.head_hash,
            created_at=row.created_at,
            key_id=bytes.fromhex(row.key_id),
            signature=row.signature,
        )


def write_checkpoint(conn: Connection, key: SigningKey, now: datetime) -> Checkpoint | None:
    """Sign and store a checkpoint of the chain's head; the caller holds the chain's lock.

    None for an empty chain. When the head already has a checkpoint, that one is
    returned: one checkpoint per tree size.
    """
    current = head(conn)
    if current.seq == 0:
        return None
    existing = conn.execute(
        select(_CHECKPOINTS).where(_CHECKPOINTS.c.tree_size == current.seq)
    ).first()
    if existing is not None:
        return Checkpoint.from_row(existing)
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


def latest_checkpoint(conn: Connection) -> Checkpoint | None:
    row = conn.execute(select(_CHECKPOINTS).order_by(_CHECKPOINTS.c.tree_size.desc()).limit(1))
    found = row.first()
    return Checkpoint.from_row(found) if found is not None else None


def list_checkpoints(
    conn: Connection,
    *,
    after: int | None = None,
    limit: int | None = None,
    newest_first: bool = False,
) -> list[Checkpoint]:
    """Checkpoints by tree size (ascending, or newest first), after a tree size."""
    query = select(_CHECKPOINTS)
    if after is not None:
        query = query.where(
            _CHECKPOINTS.c.tree_size < after if newest_first else _CHECKPOINTS.c.tree_size > after
        )
    order = _CHECKPOINTS.c.tree_size.desc() if newest_first else _CHECKPOINTS.c.tree_size
    query = query.order_by(order)
    if limit is not None:
        query = query.limit(limit)
    return [Checkpoint.from_row(row) for row in conn.execute(query)]


def checkpoint_due(
    conn: Connection, now: datetime, *, every_events: int, interval: timedelta
) -> bool:
    """Whether the chain has grown since its last checkpoint by enough events or time."""
    current = head(conn)
    if current.seq == 0:
        return False
    last = latest_checkpoint(conn)
    if last is None:
        return True
    if current.seq <= last.tree_size:
        return False
    return current.seq - last.tree_size >= every_events or now - last.created_at >= interval


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
