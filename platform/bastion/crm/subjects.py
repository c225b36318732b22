"""Data subjects' records and keys: what is sealed under whose key, and re-keying.

A record's encrypted fields are sealed under the data key of its *key subject*
(`RecordCodec.key_subject`): a contact or lead itself, an account itself, or for an
activity or case the person (or account) it is about. `sealed_under` finds every
record whose fields a subject's key protects — through the indexed links, never by
scanning tables — and `rotate_subject_key` re-encrypts them under a new version of
that key (`bastion keys rotate-dek`). Erasure uses the same discovery.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, select, update

from bastion.crm.catalog import ENTITIES, ENTITIES_BY_PREFIX, EntitySpec
from bastion.crm.codec import RecordCodec
from bastion.crm.tables import ENTITY_TABLES
from bastion.crypto.envelope import FieldContext, key_id_of, reseal
from bastion.crypto.keyring import Keyring
from bastion.errors import NotFound
from bastion.residency.ids import InvalidId, RecordId


@dataclass(frozen=True, slots=True)
class SealedRecord:
    spec: EntitySpec
    values: dict[str, Any]


def subject_entity(subject_id: str) -> EntitySpec:
    """The entity of a subject id (any record may be a key subject)."""
    try:
        rid = RecordId.parse(subject_id)
    except InvalidId:
        raise NotFound("that is not a record id") from None
    spec = ENTITIES_BY_PREFIX.get(rid.prefix)
    if spec is None:
        raise NotFound("no entity has that id prefix")
    return spec


def sealed_under(conn: Connection, subject_id: str) -> Iterator[SealedRecord]:
    """Every stored record whose encrypted fields the subject's key seals: the
    subject's own record and the records whose key subject it is."""
    own = subject_entity(subject_id)
    table = ENTITY_TABLES[own.name]
    row = conn.execute(select(table).where(table.c.id == subject_id)).one_or_none()
    if row is not None:
        yield SealedRecord(own, dict(row._mapping))
    for spec in ENTITIES.values():
        for link in spec.key_subject_from:
            target = spec.field(link)
            if target is None or target.ref != own.name:
                continue
            linked = ENTITY_TABLES[spec.name]
            for candidate in conn.execute(select(linked).where(linked.c[link] == subject_id)):
                values = dict(candidate._mapping)
                if RecordCodec.key_subject(spec, str(values["id"]), values) == subject_id:
                    yield SealedRecord(spec, values)


@dataclass(slots=True)
class Rekeyed:
    subject_id: str
    records: int = 0
    values: int = 0
    old_key_ids: set[bytes] = field(default_factory=set)


def rotate_subject_key(keys: Keyring, conn: Connection, region: str, subject_id: str) -> Rekeyed:
    """A new DEK version for the subject, and every value sealed under an older one
    re-sealed under it, in the caller's transaction. Record versions and update
    times do not change: the content is the same. The old versions are returned for
    `Keyring.retire_dek` once no process can still hold them as current."""
    report = Rekeyed(subject_id)
    new = keys.rotate_dek(conn, region, subject_id)
    for record in sealed_under(conn, subject_id):
        record_id = str(record.values["id"])
        changes: dict[str, bytes] = {}
        for spec_field in record.spec.encrypted_fields:
            blob = record.values.get(spec_field.name)
            if blob is None:
                continue
            blob = bytes(blob)
            old_id = key_id_of(blob)
            if old_id == new.id:
                continue
            context = FieldContext(region, record.spec.table_name, record_id, spec_field.name)
            changes[spec_field.name] = reseal(
                blob, context, keys.dek_by_id(conn, region, old_id), new
            )
            report.old_key_ids.add(old_id)
        if changes:
            table = ENTITY_TABLES[record.spec.name]
            conn.execute(update(table).where(table.c.id == record_id).values(**changes))
            report.records += 1
            report.values += len(changes)
    return report
