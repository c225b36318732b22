"""Retention pruning and payload redaction: the only ways audit evidence ever changes.

**Pruning** removes whole segments: every entry up to the newest checkpoint
created before the retention cutoff (so every removed event is older than the
retention period). In one transaction under the chain's lock it

1. inserts a prune record — `upto_seq`, that checkpoint's head hash, the cutoff,
   signed like a checkpoint (with a `pruned-before` line): verification restarts
   from it, and nobody without the signing key can forge one;
2. deletes the record index rows, events and chain entries with `seq <= upto_seq`;
3. appends an `audit.prune` event to the same chain.

The delete-rejecting triggers allow step 2 and nothing else: they let a DELETE
through only for entries at or below the highest `upto_seq` in `audit_prunes`,
a table that itself rejects UPDATE and DELETE. The application role has no
DELETE on these tables at all, so pruning runs as the schema owner (`bastion
audit prune`). A prune record inserted by someone without the key fails
verification (`bad_signature` at its `upto_seq`).

**Redaction** replaces an event's payload (record ids → given pseudonyms, client
address and details dropped; field names and reason kept) after, say, an
erasure. The entry's payload hash stays in `audit_chain`, so the chain still
verifies; `audit_redactions` records the original payload hash, who redacted and
why, and the redaction is itself an `audit.redact` event in the chain. The
triggers allow an UPDATE of `audit_events.payload` (nothing else) only once that
record exists.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, delete, func, insert, select, update

from bastion.audit.chain import append
from bastion.audit.checkpoints import Checkpoint, prune_body
from bastion.audit.encoding import payload_bytes
from bastion.audit.events import CODE_RE, AuditEvent, InvalidAuditEvent
from bastion.audit.keys import SigningKey
from bastion.audit.tables import AUDIT
from bastion.clock import Clock
from bastion.errors import Conflict, NotFound

PSEUDONYM_RE = re.compile(r"psn_[0-9a-hjkmnp-tv-z]{26}")


@dataclass(frozen=True, slots=True)
class PrunePlan:
    """What pruning removes: entries 1.. `upto_seq` (None: nothing is old enough)."""

    chain: str
    cutoff: datetime
    upto_seq: int | None
    entries: int
    already_pruned_to: int


def plan_prune(conn: Connection, chain: str, cutoff: datetime) -> PrunePlan:
    checkpoints, chain_table = AUDIT.checkpoints, AUDIT.chain
    mark = conn.execute(select(func.max(AUDIT.prunes.c.upto_seq))).scalar() or 0
    target = conn.execute(
        select(func.max(checkpoints.c.tree_size)).where(
            checkpoints.c.created_at < cutoff, checkpoints.c.tree_size > mark
        )
    ).scalar()
    if target is None:
        return PrunePlan(chain, cutoff, None, 0, mark)
    entries = conn.execute(
        select(func.count()).select_from(chain_table).where(chain_table.c.seq <= target)
    ).scalar_one()
    return PrunePlan(chain, cutoff, int(target), int(entries), mark)


def prune(
    conn: Connection, plan: PrunePlan, key: SigningKey, clock: Clock, *, actor: str
) -> AuditEvent | None:
    """Carry out `plan` (the caller holds the chain's lock and has verified the chain)."""
    if plan.upto_seq is None:
        return None
    checkpoint_row = conn.execute(
        select(AUDIT.checkpoints).where(AUDIT.checkpoints.c.tree_size == plan.upto_seq)
    ).one()
    checkpoint = Checkpoint.from_row(checkpoint_row)
    now = clock.now()
    body = prune_body(key.name, plan.upto_seq, checkpoint.head_hash, now, plan.cutoff)
    conn.execute(
        insert(AUDIT.prunes).values(
            upto_seq=plan.upto_seq,
            origin=key.name,
            head_hash=checkpoint.head_hash,
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
    event_id: str,
    *,
    actor: str,
    reason: str,
    pseudonyms: Mapping[str, str],
) -> AuditEvent:
    """Redact a chained event's payload in `conn`'s transaction; the `audit.redact` event.

    `pseudonyms` maps record ids of the event to `psn_…` pseudonyms; ids not in
    it are kept. Raises `NotFound` (no such chained event), `Conflict` (already
    redacted) or `InvalidAuditEvent` (a malformed pseudonym or reason).
    """
    if CODE_RE.fullmatch(reason) is None:
        raise InvalidAuditEvent("reason", "a code (lower case, no spaces)")
    for pseudonym in pseudonyms.values():
        if PSEUDONYM_RE.fullmatch(pseudonym) is None:
            raise InvalidAuditEvent("pseudonyms", "psn_ and 26 base32 characters")
    events, chain = AUDIT.events, AUDIT.chain
    row = conn.execute(
        select(events.c.payload, events.c.occurred_at, chain.c.payload_hash)
        .select_from(events.join(chain, chain.c.event_id == events.c.id))
        .where(events.c.id == event_id)
    ).first()
    if row is None:
        raise NotFound("no chained audit event has this id")
    already = conn.execute(
        select(AUDIT.redactions.c.event_id).where(AUDIT.redactions.c.event_id == event_id)
    ).first()
    if already is not None:
        raise Conflict("this audit event is already redacted")
    old = json.loads(row.payload)
    record_ids = [pseudonyms.get(rid, rid) for rid in old["record_ids"]]
    replaced = [rid for rid in old["record_ids"] if rid in pseudonyms]
    redaction = AuditEvent.new(
        clock,
        actor=actor,
        action="audit.redact",
        entity="audit",
        record_ids=[event_id],
        reason=reason,
        details={"pseudonymised": len(replaced)},
    )
    append(conn, redaction)
    conn.execute(
        insert(AUDIT.redactions).values(
            event_id=event_id,
            redaction_event_id=redaction.id,
            original_payload_hash=row.payload_hash,
            redacted_at=redaction.occurred_at,
            actor=actor,
            reason=reason,
        )
    )
    new_payload = payload_bytes(
        record_ids=list(dict.fromkeys(record_ids)),
        fields=old["fields"],
        client_address=None,
        reason=old["reason"],
        details={},
    )
    conn.execute(update(events).where(events.c.id == event_id).values(payload=new_payload.decode()))
    if replaced:
        refs = AUDIT.record_refs
        conn.execute(
            delete(refs).where(refs.c.event_id == event_id, refs.c.record_id.in_(replaced))
        )
        kept = set(old["record_ids"]) - set(replaced)
        added = [p for p in dict.fromkeys(pseudonyms[rid] for rid in replaced) if p not in kept]
        if added:
            conn.execute(
                insert(refs),
                [
                    {"record_id": p, "occurred_at": row.occurred_at, "event_id": event_id}
                    for p in added
                ],
            )
    return redaction
