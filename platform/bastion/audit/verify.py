"""Re-walk a chain and its checkpoints; name the first bad sequence number and why.

What is checked, in one pass over the chain in batches (by sequence number):

* every entry's hash is recomputed from the event row (`encoding`): a changed
  header or payload is **modified**. A redacted payload is accepted only with a
  chained, unmodified `audit.redact` event, later in the chain, that names the
  event and carries the SHA-256 of the original payload (the chain entry's) and
  of the current one (`retention.redact`); anything else is **modified** too;
* sequence numbers are gap-free and each entry links to its predecessor's hash:
  a gap or a broken link is **missing**, an entry whose successor links past it
  is **inserted**, an entry that links to some other position is **reordered**;
* the record index (`audit_record_refs`, behind "who accessed record X") holds
  exactly the payload's record ids at the event's time: else **index_mismatch**
  at the entry; an index row for no event at all is one too (named by event id);
* every checkpoint's Ed25519 signature verifies (**bad_signature**, also for an
  unknown key or a malformed row) and its head hash equals the recomputed hash at
  its tree size (**checkpoint_mismatch**: the chain up to there was rewritten,
  hashes and all, which only the signature exposes); a checkpoint beyond the last
  entry means the tail was **truncated**;
* a witness checkpoint (`witness`: a signed note kept outside the database,
  see `bastion.audit.witness`) is checked the same way: a database whose owner
  also deleted the checkpoint rows is still caught;
* the prune record (if any) is signed and is where the walk starts;
* no event is neither chained nor pending (**unchained**: inserted behind the
  sequencer's back; it has no sequence number, so the event id is named).

The first problem found stops the walk (everything after it is suspect anyway).
A tamperer who also rewrites the stored hashes is caught at the next checkpoint,
not at the entry itself: without a signature per entry, "first bad" is then the
checkpoint's tree size.

**Time anomalies** are flagged, not failed (see `bastion.audit.timebounds`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Literal, NoReturn

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import Connection, select, text
from typing_extensions import TypedDict

from bastion.audit.chain import head, pending_count
from bastion.audit.checkpoints import Checkpoint, prune_body, stored_checkpoints
from bastion.audit.encoding import GENESIS, HEADER_TAG
from bastion.audit.payloads import index_matches, redaction_announcement
from bastion.audit.tables import AUDIT
from bastion.audit.timebounds import TimeBounds
from bastion.audit.witness import Witness
from bastion.errors import Conflict, FieldError, ValidationFailed
from bastion.wire import closed

ProblemKind = Literal[
    "modified",
    "missing",
    "inserted",
    "reordered",
    "checkpoint_mismatch",
    "bad_signature",
    "truncated",
    "unchained",
    "index_mismatch",
]
BATCH = 10_000
DEFAULT_CLOCK_TOLERANCE = timedelta(minutes=5)
REDACT_ACTION = "audit.redact"

_TIME_SQL = {
    "postgresql": (
        """to_char({alias}.occurred_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')"""
    ),
    # SQLAlchemy stores SQLite datetimes as 'YYYY-MM-DD HH:MM:SS.ffffff' (naive UTC).
    "sqlite": "replace({alias}.occurred_at, ' ', 'T') || 'Z'",
}
_BATCH_SQL = """
SELECT c.seq, c.prev_hash, c.payload_hash, c.hash,
       e.id, {time}, e.actor, e.action, e.entity, e.decision, e.policy_version,
       e.request_id, e.payload, r.original_payload_hash, r.redaction_event_id
FROM audit_chain c
LEFT JOIN audit_events e ON e.id = c.event_id
LEFT JOIN audit_redactions r ON r.event_id = c.event_id
WHERE c.seq > :after
ORDER BY c.seq
"""
# The record index, in chain order, read alongside the walk: a second stream, not an
# aggregate joined in (the planner misjudges an aggregate's size on fresh tables and
# rescans it per entry), nor a plain join (it would repeat each payload per record id).
_REFS_SQL = """
SELECT c.seq, x.record_id, {time}
FROM audit_record_refs x
JOIN audit_chain c ON c.event_id = x.event_id
WHERE c.seq > :after
ORDER BY c.seq
"""
_UNCHAINED_SQL = """
SELECT e.id FROM audit_events e
WHERE NOT EXISTS (SELECT 1 FROM audit_chain c WHERE c.event_id = e.id)
  AND NOT EXISTS (SELECT 1 FROM audit_pending p WHERE p.event_id = e.id)
LIMIT 1
"""
_ORPHAN_REFS_SQL = """
SELECT r.event_id FROM audit_record_refs r
WHERE NOT EXISTS (SELECT 1 FROM audit_events e WHERE e.id = r.event_id)
LIMIT 1
"""


