"""Opaque, tamper-proof list cursors.

A cursor holds the keyset position of the last row a page returned, bound to the
query it belongs to (entity, filters, sort, regions). It is sealed with AES-GCM
under a key derived from the deployment secret, so a client can neither read the
position (it may hold a sorted field's value) nor forge or edit one; a cursor
replayed against a different query is rejected, not silently misapplied.

A list merged across regions keeps one position per region (`seal_positions`):
each region's next page starts after that region's own last row, so a region's
database is never sent another region's record id or sort value.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from bastion.errors import BadRequest

# The longest sortable string field holds 255 characters, at most 4 UTF-8 bytes each:
# about 1.1 kB sealed, 1.5 kB as base64 per position. 8 kB holds a worst-case position
# for each of four regions and still bounds the work.
CURSOR_MAX_LENGTH = 8192
_CURSOR_RE = re.compile(r"[A-Za-z0-9_-]+")
_NONCE = 12
_BAD = "the cursor is invalid, tampered with, or belongs to a different query"


@dataclass(frozen=True, slots=True)
class Position:
    """Where the previous page ended: the sort value (JSON-encoded) and the row id."""

    value: Any
    id: str


class CursorCodec:
    def __init__(self, secret: bytes) -> None:
        key = HKDF(
            algorithm=hashes.SHA256(), length=32, salt=None, info=b"bastion list cursor v1"
        ).derive(secret)
        self._aead = AESGCM(key)

    def seal(self, query: str, position: Position) -> str:
        """A cursor for `position` in the list described by the `query` fingerprint."""
        return self._seal(query, [position.value, position.id])

    def open(self, query: str, cursor: str) -> Position:
        """The position a cursor holds; `BadRequest` if it is not one of ours for `query`."""
        return _position(self._open(query, cursor))

    def seal_positions(self, query: str, positions: Mapping[str, Position]) -> str:
        """A cursor holding one position per region (see the module docstring)."""
        return self._seal(query, {name: [p.value, p.id] for name, p in positions.items()})

    def open_positions(self, query: str, cursor: str) -> dict[str, Position]:
        """The per-region positions of a `seal_positions` cursor; `BadRequest` if it is
        not one of ours for `query`."""
        payload = self._open(query, cursor)
        if not isinstance(payload, dict):
            raise BadRequest(_BAD)
        return {str(name): _position(item) for name, item in payload.items()}

    def _seal(self, query: str, payload: Any) -> str:
        plain = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()
        nonce = os.urandom(_NONCE)
        sealed = nonce + self._aead.encrypt(nonce, plain, query.encode())
        return base64.urlsafe_b64encode(sealed).rstrip(b"=").decode()

    def _open(self, query: str, cursor: str) -> Any:
        # Only what `_seal` produces: unpadded base64url. The decoder alone would skip
        # stray characters and accept a cursor with anything appended.
        if len(cursor) > CURSOR_MAX_LENGTH or _CURSOR_RE.fullmatch(cursor) is None:
            raise BadRequest(_BAD)
        try:
            sealed = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
            if len(sealed) < _NONCE + 16:
                raise ValueError("too short")
            plain = self._aead.decrypt(sealed[:_NONCE], sealed[_NONCE:], query.encode())
            return json.loads(plain)
        except (binascii.Error, ValueError, InvalidTag, TypeError):
            raise BadRequest(_BAD) from None


def _position(payload: Any) -> Position:
    if not isinstance(payload, list) or len(payload) != 2 or not isinstance(payload[1], str):
        raise BadRequest(_BAD)
    return Position(payload[0], payload[1])


def advanced(
    positions: Mapping[str, Position], emitted: list[tuple[str, Position]]
) -> dict[str, Position]:
    """`positions` moved past the rows a page `emitted` ((region, position) in page
    order): each region's position becomes its last emitted row; the others stay."""
    moved = dict(positions)
    for region, position in emitted:
        moved[region] = position
    return moved
