"""Region-bearing record ids: `<prefix>_<region>_<base32 UUIDv7>`.

The region is part of the id so that routing a request needs no lookup and an id
can never be resolved against another region's database: `con_eu_…` is a contact
in the `eu` database, full stop. Ids are generated here, in the application,
before the insert, so they can later be bound into encryption AAD.

The UUID is written in Crockford base32 (lower case, 26 characters): sortable in
the same order as the UUID, so ids sort by creation time.
"""

from __future__ import annotations

import os
import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"
_DECODE = {c: i for i, c in enumerate(_ALPHABET)}
_REGION_RE = re.compile(r"[a-z][a-z0-9]{1,15}")
_PREFIX_RE = re.compile(r"[a-z]{3}")
_ID_RE = re.compile(r"([a-z]{3})_([a-z][a-z0-9]{1,15})_([0-9a-hjkmnp-tv-z]{26})")
ID_MAX_LENGTH = 3 + 1 + 16 + 1 + 26
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class InvalidId(ValueError):
    """The string is not a well-formed record id. The message never echoes it."""


def is_valid_region_name(name: str) -> bool:
    return _REGION_RE.fullmatch(name) is not None


def encode_base32(value: int) -> str:
    """128-bit integer -> 26 Crockford base32 characters (big-endian)."""
    if not 0 <= value < 1 << 128:
        raise ValueError("value out of range for 128 bits")
    chars = []
    for _ in range(26):
        chars.append(_ALPHABET[value & 31])
        value >>= 5
    return "".join(reversed(chars))


def decode_base32(text: str) -> int:
    """Inverse of `encode_base32`; rejects anything it would not have produced."""
    if len(text) != 26:
        raise InvalidId("the UUID part must be 26 base32 characters")
    value = 0
    for ch in text:
        digit = _DECODE.get(ch)
        if digit is None:
            raise InvalidId("the UUID part holds a character outside Crockford base32")
        value = (value << 5) | digit
    if value >> 128:
        raise InvalidId("the UUID part is larger than 128 bits")
    return value


def uuid7(now: datetime, random_bytes: bytes | None = None) -> uuid.UUID:
    """A UUIDv7 (RFC 9562): 48-bit Unix milliseconds from `now`, 74 random bits."""
    # Integer arithmetic: `now.timestamp() * 1000` is a float and rounds up when the
    # microseconds end in ...999 on far-future dates.
    millis = (now - _EPOCH) // timedelta(milliseconds=1)
    if not 0 <= millis < 1 << 48:
        raise ValueError("timestamp out of UUIDv7 range")
    rand = int.from_bytes(random_bytes if random_bytes is not None else os.urandom(10), "big")
    rand_a = (rand >> 62) & 0xFFF
    rand_b = rand & ((1 << 62) - 1)
    value = (millis << 80) | (0x7 << 76) | (rand_a << 64) | (0b10 << 62) | rand_b
    return uuid.UUID(int=value)


@dataclass(frozen=True, slots=True)
class RecordId:
    """A parsed record id. `str(record_id)` gives back the canonical text."""

    prefix: str
    region: str
    uuid: uuid.UUID

    def __post_init__(self) -> None:
        if _PREFIX_RE.fullmatch(self.prefix) is None:
            raise InvalidId("the prefix must be three lower-case letters")
        if not is_valid_region_name(self.region):
            raise InvalidId("the region must be 2-16 lower-case letters or digits")
        if self.uuid.version != 7 or self.uuid.variant != uuid.RFC_4122:
            raise InvalidId("the UUID part is not a UUIDv7")

    def __str__(self) -> str:
        return f"{self.prefix}_{self.region}_{encode_base32(self.uuid.int)}"

    @classmethod
    def new(cls, prefix: str, region: str, now: datetime) -> RecordId:
        return cls(prefix, region, uuid7(now))

    @classmethod
    def parse(cls, text: str) -> RecordId:
        """Parse strictly: exact shape, canonical lower case, a real UUIDv7.

        Raises `InvalidId` (whose message never contains the input).
        """
        if len(text) > ID_MAX_LENGTH:
            raise InvalidId("the id is too long")
        match = _ID_RE.fullmatch(text)
        if match is None:
            raise InvalidId("the id is not of the form <prefix>_<region>_<26 base32 chars>")
        prefix, region, body = match.groups()
        return cls(prefix, region, uuid.UUID(int=decode_base32(body)))


def region_of(text: str | None) -> str | None:
    """The region a record id names, or None when `text` is not a record id."""
    if text is None:
        return None
    try:
        return RecordId.parse(text).region
    except InvalidId:
        return None
