"""Data subjects' keys (DEKs): lookup, creation, rotation, retirement, shredding.

A DEK is 32 bytes from `os.urandom`, stored only wrapped (AES-GCM under the
region's current KEK version) in `subject_keys`, with AAD binding region,
subject id, DEK id, DEK version and KEK version: a wrapped DEK copied to another
subject's row or to another region's database does not unwrap. A subject's
current key is its highest version. Unwrapped keys are cached per process
(`DataKeyCache`); a newly created key only after its transaction commits.

DEK rotation and the window of stale "current" keys. `rotate` makes a new
version current, but every *other* process may go on taking the old version for
the subject's current key -- and sealing new values under it -- until its
cache's notion of "current" expires (one cache TTL), and a transaction that read
the old version just before the rotation committed may seal and commit a little
later still. Retiring the old version before the window is over would make
those values unreadable for good. So `retire` refuses until the caller's re-scan
(re-sealing every value still under the old version) began after

    superseded_at (the newer version's creation) + cache TTL + in-flight margin

where the margin covers transactions in flight around the rotation -- the
rotating one committing after its insert, one that read the old key and cached
it, one that sealed with that cached key -- and clock skew between hosts.
Every process must run with the same cache TTL (it comes from the shared settings).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from datetime import datetime, timedelta

import structlog
from sqlalchemy import Connection
from sqlalchemy.exc import IntegrityError

from bastion.clock import Clock
from bastion.crypto import aad
from bastion.crypto import repository as repo
from bastion.crypto.cache import DataKeyCache
from bastion.crypto.envelope import DEK_BYTES, DataKey, new_key_id
from bastion.crypto.errors import KeyDestroyed, KeyInUse
from bastion.crypto.providers import KeyProvider
from bastion.crypto.regionkeys import RegionKeys, UncommittedKeys
from bastion.errors import ResidencyViolation

log = structlog.get_logger("bastion.crypto")

# Requests run one short transaction each (PostgreSQL cuts every statement at 30 s);
# two minutes covers the three transactions of the window, and clock skew, with room.
IN_FLIGHT_MARGIN = timedelta(minutes=2)


class DataKeys:
    """The DEKs of every region's data subjects; `Keyring` holds the contracts."""

    def __init__(
        self,
        *,
        region_keys: RegionKeys,
        provider: KeyProvider,
        clock: Clock,
        cache: DataKeyCache,
        uncommitted: UncommittedKeys,
        in_flight_margin: timedelta,
    ) -> None:
        if in_flight_margin < timedelta(0):
            raise ValueError("in_flight_margin cannot be negative")
        self._regions = region_keys
        self._provider = provider
        self._clock = clock
        self._cache = cache
        self._uncommitted = uncommitted
        self._margin = in_flight_margin

    @property
    def cache(self) -> DataKeyCache:
        return self._cache

    def for_subject(
        self, conn: Connection, region: str, subject_id: str, *, create: bool
    ) -> DataKey | None:
        self._regions.check(conn, region, subject_id)
        cached = self._cache.current(region, subject_id)
        if cached is not None:
            return cached
        stored = repo.current_subject_key(conn, subject_id)
        if stored is not None:
            key = self._cache.by_id(region, bytes.fromhex(stored.id))
            if key is None:
                key = self._unwrap(region, stored)
            self._remember(conn, key, current=True)
            return key
        if not create:
            return None
        return self._create(conn, region, subject_id, version=1)

    def by_id(self, conn: Connection, region: str, key_id: bytes) -> DataKey:
        self._regions.check(conn, region)
        cached = self._cache.by_id(region, key_id)
        if cached is not None:
            return cached
        stored = repo.subject_key(conn, key_id.hex())
        if stored is None:
            raise KeyDestroyed(
                f"data key {key_id.hex()} of region {region!r} no longer exists "
                "(its data subject was erased); the value cannot be recovered"
            )
        key = self._unwrap(region, stored)
        self._remember(conn, key)
        return key

    def rotate(self, conn: Connection, region: str, subject_id: str) -> DataKey:
        self._regions.check(conn, region, subject_id)
        current = repo.current_subject_key(conn, subject_id)
        version = 1 if current is None else current.version + 1
        self._cache.evict_subject(region, subject_id)
        return self._create(conn, region, subject_id, version=version)

    def retirable_at(self, conn: Connection, region: str, key_id: bytes) -> datetime | None:
        self._regions.check(conn, region)
        stored = repo.subject_key(conn, key_id.hex())
        if stored is None:
            return None
        superseded = repo.superseded_at(conn, stored.subject_id, stored.version)
        if superseded is None:
            return None
        return superseded + self._cache.ttl + self._margin

    def retire(
        self, conn: Connection, region: str, key_id: bytes, *, rescanned_at: datetime | None
    ) -> bool:
        self._regions.check(conn, region)
        stored = repo.subject_key(conn, key_id.hex())
        if stored is None:
            return False
        superseded = repo.superseded_at(conn, stored.subject_id, stored.version)
        if superseded is None:
            raise KeyInUse(
                f"data key {key_id.hex()} is its subject's current key; rotate first, "
                "or shred the subject"
            )
        retirable = superseded + self._cache.ttl + self._margin
        now = self._clock.now()
        if now < retirable:
            raise KeyInUse(
                f"data key {key_id.hex()} was superseded at {superseded.isoformat()}; other "
                "processes may seal new values under it until their key cache expires, so it "
                f"can be retired from {retirable.isoformat()}, after a re-scan that starts then"
            )
        if rescanned_at is not None and rescanned_at < retirable:
            raise KeyInUse(
                f"the re-scan of data key {key_id.hex()}'s values started at "
                f"{rescanned_at.isoformat()}, before {retirable.isoformat()}: values other "
                "processes sealed under it since may be missed; re-scan, then retire"
            )
        deleted = repo.delete_subject_key(conn, stored.id)
        self._cache.evict_key(region, key_id)
        log.info(
            "subject_key_retired",
            region=region,
            subject_id=stored.subject_id,
            key_id=stored.id,
            version=stored.version,
        )
        return deleted

    def shred(self, conn: Connection, region: str, subject_id: str) -> int:
        self._regions.check(conn, region, subject_id)
        deleted = repo.delete_subject_keys(conn, subject_id)
        self._cache.evict_subject(region, subject_id, shredded=True)
        log.info("subject_keys_shredded", region=region, subject_id=subject_id, keys=deleted)
        return deleted

    def load_many(
        self, conn: Connection, region: str, key_ids: Sequence[bytes]
    ) -> dict[bytes, DataKey]:
        """The keys among `key_ids` that exist, the ones the cache lacks loaded in one
        query — for decrypting a batch of other records (a bulk import's dedup
        candidates). What is loaded here is not cached: a bulk job must not evict the
        keys of the people live requests are working on. Keys that no longer exist are
        left out (their values were shredded)."""
        self._regions.check(conn, region)
        found: dict[bytes, DataKey] = {}
        missing: list[str] = []
        for key_id in set(key_ids):
            cached = self._cache.by_id(region, key_id)
            if cached is None:
                missing.append(key_id.hex())
            else:
                found[key_id] = cached
        for stored in repo.subject_keys_by_id(conn, missing):
            key = self._unwrap(region, stored)
            found[key.id] = key
        return found

    def create_new(
        self, conn: Connection, region: str, subject_ids: Sequence[str]
    ) -> dict[str, DataKey]:
        """First keys (version 1) of subjects that cannot have one yet — records whose
        ids this transaction just generated — wrapped under one KEK choice and stored
        in one statement: a bulk import's per-row key cost is the wrap, not round trips.
        A subject that does have a key makes the insert fail (primary key), never
        silently share or replace it."""
        if not subject_ids:
            return {}
        for subject_id in subject_ids:
            self._regions.check(conn, region, subject_id)
        kek_version = self._regions.kek_for_new_keys(conn, region)
        made = [self._wrapped(region, subject_id, 1, kek_version) for subject_id in subject_ids]
        stored = [row for row, _key in made]
        for _row, key in made:
            self._uncommitted.add(conn, key.id)
        repo.insert_subject_keys(conn, stored, now=self._clock.now())
        return {key.subject_id: key for _row, key in made}

    # -- internals -----------------------------------------------------------------

    def _wrapped(
        self, region: str, subject_id: str, version: int, kek_version: int
    ) -> tuple[repo.StoredSubjectKey, DataKey]:
        """A fresh DEK for the subject: its row (wrapped under the KEK version) and the key."""
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
        key = DataKey(
            key_id=key_id, region=region, subject_id=subject_id, version=version, material=material
        )
        return stored, key

    def _create(self, conn: Connection, region: str, subject_id: str, *, version: int) -> DataKey:
        kek_version = self._regions.kek_for_new_keys(conn, region)
        stored, key = self._wrapped(region, subject_id, version, kek_version)
        try:
            with conn.begin_nested():
                repo.insert_subject_key(conn, stored, now=self._clock.now())
        except IntegrityError:
            # Another transaction created this version first (and has committed,
            # or the insert would still be waiting): use its key.
            winner = repo.current_subject_key(conn, subject_id)
            if winner is None or winner.version < version:
                raise
            theirs = self._unwrap(region, winner)
            self._remember(conn, theirs, current=True)
            return theirs
        self._uncommitted.add(conn, key.id)
        log.debug(
            "subject_key_created",
            region=region,
            subject_id=subject_id,
            key_id=key.id.hex(),
            version=version,
            kek_version=kek_version,
        )
        return key

    def _unwrap(self, region: str, stored: repo.StoredSubjectKey) -> DataKey:
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

    def _remember(self, conn: Connection, key: DataKey, *, current: bool = False) -> None:
        if self._uncommitted.cacheable(conn, key.id):
            self._cache.put(key, current=current)
