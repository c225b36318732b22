"""SQL for the key tables: the only module that queries them.

Functions take an open `Connection` (a transaction on one region's database) and
plain values. Key material never passes through here unwrapped.

Locking on PostgreSQL (SQLite serialises writers with BEGIN IMMEDIATE anyway):
every transaction that wraps a key under "the current KEK version" holds a
*shared* advisory lock on the region's keys; starting a KEK rotation and
destroying a KEK version hold the *exclusive* one. So a KEK version is never
destroyed between a writer choosing it and committing a key wrapped under it,
and a rotation's new version exists before any later writer chooses.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Row, delete, func, insert, select, text, update

from bastion.crypto.tables import key_rotations, region_keys, subject_keys


@dataclass(frozen=True, slots=True)
class StoredSubjectKey:
    """A `subject_keys` row: a DEK wrapped under `kek_version`."""

    id: str
    region: str
    subject_id: str
    version: int
    kek_version: int
    wrapped: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class StoredRegionKey:
    """A `region_keys` row: a region-wide key wrapped under `kek_version`."""

    id: str
    region: str
    purpose: str
    kek_version: int
    wrapped: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class Rotation:
    """A `key_rotations` row."""

    id: str
    region: str
    from_version: int | None
    to_version: int
    state: str
    cursor: str
    total: int
    rewrapped: int
    passes: int
    started_at: datetime
    updated_at: datetime
    completed_at: datetime | None


def _lock_key(region: str) -> int:
    return zlib.crc32(f"bastion-keys:{region}".encode()) - 2**31


def lock_keys_shared(conn: Connection, region: str) -> None:
    """Hold the region's key lock in shared mode until the transaction ends (PostgreSQL)."""
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock_shared(:k)"), {"k": _lock_key(region)})


def lock_keys_exclusive(conn: Connection, region: str) -> None:
    """Hold the region's key lock exclusively until the transaction ends (PostgreSQL)."""
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _lock_key(region)})


# -- subject keys ----------------------------------------------------------------------


def _subject_key(row: Row[Any]) -> StoredSubjectKey:
    return StoredSubjectKey(
        id=row.id,
        region=row.region,
        subject_id=row.subject_id,
        version=row.version,
        kek_version=row.kek_version,
        wrapped=bytes(row.wrapped),
    )


def subject_key(conn: Connection, key_id: str) -> StoredSubjectKey | None:
    row = conn.execute(select(subject_keys).where(subject_keys.c.id == key_id)).one_or_none()
    return None if row is None else _subject_key(row)


def subject_keys_by_id(conn: Connection, key_ids: Sequence[str]) -> list[StoredSubjectKey]:
    """The keys among `key_ids` that exist (one query, for a batch of reads)."""
    if not key_ids:
        return []
    rows = conn.execute(select(subject_keys).where(subject_keys.c.id.in_(sorted(set(key_ids)))))
    return [_subject_key(row) for row in rows]


def current_subject_key(conn: Connection, subject_id: str) -> StoredSubjectKey | None:
    """The subject's highest-version key, if it has any."""
    row = conn.execute(
        select(subject_keys)
        .where(subject_keys.c.subject_id == subject_id)
        .order_by(subject_keys.c.version.desc())
        .limit(1)
    ).one_or_none()
    return None if row is None else _subject_key(row)


def superseded_at(conn: Connection, subject_id: str, version: int) -> datetime | None:
    """When the subject's key `version` stopped being current: the creation time of
    the oldest newer version still stored; None if no newer version exists."""
    query = select(func.min(subject_keys.c.created_at)).where(
        subject_keys.c.subject_id == subject_id, subject_keys.c.version > version
    )
    value: datetime | None = conn.execute(query).scalar_one()
    return value


def subject_key_ids(conn: Connection, subject_id: str) -> list[str]:
    query = select(subject_keys.c.id).where(subject_keys.c.subject_id == subject_id)
    return list(conn.execute(query).scalars())


def insert_subject_key(conn: Connection, key: StoredSubjectKey, *, now: datetime) -> None:
    conn.execute(
        insert(subject_keys).values(
            id=key.id,
            region=key.region,
            subject_id=key.subject_id,
            version=key.version,
            kek_version=key.kek_version,
            wrapped=key.wrapped,
            created_at=now,
        )
    )


def insert_subject_keys(
    conn: Connection, keys: Sequence[StoredSubjectKey], *, now: datetime
) -> None:
    """Many new keys in one executemany (a bulk import's keys)."""
    conn.execute(
        insert(subject_keys),
        [
            {
                "id": key.id,
                "region": key.region,
                "subject_id": key.subject_id,
                "version": key.version,
                "kek_version": key.kek_version,
                "wrapped": key.wrapped,
                "created_at": now,
            }
            for key in keys
        ],
    )


def delete_subject_keys(conn: Connection, subject_id: str) -> int:
    result = conn.execute(delete(subject_keys).where(subject_keys.c.subject_id == subject_id))
    return result.rowcount


def delete_subject_key(conn: Connection, key_id: str) -> bool:
    result = conn.execute(delete(subject_keys).where(subject_keys.c.id == key_id))
    return result.rowcount == 1


