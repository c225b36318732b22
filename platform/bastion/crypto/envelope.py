"""The field ciphertext format: AES-256-GCM under a data subject's key (DEK).

Layout (all of it stored, 46 bytes of overhead per value)::

    version (1) | algorithm (1) | key id (16) | nonce (12) | ciphertext | tag (16)
    \\________ header (18) ________/

The header names the DEK (its random 16-byte id, the primary key of its row in
`subject_keys`), so decryption needs no other lookup. The AAD is the header
followed by the length-prefixed `FieldContext` (region, table, record id, field):
a ciphertext copied into another row, field, table or region, or re-labelled
with another key id, fails its tag check instead of decrypting to a plausible
value in the wrong place. Binding the header also stops an attacker downgrading
the version or algorithm bytes.

Nonces are 96 random bits from `os.urandom`. NIST SP 800-38D (section 8.3) caps
the number of encryptions under one key with random 96-bit nonces at 2^32, which
keeps the chance of a repeated nonce (fatal for GCM: it leaks the XOR of two
plaintexts and lets an attacker forge tags) below 2^-32. Bastion stays far
below the cap by construction: each DEK belongs to one data subject and only
encrypts that subject's fields: a record written 100 times a day, 30 encrypted
fields each time, for 100 years, uses 1.1 * 10^8 encryptions, under 3% of the
cap. DEK rotation (`Keyring.rotate_dek` plus `reseal`) starts a fresh key
whenever policy asks. There is no single
region-wide data key whose counter a busy deployment could exhaust.

Bytes in, bytes out: callers serialise values (and the empty string is a value:
it encrypts to 46 bytes, so lengths never reveal more than the plaintext length).
"""

from __future__ import annotations

import os
from typing import NoReturn

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from bastion.crypto import aad
from bastion.crypto.errors import DecryptionFailed, MalformedCiphertext

FORMAT_VERSION = 1
ALGORITHM_AES_256_GCM = 1
KEY_ID_BYTES = 16
NONCE_BYTES = 12
TAG_BYTES = 16
DEK_BYTES = 32
HEADER_BYTES = 2 + KEY_ID_BYTES
OVERHEAD_BYTES = HEADER_BYTES + NONCE_BYTES + TAG_BYTES
_HEADER_PREFIX = bytes([FORMAT_VERSION, ALGORITHM_AES_256_GCM])
_NONCE_END = HEADER_BYTES + NONCE_BYTES
_MAX_PART_CHARS = aad.MAX_PART_BYTES // 4  # shorter strings cannot exceed it in UTF-8


class FieldContext(tuple[str, str, str, str]):
    """Where a value lives: `(region, table, record_id, field)`; the ciphertext is bound to it.

    `table` is the table (or entity) name and `field` the catalog field name;
    custom fields should use a distinct namespace (e.g. `custom.<name>`).
    Immutable. A tuple rather than a frozen dataclass because the pipeline makes
    one per encrypted field, and a frozen dataclass costs three times as much.
    """

    __slots__ = ()

    def __new__(cls, region: str, table: str, record_id: str, field: str) -> FieldContext:
        parts = (region, table, record_id, field)
        # One cheap test on the hot path; the slow one only to name the culprit.
        if (
            type(region) is not str
            or type(table) is not str
            or type(record_id) is not str
            or type(field) is not str
            or not (region and table and record_id and field)
            or max(len(region), len(table), len(record_id), len(field)) > _MAX_PART_CHARS
        ):
            _check_parts(parts)
        return tuple.__new__(cls, parts)

    def __getnewargs__(self) -> tuple[str, str, str, str]:
        return (self[0], self[1], self[2], self[3])

    def __repr__(self) -> str:
        return (
            f"FieldContext(region={self[0]!r}, table={self[1]!r}, "
            f"record_id={self[2]!r}, field={self[3]!r})"
        )

    @property
    def region(self) -> str:
        return self[0]

    @property
    def table(self) -> str:
        return self[1]

    @property
    def record_id(self) -> str:
        return self[2]

    @property
    def field(self) -> str:
        return self[3]

    @property
    def encoded(self) -> bytes:
        """The unambiguous, length-prefixed encoding bound into the AAD."""
        return aad.field(self[0], self[1], self[2], self[3])

    def describe(self) -> str:
        """`table.field of record_id in region`: ids and names, never values."""
        return f"{self[1]}.{self[3]} of {self[2]} in region {self[0]}"


