"""Unambiguous encodings of what a ciphertext or a wrapped key is bound to.

Every authenticated context is a domain label followed by length-prefixed parts
(a 2-byte big-endian length, then the UTF-8 bytes). Without the prefixes,
("ab", "c") and ("a", "bc") would authenticate the same bytes, and a value could
be moved between two fields whose names and ids happen to concatenate alike.
The domain label keeps the contexts of different purposes (field ciphertexts,
wrapped DEKs, wrapped region keys, blind-index key derivation) disjoint.
"""

from __future__ import annotations

MAX_PART_BYTES = 0xFFFF

FIELD_LABEL = b"bastion/field/v1"
DEK_WRAP_LABEL = b"bastion/dek-wrap/v1"
REGION_KEY_WRAP_LABEL = b"bastion/region-key-wrap/v1"
BLIND_INDEX_LABEL = b"bastion/blind-index/v1"


def encode(label: bytes, *parts: str | int | bytes) -> bytes:
    """`label` then each part, length-prefixed. Ints are written as decimal text.

    Raises `ValueError` for a part longer than 65535 bytes. (On the per-field hot
    path: a list joined once is a third of the cost of growing a bytearray.)
    """
    out = [len(label).to_bytes(2, "big"), label]
    for part in parts:
        if isinstance(part, str):
            data = part.encode("utf-8")
        elif isinstance(part, bytes):
            data = part
        else:
            data = str(int(part)).encode("ascii")
        size = len(data)
        if size > MAX_PART_BYTES:
            raise ValueError("an authenticated context part is longer than 65535 bytes")
        out.append(size.to_bytes(2, "big"))
        out.append(data)
    return b"".join(out)


_FIELD_PREFIX = len(FIELD_LABEL).to_bytes(2, "big") + FIELD_LABEL


# (region, table, field) -> the encoding's parts before and after the record id: a
# deployment has a few dozen, each used for every value of that field.
_FIELD_PARTS: dict[tuple[str, str, str], tuple[bytes, bytes]] = {}
_FIELD_PARTS_MAX = 4096


def field(region: str, table: str, record_id: str, field: str) -> bytes:
    """`encode(FIELD_LABEL, region, table, record_id, field)`, written out: this runs
    once per encrypted value, and the generic loop costs twice as much. The parts
    around the record id are kept per (region, table, field).

    Raises `OverflowError` for a part longer than 65535 bytes (from `to_bytes`).
    """
    parts = _FIELD_PARTS.get((region, table, field))
    if parts is None:
        r, t, f = region.encode(), table.encode(), field.encode()
        parts = (
            b"".join((_FIELD_PREFIX, len(r).to_bytes(2, "big"), r, len(t).to_bytes(2, "big"), t)),
            len(f).to_bytes(2, "big") + f,
        )
        if len(_FIELD_PARTS) < _FIELD_PARTS_MAX:  # names come from code; bounded anyway
            _FIELD_PARTS[(region, table, field)] = parts
    i = record_id.encode()
    return b"".join((parts[0], len(i).to_bytes(2, "big"), i, parts[1]))


def dek_wrap(region: str, subject_id: str, key_id: bytes, version: int, kek_version: int) -> bytes:
    """What a wrapped DEK is bound to: it unwraps only in its own row and region."""
    return encode(DEK_WRAP_LABEL, region, subject_id, key_id, version, kek_version)


def region_key_wrap(region: str, purpose: str, key_id: bytes, kek_version: int) -> bytes:
    """What a wrapped region key (e.g. the blind-index root) is bound to."""
    return encode(REGION_KEY_WRAP_LABEL, region, purpose, key_id, kek_version)


def blind_index_info(region: str, table: str, field: str) -> bytes:
    """HKDF `info` for one field's blind-index key: one key per region, table and field."""
    return encode(BLIND_INDEX_LABEL, region, table, field)