def subject_keys_after(
    conn: Connection, cursor: str, *, limit: int, lock: bool = False
) -> list[StoredSubjectKey]:
    """Up to `limit` keys with ids after `cursor`, in id order (the rotation's walk)."""
    query = (
        select(subject_keys)
        .where(subject_keys.c.id > cursor)
        .order_by(subject_keys.c.id)
        .limit(limit)
    )
    if lock:
        query = query.with_for_update()
    return [_subject_key(row) for row in conn.execute(query)]


def rewrap_subject_key(
    conn: Connection,
    key_id: str,
    *,
    expected_kek_version: int,
    kek_version: int,
    wrapped: bytes,
    now: datetime,
) -> bool:
    """Store a key re-wrapped under `kek_version`; False if it changed or vanished meanwhile."""
    result = conn.execute(
        update(subject_keys)
        .where(subject_keys.c.id == key_id, subject_keys.c.kek_version == expected_kek_version)
        .values(kek_version=kek_version, wrapped=wrapped, rewrapped_at=now)
    )
    return result.rowcount == 1


# -- region keys -----------------------------------------------------------------------


def _region_key(row: Row[Any]) -> StoredRegionKey:
    return StoredRegionKey(
        id=row.id,
        region=row.region,
        purpose=row.purpose,
        kek_version=row.kek_version,
        wrapped=bytes(row.wrapped),
    )


def region_key(conn: Connection, purpose: str) -> StoredRegionKey | None:
    row = conn.execute(select(region_keys).where(region_keys.c.purpose == purpose)).one_or_none()
    return None if row is None else _region_key(row)


def all_region_keys(conn: Connection, *, lock: bool = False) -> list[StoredRegionKey]:
    query = select(region_keys).order_by(region_keys.c.id)
    if lock:
        query = query.with_for_update()
    return [_region_key(row) for row in conn.execute(query)]


def insert_region_key(conn: Connection, key: StoredRegionKey, *, now: datetime) -> None:
    conn.execute(
        insert(region_keys).values(
            id=key.id,
            region=key.region,
            purpose=key.purpose,
            kek_version=key.kek_version,
            wrapped=key.wrapped,
            created_at=now,
        )
    )


def rewrap_region_key(
    conn: Connection,
    key_id: str,
    *,
    expected_kek_version: int,
    kek_version: int,
    wrapped: bytes,
    now: datetime,
) -> bool:
    result = conn.execute(
        update(region_keys)
        .where(region_keys.c.id == key_id, region_keys.c.kek_version == expected_kek_version)
        .values(kek_version=kek_version, wrapped=wrapped, rewrapped_at=now)
    )
    return result.rowcount == 1


# -- KEK usage -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class KekUsage:
    """How many keys of each table one KEK version wraps."""

    subject_keys: int = 0
    region_keys: int = 0

    @property
    def total(self) -> int:
        return self.subject_keys + self.region_keys


def kek_usage(conn: Connection) -> dict[int, KekUsage]:
    """KEK version -> keys it wraps, for every version any row references."""
    counts: dict[int, list[int]] = {}
    for index, table in enumerate((subject_keys, region_keys)):
        query = select(table.c.kek_version, func.count()).group_by(table.c.kek_version)
        for version, count in conn.execute(query):
            counts.setdefault(int(version), [0, 0])[index] = int(count)
    return {version: KekUsage(*pair) for version, pair in sorted(counts.items())}


def count_not_at(conn: Connection, kek_version: int) -> int:
    """Keys (subject and region) wrapped under any KEK version other than `kek_version`."""
    total = 0
    for table in (subject_keys, region_keys):
        query = select(func.count()).where(table.c.kek_version != kek_version)
        total += int(conn.execute(query).scalar_one())
    return total


def has_any_key(conn: Connection) -> bool:
    for table in (subject_keys, region_keys):
        if conn.execute(select(table.c.id).limit(1)).first() is not None:
            return True
    return False


# -- rotations -------------------------------------------------------------------------


def _rotation(row: Row[Any]) -> Rotation:
    return Rotation(**row._asdict())


def running_rotation(conn: Connection, region: str, *, lock: bool = False) -> Rotation | None:
    query = (
        select(key_rotations)
        .where(key_rotations.c.region == region, key_rotations.c.state == "running")
        .order_by(key_rotations.c.started_at)
        .limit(1)
    )
    if lock:
        query = query.with_for_update()
    row = conn.execute(query).one_or_none()
    return None if row is None else _rotation(row)


def rotation(conn: Connection, rotation_id: str, *, lock: bool = False) -> Rotation | None:
    query = select(key_rotations).where(key_rotations.c.id == rotation_id)
    if lock:
        query = query.with_for_update()
    row = conn.execute(query).one_or_none()
    return None if row is None else _rotation(row)


def recent_rotations(conn: Connection, region: str, *, limit: int = 5) -> Sequence[Rotation]:
    query = (
        select(key_rotations)
        .where(key_rotations.c.region == region)
        .order_by(key_rotations.c.started_at.desc())
        .limit(limit)
    )
    return [_rotation(row) for row in conn.execute(query)]


def insert_rotation(conn: Connection, rotation: Rotation) -> None:
    conn.execute(insert(key_rotations).values(**{k: getattr(rotation, k) for k in _ROTATION}))


_ROTATION = tuple(Rotation.__dataclass_fields__)


def update_rotation(conn: Connection, rotation_id: str, **values: Any) -> None:
    conn.execute(update(key_rotations).where(key_rotations.c.id == rotation_id).values(**values))