def _check_parts(parts: tuple[str, str, str, str]) -> None:
    for name, value in zip(("region", "table", "record_id", "field"), parts, strict=True):
        if not value or not isinstance(value, str):
            raise ValueError(f"FieldContext.{name} must be a non-empty string")
        if len(value.encode()) > aad.MAX_PART_BYTES:
            raise ValueError(f"FieldContext.{name} is longer than 65535 bytes")


class DataKey:
    """An unwrapped data-encryption key (DEK) of one data subject, ready to use.

    Holds a reusable `AESGCM` object (building one per call doubles the cost of a
    field) and not the raw key bytes. Its repr and str show the key id and owner
    only; it cannot be pickled, so it cannot leak into a cache or a queue.
    """

    __slots__ = ("_aead", "header", "id", "region", "subject_id", "version")

    def __init__(
        self, *, key_id: bytes, region: str, subject_id: str, version: int, material: bytes
    ) -> None:
        if len(key_id) != KEY_ID_BYTES:
            raise ValueError(f"a key id is {KEY_ID_BYTES} bytes")
        if len(material) != DEK_BYTES:
            raise ValueError(f"a data key is {DEK_BYTES} bytes")
        self.id = key_id
        self.region = region
        self.subject_id = subject_id
        self.version = version
        self.header = _HEADER_PREFIX + key_id
        self._aead = AESGCM(material)

    def __repr__(self) -> str:
        return (
            f"DataKey(id={self.id.hex()}, region={self.region!r}, "
            f"subject_id={self.subject_id!r}, version={self.version})"
        )

    __str__ = __repr__

    def __reduce__(self) -> NoReturn:
        raise TypeError("a DataKey cannot be pickled")


def new_key_id() -> bytes:
    return os.urandom(KEY_ID_BYTES)


def seal(key: DataKey, plaintext: bytes, ctx: FieldContext) -> bytes:
    """Encrypt `plaintext` for the place `ctx` under `key`; a fresh random nonce each call."""
    nonce = os.urandom(NONCE_BYTES)
    header = key.header
    return header + nonce + key._aead.encrypt(nonce, plaintext, header + ctx.encoded)


def key_id_of(blob: bytes) -> bytes:
    """The id of the DEK that sealed `blob`, after checking the header strictly.

    Raises `MalformedCiphertext` if `blob` is too short or names an unknown
    format version or algorithm.
    """
    if not isinstance(blob, bytes | bytearray):
        raise MalformedCiphertext("the stored value is not a ciphertext")
    if len(blob) < OVERHEAD_BYTES:
        raise MalformedCiphertext("the stored ciphertext is truncated")
    if blob[0] != FORMAT_VERSION:
        raise MalformedCiphertext("the stored ciphertext has an unknown format version")
    if blob[1] != ALGORITHM_AES_256_GCM:
        raise MalformedCiphertext("the stored ciphertext names an unknown algorithm")
    return bytes(blob[2:HEADER_BYTES])


def unseal(key: DataKey, blob: bytes, ctx: FieldContext) -> bytes:
    """Decrypt and verify a value `seal` produced for exactly `ctx` under `key`.

    Raises `MalformedCiphertext` for a bad header and `DecryptionFailed` when the
    blob was sealed under another key, for another place, or was altered.
    """
    header = key.header
    if len(blob) < OVERHEAD_BYTES or blob[:HEADER_BYTES] != header:
        key_id_of(blob)  # raises MalformedCiphertext when it is not even one of ours
        raise DecryptionFailed(f"{ctx.describe()} was sealed under a different key")
    try:
        return key._aead.decrypt(
            blob[HEADER_BYTES:_NONCE_END], blob[_NONCE_END:], header + ctx.encoded
        )
    except InvalidTag:
        raise DecryptionFailed(f"{ctx.describe()} failed its integrity check") from None


def reseal(blob: bytes, ctx: FieldContext, old_key: DataKey, new_key: DataKey) -> bytes:
    """Re-encrypt a value under `new_key` (DEK rotation), verifying it under `old_key`.

    The plaintext exists only inside this call. Errors as for `unseal`.
    """
    return seal(new_key, unseal(old_key, blob, ctx), ctx)
