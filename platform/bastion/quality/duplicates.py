"""Duplicate candidates of a person, found on blind indexes and confirmed by decrypting.

Candidates of a stored contact or lead are the records of the same entity, in the
same region's database, inside both the caller's *read* and *list* scopes (WHERE
clauses: a search by similarity lists records, so it must not reach one the caller
could not list), that share one of its blocking keys: the blind index of its email,
phone or mobile, or the phonetic index of its last name (`quality.phonetic`). At
most `CANDIDATE_CAP` are fetched, in id order (`candidate_rows`). Only keys of
fields the caller may read in every record of the region take part: finding a
candidate through a field it cannot read would tell it that the hidden values
collide.

Each candidate is then decrypted with the caller's field mask (`Pipeline.show`) and
scored on what that left (`matches`, `quality.scoring`): a truncated index lets
unrelated rows through, and they score nothing on the field that brought them. Used
by `GET /v1/{contacts,leads}/{id}/duplicates` (`find`) and by the scan that fills the
review queue (`quality.scan`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, or_, select

from bastion.crm.access import Access
from bastion.crm.catalog import EntitySpec
from bastion.crm.pipeline import MergedRecord, Pipeline, entity_spec, not_found
from bastion.crm.records import Record
from bastion.crm.repository import live
from bastion.crm.tables import ENTITY_TABLES
from bastion.errors import FieldError, NotFound, ResidencyViolation, ValidationFailed
from bastion.policy.compiled import RowScope
from bastion.principals.caller import Caller
from bastion.quality.scoring import IDENTIFIERS, Reason, compare, score

# The entities whose records are people that can be duplicated (and merged).
DEDUP_ENTITIES = ("contacts", "leads")
CANDIDATE_CAP = 200
DEFAULT_MIN_SCORE = 0.7
_GONE = "the record changed while its duplicates were searched; retry"


@dataclass(frozen=True, slots=True)
class Match:
    """A candidate that scored: the record as the caller may see it, and why."""

    record: Record
    score: float
    reasons: tuple[Reason, ...]

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.record["id"],
            "score": self.score,
            "reasons": [r.as_json() for r in self.reasons],
            "record": self.record,
        }


def dedup_spec(entity: str) -> EntitySpec:
    """The spec of an entity duplicates are looked for in (422 for any other)."""
    if entity not in DEDUP_ENTITIES:
        raise ValidationFailed(
            "duplicates are found among contacts and leads only",
            [FieldError("entity", f"must be one of {', '.join(DEDUP_ENTITIES)}")],
        )
    return entity_spec(entity)


def find(
    pipeline: Pipeline, caller: Caller, entity: str, record_id: str, *, min_score: float
) -> list[Match]:
    """The likely duplicates of one record the caller may read, best first.

    404 as `GET` answers when the record does not exist for the caller (another
    region, outside its read scope, not a contact or lead id), and for a merge's
    tombstone; 410 for an erased person's shell; 403 without `list` on the entity
    in the record's region. Audited as a read (`record.duplicates`) of the record
    and of every candidate returned.
    """
    if entity not in DEDUP_ENTITIES:
        raise NotFound(f"there are no duplicates of {entity} to look for")
    spec = entity_spec(entity)
    rid = pipeline.route(caller.principal, spec, record_id)
    access = pipeline.access(caller.principal)
    # Searching by similarity lists records: no `list`, no search, whatever the record.
    with pipeline.denials(caller, access, rid.region, spec, "list"):
        listed = access.require(rid.region, spec, "list")
    with pipeline.denials(caller, access, rid.region, spec, "read", (record_id,)):
        scope = access.require(rid.region, spec, "read")
        database = pipeline.database(rid.region)
        with pipeline.write(database, _GONE) as conn:
            try:
                stored = pipeline.fetch(conn, database, spec, record_id, access.where(spec, scope))
            except MergedRecord:
                # A tombstone's person lives on in its survivor, which the caller may
                # not be allowed to read: no survivor id in the answer, no search.
                stored = None
            if stored is None:
                raise not_found(spec)
            record = pipeline.show(conn, access, rid.region, spec, stored)
            rows = candidate_rows(conn, access, spec, rid.region, (scope, listed), stored)
            found = matches(
                pipeline, conn, access, spec, rid.region, record, rows, min_score=min_score
            )
            returned = [record, *(m.record for m in found)]
            fields = {
                name
                for shown in returned
                for name in shown
                if not name.startswith("_") and name not in ("id", "region", "version")
            }
            event = pipeline.recorder.event(
                caller,
                access.policy.version,
                action="record.duplicates",
                entity=spec.name,
                record_ids=[str(r["id"]) for r in returned],
                fields=sorted(fields),
                details={"count": len(found)},
            )
            pipeline.recorder.append(conn, rid.region, event)
    return found


def matches(
    pipeline: Pipeline,
    conn: Connection,
    access: Access,
    spec: EntitySpec,
    region: str,
    record: Record,
    rows: Iterable[dict[str, Any]],
    *,
    min_score: float,
) -> list[Match]:
    """The candidate `rows` (from `candidate_rows`) of `record` (as rendered for the
    caller) scoring at least `min_score` (and above zero), best first. Decrypts every
    one of `rows` with the caller's mask: whoever audits must name them all."""
    found = []
    for row in rows:
        if row["region"] != region:
            raise ResidencyViolation(f"a row stored in {region} claims another region")
        candidate = pipeline.show(conn, access, region, spec, row)
        reasons = compare(spec, record, candidate)
        value = score(reasons)
        if value > 0 and value >= min_score:
            found.append(Match(candidate, value, tuple(reasons)))
    found.sort(key=lambda m: (-m.score, m.record["id"]))
    return found


def candidate_rows(
    conn: Connection,
    access: Access,
    spec: EntitySpec,
    region: str,
    scopes: Iterable[RowScope],
    stored: dict[str, Any],
    *,
    later_only: bool = False,
) -> list[dict[str, Any]]:
    """Stored live rows sharing a blocking key with `stored`, inside every one of
    `scopes` (the caller's read and list scopes, see module). With `later_only`, only
    rows with a greater id: a scan walking ids in order then meets each pair once."""
    table = ENTITY_TABLES[spec.name]
    always = access.mask(region, spec, "read").always
    readable = access.readable(region, spec, stored) & always
    keys = []
    for field in spec.encrypted_fields:
        if field.name not in readable:
            continue
        columns = [field.phonetic_column]
        if field.name in IDENTIFIERS:
            columns.append(field.index_column)
        for column in columns:
            if column is not None and stored.get(column) is not None:
                keys.append(table.c[column] == stored[column])
    if not keys:
        return []
    other = table.c.id > stored["id"] if later_only else table.c.id != stored["id"]
    query = select(table).where(or_(*keys), other, *live(table))
    for scope in scopes:
        where = access.where(spec, scope)
        if where is not None:
            query = query.where(where)
    rows = conn.execute(query.order_by(table.c.id).limit(CANDIDATE_CAP))
    return [dict(row._mapping) for row in rows]
