"""The keyring: data subjects' keys and blind indexes, as the record pipeline uses them.

Key hierarchy, per region::

    KEK versions (in the KeyProvider: HSM token or dev files)
      -> wrap -> one DEK per data subject, per DEK version   (table subject_keys)
      -> wrap -> the blind-index root key                     (table region_keys)
                   -> HKDF -> one HMAC key per table and field

A DEK is 32 bytes from `os.urandom`, stored only wrapped (AES-GCM under the
region's current KEK version) with AAD binding region, subject id, DEK id, DEK
version and KEK version: a wrapped DEK copied to another subject's row or to
another region's database does not unwrap. KEKs are per region, so an EU DEK is
never wrapped by, nor readable with, a US KEK.

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

import os
import threading
from datetime import timedelta
from pathlib import Path
from typing import Literal, overload
from weakref import WeakKeyDictionary

import structlog
from sqlalchemy import Connection
from sqlalchemy.engine import RootTransaction
from sqlalchemy.exc import IntegrityError

from bastion.clock import Clock
from bastion.crypto import aad
from bastion.crypto import repository as repo
from bastion.crypto.blindindex import BlindIndexer
from bastion.crypto.cache import DataKeyCache
from bastion.crypto.envelope import (
    DEK_BYTES,
    DataKey,
    FieldContext,
    key_id_of,
    new_key_id,
    seal,
    unseal,
)
from bastion.crypto.errors import KeyConfigurationError, KeyDestroyed, KeyInUse
from bastion.crypto.normalize import IndexKind
from bastion.crypto.providers import KeyProvider, build_provider
from bastion.crypto.settings import KeySettings
from bastion.crypto.tables import SUBJECT_ID_MAX_LENGTH
from bastion.errors import BastionError, ResidencyViolation
from bastion.residency.databases import Regions
from bastion.residency.ids import InvalidId, RecordId

log = structlog.get_logger("bastion.crypto")

BLIND_INDEX_PURPOSE = "blind-index"


class Keyring:
    """Per-subject DEKs and per-field blind indexes of every region. Thread-safe.

    Methods that take `conn` run inside the caller's transaction on `region`'s
    database (checked: a connection of another region's engine is refused).
    """

    def __init__(
        self,
        *,
        regions: Regions,
        provider: KeyProvider,
        clock: Clock,
        cache_size: int = 10_000,
        cache_ttl: timedelta = timedelta(minutes=5),
        blind_index_bits: int = 16,
    ) -> None:
        self._regions = regions
        self._provider = provider
        self._clock = clock
        self._cache = DataKeyCache(size=cache_size, ttl=cache_ttl, clock=clock)
        self._bits = blind_index_bits
        self._indexers: dict[str, BlindIndexer] = {}
        self._pending: WeakKeyDictionary[RootTransaction, set[bytes]] = WeakKeyDictionary()
        self._lock = threading.Lock()

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
        return self._cache

    def close(self) -> None:
        """Drop cached keys and close the provider's sessions."""
        self._cache.clear()
        with self._lock:
            self._indexers.clear()
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

        Race-safe: when two transactions create a subject's first key at once, the
        unique (subject_id, version) makes one insert fail and that transaction
        uses the winner's key. With `create=False`, None when the subject has no key.
        Raises `KeyServiceUnavailable`, `DecryptionFailed` (a corrupt wrapped key).
        """
        self._check(conn, region, subject_id)
        cached = self._cache.current(region, subject_id)
        if cached is not None:
            return cached
        stored = repo.current_subject_key(conn, subject_id)
        if stored is not None:
            key = self._cache.by_id(region, bytes.fromhex(stored.id))
            if key is None:
                key = self._unwrap_subject(region, stored)
            self._remember(conn, key, current=True)
            return key
        if not create:
            return None
        return self._create_dek(conn, region, subject_id, version=1)

    def dek_by_id(self, conn: Connection, region: str, key_id: bytes) -> DataKey:
        """The DEK with this id (from a ciphertext header), for decryption.

        Raises `KeyDestroyed` when it no longer exists (its subject was shredded,
        or the version was retired after re-encryption).
        """
        self._check(conn, region)
        cached = self._cache.by_id(region, key_id)
        if cached is not None:
            return cached
        stored = repo.subject_key(conn, key_id.hex())
        if stored is None:
            raise KeyDestroyed(
                f"data key {key_id.hex()} of region {region!r} no longer exists "
                "(its data subject was erased); the value cannot be recovered"
            )
        key = self._unwrap_subject(region, stored)
        self._remember(conn, key)
        return key

    def seal(self, conn: Connection, subject_id: str, plaintext: bytes, ctx: FieldContext) -> bytes:
        """Seal one value under the subject's current DEK (created if needed)."""
        return seal(self.dek_for_subject(conn, ctx.region, subject_id), plaintext, ctx)

    def unseal(self, conn: Connection, blob: bytes, ctx: FieldContext) -> bytes:
        """Open one value with the DEK its header names. Errors as `dek_by_id` and `unseal`."""
        return unseal(self.dek_by_id(conn, ctx.region, key_id_of(blob)), blob, ctx)

    def rotate_dek(self, conn: Connection, region: str, subject_id: str) -> DataKey:
        """Start a new DEK version for the subject; it becomes the current key.

        Older versions still decrypt (`dek_by_id`) until the caller has re-sealed
        the subject's values (`envelope.reseal`) and calls `retire_dek` on them.
        """
        self._check(conn, region, subject_id)
        current = repo.current_subject_key(conn, subject_id)
        version = 1 if current is None else current.version + 1
        self._cache.evict_subject(region, subject_id)
        return self._create_dek(conn, region, subject_id, version=version)

    def retire_dek(self, conn: Connection, region: str, key_id: bytes) -> bool:
        """Delete one superseded DEK version (after re-encryption); False if already gone.

        Raises `KeyInUse` for the subject's current version (use `shred` to erase).
        """
        self._check(conn, region)
        stored = repo.subject_key(conn, key_id.hex())
        if stored is None:
            return False
        current = repo.current_subject_key(conn, stored.subject_id)
        if current is not None and current.id == stored.id:
            raise KeyInUse(
                f"data key {key_id.hex()} is its subject's current key; rotate first, "
                "or shred the subject"
            )
        deleted = repo.delete_subject_key(conn, stored.id)
        self._cache.evict_key(region, key_id)
        return deleted

    def shred(self, conn: Connection, region: str, subject_id: str) -> int:
        """Crypto-shred a data subject: delete every DEK version, evict them; the count.

        The caller clears the subject's blind indexes and tombstones its records in
        the same transaction. Other processes stop decrypting within one cache TTL.
        """
        self._check(conn, region, subject_id)
        deleted = repo.delete_subject_keys(conn, subject_id)
        self._cache.evict_subject(region, subject_id, shredded=True)
        log.info("subject_keys_shredded", region=region, subject_id=subject_id, keys=deleted)
        return deleted

    # -- blind indexes -------------------------------------------------------------

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
        indexer = self._indexers.get(region)
        if indexer is not None:
            return indexer
        if conn is not None:
            self._check(conn, region)
            key_id, root = self._region_key(conn, region, BLIND_INDEX_PURPOSE)
            indexer = BlindIndexer(region, root, bits=self._bits)
            if not self._cacheable(conn, key_id):
                return indexer
        else:
            database = self._regions.get(region)
            with database.transaction() as read:
                found = self._region_key(read, region, BLIND_INDEX_PURPOSE, create=False)
            if found is None:
                with database.transaction(write=True) as write:
                    found = self._region_key(write, region, BLIND_INDEX_PURPOSE)
            indexer = BlindIndexer(region, found[1], bits=self._bits)
        with self._lock:
            return self._indexers.setdefault(region, indexer)

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

    # -- internals -----------------------------------------------------------------

    def _check(self, conn: Connection, region: str, subject_id: str | None = None) -> None:
        database = self._regions.get(region)
        if conn.engine is not database.engine:
            raise ResidencyViolation(
                f"a key operation for region {region!r} was given another database's connection"
            )
        if subject_id is None:
            return
        if not isinstance(subject_id, str) or not 0 < len(subject_id) <= SUBJECT_ID_MAX_LENGTH:
            raise ValueError(f"a subject id is 1-{SUBJECT_ID_MAX_LENGTH} characters")
        try:
            record = RecordId.parse(subject_id)
        except InvalidId:
            return  # not a record id: an opaque subject identifier
        if record.region != region:
            raise ResidencyViolation(
                f"subject {subject_id} belongs to region {record.region!r}, not {region!r}"
            )

    def _kek_for_new_keys(self, conn: Connection, region: str) -> int:
        """The KEK version to wrap a new key under, holding the shared key lock.

        The first key of a region creates KEK version 1 (and the region keys),
        under the exclusive lock, unless the database already holds wrapped keys:
        then the provider is not the one they were made with, and creating a fresh
        KEK would hide that.
        """
        bootstrapped = False
        if not self._provider.versions(region):
            repo.lock_keys_exclusive(conn, region)
            if not self._provider.versions(region):
                if repo.has_any_key(conn):
                    raise KeyConfigurationError(
                        f"the key provider ({self._provider.name}) holds no KEK for region "
                        f"{region!r}, but its database holds wrapped keys: is this the "
                        "provider, token or BASTION_HOME they were made with?"
                    )
                self._provider.create_version(region, 1)
                bootstrapped = True
        repo.lock_keys_shared(conn, region)
        versions = self._provider.versions(region)
        if not versions:  # pragma: no cover - destroyed between two calls
            raise KeyConfigurationError(f"region {region!r} has no KEK")
        if bootstrapped:
            # The region's other keys are born with its KEK, in this transaction: a
            # later `blind_index` without `conn` then never has to write (on SQLite
            # that would wait for the write lock this very transaction may hold).
            self._region_key(conn, region, BLIND_INDEX_PURPOSE)
        return versions[-1]

    def _create_dek(
        self, conn: Connection, region: str, subject_id: str, *, version: int
    ) -> DataKey:
        kek_version = self._kek_for_new_keys(conn, region)
        key_id = new_key_id()
        material = os.urandom(DEK_BYTES)
        wrapped = self._provider.wrap(
            region,
            kek_version,
            material,
            aad.dek_wrap(region, subject_id, key_id, version, kek_version),
        )
        stored = repo.StoredSubjectKey(
            id=key_id.hex(),
            region=region,
            subject_id=subject_id,
            version=version,
            kek_version=kek_version,
            wrapped=wrapped,
        )
        try:
            with conn.begin_nested():
                repo.insert_subject_key(conn, stored, now=self._clock.now())
        except IntegrityError:
            # Another transaction created this version first (and has committed,
            # or the insert would still be waiting): use its key.
            winner = repo.current_subject_key(conn, subject_id)
            if winner is None or winner.version < version:
                raise
            key = self._unwrap_subject(region, winner)
            self._remember(conn, key, current=True)
            return key
        self._mark_pending(conn, key_id)
        log.debug(
            "subject_key_created",
            region=region,
            subject_id=subject_id,
            key_id=key_id.hex(),
            version=version,
            kek_version=kek_version,
        )
        return DataKey(
            key_id=key_id, region=region, subject_id=subject_id, version=version, material=material
        )

    def _unwrap_subject(self, region: str, stored: repo.StoredSubjectKey) -> DataKey:
        if stored.region != region:
            raise ResidencyViolation(
                f"data key {stored.id} is stored for region {stored.region!r} in {region!r}"
            )
        key_id = bytes.fromhex(stored.id)
        material = self._provider.unwrap(
            region,
            stored.kek_version,
            stored.wrapped,
            aad.dek_wrap(region, stored.subject_id, key_id, stored.version, stored.kek_version),
        )
        return DataKey(
            key_id=key_id,
            region=region,
            subject_id=stored.subject_id,
            version=stored.version,
            material=material,
        )

    @overload
    def _region_key(
        self, conn: Connection, region: str, purpose: str, *, create: Literal[True] = ...
    ) -> tuple[bytes, bytes]: ...

    @overload
    def _region_key(
        self, conn: Connection, region: str, purpose: str, *, create: bool
    ) -> tuple[bytes, bytes] | None: ...

    def _region_key(
        self, conn: Connection, region: str, purpose: str, *, create: bool = True
    ) -> tuple[bytes, bytes] | None:
        """(key id, key) of the region key for `purpose`, created if absent and `create`."""
        stored = repo.region_key(conn, purpose)
        if stored is None and create:
            kek_version = self._kek_for_new_keys(conn, region)
            key_id = new_key_id()
            material = os.urandom(32)
            wrapped = self._provider.wrap(
                region,
                kek_version,
                material,
                aad.region_key_wrap(region, purpose, key_id, kek_version),
            )
            new = repo.StoredRegionKey(
                id=key_id.hex(),
                region=region,
                purpose=purpose,
                kek_version=kek_version,
                wrapped=wrapped,
            )
            try:
                with conn.begin_nested():
                    repo.insert_region_key(conn, new, now=self._clock.now())
            except IntegrityError:
                stored = repo.region_key(conn, purpose)
                if stored is None:
                    raise
            else:
                self._mark_pending(conn, key_id)
                log.info("region_key_created", region=region, purpose=purpose)
                return key_id, material
        if stored is None:
            return None
        return bytes.fromhex(stored.id), self.unwrap_region_key(region, stored)

    def unwrap_region_key(self, region: str, stored: repo.StoredRegionKey) -> bytes:
        if stored.region != region:
            raise ResidencyViolation(
                f"region key {stored.id} is stored for region {stored.region!r} in {region!r}"
            )
        key_id = bytes.fromhex(stored.id)
        return self._provider.unwrap(
            region,
            stored.kek_version,
            stored.wrapped,
            aad.region_key_wrap(region, stored.purpose, key_id, stored.kek_version),
        )

    def _mark_pending(self, conn: Connection, key_id: bytes) -> None:
        transaction = conn.get_transaction()
        if transaction is not None:
            with self._lock:
                self._pending.setdefault(transaction, set()).add(key_id)

    def _cacheable(self, conn: Connection, key_id: bytes) -> bool:
        """False for a key the still-open transaction created (it may roll back)."""
        transaction = conn.get_transaction()
        if transaction is None:
            return False
        with self._lock:
            return key_id not in self._pending.get(transaction, ())

    def _remember(self, conn: Connection, key: DataKey, *, current: bool = False) -> None:
        if self._cacheable(conn, key.id):
            self._cache.put(key, current=current)


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
