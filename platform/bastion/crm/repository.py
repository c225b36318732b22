"""SQL for CRM records: the only module that builds queries on entity tables.

Functions take an open `Connection` (one transaction, opened by the service in the
record's region) and plain values; they know nothing of principals or policy.
Row scopes from the policy layer arrive as an extra WHERE clause (`scope`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Row,
    Table,
    and_,
    delete,
    insert,
    or_,
    select,
    true,
    update,
)

from bastion.crm.catalog import EntitySpec
from bastion.crm.tables import ENTITY_TABLES, import_rows

# Columns sorted as text compare by code point on every backend (PostgreSQL's
# database collation would otherwise disagree with SQLite and with Python, and
# cross-region pages are merged in Python).
_TEXT_TYPES = frozenset({"string", "email", "country", "currency", "enum", "ref", "principal"})


@dataclass(frozen=True, slots=True)
class Sort:
    """Sort on one column, then on `id` in the same direction (ids are unique)."""

    column: str
    descending: bool = False


def insert_record(conn: Connection, spec: EntitySpec, values: Mapping[str, Any]) -> None:
    # Values as parameters, not `.values(...)`: the statement (and its cache key) stays
    # the same for every record with the same columns set.
    conn.execute(insert(ENTITY_TABLES[spec.name]), dict(values))


def fetch(
    conn: Connection,
    spec: EntitySpec,
    record_id: str,
    *,
    scope: ColumnElement[bool] | None = None,
) -> Row[Any] | None:
    """The row with this id, if it exists and falls inside `scope` (a row scope's WHERE)."""
    table = ENTITY_TABLES[spec.name]
    query = select(table).where(table.c.id == record_id)
    if scope is not None:
        query = query.where(scope)
    return conn.execute(query).one_or_none()


def update_record(
    conn: Connection,
    spec: EntitySpec,
    record_id: str,
    *,
    expected_version: int,
    values: Mapping[str, Any],
) -> bool:
    """Apply `values` and bump the version if the row is still at `expected_version`."""
    table = ENTITY_TABLES[spec.name]
    result = conn.execute(
        update(table)
        .where(table.c.id == record_id, table.c.version == expected_version)
        .values(**values, version=expected_version + 1)
    )
    return result.rowcount == 1


def delete_record(
    conn: Connection, spec: EntitySpec, record_id: str, *, expected_version: int
) -> bool:
    table = ENTITY_TABLES[spec.name]
    result = conn.execute(
        delete(table).where(table.c.id == record_id, table.c.version == expected_version)
    )
    if result.rowcount != 1:
        return False
    # The key of the import row that created it (a keyed hash of its values) goes too.
    conn.execute(delete(import_rows).where(import_rows.c.record_id == record_id))
    return True


def live(table: Table) -> list[ColumnElement[bool]]:
    """The WHERE conditions of rows that are records in their own right, for every
    query that lists, counts, exports, links to or deduplicates records.

    An erased person's shell is kept for the records that must link to it, and a
    merged person's tombstone (`merged_into`, `quality.merge`) redirects to the
    survivor until the merge is final: neither is a contact or lead anyone lists or
    links a new record to. Fetching one by id still finds it (to answer 410 or 301).
    """
    conditions: list[ColumnElement[bool]] = []
    if "erased_at" in table.c:
        conditions.append(table.c.erased_at.is_(None))
    if "merged_into" in table.c:
        conditions.append(table.c.merged_into.is_(None))
    return conditions


def exists(
    conn: Connection,
    spec: EntitySpec,
    record_id: str,
    *,
    scope: ColumnElement[bool] | None = None,
) -> bool:
    table = ENTITY_TABLES[spec.name]
    query = select(table.c.id).where(table.c.id == record_id, *live(table))
    if scope is not None:
        query = query.where(scope)
    return conn.execute(query).first() is not None


def existing(
    conn: Connection,
    spec: EntitySpec,
    record_ids: Sequence[str],
    *,
    scope: ColumnElement[bool] | None = None,
) -> set[str]:
    """Which of `record_ids` are live records inside `scope` (one query per 500)."""
    table = ENTITY_TABLES[spec.name]
    found: set[str] = set()
    for start in range(0, len(record_ids), 500):
        query = select(table.c.id).where(
            table.c.id.in_(list(record_ids[start : start + 500])), *live(table)
        )
        if scope is not None:
            query = query.where(scope)
        found.update(str(i) for i in conn.execute(query).scalars())
    return found


def list_records(
    conn: Connection,
    spec: EntitySpec,
    *,
    filters: Mapping[str, Any],
    sort: Sort,
    after: tuple[Any, str] | None,
    limit: int,
    scope: ColumnElement[bool] | None = None,
) -> Sequence[Row[Any]]:
    """Up to `limit` rows matching `filters`, ordered by `sort`, strictly after `after`.

    Order is (column IS NULL, column, id), so rows without a value come last in
    either direction, and `after` is the (value, id) of the last row already seen.
    """
    table = ENTITY_TABLES[spec.name]
    collate = conn.dialect.name == "postgresql"
    id_column: Any = table.c.id.collate("C") if collate else table.c.id
    column: Any = table.c[sort.column]
    if collate and _is_text(spec, sort.column):
        column = column.collate("C")
    conditions: list[ColumnElement[bool]] = [
        table.c[name] == value for name, value in filters.items()
    ]
    conditions += live(table)
    if scope is not None:
        conditions.append(scope)

    def direction(col: Any) -> Any:
        return col.desc() if sort.descending else col.asc()

    if sort.column == "id":
        if after is not None:
            conditions.append(_beyond(id_column, after[1], sort.descending))
        order = [direction(id_column)]
    else:
        if after is not None:
            conditions.append(_after(column, id_column, after, descending=sort.descending))
        order = [column.is_(None).asc(), direction(column), direction(id_column)]
    query = select(table).where(and_(true(), *conditions)).order_by(*order).limit(limit)
    return conn.execute(query).all()


def _beyond(column: Any, value: Any, descending: bool) -> ColumnElement[bool]:
    return column < value if descending else column > value  # type: ignore[no-any-return]


def _after(
    column: Any, id_column: Any, after: tuple[Any, str], *, descending: bool
) -> ColumnElement[bool]:
    value, last_id = after
    if value is None:
        # Already among the trailing NULLs: only NULL rows with a later id remain.
        return and_(column.is_(None), _beyond(id_column, last_id, descending))
    return or_(
        column.is_(None),
        _beyond(column, value, descending),
        and_(column == value, _beyond(id_column, last_id, descending)),
    )


def _is_text(spec: EntitySpec, column: str) -> bool:
    if column == "id":
        return True
    field = spec.field(column)
    return field is not None and field.type in _TEXT_TYPES
