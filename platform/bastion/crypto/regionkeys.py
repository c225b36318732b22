"""Region-wide keys, and what every key of a region shares: its database, its KEK.

A region has, besides its data subjects' DEKs (`bastion.crypto.datakeys`), keys
of its own, one per purpose, stored wrapped in `region_keys`: today the
blind-index root key, from which `BlindIndexer` derives one HMAC key per table
and field. They are born with the region's first KEK version, in the
transaction that creates the region's first key.

Also here, because data keys need them as much as region keys do:
- `RegionKeys.check`: a key operation of a region runs on that region's database
  (and a subject's keys live in the subject's own region);
- `RegionKeys.kek_for_new_keys`: the KEK version a new key is wrapped under,
  chosen under the shared key lock that KEK rotation and retirement take
  exclusively (see `bastion.crypto.repository`);
- `UncommittedKeys`: a key created by a still-open transaction is never cached,
  as that transaction may yet roll back.
"""

from __future__ import annotations

import os
import threading
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
from bastion.crypto.envelope import new_key_id
from bastion.crypto.errors import KeyConfigurationError
from bastion.crypto.providers import KeyProvider
from bastion.crypto.tables import SUBJECT_ID_MAX_LENGTH
from bastion.errors import ResidencyViolation
from bastion.residency.databases import Regions
from bastion.residency.ids import InvalidId, RecordId

log = structlog.get_logger("bastion.crypto")

BLIND_INDEX_PURPOSE = "blind-index"
REGION_KEY_BYTES = 32


class UncommittedKeys:
    """Ids of keys created by transactions that are still open. Thread-safe.

    A key may be cached (and so used by other transactions) only once the
    transaction that created it has committed: a key created and then rolled back
    must never seal anything. Entries go away with their transaction (weakly held).
    """

    def __init__(self) -> None:
        self._pending: WeakKeyDictionary[RootTransaction, set[bytes]] = WeakKeyDictionary()
        self._lock = threading.Lock()

    def add(self, conn: Connection, key_id: bytes) -> None:
        """Note that `conn`'s open transaction created the key `key_id`."""
        transaction = conn.get_transaction()
        if transaction is not None:
            with self._lock:
                self._pending.setdefault(transaction, set()).add(key_id)

    def cacheable(self, conn: Connection, key_id: bytes) -> bool:
        """False for a key the still-open transaction created (it may roll back)."""
        transaction = conn.get_transaction()
        if transaction is None:
            return False
        with self._lock:
            return key_id not in self._pending.get(transaction, ())


class RegionKeys:
    """Each region's KEK choice, region-wide keys and blind indexers. Thread-safe."""

    def __init__(
        self,
        *,
        regions: Regions,
        provider: KeyProvider,
        clock: Clock,
        blind_index_bits: int,
        uncommitted: UncommittedKeys,
    ) -> None:
        self._regions = regions
        self._provider = provider
        self._clock = clock
        self._bits = blind_index_bits
        self._uncommitted = uncommitted
        self._indexers: dict[str, BlindIndexer] = {}
        self._lock = threading.Lock()

    def clear(self) -> None:
        """Forget the loaded blind indexers (their root keys)."""
        with self._lock:
            self._indexers.clear()

    def check(self, conn: Connection, region: str, subject_id: str | None = None) -> None:
        """Refuse `conn` unless it is `region`'s database, and a subject of another region.

        Raises `NotFound` (unknown region), `ResidencyViolation`, `ValueError` (a
        subject id that is empty or too long). A subject id that is not a record id
        is an opaque identifier and passes.
        """
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

    def kek_for_new_keys(self, conn: Connection, region: str) -> int:
        """The KEK version to wrap a new key under, holding the shared key lock.

        The first key of a region creates KEK version 1 (and the region keys),
        under the exclusive lock, unless the database already holds wrapped keys:
        then the provider is not the one they were made with, and creating a fresh
        KEK would hide that (`KeyConfigurationError`).
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
            self.region_key(conn, region, BLIND_INDEX_PURPOSE)
        return versions[-1]

    # -- region keys ---------------------------------------------------------------

    @overload
    def region_key(
        self, conn: Connection, region: str, purpose: str, *, create: Literal[True] = ...
    ) -> tuple[bytes, bytes]: ...

    @overload
    def region_key(
        self, conn: Connection, region: str, purpose: str, *, create: bool
    ) -> tuple[bytes, bytes] | None: ...

    def region_key(
        self, conn: Connection, region: str, purpose: str, *, create: bool = True
    ) -> tuple[bytes, bytes] | None:
        """(key id, key) of the region key for `purpose`, created if absent and `create`."""
        stored = repo.region_key(conn, purpose)
        if stored is None and create:
            kek_version = self.kek_for_new_keys(conn, region)
            key_id = new_key_id()
            material = os.urandom(REGION_KEY_BYTES)
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
                self._uncommitted.add(conn, key_id)
                log.info("region_key_created", region=region, purpose=purpose)
                return key_id, material
        if stored is None:
            return None
        return bytes.fromhex(stored.id), self.unwrap_region_key(region, stored)

    def unwrap_region_key(self, region: str, stored: repo.StoredRegionKey) -> bytes:
        """The key material of a `region_keys` row; see `Keyring.unwrap_region_key`."""
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

    # -- blind indexes -------------------------------------------------------------

    def blind_indexer(self, region: str, *, conn: Connection | None = None) -> BlindIndexer:
        """The region's `BlindIndexer` (root key loaded, or created on first use)."""
        indexer = self._indexers.get(region)
        if indexer is not None:
            return indexer
        if conn is not None:
            self.check(conn, region)
            key_id, root = self.region_key(conn, region, BLIND_INDEX_PURPOSE)
            indexer = BlindIndexer(region, root, bits=self._bits)
            if not self._uncommitted.cacheable(conn, key_id):
                return indexer
        else:
            database = self._regions.get(region)
            with database.transaction() as read:
                found = self.region_key(read, region, BLIND_INDEX_PURPOSE, create=False)
            if found is None:
                with database.transaction(write=True) as write:
                    found = self.region_key(write, region, BLIND_INDEX_PURPOSE)
            indexer = BlindIndexer(region, found[1], bits=self._bits)
        with self._lock:
            return self._indexers.setdefault(region, indexer)
