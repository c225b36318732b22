"""Region database tables, derived from the field catalog.

Every region database has the same schema (made by the `region` migrations). No
foreign key ever points into another region: references between records are only
possible inside one database, and the service checks that a referenced id carries
the same region before it gets here.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    Date,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.types import TypeEngine

from bastion.crm.catalog import ENTITIES, EntitySpec, FieldSpec
from bastion.residency.ids import ID_MAX_LENGTH
from bastion.sqltypes import ScaledDecimal, UTCDateTime, new_metadata

region_metadata = new_metadata()

_JSON = JSON().with_variant(JSONB(), "postgresql")
# Columns that lists filter or join on most; every foreign key is indexed too.
_INDEXED = frozenset({"owner_id", "team_id", "status", "stage", "type"})


def _column_type(spec: FieldSpec) -> TypeEngine[Any]:
    if spec.encrypted:
        # The versioned AES-256-GCM envelope (crypto.envelope), never plaintext.
        return LargeBinary()
    match spec.type:
        case "text":
            return Text()
        case "integer":
            return Integer()
        case "decimal":
            return ScaledDecimal(spec.scale or 0)
        case "boolean":
            return Boolean()
        case "date":
            return Date()
        case "datetime":
            return UTCDateTime()
        case "json":
            return _JSON
        case "ref":
            return String(ID_MAX_LENGTH)
        case _:
            return String(spec.max_length or 255)


def _entity_table(spec: EntitySpec) -> Table:
    columns: list[Column[Any]] = [
        Column("id", String(ID_MAX_LENGTH), nullable=False),
        Column("region", String(16), nullable=False),
        Column("version", Integer, nullable=False),
        Column("created_at", UTCDateTime(), nullable=False),
        Column("updated_at", UTCDateTime(), nullable=False),
    ]
    indexes: list[Column[Any]] = []
    for field in spec.fields:
        if field.index_column is not None:
            # Truncated HMAC of the normalised value (crypto.blindindex): exact-match
            # search and dedup without decrypting the table.
            indexes.append(Column(field.index_column, LargeBinary(4), nullable=True, index=True))
        if field.phonetic_column is not None:
            # Blind index of the value's phonetic code: duplicate detection's blocking key.
            indexes.append(Column(field.phonetic_column, LargeBinary(4), nullable=True, index=True))
        args: list[ForeignKey] = []
        if field.type == "ref" and field.ref is not None:
            args.append(ForeignKey(f"{field.ref}.id", ondelete="RESTRICT"))
        columns.append(
            Column(
                field.name,
                _column_type(field),
                *args,
                nullable=not field.required,
                index=field.type == "ref" or field.name in _INDEXED,
            )
        )
    if spec.data_subject:
        # Set when the person was erased: the row stays as a shell without personal
        # data, so records kept under a legal hold or retention rule still link to it.
        columns.append(Column("erased_at", UTCDateTime(), nullable=True))
        # Set when the person was merged into another record (a tombstone that redirects
        # to the survivor until the merge can no longer be undone).
        columns.append(Column("merged_into", String(ID_MAX_LENGTH), nullable=True))
        columns.append(Column("merged_at", UTCDateTime(), nullable=True))
    extra: list[Index] = []
    if spec.data_subject:
        # Partial: only tombstones are looked up by survivor. A full index would be
        # almost all NULLs, and planners would pick it for every list's
        # `merged_into IS NULL` instead of the scope's owner or team index.
        tombstones = text("merged_into IS NOT NULL")
        extra.append(
            Index(
                f"ix_{spec.table_name}_merged_into",
                "merged_into",
                sqlite_where=tombstones,
                postgresql_where=tombstones,
            )
        )
    return Table(
        spec.table_name,
        region_metadata,
        *columns,
        *indexes,
        PrimaryKeyConstraint("id"),
        Index(f"ix_{spec.table_name}_updated_at_id", "updated_at", "id"),
        *extra,
    )


# Referenced tables first, so foreign keys resolve in declaration order.
ENTITY_TABLES: dict[str, Table] = {
    name: _entity_table(ENTITIES[name])
    for name in ("accounts", "contacts", "leads", "opportunities", "activities", "cases")
}

idempotency_keys = Table(
    "idempotency_keys",
    region_metadata,
    Column("principal_id", String(64), nullable=False),
    Column("key", String(255), nullable=False),
    Column("request_hash", String(64), nullable=False),
    Column("entity", String(32), nullable=False),
    Column("record_id", String(ID_MAX_LENGTH), nullable=False),
    Column("created_at", UTCDateTime(), nullable=False, index=True),
    PrimaryKeyConstraint("principal_id", "key"),
)

# Rows a CSV import created (`bulk.imports`), by a keyed hash (HMAC) of the importer and
# the row's validated values: running the same data again creates nothing new. A
# record's key goes with the record (delete, erasure).
import_rows = Table(
    "import_rows",
    region_metadata,
    Column("entity", String(32), nullable=False),
    Column("row_key", String(64), nullable=False),
    Column("record_id", String(ID_MAX_LENGTH), nullable=False, index=True),
    Column("import_id", String(ID_MAX_LENGTH), nullable=False),
    PrimaryKeyConstraint("entity", "row_key"),
)
