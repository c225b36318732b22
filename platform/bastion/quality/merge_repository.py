"""SQL for merges: the `merges` log, row locks for a merge, and what the DSR layer asks.

Functions take an open `Connection` in the region's database (the merge's own
transaction) and plain values. What a merge keeps to undo itself is stored as JSON:
`survivor_before` holds the survivor's prior columns as `encode_columns` writes them
(ciphertexts and blind indexes base64, never decrypted), so the merges table holds
no more plaintext than the records themselves; and only while the merge is open:
closing it (undo, finalisation, an erasure) empties it (`closed`).
"""

from __future__ import annotations

import base64
from collections.abc import Collection, Mapping, Sequence
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import ColumnElement, Connection, Row, insert, select, update

from bastion.crm.catalog import EntitySpec
from bastion.crm.tables import ENTITY_TABLES
from bastion.quality.tables import duplicate_pairs, merges

MERGE_PREFIX = "mrg"
# merged -> undone | final
MERGED, UNDONE, FINAL = "merged", "undone", "final"
# Ids per IN (...) list: well under SQLite's and PostgreSQL's parameter limits.
_BATCH = 500


def lock_records(conn: Connection, spec: EntitySpec, ids: Collection[str]) -> None:
    """Lock the rows of a merge in id order (PostgreSQL; SQLite has one writer), so two
    merges naming the same people queue behind each other instead of deadlocking."""
    table = ENTITY_TABLES[spec.name]
    conn.execute(
        select(table.c.id).where(table.c.id.in_(sorted(ids))).order_by(table.c.id).with_for_update()
    ).all()


def linking(conn: Connection, spec: EntitySpec, field: str, ids: Sequence[str]) -> list[Row[Any]]:
    """The rows of `spec` whose `field` links to one of `ids` (an indexed foreign key)."""
    table = ENTITY_TABLES[spec.name]
    query = select(table).where(table.c[field].in_(list(ids))).order_by(table.c.id)
    return list(conn.execute(query).all())


def insert_merge(conn: Connection, values: Mapping[str, Any]) -> None:
    conn.execute(insert(merges).values(**values))


def fetch_merge(conn: Connection, merge_id: str) -> dict[str, Any] | None:
    row = conn.execute(select(merges).where(merges.c.id == merge_id)).one_or_none()
    return None if row is None else dict(row._mapping)


def closed(merge: Mapping[str, Any], status: str, **values: Any) -> dict[str, Any]:
    """`merge` as it is once `status` (undone or final) closed it: what only an undo
    needed is gone, since nothing may undo it any more. That is the survivor's prior
    columns (ciphertexts and blind/phonetic indexes of values it may no longer hold:
    kept, they would outlive an erasure of the survivor or a later change) and the
    loser each moved record came from; the ids, choices and times stay, as the
    merge's record."""
    moved = [{k: v for k, v in move.items() if k != "from"} for move in merge["moved"]]
    return {**merge, "status": status, "survivor_before": {}, "moved": moved, **values}


def close_merge(
    conn: Connection, merge: Mapping[str, Any], status: str, **values: Any
) -> dict[str, Any] | None:
    """Move a merge from `merged` to `status`, stored as `closed` shows it; None if it
    is no longer `merged` (a concurrent undo or finalisation got there first: on
    PostgreSQL this waits for it)."""
    after = closed(merge, status, **values)
    result = conn.execute(
        update(merges)
        .where(merges.c.id == merge["id"], merges.c.status == MERGED)
        .values({name: after[name] for name in ("status", "survivor_before", "moved", *values)})
    )
    return after if result.rowcount == 1 else None


def due_merges(conn: Connection, now: datetime) -> list[str]:
    """Ids of merges whose undo window has passed and which are not final yet."""
    query = (
        select(merges.c.id)
        .where(merges.c.status == MERGED, merges.c.undo_until <= now)
        .order_by(merges.c.undo_until, merges.c.id)
    )
    return [str(i) for i in conn.execute(query).scalars()]


def survivor_of(conn: Connection, spec: EntitySpec, record_id: str) -> str | None:
    """The record `record_id` was merged into, if it is a merge's tombstone."""
    table = ENTITY_TABLES[spec.name]
    found = conn.execute(
        select(table.c.merged_into).where(table.c.id == record_id)
    ).scalar_one_or_none()
    return None if found is None else str(found)


def tombstones_of(conn: Connection, spec: EntitySpec, survivor_id: str) -> list[str]:
    """The records merged into `survivor_id` and not unmerged since, final merges'
    too (an indexed lookup: `merged_into` has a partial index)."""
    table = ENTITY_TABLES[spec.name]
    query = select(table.c.id).where(table.c.merged_into == survivor_id).order_by(table.c.id)
    return [str(i) for i in conn.execute(query).scalars()]


def visible_ids(
    conn: Connection, spec: EntitySpec, ids: Sequence[str], scope: ColumnElement[bool] | None
) -> set[str]:
    """Which of `ids` (records of `spec`) fall inside `scope` (a row scope's WHERE)."""
    table = ENTITY_TABLES[spec.name]
    found: set[str] = set()
    for start in range(0, len(ids), _BATCH):
        query = select(table.c.id).where(table.c.id.in_(list(ids[start : start + _BATCH])))
        if scope is not None:
            query = query.where(scope)
        found.update(str(i) for i in conn.execute(query).scalars())
    return found


def finalize_for_subjects(conn: Connection, subject_ids: Collection[str]) -> int:
    """Make final every open merge into one of `subject_ids` (their erasure erased the
    losers too: nothing is left to undo), forgetting what only an undo needed.
    Returns how many merges it closed."""
    rows = conn.execute(
        select(merges).where(merges.c.survivor_id.in_(list(subject_ids)), merges.c.status == MERGED)
    ).all()
    return sum(close_merge(conn, dict(row._mapping), FINAL) is not None for row in rows)


def reopen_pairs(conn: Connection, entity: str, ids: Collection[str]) -> int:
    """Reopen the `merged` duplicate pairs among `ids` (an undone merge's records are
    duplicates again, for someone to review)."""
    wanted = list(ids)
    result = conn.execute(
        update(duplicate_pairs)
        .where(
            duplicate_pairs.c.entity == entity,
            duplicate_pairs.c.status == "merged",
            duplicate_pairs.c.record_id.in_(wanted),
            duplicate_pairs.c.candidate_id.in_(wanted),
        )
        .values(status="open", reviewed_by=None, reviewed_at=None)
    )
    return result.rowcount or 0


# -- stored column values as JSON -------------------------------------------------------


def encode_columns(values: Mapping[str, Any]) -> dict[str, Any]:
    """Column values as tagged JSON: bytes, times, dates and decimals keep their type."""
    return {name: _encode(value) for name, value in values.items()}


def decode_columns(data: Mapping[str, Any]) -> dict[str, Any]:
    return {name: _decode(value) for name, value in data.items()}


def _encode(value: Any) -> Any:
    if isinstance(value, bytes | bytearray | memoryview):
        return {"b64": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, datetime):
        return {"datetime": value.isoformat()}
    if isinstance(value, date):
        return {"date": value.isoformat()}
    if isinstance(value, Decimal):
        return {"decimal": str(value)}
    if isinstance(value, dict):
        return {"json": value}
    return value


def _decode(value: Any) -> Any:
    if not isinstance(value, dict):
        return value
    ((tag, raw),) = value.items()
    match tag:
        case "b64":
            return base64.b64decode(raw)
        case "datetime":
            return datetime.fromisoformat(raw)
        case "date":
            return date.fromisoformat(raw)
        case "decimal":
            return Decimal(raw)
        case _:
            return raw