@closed
class AuditChainProblem(TypedDict):
    """The first thing wrong with a chain: its kind, where, and what."""

    kind: ProblemKind
    seq: int | None
    detail: str
    event_id: str | None


@closed
class AuditVerification(TypedDict):
    """A chain's verification (`VerifyReport`): `ok`, or the first bad sequence number
    and what is wrong there."""

    chain: str
    ok: bool
    first_seq: int
    last_seq: int
    entries: int
    checkpoints: int
    pending: int
    first_bad_seq: int | None
    problem: AuditChainProblem | None
    time_anomalies: int
    first_time_anomaly_seq: int | None
    witness_tree_size: int | None


@dataclass(frozen=True, slots=True)
class Problem:
    kind: ProblemKind
    seq: int | None
    detail: str
    event_id: str | None = None

    def to_json(self) -> AuditChainProblem:
        return {
            "kind": self.kind,
            "seq": self.seq,
            "detail": self.detail,
            "event_id": self.event_id,
        }


@dataclass(frozen=True, slots=True)
class VerifyReport:
    """The outcome for one chain. `ok` iff `problem` is None.

    `time_anomalies` counts events whose time the checkpoints contradict (see the
    module docstring): a warning, not a failure; `first_time_anomaly_seq` names
    the first. `witness_tree_size` is the size of the witness checked, if any.
    """

    chain: str
    first_seq: int
    last_seq: int
    entries: int
    checkpoints: int
    pending: int
    problem: Problem | None
    time_anomalies: int = 0
    first_time_anomaly_seq: int | None = None
    witness_tree_size: int | None = None

    @property
    def ok(self) -> bool:
        return self.problem is None

    def to_json(self) -> AuditVerification:
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
            "time_anomalies": self.time_anomalies,
            "first_time_anomaly_seq": self.first_time_anomaly_seq,
            "witness_tree_size": self.witness_tree_size,
        }


class _Failed(Exception):
    def __init__(self, problem: Problem) -> None:
        self.problem = problem


