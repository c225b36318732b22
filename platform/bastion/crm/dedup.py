"""Finding records by encrypted identifiers: list filters, and duplicate refusal.

Searchable encrypted fields (emails, phones, names) are found through their blind
index in SQL — never by decrypting a table — and the few false positives a
truncated index lets through are dropped after decrypting.

Creating a contact or lead whose email, phone or mobile matches one the caller can
see already answers 409 naming the existing record, unless the caller asks for a
duplicate (`?allow_duplicate=true`). Only records inside the caller's read scope,
and only identifiers it may read, take part: the answer never reveals a record or
a value the caller could not have looked up itself. On PostgreSQL, creates of the
same identifier serialize on a transaction-scoped advisory lock, so two concurrent
requests cannot both miss each other.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, or_, select, text

from bastion.crm.access import Access
from bastion.crm.catalog import EntitySpec, FieldSpec
from bastion.crm.tables import ENTITY_TABLES
from bastion.errors import Conflict

if TYPE_CHECKING:
    from bastion.crm.pipeline import Pipeline

# Identifiers that mean "the same person" when equal; names do not.
IDENTIFIERS = ("email", "phone", "mobile")
_CANDIDATES = 50


class DuplicateRecord(Conflict):
    slug = "duplicate-record"
    title = "Duplicate record"

    def __init__(self, spec: EntitySpec, record_id: str, fields: list[str]) -> None:
        super().__init__(
            f"a {spec.singular} with the same {' and '.join(fields)} already exists; "
            "send ?allow_duplicate=true to create another"
        )
        self.record_id = record_id
        self.fields = fields

    @property
    def extensions(self) -> dict[str, object]:
        return {"existing_id": self.record_id, "fields": self.fields}


def split_filters(
    spec: EntitySpec, filters: Mapping[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(plain column filters, filters on encrypted searchable fields)."""
    plain: dict[str, Any] = {}
    encrypted: dict[str, Any] = {}
    for name, value in filters.items():
        field = spec.field(name)
        (encrypted if field is not None and field.encrypted else plain)[name] = value
    return plain, encrypted


@dataclass(frozen=True, slots=True)
class _Wanted:
    """An identifier of the new record, as the duplicate check looks for it."""

    field: FieldSpec
    column: str  # its blind-index column
    normalized: str
    index: bytes


def refuse_duplicates(
    pipeline: Pipeline,
    conn: Connection,
    access: Access,
    spec: EntitySpec,
    region: str,
    values: Mapping[str, Any],
) -> dict[str, bytes]:
    """Raise `DuplicateRecord` if a record the caller can see has the same identifier.
    Returns the blind indexes it computed, by field name, for the insert to store."""
    indexes: dict[str, bytes] = {}
    if not spec.data_subject:
        return indexes
    scope = access.policy.scope(access.principal.roles, region, spec.name, "read")
    if not scope.permits_any:
        return indexes
    readable = access.mask(region, spec, "read").always
    table = ENTITY_TABLES[spec.name]
    wanted: list[_Wanted] = []
    for name in IDENTIFIERS:
        field = spec.field(name)
        value = values.get(name)
        if field is None or field.index_column is None or value is None or name not in readable:
            continue
        normalized = pipeline.codec.normalized(field, value)
        index = pipeline.codec.index_normalized(conn, spec, region, field, normalized)
        indexes[name] = index
        wanted.append(_Wanted(field, field.index_column, normalized, index))
    if not wanted:
        return indexes
    _serialize(conn, spec, [(w.field.name, w.index) for w in wanted])
    # One query for every identifier: the candidates' ids, sealed identifiers and their
    # indexes (which identifier found each), and nothing else.
    query = select(
        table.c.id, *(table.c[w.field.name] for w in wanted), *(table.c[w.column] for w in wanted)
    ).where(or_(*(table.c[w.column] == w.index for w in wanted)))
    where = access.where(spec, scope)
    if where is not None:
        query = query.where(where)
    candidates = [
        dict(row._mapping) for row in conn.execute(query.limit(_CANDIDATES * len(wanted)))
    ]
    for w in wanted:
        for stored in candidates:
            if stored[w.column] is None or bytes(stored[w.column]) != w.index:
                continue
            found = pipeline.codec.open_field(conn, spec, region, stored, w.field)
            if pipeline.codec.matches(w.field, found, w.normalized):
                raise DuplicateRecord(spec, str(stored["id"]), [w.field.name])
    return indexes


def _serialize(conn: Connection, spec: EntitySpec, identifiers: list[tuple[str, bytes]]) -> None:
    """PostgreSQL: lock each (field, index) for the rest of the transaction, in one
    statement, always in the order of IDENTIFIERS (so two creates never wait on each
    other in a cycle)."""
    if conn.dialect.name != "postgresql":
        return  # SQLite: the write transaction already holds the database's write lock
    keys = {}
    for n, (field, index) in enumerate(identifiers):
        digest = hashlib.sha256(b"dedup\0" + spec.name.encode() + b"\0" + field.encode() + index)
        keys[f"k{n}"] = int.from_bytes(digest.digest()[:8], "big", signed=True)
    locks = ", ".join(f"pg_advisory_xact_lock(:{name})" for name in keys)
    conn.execute(text(f"SELECT {locks}"), keys)  # the text holds placeholders only
