"""The keyring: data subjects' keys and blind indexes, as the record pipeline uses them.

Key hierarchy, per region::

    KEK versions (in the KeyProvider: HSM token or dev files)
      -> wrap -> one DEK per data subject, per DEK version   (table subject_keys)
      -> wrap -> the blind-index root key                     (table region_keys)
                   -> HKDF -> one HMAC key per table and field

KEKs are per region, so an EU DEK is never wrapped by, nor readable with, a US
KEK. `Keyring` is the one object the rest of Bastion holds (`State.keys`); the
work is done by `bastion.crypto.datakeys` (DEKs: binding, caching, rotation and
its window) and `bastion.crypto.regionkeys` (region keys, blind indexers, the
KEK choice and the residency check).

Erasure is crypto-shredding: `shred` deletes every DEK version of the subject,
and every ciphertext under them becomes noise -- in the live database at once,
in other processes after at most one cache TTL. Backups still hold the wrapped
DEK rows; they become unreadable for a shredded subject once every KEK version
that wrapped those rows is destroyed. So: rotate the KEK (re-wrapping every live
key; `bastion keys rotate-kek`) at least once per backup retention period, and
destroy KEK versions older than the retention (`bastion keys retire-kek`). From
then on no backup, however old, can unwrap a shredded subject's DEK, while every
live key (re-wrapped under the new version) still unwraps.

Newly created keys are cached only after their transaction commits: a key the
caller's transaction created and then rolled back must never be used to seal.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Literal, overload

from sqlalchemy import Connection

from bastion.clock import Clock
from bastion.crypto import repository as repo
from bastion.crypto.blindindex import BlindIndexer
from bastion.crypto.cache import DataKeyCache
from bastion.crypto.datakeys import IN_FLIGHT_MARGIN, DataKeys
from bastion.crypto.envelope import DataKey, FieldContext, key_id_of, seal, unseal
from bastion.crypto.normalize import IndexKind
from bastion.crypto.providers import KeyProvider, build_provider
from bastion.crypto.regionkeys import BLIND_INDEX_PURPOSE, RegionKeys, UncommittedKeys
from bastion.crypto.settings import KeySettings
from bastion.errors import BastionError
from bastion.residency.databases import Regions

__all__ = ["BLIND_INDEX_PURPOSE", "IN_FLIGHT_MARGIN", "Keyring", "build_keyring"]


class Keyring:
    """Per-subject DEKs and per-field blind indexes of every region. Thread-safe.

    Methods that take `conn` run inside the caller's transaction on `region`'s
    database (checked: a connection of another region's engine is refused with
    `ResidencyViolation`, an unknown region is `NotFound`).
    """

    def __init__(
        self,
        *,
        regions: Regions,
        provider: KeyProvider,
        clock: Clock,
        cache_size: int = 10_000,
        cache_ttl: timedelta = timedelta(minutes=5),
        in_flight_margin: timedelta = IN_FLIGHT_MARGIN,
        blind_index_bits: int = 16,
    ) -> None:
        self._regions = regions
        self._provider = provider
        self._clock = clock
        uncommitted = UncommittedKeys()
        self._region_keys = RegionKeys(
            regions=regions,
            provider=provider,
            clock=clock,
            blind_index_bits=blind_index_bits,
            uncommitted=uncommitted,
        )
        self._data_keys = DataKeys(
            region_keys=self._region_keys,
            provider=provider,
            clock=clock,
            cache=DataKeyCache(size=cache_size, ttl=cache_ttl, clock=clock),
            uncommitted=uncommitted,
            in_flight_margin=in_flight_margin,
        )

    def __repr__(self) -> str:
        return f"Keyring(provider={self._provider!r}, regions={self._regions.names!r})"

    @property
    def provider(self) -> KeyProvider:
        return self._provider

    @property
    def regions(self) -> Regions:
        return self._regions

    @property
    def clock(self) -> Clock:
        return self._clock

    @property
    def cache(self) -> DataKeyCache:
        return self._data_keys.cache

    def close(self) -> None:
        """Drop cached keys and close the provider's sessions. Idempotent."""
        self._data_keys.cache.clear()
        self._region_keys.clear()
        self._provider.close()

    # -- data keys -----------------------------------------------------------------

    @overload
    def dek_for_subject(
        self, conn: Connection, region: str, subject_id: str, *, create: Literal[True] = ...
    ) -> DataKey: ...

    @overload
    def dek_for_subject(
        self, conn: Connection, region: str, subject_id: str, *, create: bool
    ) -> DataKey | None: ...

    def dek_for_subject(
        self, conn: Connection, region: str, subject_id: str, *, create: bool = True
    ) -> DataKey | None:
        """The subject's current DEK, created (and stored wrapped) if it has none.

        Served from the cache when it can be: after a `rotate_dek` in another
        process, this may still be the previous version for up to one cache TTL
        (see `retire_dek`). Race-safe: when two transactions create a subject's
        first key at once, the unique (subject_id, version) makes one insert fail
        and that transaction uses the winner's key. With `create=False`, None when
        the subject has no key. Raises `KeyServiceUnavailable`, `DecryptionFailed`
        (a corrupt wrapped key).
        """
        return self._data_keys.for_subject(conn, region, subject_id, create=create)

    def new_subject_deks(
        self, conn: Connection, region: str, subject_ids: Sequence[str]
    ) -> dict[str, DataKey]:
        """First DEKs of subjects whose record ids this transaction just generated,
        created and stored in one go (bulk import). See `DataKeys.create_new`."""
        return self._data_keys.create_new(conn, region, subject_ids)

    def deks_by_id(
        self, conn: Connection, region: str, key_ids: Sequence[bytes]
    ) -> dict[bytes, DataKey]:
        """Many DEKs by id in one query, not cached (see `DataKeys.load_many`)."""
        return self._data_keys.load_many(conn, region, key_ids)

    def dek_by_id(self, conn: Connection, region: str, key_id: bytes) -> DataKey:
        """The DEK with this id (from a ciphertext header), for decryption.

        Raises `KeyDestroyed` when it no longer exists (its subject was shredded,
        or the version was retired after re-encryption).
        """
        return self._data_keys.by_id(conn, region, key_id)

    def seal(self, conn: Connection, subject_id: str, plaintext: bytes, ctx: FieldContext) -> bytes:
        """Seal one value under the subject's current DEK (created if needed)."""
        return seal(self.dek_for_subject(conn, ctx.region, subject_id), plaintext, ctx)

    def unseal(self, conn: Connection, blob: bytes, ctx: FieldContext) -> bytes:
        """Open one value with the DEK its header names. Errors as `dek_by_id` and `unseal`."""
        return unseal(self.dek_by_id(conn, ctx.region, key_id_of(blob)), blob, ctx)

    def rotate_dek(self, conn: Connection, region: str, subject_id: str) -> DataKey:
        """Start a new DEK version for the subject; it becomes the current key.

        Older versions still decrypt (`dek_by_id`). Other processes may still seal
        under the previous version for a while; see `retire_dek` for when it can go.
        """
        return self._data_keys.rotate(conn, region, subject_id)

    def dek_retirable_at(self, conn: Connection, region: str, key_id: bytes) -> datetime | None:
        """From when `retire_dek` accepts this DEK version (and a re-scan must start).

        That is: when a newer version was created, plus the cache TTL, plus the
        in-flight margin (`bastion.crypto.datakeys`). None for a subject's current
        key (never retirable) and for a key that no longer exists.
        """
        return self._data_keys.retirable_at(conn, region, key_id)

    def retire_dek(
        self,
        conn: Connection,
        region: str,
        key_id: bytes,
        *,
        rescanned_at: datetime | None = None,
    ) -> bool:
        """Delete one superseded DEK version; False if it is already gone.

        The caller first re-seals (`envelope.reseal`) every value still under it.
        Values other processes seal under it *after* `rotate_dek` -- while their
        caches still take it for current -- are only found by a re-scan that starts
        at `dek_retirable_at` or later. `rescanned_at` is when the caller's last
        re-scan began; leave it out only when the re-scan ran in this transaction
        (it then counts as now).

        Raises `KeyInUse` (409): for the subject's current version (rotate first, or
        `shred` to erase), before `dek_retirable_at`, or when `rescanned_at` is
        earlier than that.
        """
        return self._data_keys.retire(conn, region, key_id, rescanned_at=rescanned_at)

    def shred(self, conn: Connection, region: str, subject_id: str) -> int:
        """Crypto-shred a data subject: delete every DEK version, evict them; the count.

        The caller clears the subject's blind indexes and tombstones its records in
        the same transaction. Other processes stop decrypting within one cache TTL.
        """
        return self._data_keys.shred(conn, region, subject_id)

    # -- blind indexes and region keys ---------------------------------------------

    def blind_index(
        self,
        region: str,
        table: str,
        field: str,
        value: str,
        *,
        kind: IndexKind,
        conn: Connection | None = None,
    ) -> bytes:
        """The blind index of `value` normalised as `kind`, for `table.field` in `region`.

        `blindindex.DEFAULT_BITS` (16) bits unless configured; expect false
        positives and filter them after decrypting. Raises `UnindexableValue`.
        Pass `conn` when calling inside a write transaction on that region's
        database (the region's root key may have to be created in it).
        """
        return self.blind_indexer(region, conn=conn).index_value(table, field, value, kind=kind)

    def blind_indexer(self, region: str, *, conn: Connection | None = None) -> BlindIndexer:
        """The region's `BlindIndexer` (root key loaded, or created on first use)."""
        return self._region_keys.blind_indexer(region, conn=conn)

    def unwrap_region_key(self, region: str, stored: repo.StoredRegionKey) -> bytes:
        """The key material of one `region_keys` row of `region` (for KEK rotation).

        `stored` comes from that region's database. Nothing is cached, and the
        caller must not keep or log the result. Raises `ResidencyViolation` when
        the row names another region, `DecryptionFailed` when the wrapped bytes,
        id, purpose or KEK version were tampered with, `KeyDestroyed` when its KEK
        version is gone, `KeyServiceUnavailable` when the provider is unreachable.
        """
        return self._region_keys.unwrap_region_key(region, stored)

    # -- KEK versions --------------------------------------------------------------

    def current_kek_version(self, region: str) -> int | None:
        """The KEK version new keys are wrapped under (the highest), None before first use."""
        versions = self._provider.versions(region)
        return versions[-1] if versions else None

    def ping(self, region: str) -> bool:
        """Whether the region's key provider answers (for readiness probes)."""
        try:
            self._provider.versions(region)
        except BastionError:
            return False
        return True


def build_keyring(
    settings: KeySettings, *, mode: str, home: Path, regions: Regions, clock: Clock
) -> Keyring:
    """The keyring `settings` describe (provider, cache, blind index length).

    Raises `KeyConfigurationError` for an unusable configuration (e.g. the local
    provider in production mode). HSM sessions open lazily, on first use.
    """
    return Keyring(
        regions=regions,
        provider=build_provider(settings, mode=mode, home=home),
        clock=clock,
        cache_size=settings.cache_size,
        cache_ttl=timedelta(seconds=settings.cache_ttl_seconds),
        blind_index_bits=settings.blind_index_bits,
    )
