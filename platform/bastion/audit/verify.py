"""Re-walk a chain and its checkpoints; name the first bad sequence number and why.

What is checked, in one pass over the chain in batches (by sequence number):

* every entry's hash is recomputed from the event row (`encoding`): a changed
  header or payload is **modified**; a redacted payload is checked against the
  hash recorded by its redaction;
* sequence numbers are gap-free and each entry links to its predecessor's hash:
  a gap or a broken link is **missing**, an entry whose successor links past it
  is **inserted**, an entry that links to some other position is **reordered**;
* every checkpoint's Ed25519 signature verifies (**bad_signature**, also for an
  unknown key) and its head hash equals the recomputed hash at its tree size
  (**checkpoint_mismatch**: the chain up to there was rewritten, hashes and all,
  which only the signature exposes); a checkpoint beyond the last entry means the
  tail was **truncated**;
* the prune record (if any) is signed and is where the walk starts;
* no event is neither chained nor pending (**unchained**: inserted behind the
  sequencer's back; it has no sequence number, so the event id is named).

The first problem found stops the walk (everything after it is suspect anyway).
A tamperer who also rewrites the stored hashes is caught at the next checkpoint,
not at the entry itself: without a signature per entry, "first bad" is then the
checkpoint's tree size.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, NoReturn

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import Connection, select, text

from bastion.audit.chain import pending_count
from bastion.audit.checkpoints import Checkpoint, list_checkpoints, prune_body
from bastion.audit.encoding import GENESIS, HEADER_TAG
from bastion.audit.tables import AUDIT

ProblemKind = Literal[
    "modified",
    "missing",
    "inserted",
    "reordered",
    "checkpoint_mismatch",
    "bad_signature",
    "truncated",
    "unchained",
]
BATCH = 10_000

_TIME_SQL = {
    "postgresql": """to_char(e.occurred_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')""",
    # SQLAlchemy stores SQLite datetimes as 'YYYY-MM-DD HH:MM:SS.ffffff' (naive UTC).
    "sqlite": "replace(e.occurred_at, ' ', 'T') || 'Z'",
}
_BATCH_SQL = """
SELECT c.seq, c.prev_hash, c.payload_hash, c.hash,
       e.id, {time}, e.actor, e.action, e.entity, e.decision, e.policy_version,
       e.request_id, e.payload, r.original_payload_hash
FROM audit_chain c
LEFT JOIN audit_events e ON e.id = c.event_id
LEFT JOIN audit_redactions r ON r.event_id = c.event_id
WHERE c.seq > :after
ORDER BY c.seq
"""
_UNCHAINED_SQL = """
SELECT e.id FROM audit_events e
WHERE NOT EXISTS (SELECT 1 FROM audit_chain c WHERE c.event_id = e.id)
  AND NOT EXISTS (SELECT 1 FROM audit_pending p WHERE p.event_id = e.id)
LIMIT 1
"""


@dataclass(frozen=True, slots=True)
class Problem:
    kind: ProblemKind
    seq: int | None
    detail: str
    event_id: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "seq": self.seq,
            "detail": self.detail,
            "event_id": self.event_id,
        }


@dataclass(frozen=True, slots=True)
class VerifyReport:
    """The outcome for one chain. `ok` iff `problem` is None."""

    chain: str
    first_seq: int
    last_seq: int
    entries: int
    checkpoints: int
    pending: int
    problem: Problem | None

    @property
    def ok(self) -> bool:
        return self.problem is None

    def to_json(self) -> dict[str, Any]:
        return {
            "chain": self.chain,
            "ok": self.ok,
            "first_seq": self.first_seq,
            "last_seq": self.last_seq,
            "entries": self.entries,
            "checkpoints": self.checkpoints,
            "pending": self.pending,
            "first_bad_seq": self.problem.seq if self.problem else None,
            "problem": self.problem.to_json() if self.problem else None,
        }


class _Failed(Exception):
    def __init__(self, problem: Problem) -> None:
        self.problem = problem


def _signature_ok(checkpoint: Checkpoint, keys: Mapping[bytes, Ed25519PublicKey]) -> bool:
    public = keys.get(checkpoint.key_id)
    if public is None:
        return False
    try:
        public.verify(checkpoint.signature, checkpoint.body)
    except InvalidSignature:
        return False
    return True


