"""`DuplicateService`: what the API and the CLI call for duplicate detection.

- `find`: the likely duplicates of one record (`quality.duplicates`);
- `scan` / `scan_page`: walk a region to fill the review queue (`quality.scan`);
- `pairs`: the queue, only pairs whose two records the caller may read and list,
  scored and ranked on the fields it may read;
- `dismiss`: close an open pair as "not the same person".

Every step runs on the record pipeline (route, authorize, decrypt with the
caller's mask, one transaction in the region's database, audit in it).

How the API scans: `POST /v1/duplicates/scans` runs `scan_page` synchronously in
the request's worker thread, over at most `SCAN_PAGE_MAX` records (default
`SCAN_PAGE_DEFAULT`), and answers where it stopped as a sealed cursor; the client
posts again with it until `next_cursor` is null. A scan is idempotent and
resumable, holds one batch in memory and one transaction at a time, so a bounded
request suits it better than a job queue: no job state to keep, nothing to cancel,
and the caller sees progress. `bastion dedup scan` runs the same loop to the end.
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import ColumnElement, select

from bastion.crm.access import Access
from bastion.crm.catalog import EntitySpec
from bastion.crm.cursors import CursorCodec, Position
from bastion.crm.pipeline import Pipeline
from bastion.crm.repository import live
from bastion.crm.tables import ENTITY_TABLES
from bastion.errors import Conflict, FieldError, Forbidden, NotFound, ValidationFailed
from bastion.principals.caller import Caller
from bastion.quality import duplicates, queue
from bastion.quality.duplicates import DEDUP_ENTITIES, Match, dedup_spec
from bastion.quality.scan import ScanProgress, scan
from bastion.residency.databases import Regions
from bastion.residency.ids import InvalidId, RecordId

SCAN_PAGE_DEFAULT = 1000
SCAN_PAGE_MAX = 5000
_GONE = "a record of the pair changed meanwhile; retry"
_NO_PAIR = "no duplicate pair has that id in your regions"


class DuplicateService:
    def __init__(self, *, pipeline: Pipeline, regions: Regions, cursors: CursorCodec) -> None:
        self._pipeline = pipeline
        self._regions = regions
        self._cursors = cursors

    def find(self, caller: Caller, entity: str, record_id: str, *, min_score: float) -> list[Match]:
        """The likely duplicates of a record, best first (see `quality.duplicates.find`)."""
        return duplicates.find(self._pipeline, caller, entity, record_id, min_score=min_score)

    def scan(
        self,
        caller: Caller,
        entity: str,
        region: str,
        *,
        after: str | None = None,
        limit: int = SCAN_PAGE_DEFAULT,
    ) -> ScanProgress:
        """Scan up to `limit` records after id `after` (None: from the start)."""
        spec = dedup_spec(entity)
        return scan(
            self._pipeline, caller, spec, self._region(caller, region), after=after, limit=limit
        )

    def scan_page(
        self, caller: Caller, entity: str, region: str, *, cursor: str | None, limit: int
    ) -> dict[str, Any]:
        """One bounded step of a scan for the API, resumed from a sealed `cursor`."""
        fingerprint = json.dumps(["duplicates.scan", entity, region], separators=(",", ":"))
        after = None if cursor is None else self._cursors.open(fingerprint, cursor).id
        progress = self.scan(caller, entity, region, after=after, limit=limit)
        return {
            "entity": progress.entity,
            "region": progress.region,
            "scanned": progress.scanned,
            "pairs": progress.pairs,
            "next_cursor": None
            if progress.after is None
            else self._cursors.seal(fingerprint, Position(None, progress.after)),
        }

    def pairs(
        self,
        caller: Caller,
        entity: str,
        region: str,
        *,
        status: str,
        limit: int,
        cursor: str | None,
    ) -> dict[str, Any]:
        """A page of the queue, best score first: pairs whose two records are both live
        and inside the caller's read and list scopes (403 without both), scoring at
        least `queue.QUEUE_MIN_SCORE` on the fields it may read; score and reasons as
        `queue.visible_pair` shows them. Audited as a list of those records
        (`duplicates.list`)."""
        spec = dedup_spec(entity)
        region = self._region(caller, region)
        if status not in queue.STATUSES:
            raise ValidationFailed(
                "invalid request",
                [FieldError("status", f"must be one of {', '.join(queue.STATUSES)}")],
            )
        pipeline = self._pipeline
        access = pipeline.access(caller.principal)
        fingerprint = json.dumps(["duplicates", entity, region, status], separators=(",", ":"))
        after = None
        if cursor is not None:
            position = self._cursors.open(fingerprint, cursor)
            if not isinstance(position.value, int | float):
                raise ValidationFailed("invalid cursor", [FieldError("cursor", "is not ours")])
            after = (float(position.value), position.id)
        with pipeline.denials(caller, access, region, spec, "list"):
            visible = _visible(access, region, spec)
        table = ENTITY_TABLES[spec.name]
        readable = access.mask(region, spec, "read").always
        with pipeline.write(pipeline.database(region), _GONE) as conn:
            ranked = queue.page_of_pairs(
                conn,
                entity=spec.name,
                status=status,
                visible=select(table.c.id).where(*visible),
                readable=readable,
                after=after,
                limit=limit + 1,
            )
            shown = [row for row, _ in ranked[:limit]]
            ids = list(dict.fromkeys(i for r in shown for i in (r.record_id, r.candidate_id)))
            event = pipeline.recorder.event(
                caller,
                access.policy.version,
                action="duplicates.list",
                entity=spec.name,
                record_ids=ids,
                details={"count": len(shown)},
            )
            pipeline.recorder.append(conn, region, event)
        next_cursor = None
        if len(ranked) > limit:
            last, last_score = ranked[limit - 1]
            next_cursor = self._cursors.seal(fingerprint, Position(last_score, last.id))
        return {
            "data": [queue.visible_pair(r, readable) for r in shown],
            "next_cursor": next_cursor,
        }

    def dismiss(self, caller: Caller, pair_id: str) -> dict[str, Any]:
        """Close an open pair as not a duplicate. 404 unless both records are live and
        the caller may read and list them (as `pairs` shows it); 403 without `merge`,
        `read` or `list` on the entity; 409 if it is no longer open."""
        pipeline = self._pipeline
        try:
            rid = RecordId.parse(pair_id)
        except InvalidId:
            raise NotFound(_NO_PAIR) from None
        principal = caller.principal
        if (
            rid.prefix != queue.PAIR_PREFIX
            or rid.region not in self._regions
            or rid.region not in principal.regions
        ):
            raise NotFound(_NO_PAIR)
        access = pipeline.access(principal)
        # Whoever may merge nothing there learns nothing, not even that the pair exists.
        if not any(
            access.policy.scope(principal.roles, rid.region, entity, "merge").permits_any
            for entity in DEDUP_ENTITIES
        ):
            raise Forbidden(f"your roles do not allow merge in region {rid.region}")
        database = pipeline.database(rid.region)
        with database.transaction() as conn:
            found = queue.fetch_pair(conn, pair_id)
        if found is None:
            raise NotFound(_NO_PAIR)
        spec = dedup_spec(found.entity)
        with pipeline.denials(caller, access, rid.region, spec, "merge", (pair_id,)):
            access.require(rid.region, spec, "merge")
            visible = _visible(access, rid.region, spec)
            table = ENTITY_TABLES[spec.name]
            ids = [found.record_id, found.candidate_id]
            with pipeline.write(database, _GONE) as conn:
                query = select(table.c.id).where(table.c.id.in_(ids), *visible)
                if len(conn.execute(query).all()) != 2:
                    raise NotFound(_NO_PAIR)
                now = pipeline.now()
                if not queue.dismiss_pair(conn, pair_id, by=principal.id, at=now):
                    raise Conflict("the pair is no longer open (dismissed or merged)")
                event = pipeline.recorder.event(
                    caller,
                    access.policy.version,
                    action="duplicates.dismiss",
                    entity=spec.name,
                    record_ids=[pair_id, *ids],
                )
                pipeline.recorder.append(conn, rid.region, event)
                row = queue.fetch_pair(conn, pair_id)
                assert row is not None
                return queue.visible_pair(row, access.mask(rid.region, spec, "read").always)

    def _region(self, caller: Caller, region: object) -> str:
        """A region the caller may work in: 422 if it is not a configured one, 403 if
        it is not among the caller's."""
        if not isinstance(region, str) or region not in self._regions:
            raise ValidationFailed(
                "unknown region", [FieldError("region", "must be one of the configured regions")]
            )
        if region not in caller.principal.regions:
            raise Forbidden(f"you may not access region {region}")
        return region


def _visible(access: Access, region: str, spec: EntitySpec) -> list[ColumnElement[bool]]:
    """The WHERE conditions of the records whose pairs the caller may see in `region`:
    live, inside its read scope and inside its list scope (the queue lists records by
    similarity, so it must not reach one the caller could read by id but not list).
    403 without `read` or without `list` on the entity."""
    table = ENTITY_TABLES[spec.name]
    conditions = live(table)
    for action in ("read", "list"):
        where = access.where(spec, access.require(region, spec, action))
        if where is not None:
            conditions.append(where)
    return conditions
