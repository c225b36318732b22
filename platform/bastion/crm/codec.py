"""The encrypt/decrypt step: between the catalog's typed values and what is stored.

Fields the catalog marks `encrypted` are stored as AES-256-GCM envelopes
(`crypto.envelope`) under the data key of the record's *data subject*: a contact's
or lead's own key; for an activity or case, the key of the person (or account) it
is about (`EntitySpec.key_subject_from`), else the record's own key; an account's
own key. The AAD binds region, table, record id and field, so a ciphertext copied
to another row, field, table or region does not decrypt. Searchable fields also
store a blind index (`<field>_bidx`) of the normalised value, and names marked
`phonetic` one of their phonetic code (`<field>_pidx`, see `quality.phonetic`).

Decryption happens only for the fields a caller may read, inside the request's
transaction. A value whose key was destroyed (an erased data subject) is not
decrypted into garbage: it is reported as erased. A value sealed under a key of
kept data (`KEPT_PREFIX`: what an erasure kept for a legal hold or a retention
rule) is restricted (GDPR Art. 18): decrypted only for callers allowed to see it.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection

from bastion.crm.catalog import EntitySpec, FieldSpec
from bastion.crypto.envelope import DataKey, FieldContext, key_id_of, seal, unseal
from bastion.crypto.errors import KeyDestroyed
from bastion.crypto.keyring import Keyring
from bastion.crypto.normalize import IndexKind, normalize
from bastion.quality.phonetic import phonetic_index

_INDEX_KINDS: Mapping[str, IndexKind] = {"email": "email", "phone": "phone"}
# Key subjects of data kept after its data subject's erasure (`dsr.erasure.kept_key`).
KEPT_PREFIX = "retained:"


def index_kind(field: FieldSpec) -> IndexKind:
    """How a searchable field is normalised before indexing: emails and phones by
    their rules, other text (names) case- and space-insensitively."""
    return _INDEX_KINDS.get(field.type, "name")


def to_plaintext(field: FieldSpec, value: Any) -> bytes:
    """The bytes sealed for a typed value (UTF-8 text; ISO dates; JSON for the rest)."""
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, datetime | date):
        return value.isoformat().encode("ascii")
    if isinstance(value, Decimal):
        return str(value).encode("ascii")
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def from_plaintext(field: FieldSpec, data: bytes) -> Any:
    text = data.decode("utf-8")
    match field.type:
        case "date":
            return date.fromisoformat(text)
        case "datetime":
            return datetime.fromisoformat(text)
        case "decimal":
            return Decimal(text)
        case "integer" | "boolean" | "json":
            return json.loads(text)
        case _:
            return text


@dataclass(frozen=True, slots=True)
class Revealed:
    """A stored record with the permitted encrypted fields decrypted."""

    values: dict[str, Any]
    erased: tuple[str, ...]  # fields whose data key was destroyed
    restricted: tuple[str, ...] = ()  # kept after an erasure; not for this caller


class RecordCodec:
    def __init__(self, keyring: Keyring) -> None:
        self._keys = keyring

    @staticmethod
    def key_subject(spec: EntitySpec, record_id: str, values: Mapping[str, Any]) -> str:
        """Whose data key encrypts this record's fields."""
        for name in spec.key_subject_from:
            linked = values.get(name)
            if linked is not None:
                return str(linked)
        return record_id

    def seal_fields(
        self,
        conn: Connection,
        spec: EntitySpec,
        region: str,
        record_id: str,
        values: Mapping[str, Any],
        subject_id: str,
        fields: Collection[str] | None = None,
        *,
        key: DataKey | None = None,
        indexes: Mapping[str, bytes] | None = None,
    ) -> dict[str, Any]:
        """Column values for `values`: encrypted fields sealed, blind indexes computed.

        Only the encrypted fields named in `fields` (default: those in `values`) are
        sealed; other values pass through unchanged. `key`: the subject's DEK when the
        caller holds it already (a bulk import creates its keys in one go); `indexes`:
        blind indexes the caller computed already, by field name (a bulk import's dedup
        needed them first).
        """
        stored = dict(values)
        names = set(values) if fields is None else set(fields)
        # One key lookup per record, not per field.
        for field in spec.encrypted_fields:
            if field.name not in names:
                continue
            value = values.get(field.name)
            if field.index_column is not None:
                known = None if indexes is None else indexes.get(field.name)
                stored[field.index_column] = (
                    None if value is None else known or self.index(conn, spec, region, field, value)
                )
            if field.phonetic_column is not None:
                stored[field.phonetic_column] = (
                    None if value is None else self.phonetic(conn, spec, region, field, value)
                )
            if value is None:
                stored[field.name] = None
                continue
            context = FieldContext(region, spec.table_name, record_id, field.name)
            if key is None:
                key = self._keys.dek_for_subject(conn, region, subject_id)
            stored[field.name] = seal(key, to_plaintext(field, value), context)
        return stored

    def index(
        self, conn: Connection | None, spec: EntitySpec, region: str, field: FieldSpec, value: Any
    ) -> bytes:
        """The blind index of a value of a searchable field."""
        return self._keys.blind_index(
            region, spec.table_name, field.name, str(value), kind=index_kind(field), conn=conn
        )

    def phonetic(
        self, conn: Connection | None, spec: EntitySpec, region: str, field: FieldSpec, value: Any
    ) -> bytes | None:
        """The phonetic blind index of a name (`quality.phonetic`; None: no code)."""
        indexer = self._keys.blind_indexer(region, conn=conn)
        return phonetic_index(indexer, spec.table_name, field.name, str(value))

    def reveal(
        self,
        conn: Connection,
        spec: EntitySpec,
        region: str,
        stored: Mapping[str, Any],
        fields: Collection[str],
        *,
        restricted_too: bool = True,
    ) -> Revealed:
        """The record with the encrypted fields among `fields` decrypted; the other
        encrypted fields are dropped (never handed on as ciphertext). Without
        `restricted_too`, values under a kept-data key are dropped and named."""
        values = dict(stored)
        erased = []
        restricted = []
        record_id = str(stored["id"])
        keys: dict[bytes, DataKey | None] = {}  # one lookup per key, not per field
        for field in spec.encrypted_fields:
            blob = values.pop(field.name, None)
            if field.index_column is not None:
                values.pop(field.index_column, None)
            if field.phonetic_column is not None:
                values.pop(field.phonetic_column, None)
            if field.name not in fields or blob is None:
                values[field.name] = None
                continue
            blob = bytes(blob)
            key_id = key_id_of(blob)
            if key_id not in keys:
                try:
                    keys[key_id] = self._keys.dek_by_id(conn, region, key_id)
                except KeyDestroyed:
                    keys[key_id] = None
            key = keys[key_id]
            if key is None:
                erased.append(field.name)
                values[field.name] = None
                continue
            if not restricted_too and key.subject_id.startswith(KEPT_PREFIX):
                restricted.append(field.name)
                values[field.name] = None
                continue
            context = FieldContext(region, spec.table_name, record_id, field.name)
            values[field.name] = from_plaintext(field, unseal(key, blob, context))
        return Revealed(values, tuple(erased), tuple(restricted))

    def open_field(
        self,
        conn: Connection,
        spec: EntitySpec,
        region: str,
        stored: Mapping[str, Any],
        field: FieldSpec,
    ) -> Any:
        """One encrypted field of a stored record, decrypted (None if unset or erased)."""
        blob = stored.get(field.name)
        if blob is None:
            return None
        context = FieldContext(region, spec.table_name, str(stored["id"]), field.name)
        try:
            return from_plaintext(field, self._keys.unseal(conn, bytes(blob), context))
        except KeyDestroyed:
            return None

    def index_normalized(
        self,
        conn: Connection | None,
        spec: EntitySpec,
        region: str,
        field: FieldSpec,
        normalized: str,
    ) -> bytes:
        """The blind index of a value already `normalized` (no second normalisation)."""
        indexer = self._keys.blind_indexer(region, conn=conn)
        return indexer.index(spec.table_name, field.name, normalized)

    @staticmethod
    def normalized(field: FieldSpec, value: Any) -> str:
        """A searchable field's value as its blind index sees it."""
        return normalize(index_kind(field), str(value))

    def matches(self, field: FieldSpec, value: Any, wanted: str) -> bool:
        """Whether a decrypted value equals an already `normalized` wanted value (weeds
        out the false positives a truncated blind index lets through)."""
        return value is not None and self.normalized(field, value) == wanted