def verify_chain(
    conn: Connection,
    chain: str,
    keys: Mapping[bytes, Ed25519PublicKey],
    *,
    from_seq: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> VerifyReport:
    """Verify the chain in `conn`'s database (see the module docstring).

    `keys` are the chain's public keys by key id. `from_seq` starts the walk
    there, trusting the stored hash of the entry before it (checkpoints at or
    after `from_seq` still catch a rewrite before it). `progress` is called with
    the number of entries verified after each batch.
    """
    walk = _Walk(conn, chain, keys, progress)
    try:
        walk.run(from_seq)
    except _Failed as failed:
        return walk.report(failed.problem)
    return walk.report(None)


class _Walk:
    def __init__(
        self,
        conn: Connection,
        chain: str,
        keys: Mapping[bytes, Ed25519PublicKey],
        progress: Callable[[int], None] | None,
    ) -> None:
        self.conn = conn
        self.chain = chain
        self.keys = keys
        self.progress = progress
        self.first_seq = 1
        self.expected = 1
        self.entries = 0
        self.checkpoints_checked = 0

    def report(self, problem: Problem | None) -> VerifyReport:
        return VerifyReport(
            chain=self.chain,
            first_seq=self.first_seq,
            last_seq=self.expected - 1,
            entries=self.entries,
            checkpoints=self.checkpoints_checked,
            pending=pending_count(self.conn),
            problem=problem,
        )

    def run(self, from_seq: int | None) -> None:
        prev = self._start(from_seq)
        checkpoints = {c.tree_size: c for c in list_checkpoints(self.conn, after=self.expected - 1)}
        prev_prev: bytes | None = None
        statement = text(_BATCH_SQL.format(time=_TIME_SQL[self.conn.dialect.name]))
        if self.conn.dialect.name == "postgresql":
            # The walk sorts the joined chain by seq; keep more of that sort in memory.
            self.conn.execute(text("SET LOCAL work_mem = '64MB'"))
        sha256 = hashlib.sha256
        dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
        chain = self.chain
        # One streamed query (a server-side cursor on PostgreSQL), read in batches: the
        # planner can hash-join the whole tables instead of probing per entry.
        result = self.conn.execution_options(stream_results=True, yield_per=BATCH).execute(
            statement, {"after": self.expected - 1}
        )
        for rows in result.partitions():
            for row in rows:
                seq, link, stored_payload_hash, stored_hash, event_id = row[:5]
                header_fields, payload, redacted = row[5:12], row[12], row[13]
                expected = self.expected
                if seq != expected:
                    self._fail("missing", expected, f"entry {expected} is missing (next: {seq})")
                if link != prev:
                    self._broken_link(expected, link, prev_prev)
                if event_id is None:
                    self._fail("missing", seq, f"the event of entry {seq} is missing")
                if redacted is not None:
                    if redacted != stored_payload_hash:
                        self._fail("modified", seq, "the redaction record does not match", event_id)
                    payload_hash = stored_payload_hash
                else:
                    payload_hash = sha256(payload.encode()).digest()
                    if payload_hash != stored_payload_hash:
                        self._fail("modified", seq, "the event's payload was changed", event_id)
                # encoding.header_bytes, inlined: this loop is the verify hot path.
                header = dumps([HEADER_TAG, chain, seq, event_id, *header_fields]).encode()
                digest = sha256(prev + sha256(header).digest() + payload_hash).digest()
                if digest != stored_hash:
                    self._fail("modified", seq, "the event or its entry was changed", event_id)
                checkpoint = checkpoints.pop(seq, None)
                if checkpoint is not None:
                    self._check_checkpoint(checkpoint, digest)
                prev_prev, prev = prev, digest
                self.expected = expected + 1
                self.entries += 1
            if self.progress is not None:
                self.progress(len(rows))
        result.close()
        for size in sorted(checkpoints):
            checkpoint = checkpoints[size]
            if not _signature_ok(checkpoint, self.keys):
                self._fail("bad_signature", size, f"checkpoint {size} has a bad signature")
            self._fail(
                "truncated",
                self.expected,
                f"checkpoint {size} is signed but the chain ends at {self.expected - 1}",
            )
        unchained = self.conn.execute(text(_UNCHAINED_SQL)).scalar()
        if unchained is not None:
            self._fail("unchained", None, "an event is neither chained nor pending", str(unchained))

    def _start(self, from_seq: int | None) -> bytes:
        """Set where the walk starts; the hash that precedes it."""
        prunes = AUDIT.prunes
        mark = self.conn.execute(select(prunes).order_by(prunes.c.upto_seq.desc()).limit(1)).first()
        base, prev = 0, GENESIS
        if mark is not None:
            base, prev = mark.upto_seq, mark.head_hash
            record = Checkpoint(
                mark.origin,
                mark.upto_seq,
                mark.head_hash,
                mark.pruned_at,
                bytes.fromhex(mark.key_id),
                mark.signature,
            )
            if not _prune_signature_ok(record, mark.cutoff, self.keys):
                self._fail("bad_signature", base, f"the prune record at {base} has a bad signature")
        start = max(base + 1, from_seq or 1)
        if start > base + 1:
            row = self.conn.execute(
                select(AUDIT.chain.c.hash).where(AUDIT.chain.c.seq == start - 1)
            ).first()
            if row is None:
                self._fail("missing", start - 1, f"entry {start - 1} is missing")
            prev = row.hash
        self.first_seq = self.expected = start
        return prev

    def _broken_link(self, seq: int, link: bytes, prev_prev: bytes | None) -> None:
        if prev_prev is not None and link == prev_prev:
            self._fail("inserted", seq - 1, f"entry {seq - 1} was inserted: {seq} links past it")
        other = self.conn.execute(
            select(AUDIT.chain.c.seq).where(AUDIT.chain.c.hash == link).limit(1)
        ).scalar()
        if other is not None:
            self._fail("reordered", seq, f"entry {seq} was chained after the entry now at {other}")
        self._fail("missing", seq, f"entry {seq} does not follow {seq - 1}: entries were removed")

    def _check_checkpoint(self, checkpoint: Checkpoint, digest: bytes) -> None:
        size = checkpoint.tree_size
        if not _signature_ok(checkpoint, self.keys):
            self._fail("bad_signature", size, f"checkpoint {size} has a bad signature")
        if checkpoint.head_hash != digest:
            self._fail(
                "checkpoint_mismatch",
                size,
                f"the chain up to {size} differs from its signed checkpoint (rewritten)",
            )
        self.checkpoints_checked += 1

    def _fail(
        self, kind: ProblemKind, seq: int | None, detail: str, event_id: str | None = None
    ) -> NoReturn:
        raise _Failed(Problem(kind, seq, detail, event_id))


def _prune_signature_ok(
    record: Checkpoint, cutoff: Any, keys: Mapping[bytes, Ed25519PublicKey]
) -> bool:
    public = keys.get(record.key_id)
    if public is None:
        return False
    body = prune_body(record.origin, record.tree_size, record.head_hash, record.created_at, cutoff)
    try:
        public.verify(record.signature, body)
    except InvalidSignature:
        return False
    return True
