"""Retention pruning and payload redaction: the only ways audit evidence ever changes.

**Pruning** removes whole segments: every entry up to the newest checkpoint
created before the retention cutoff (so every removed event is older than the
retention period). In one transaction under the chain's lock it

1. checks that checkpoint again (`plan_prune`): the row is well-formed, signed
   by one of the chain's keys, its signed time is before the cutoff and its head
   hash is the chain's hash at its tree size — the application role may insert
   checkpoint rows, so an unsigned or back-dated one must not decide what goes;
2. inserts a prune record — `upto_seq`, that checkpoint's head hash, the cutoff,
   signed like a checkpoint (with a `pruned-before` line): verification restarts
   from it, and nobody without the signing key can forge one;
3. deletes the record index rows, events and chain entries with `seq <= upto_seq`;
4. appends an `audit.prune` event to the same chain.

The delete-rejecting triggers allow step 3 and nothing else: they let a DELETE
through only for entries at or below the highest `upto_seq` in `audit_prunes`,
a table that itself rejects UPDATE and DELETE. The application role has neither
DELETE on these tables nor INSERT on `audit_prunes`, so pruning runs as the
schema owner (`bastion audit prune`). A prune record inserted by someone without
the key fails verification (`bad_signature` at its `upto_seq`).

**Redaction** replaces an event's payload (record ids → given pseudonyms, client
address and details dropped; field names and reason kept) after, say, an
erasure. The entry's payload hash stays in `audit_chain`, so the chain still
verifies. In one transaction under the chain's lock, the redaction is first an
`audit.redact` event naming the event and, in its details, the SHA-256 of the
original and of the redacted payload (`original_sha256`, `redacted_sha256`,
hex); that event is chained at once, then `audit_redactions` records who
redacted and why, the payload is replaced and the record index follows it. On
PostgreSQL the last three steps are the database function `audit_redact_event`
(see `bastion.audit.ddl`), the only way the application role may change an
event. `verify` accepts a changed payload only with such a chained event whose
hashes match the chain entry and the current payload, so a payload changes once,
visibly, to what the chain says. An `audit.redact` event is never redacted itself.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import Connection, delete, func, insert, select, text, update

from bastion.audit.chain import append, chain_batch, lock_chain
from bastion.audit.checkpoints import checkpoint_from_row, prune_body
from bastion.audit.encoding import payload_bytes, sha256
from bastion.audit.events import CODE_RE, AuditEvent, InvalidAuditEvent
from bastion.audit.keys import SigningKey
from bastion.audit.tables import AUDIT
from bastion.clock import Clock
from bastion.errors import Conflict, NotFound

PSEUDONYM_RE = re.compile(r"psn_[0-9a-hjkmnp-tv-z]{26}")
REDACT_ACTION = "audit.redact"


@dataclass(frozen=True, slots=True)
class PrunePlan:
    """What pruning removes: entries 1.. `upto_seq` (None: nothing is old enough)."""

    chain: str
    cutoff: datetime
    upto_seq: int | None
    entries: int
    already_pruned_to: int


def plan_prune(
    conn: Connection, chain: str, cutoff: datetime, verifiers: Mapping[bytes, Ed25519PublicKey]
) -> PrunePlan:
    """What pruning before `cutoff` would remove, by the newest checkpoint older than it.

    Raises `Conflict` when that checkpoint is not one to trust (see the module
    docstring, step 1): pruning by it could destroy evidence.
    """
    checkpoints, chain_table = AUDIT.checkpoints, AUDIT.chain
    mark = conn.execute(select(func.max(AUDIT.prunes.c.upto_seq))).scalar() or 0
    target = conn.execute(
        select(func.max(checkpoints.c.tree_size)).where(
            checkpoints.c.created_at < cutoff, checkpoints.c.tree_size > mark
        )
    ).scalar()
    if target is None:
        return PrunePlan(chain, cutoff, None, 0, mark)
    _check_prune_point(conn, int(target), cutoff, verifiers)
    entries = conn.execute(
        select(func.count()).select_from(chain_table).where(chain_table.c.seq <= target)
    ).scalar_one()
    return PrunePlan(chain, cutoff, int(target), int(entries), mark)


def _check_prune_point(
    conn: Connection, size: int, cutoff: datetime, verifiers: Mapping[bytes, Ed25519PublicKey]
) -> bytes:
    """The head hash of the checkpoint at `size` if it may decide a prune; else `Conflict`."""
    row = conn.execute(
        select(AUDIT.checkpoints).where(AUDIT.checkpoints.c.tree_size == size)
    ).first()
    checkpoint = checkpoint_from_row(row) if row is not None else None
    refuse = f"the checkpoint at tree size {size} "
    if checkpoint is None or not checkpoint.signed_by(verifiers):
        raise Conflict(refuse + "is not signed by this chain's key; not pruning")
    if checkpoint.created_at >= cutoff:
        raise Conflict(refuse + "is not older than the retention period; not pruning")
    stored = conn.execute(
        select(AUDIT.chain.c.hash).where(AUDIT.chain.c.seq == size)
    ).scalar_one_or_none()
    if stored != checkpoint.head_hash:
        raise Conflict(refuse + "does not match the chain; not pruning")
    return checkpoint.head_hash


def prune(
    conn: Connection,
    plan: PrunePlan,
    key: SigningKey,
    verifiers: Mapping[bytes, Ed25519PublicKey],
    clock: Clock,
    *,
    actor: str,
) -> AuditEvent | None:
    """Carry out `plan`; the caller holds the chain's lock and has verified the chain.

    The checkpoint the plan prunes to is checked again here, in this transaction
    (`Conflict` if it does not hold up).
    """
    if plan.upto_seq is None:
        return None
    head_hash = _check_prune_point(conn, plan.upto_seq, plan.cutoff, verifiers)
    now = clock.now()
    body = prune_body(key.name, plan.upto_seq, head_hash, now, plan.cutoff)
    conn.execute(
        insert(AUDIT.prunes).values(
            upto_seq=plan.upto_seq,
            origin=key.name,
            head_hash=head_hash,
            cutoff=plan.cutoff,
            pruned_at=now,
            actor=actor,
            key_id=key.key_id.hex(),
            signature=key.sign(body),
        )
    )
    pruned = select(AUDIT.chain.c.event_id).where(AUDIT.chain.c.seq <= plan.upto_seq)
    conn.execute(delete(AUDIT.record_refs).where(AUDIT.record_refs.c.event_id.in_(pruned)))
    conn.execute(delete(AUDIT.events).where(AUDIT.events.c.id.in_(pruned)))
    conn.execute(delete(AUDIT.chain).where(AUDIT.chain.c.seq <= plan.upto_seq))
    event = AuditEvent.new(
        clock,
        actor=actor,
        action="audit.prune",
        entity="audit",
        details={"upto_seq": plan.upto_seq, "entries": plan.entries},
    )
    append(conn, event)
    return event


def redact(
    conn: Connection,
    clock: Clock,
    chain: str,
    event_id: str,
    *,
    actor: str,
    reason: str,
    pseudonyms: Mapping[str, str],
    batch_size: int = 5000,
) -> AuditEvent:
    """Redact a chained event's payload in `conn`'s transaction; the `audit.redact` event.

    `conn`'s database holds `chain`; this takes the chain's lock and chains what is
    pending. `pseudonyms` maps record ids of the event to `psn_…` pseudonyms; ids
    not in it are kept. Raises `NotFound` (no such event), `Conflict` (already
    redacted, an `audit.redact` event, or a payload that is not the chained one)
    or `InvalidAuditEvent` (a malformed pseudonym or reason).
    """
    if CODE_RE.fullmatch(reason) is None:
        raise InvalidAuditEvent("reason", "a code (lower case, no spaces)")
    for pseudonym in pseudonyms.values():
        if PSEUDONYM_RE.fullmatch(pseudonym) is None:
            raise InvalidAuditEvent("pseudonyms", "psn_ and 26 base32 characters")
    lock_chain(conn, chain, wait=True)
    _chain_pending(conn, chain, batch_size)  # the event must be chained to be redacted
    events, chain_table = AUDIT.events, AUDIT.chain
    row = conn.execute(
        select(events.c.payload, events.c.occurred_at, events.c.action, chain_table.c.payload_hash)
        .select_from(events.join(chain_table, chain_table.c.event_id == events.c.id))
        .where(events.c.id == event_id)
    ).first()
    if row is None:
        raise NotFound("no chained audit event has this id")
    if row.action == REDACT_ACTION:
        raise Conflict("an audit.redact event is the record of a redaction; it is never redacted")
    already = conn.execute(
        select(AUDIT.redactions.c.event_id).where(AUDIT.redactions.c.event_id == event_id)
    ).first()
    if already is not None:
        raise Conflict("this audit event is already redacted")
    old = _payload_fields(row.payload)
    if old is None or sha256(row.payload.encode()) != row.payload_hash:
        raise Conflict("this audit event's payload is not the chained one; run verify")
    record_ids = [pseudonyms.get(rid, rid) for rid in old["record_ids"]]
    replaced = [rid for rid in old["record_ids"] if rid in pseudonyms]
    new_payload = payload_bytes(
        record_ids=list(dict.fromkeys(record_ids)),
        fields=old["fields"],
        client_address=None,
        reason=old["reason"],
        details={},
    ).decode()
    redaction = AuditEvent.new(
        clock,
        actor=actor,
        action=REDACT_ACTION,
        entity="audit",
        record_ids=[event_id],
        reason=reason,
        details={
            "pseudonymised": len(replaced),
            "original_sha256": row.payload_hash.hex(),
            "redacted_sha256": sha256(new_payload.encode()).hex(),
        },
    )
    append(conn, redaction)
    # Chained before the payload changes: what authorises the change is in the chain.
    _chain_pending(conn, chain, batch_size)
    if conn.dialect.name == "postgresql":
        conn.execute(
            text("SELECT public.audit_redact_event(:redaction, :payload)"),
            {"redaction": redaction.id, "payload": new_payload},
        )
    else:
        _apply(conn, redaction, event_id, row.occurred_at, row.payload_hash, new_payload)
    return redaction


def _chain_pending(conn: Connection, chain: str, batch_size: int) -> None:
    while chain_batch(conn, chain, batch_size) == batch_size:
        pass


def _payload_fields(payload: str) -> dict[str, Any] | None:
    """The canonical payload's fields, or None when it is not one."""
    try:
        parsed = json.loads(payload)
    except ValueError:
        return None
    if not isinstance(parsed, dict) or not isinstance(parsed.get("record_ids"), list):
        return None
    if not isinstance(parsed.get("fields"), list) or "reason" not in parsed:
        return None
    return parsed


def _apply(
    conn: Connection,
    redaction: AuditEvent,
    event_id: str,
    occurred_at: datetime,
    original_hash: bytes,
    new_payload: str,
) -> None:
    """SQLite's `audit_redact_event`: record the redaction, replace the payload, re-index."""
    conn.execute(
        insert(AUDIT.redactions).values(
            event_id=event_id,
            redaction_event_id=redaction.id,
            original_payload_hash=original_hash,
            redacted_payload_hash=sha256(new_payload.encode()),
            redacted_at=redaction.occurred_at,
            actor=redaction.actor,
            reason=redaction.reason or "",
        )
    )
    events, refs = AUDIT.events, AUDIT.record_refs
    conn.execute(update(events).where(events.c.id == event_id).values(payload=new_payload))
    named = json.loads(new_payload)["record_ids"]
    conn.execute(delete(refs).where(refs.c.event_id == event_id, refs.c.record_id.not_in(named)))
    present = set(
        conn.execute(select(refs.c.record_id).where(refs.c.event_id == event_id)).scalars()
    )
    added = [rid for rid in named if rid not in present]
    if added:
        conn.execute(
            insert(refs),
            [{"record_id": rid, "occurred_at": occurred_at, "event_id": event_id} for rid in added],
        )