def verify_chain(
    conn: Connection,
    chain: str,
    keys: Mapping[bytes, Ed25519PublicKey],
    *,
    from_seq: int | None = None,
    progress: Callable[[int], None] | None = None,
    witness: Witness | None = None,
    clock_tolerance: timedelta = DEFAULT_CLOCK_TOLERANCE,
) -> VerifyReport:
    """Verify the chain in `conn`'s database (see the module docstring).

    `keys` are the chain's public keys by key id. `from_seq` starts the walk
    there, trusting the stored hash of the entry before it (checkpoints at or
    after `from_seq` still catch a rewrite before it); it may be at most one past
    the head (nothing to walk), else `ValidationFailed` naming `from`. `witness`
    is a checkpoint held outside the database, already checked to be signed by
    one of `keys`; `Conflict` when it lies in a pruned segment and so cannot be
    checked. `progress` is called with the number of entries verified after
    each batch.
    """
    walk = _Walk(conn, chain, keys, progress, witness, clock_tolerance)
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
        witness: Witness | None,
        clock_tolerance: timedelta,
    ) -> None:
        self.conn = conn
        self.chain = chain
        self.keys = keys
        self.progress = progress
        self.witness = witness
        self.tolerance = clock_tolerance
        self.first_seq = 1
        self.expected = 1
        self.entries = 0
        self.checkpoints_checked = 0
        self.time_anomalies = 0
        self.first_time_anomaly: int | None = None
        self.prune_mark: tuple[int, bytes] = (0, GENESIS)

    def report(self, problem: Problem | None) -> VerifyReport:
        return VerifyReport(
            chain=self.chain,
            first_seq=self.first_seq,
            last_seq=self.expected - 1,
            entries=self.entries,
            checkpoints=self.checkpoints_checked,
            pending=pending_count(self.conn),
            problem=problem,
            time_anomalies=self.time_anomalies,
            first_time_anomaly_seq=self.first_time_anomaly,
            witness_tree_size=self.witness.tree_size if self.witness else None,
        )

    def run(self, from_seq: int | None) -> None:
        current = head(self.conn)
        if from_seq is not None and from_seq > current.seq + 1:
            raise ValidationFailed(
                "there is nothing to verify there",
                [
                    FieldError(
                        "from", f"must be at most {current.seq + 1} (the head is {current.seq})"
                    )
                ],
            )
        prev = self._start(from_seq)
        checkpoints = stored_checkpoints(self.conn, after=self.expected - 1)
        for size in sorted(s for s in checkpoints if s < 1):
            self._fail("bad_signature", size, f"checkpoint {size} is malformed")
        witness_size = self._witness_before_start()
        bounds = TimeBounds(checkpoints, self.tolerance)
        prev_prev: bytes | None = None
        dialect = self.conn.dialect.name
        statement = text(_BATCH_SQL.format(time=_TIME_SQL[dialect].format(alias="e")))
        if dialect == "postgresql":
            # The walk sorts the joined chain by seq; keep more of that sort in memory.
            self.conn.execute(text("SET LOCAL work_mem = '64MB'"))
        sha256 = hashlib.sha256
        dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
        chain = self.chain
        # Streamed queries (server-side cursors on PostgreSQL), read in batches: the
        # planner can hash-join the whole tables instead of probing per entry. The
        # record index comes alongside, in the same order (see _REFS_SQL).
        streaming = self.conn.execution_options(stream_results=True, yield_per=BATCH)
        result = streaming.execute(statement, {"after": self.expected - 1})
        refs_result = streaming.execute(
            text(_REFS_SQL.format(time=_TIME_SQL[dialect].format(alias="x"))),
            {"after": self.expected - 1},
        )
        try:
            refs = iter(refs_result)
            next_ref = next(refs, None)
            for rows in result.partitions():
                for row in rows:
                    seq, link, stored_payload_hash, stored_hash, event_id = row[:5]
                    header_fields, payload = row[5:12], row[12]
                    redacted, redaction_event = row[13], row[14]
                    expected = self.expected
                    if seq != expected:
                        self._fail(
                            "missing", expected, f"entry {expected} is missing (next: {seq})"
                        )
                    if link != prev:
                        self._broken_link(expected, link, prev_prev)
                    if event_id is None:
                        self._fail("missing", seq, f"the event of entry {seq} is missing")
                    if redacted is not None:
                        if redacted != stored_payload_hash:
                            self._fail(
                                "modified", seq, "the redaction record does not match", event_id
                            )
                        self._check_redaction(
                            seq, event_id, redaction_event, stored_payload_hash, payload
                        )
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
                    occurred = header_fields[0]
                    indexed: list[str] = []
                    at_event_time = True
                    while next_ref is not None and next_ref[0] == seq:
                        indexed.append(next_ref[1])
                        at_event_time = at_event_time and next_ref[2] == occurred
                        next_ref = next(refs, None)
                    if not (at_event_time and index_matches(payload, indexed)):
                        self._fail(
                            "index_mismatch",
                            seq,
                            f"the record index of entry {seq} differs from its payload",
                            event_id,
                        )
                    if not bounds.lower <= occurred <= bounds.upper(seq):
                        self.time_anomalies += 1
                        if self.first_time_anomaly is None:
                            self.first_time_anomaly = seq
                    checkpoint = checkpoints.pop(seq, _NONE)
                    if checkpoint is not _NONE:
                        self._check_checkpoint(seq, checkpoint, digest)
                        bounds.passed(checkpoint)
                    if seq == witness_size:
                        self._check_witness(digest)
                    prev_prev, prev = prev, digest
                    self.expected = expected + 1
                    self.entries += 1
                if self.progress is not None:
                    self.progress(len(rows))
        finally:
            result.close()
            refs_result.close()
        for size in sorted(checkpoints):
            checkpoint = checkpoints[size]
            if checkpoint is None or not checkpoint.signed_by(self.keys):
                self._fail("bad_signature", size, f"checkpoint {size} has a bad signature")
            self._fail(
                "truncated",
                self.expected,
                f"checkpoint {size} is signed but the chain ends at {self.expected - 1}",
            )
        if self.witness is not None and witness_size >= self.expected:
            self._fail(
                "truncated",
                self.expected,
                f"the witness saw {witness_size} entries but the chain ends at {self.expected - 1}",
            )
        unchained = self.conn.execute(text(_UNCHAINED_SQL)).scalar()
        if unchained is not None:
            self._fail("unchained", None, "an event is neither chained nor pending", str(unchained))
        orphan = self.conn.execute(text(_ORPHAN_REFS_SQL)).scalar()
        if orphan is not None:
            self._fail(
                "index_mismatch", None, "the record index names an event that does not exist",
                str(orphan),
            )  # fmt: skip

    def _start(self, from_seq: int | None) -> bytes:
        """Set where the walk starts; the hash that precedes it."""
        prunes = AUDIT.prunes
        mark = self.conn.execute(select(prunes).order_by(prunes.c.upto_seq.desc()).limit(1)).first()
        base, prev = 0, GENESIS
        if mark is not None:
            base, prev = mark.upto_seq, mark.head_hash
            if not _prune_signature_ok(mark, self.keys):
                self._fail("bad_signature", base, f"the prune record at {base} has a bad signature")
        self.prune_mark = (base, prev)
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

    def _witness_before_start(self) -> int:
        """The witness's tree size; a witness before the walk's start is checked here."""
        witness = self.witness
        if witness is None:
            return -1
        size = witness.tree_size
        if size >= self.expected:
            return size
        base, base_hash = self.prune_mark
        if size == base:
            stored: bytes | None = base_hash
        elif size < base:
            raise Conflict(
                f"the chain was pruned up to {base}, past the witness's tree size {size}; "
                "it cannot be checked against it"
            )
        else:
            stored = self.conn.execute(
                select(AUDIT.chain.c.hash).where(AUDIT.chain.c.seq == size)
            ).scalar_one_or_none()
        if stored is None:
            self._fail("missing", size, f"entry {size} is missing")
        if stored != witness.head_hash:
            self._witness_mismatch(size)
        return -1

    def _check_witness(self, digest: bytes) -> None:
        assert self.witness is not None
        if digest != self.witness.head_hash:
            self._witness_mismatch(self.witness.tree_size)

    def _witness_mismatch(self, size: int) -> NoReturn:
        self._fail(
            "checkpoint_mismatch",
            size,
            f"the chain up to {size} differs from the witness's checkpoint (rewritten)",
        )

    def _broken_link(self, seq: int, link: bytes, prev_prev: bytes | None) -> None:
        if prev_prev is not None and link == prev_prev:
            self._fail("inserted", seq - 1, f"entry {seq - 1} was inserted: {seq} links past it")
        other = self.conn.execute(
            select(AUDIT.chain.c.seq).where(AUDIT.chain.c.hash == link).limit(1)
        ).scalar()
        if other is not None:
            self._fail("reordered", seq, f"entry {seq} was chained after the entry now at {other}")
        self._fail("missing", seq, f"entry {seq} does not follow {seq - 1}: entries were removed")

    def _check_redaction(
        self,
        seq: int,
        event_id: str,
        redaction_event_id: str,
        original_hash: bytes,
        payload: str,
    ) -> None:
        """A redacted payload must be the one a chained `audit.redact` event announced."""
        events, chain = AUDIT.events, AUDIT.chain
        row = self.conn.execute(
            select(chain.c.seq, chain.c.payload_hash, events.c.action, events.c.payload)
            .select_from(events.join(chain, chain.c.event_id == events.c.id))
            .where(events.c.id == redaction_event_id)
        ).first()
        problem = None
        if row is None or row.seq <= seq or row.action != REDACT_ACTION:
            problem = "no later chained audit.redact event authorises it"
        elif hashlib.sha256(row.payload.encode()).digest() != row.payload_hash:
            problem = "the audit.redact event that authorises it was changed"
        else:
            announced = redaction_announcement(row.payload)
            current = hashlib.sha256(payload.encode()).hexdigest()
            if announced != (event_id, original_hash.hex(), current):
                problem = "it is not the payload its audit.redact event announced"
        if problem is not None:
            self._fail(
                "modified", seq, f"the event's payload was redacted, but {problem}", event_id
            )

    def _check_checkpoint(self, size: int, checkpoint: Checkpoint | None, digest: bytes) -> None:
        if checkpoint is None:
            self._fail("bad_signature", size, f"checkpoint {size} is malformed")
        if not checkpoint.signed_by(self.keys):
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


_NONE: Any = object()  # "no checkpoint at this size", unlike None ("a malformed one")


def _prune_signature_ok(mark: Any, keys: Mapping[bytes, Ed25519PublicKey]) -> bool:
    try:
        public = keys.get(bytes.fromhex(mark.key_id))
        body = prune_body(mark.origin, mark.upto_seq, mark.head_hash, mark.pruned_at, mark.cutoff)
    except (TypeError, ValueError):
        return False
    if public is None:
        return False
    try:
        public.verify(mark.signature, body)
    except InvalidSignature:
        return False
    return True
