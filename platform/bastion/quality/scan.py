"""Scanning a region for duplicates, to fill the review queue.

A scan walks one entity's live records in one region in id order (keyset, one
transaction per batch of at most `BATCH` records, so memory and lock time stay
bounded whatever the table's size), finds each record's candidates with a greater
id (`quality.duplicates.matches`, the same blocking and scoring as the one-record
search, so each pair is met once) and upserts the pairs scoring at least
`QUEUE_MIN_SCORE` (`quality.queue.upsert_pair`).

It runs as a principal: it needs `merge` on the entity in the region (the queue
exists to prepare merges), `read` and `list` (it walks the region's records), and
sees only what that principal's read and list scopes and field mask allow. `scan`
stops after `limit` records and returns where it stopped; the next call resumes from
there (`after`), so a crashed or interrupted scan loses at most one batch, and
re-scanning is harmless.

Each batch appends, in its transaction, `duplicates.scan` audit events naming every
record it decrypted: the records scanned and every candidate of theirs, queued or
not (at most `MAX_RECORD_IDS` ids an event), with counts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import select

from bastion.audit.events import MAX_RECORD_IDS
from bastion.crm.access import Access
from bastion.crm.catalog import EntitySpec
from bastion.crm.pipeline import Pipeline
from bastion.crm.repository import live
from bastion.crm.tables import ENTITY_TABLES
from bastion.policy.compiled import RowScope
from bastion.principals.caller import Caller
from bastion.quality.duplicates import candidate_rows, matches
from bastion.quality.queue import QUEUE_MIN_SCORE, upsert_pair

BATCH = 200
_GONE = "a record changed while the scan ran; scan again"


@dataclass(frozen=True, slots=True)
class ScanProgress:
    """What one `scan` call did, and where the next one resumes (None: done)."""

    entity: str
    region: str
    scanned: int
    pairs: int
    after: str | None


def scan(
    pipeline: Pipeline,
    caller: Caller,
    spec: EntitySpec,
    region: str,
    *,
    after: str | None = None,
    limit: int = BATCH,
) -> ScanProgress:
    """Scan up to `limit` records of `spec` after id `after` in `region` (a region of
    the caller's, checked by the caller of this function); see the module docstring.
    403 without `merge`, `read` and `list` on the entity there."""
    access = pipeline.access(caller.principal)
    with pipeline.denials(caller, access, region, spec, "merge"):
        access.require(region, spec, "merge")
        scopes = (access.require(region, spec, "read"), access.require(region, spec, "list"))
    scanned = pairs = 0
    cursor = after
    while scanned < limit:
        batch = min(BATCH, limit - scanned)
        rows, found = _scan_batch(pipeline, caller, access, spec, region, scopes, cursor, batch)
        scanned += len(rows)
        pairs += found
        if len(rows) < batch:
            return ScanProgress(spec.name, region, scanned, pairs, None)
        cursor = str(rows[-1]["id"])
    return ScanProgress(spec.name, region, scanned, pairs, cursor)


def _scan_batch(
    pipeline: Pipeline,
    caller: Caller,
    access: Access,
    spec: EntitySpec,
    region: str,
    scopes: tuple[RowScope, RowScope],
    after: str | None,
    batch: int,
) -> tuple[list[dict[str, Any]], int]:
    """One transaction: up to `batch` records after `after`, their pairs queued and
    what was decrypted audited. Returns (the records scanned, the pairs queued)."""
    table = ENTITY_TABLES[spec.name]
    query = select(table).where(*live(table))
    for scope in scopes:
        where = access.where(spec, scope)
        if where is not None:
            query = query.where(where)
    if after is not None:
        query = query.where(table.c.id > after)
    with pipeline.write(pipeline.database(region), _GONE) as conn:
        rows = [dict(r._mapping) for r in conn.execute(query.order_by(table.c.id).limit(batch))]
        now = pipeline.now()
        pairs = 0
        decrypted: dict[str, None] = {}  # every id shown, in order, once each
        for stored in rows:
            record = pipeline.show(conn, access, region, spec, stored)
            candidates = candidate_rows(conn, access, spec, region, scopes, stored, later_only=True)
            decrypted.update(
                dict.fromkeys([str(stored["id"]), *(str(c["id"]) for c in candidates)])
            )
            found = matches(
                pipeline, conn, access, spec, region, record, candidates, min_score=QUEUE_MIN_SCORE
            )
            for match in found:
                ids = (str(stored["id"]), str(match.record["id"]))
                upsert_pair(
                    conn,
                    region=region,
                    entity=spec.name,
                    ids=ids,
                    value=match.score,
                    reasons=match.reasons,
                    now=now,
                )
            pairs += len(found)
        names = list(decrypted)
        for start in range(0, max(len(names), 1), MAX_RECORD_IDS):
            event = pipeline.recorder.event(
                caller,
                access.policy.version,
                action="duplicates.scan",
                entity=spec.name,
                record_ids=names[start : start + MAX_RECORD_IDS],
                details={"scanned": len(rows), "pairs": pairs},
            )
            pipeline.recorder.append(conn, region, event)
    return rows, pairs
