"""Blind indexes: truncated HMAC-SHA256 of a normalised value, one key per field.

For exact-match search, dedup and data subjects' request discovery on encrypted
fields, a searchable field also stores `HMAC-SHA256(k_field, normalised value)`
cut to its first `bits` bits. `k_field` is derived with HKDF-SHA256 from the
region's blind-index root key (a random 256-bit key stored wrapped by the region
KEK in `region_keys`), with the region, table and field in `info`: the same
email has unrelated indexes in two fields or two regions, so indexes cannot be
joined across them.

Why truncate (CipherSweet's guidance): a full-length HMAC is a unique tag per
value, so anyone who reads the table learns which rows share a value and can
count frequencies. Cut to L bits, about C = R / 2^L unrelated rows share each
index value in a table of R rows, and the caller filters those false positives
after decrypting. CipherSweet asks for 2 <= C < sqrt(R): at least two rows per
index value (equality of indexes no longer proves equality of values), and few
enough that a lookup stays selective.

The default is L = 16 bits (2 bytes), valid for 2^17 <= R < 2^32, i.e. from
131k to 4.3 billion rows per table and region, which covers the regions a CRM
deployment holds: 1M contacts give C = 15 false positives per lookup (sqrt(R) =
1000), 10M give C = 153 (sqrt(R) = 3162) -- a few hundred microseconds of
decryption. A region expected to stay below 131k rows per table leaks a little
more than the guidance allows at 16 bits (C < 2); set `keys.blind_index_bits`
(8-32) before the first write to suit it: the valid L satisfies
sqrt(R) < 2^L <= R/2. Changing L later means recomputing every index.
"""

from __future__ import annotations

import hashlib
import hmac
import threading

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from bastion.crypto import aad
from bastion.crypto.normalize import IndexKind, normalize

DEFAULT_BITS = 16
MIN_BITS = 8
MAX_BITS = 32


class BlindIndexer:
    """Blind indexes of one region, from its root key. Thread-safe; holds derived keys only."""

    __slots__ = ("_bits", "_fields", "_lock", "_mask", "_nbytes", "_root", "region")

    def __init__(self, region: str, root_key: bytes, *, bits: int = DEFAULT_BITS) -> None:
        if not MIN_BITS <= bits <= MAX_BITS:
            raise ValueError(f"blind index length must be {MIN_BITS}-{MAX_BITS} bits")
        if len(root_key) != 32:
            raise ValueError("the blind-index root key is 32 bytes")
        self.region = region
        self._root = root_key
        self._bits = bits
        self._nbytes = (bits + 7) // 8
        # Zero the unused low bits of the last byte, so an index is exactly `bits` bits.
        self._mask = (0xFF << (self._nbytes * 8 - bits)) & 0xFF
        self._fields: dict[tuple[str, str], hmac.HMAC] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"BlindIndexer(region={self.region!r}, bits={self._bits})"

    @property
    def bits(self) -> int:
        return self._bits

    def _field_mac(self, table: str, field: str) -> hmac.HMAC:
        mac = self._fields.get((table, field))
        if mac is None:
            key = HKDF(
                algorithm=hashes.SHA256(),
                length=32,
                salt=None,
                info=aad.blind_index_info(self.region, table, field),
            ).derive(self._root)
            mac = hmac.new(key, digestmod=hashlib.sha256)
            with self._lock:
                mac = self._fields.setdefault((table, field), mac)
        return mac

    def index(self, table: str, field: str, normalized: str) -> bytes:
        """The index of an already normalised value (see `index_value` to normalise)."""
        mac = self._field_mac(table, field).copy()
        mac.update(normalized.encode("utf-8"))
        digest = mac.digest()
        if self._mask == 0xFF:
            return digest[: self._nbytes]
        return digest[: self._nbytes - 1] + bytes([digest[self._nbytes - 1] & self._mask])

    def index_value(self, table: str, field: str, value: str, *, kind: IndexKind) -> bytes:
        """Normalise `value` as `kind`, then index it. Raises `UnindexableValue`."""
        return self.index(table, field, normalize(kind, value))
