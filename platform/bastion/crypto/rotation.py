"""KEK rotation (online, resumable), KEK status and KEK retirement, per region.

Rotating a region's KEK creates a new KEK version -- from that moment every new
key is wrapped under it -- then re-wraps every stored key (subject DEKs, then the
region keys) under it, in batches. Ciphertexts are never touched: a DEK's bytes
do not change, only their wrapping. Each batch is its own transaction and
advances a cursor persisted in `key_rotations` (keys are walked in id order), so
a rotation that crashes or is killed resumes where it stopped, and re-running a
finished batch changes nothing (keys already under the new version are skipped).
Reads and writes go on meanwhile: a key unwraps under whichever version its row
names, and both versions exist until the old one is retired.

Retiring (destroying) a KEK version is refused while any key is still wrapped
under it, or when it is the current version. Destroy a version only once it is
older than the backup retention period: backups holding keys wrapped under it
become unreadable -- which is the point for shredded subjects (see
`bastion.crypto.keyring`), and a loss for everything else in those backups.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Literal, overload

import structlog
from sqlalchemy import Connection

from bastion.crypto import aad
from bastion.crypto import repository as repo
from bastion.crypto.errors import KeyInUse
from bastion.crypto.keyring import Keyring
from bastion.crypto.repository import Rotation
from bastion.errors import Conflict, NotFound

log = structlog.get_logger("bastion.crypto")

RUNNING = "running"
COMPLETED = "completed"
# A pass that ends with keys still under older versions (written by a process that
# chose the old version just before the new one existed) starts another pass.
MAX_PASSES = 3


@dataclass(frozen=True, slots=True)
class RotationProgress:
    """Reported after each committed batch: `done` of `total` keys re-wrapped so far."""

    region: str
    rotation_id: str
    to_version: int
    done: int
    total: int
    finished: bool


ProgressCallback = Callable[[RotationProgress], None]


@dataclass(frozen=True, slots=True)
class KekVersionStatus:
    version: int
    exists: bool  # False: referenced by stored keys but gone from the provider
    current: bool
    subject_keys: int
    region_keys: int


@dataclass(frozen=True, slots=True)
class KekStatus:
    region: str
    provider: str
    current_version: int | None
    versions: tuple[KekVersionStatus, ...]
    last_rotation: Rotation | None


class KekRotation:
    """Rotates one region's KEK at a time; see the module docstring."""

    def __init__(self, keyring: Keyring, *, batch_size: int = 500) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be positive")
        self._keyring = keyring
        self._provider = keyring.provider
        self._batch_size = batch_size

    def run(self, region: str, *, progress: ProgressCallback | None = None) -> Rotation:
        """Resume the region's running rotation, or start a new one; run it to the end."""
        return self._drive(region, self._start(region, resume_only=False), progress)

    def resume(self, region: str, *, progress: ProgressCallback | None = None) -> Rotation | None:
        """Finish the region's running rotation; None (and nothing done) if there is none."""
        rotation = self._start(region, resume_only=True)
        return None if rotation is None else self._drive(region, rotation, progress)

    @overload
    def _start(self, region: str, *, resume_only: Literal[False]) -> Rotation: ...

    @overload
    def _start(self, region: str, *, resume_only: bool) -> Rotation | None: ...

    def _start(self, region: str, *, resume_only: bool) -> Rotation | None:
        database = self._keyring.regions.get(region)
        with database.transaction(write=True) as conn:
            repo.lock_keys_exclusive(conn, region)
            running = repo.running_rotation(conn, region, lock=True)
            if running is not None:
                log.info("kek_rotation_resumed", region=region, rotation_id=running.id)
                # Idempotent: a crash may have come between the row and the KEK.
                self._provider.create_version(region, running.to_version)
                newest = self._provider.versions(region)[-1]
                if newest > running.to_version:
                    # Someone made a newer KEK meanwhile: new keys are wrapped under it,
                    # so moving everything to the older target would never finish.
                    changes: dict[str, Any] = {
                        "to_version": newest,
                        "cursor": "",
                        "passes": running.passes + 1,
                        "total": running.rewrapped + repo.count_not_at(conn, newest),
                    }
                    repo.update_rotation(conn, running.id, **changes)
                    running = replace(running, **changes)
                return running
            if resume_only:
                return None
            versions = self._provider.versions(region)
            referenced = repo.kek_usage(conn)
            target = max([0, *versions, *referenced]) + 1
            now = self._keyring.clock.now()
            rotation = Rotation(
                id=os.urandom(16).hex(),
                region=region,
                from_version=versions[-1] if versions else None,
                to_version=target,
                state=RUNNING,
                cursor="",
                total=repo.count_not_at(conn, target),
                rewrapped=0,
                passes=1,
                started_at=now,
                updated_at=now,
                completed_at=None,
            )
            repo.insert_rotation(conn, rotation)
            # Under the exclusive key lock: writers that chose the old version have
            # committed, and every later one sees the new version.
            self._provider.create_version(region, target)
        log.info(
            "kek_rotation_started",
            region=region,
            rotation_id=rotation.id,
            from_version=rotation.from_version,
            to_version=target,
            keys=rotation.total,
        )
        return rotation

    def _drive(
        self, region: str, rotation: Rotation, progress: ProgressCallback | None
    ) -> Rotation:
        while rotation.state == RUNNING:
            rotation = self._step(region, rotation.id)
            if progress is not None:
                progress(
                    RotationProgress(
                        region=region,
                        rotation_id=rotation.id,
                        to_version=rotation.to_version,
                        done=rotation.rewrapped,
                        total=rotation.total,
                        finished=rotation.state == COMPLETED,
                    )
                )
        return rotation

    def _step(self, region: str, rotation_id: str) -> Rotation:
        """One batch in one transaction: re-wrap keys after the cursor, or finish the pass."""
        database = self._keyring.regions.get(region)
        with database.transaction(write=True) as conn:
            rotation = repo.rotation(conn, rotation_id, lock=True)
            if rotation is None:
                raise NotFound(f"KEK rotation {rotation_id} of region {region!r} is gone")
            if rotation.state != RUNNING:
                return rotation
            now = self._keyring.clock.now()
            target = rotation.to_version
            batch = repo.subject_keys_after(
                conn, rotation.cursor, limit=self._batch_size, lock=True
            )
            if batch:
                rewrapped = 0
                for stored in batch:
                    if stored.kek_version != target and repo.rewrap_subject_key(
                        conn,
                        stored.id,
                        expected_kek_version=stored.kek_version,
                        kek_version=target,
                        wrapped=self._rewrap_subject(region, stored, target),
                        now=now,
                    ):
                        rewrapped += 1
                changes: dict[str, Any] = {
                    "cursor": batch[-1].id,
                    "rewrapped": rotation.rewrapped + rewrapped,
                    "updated_at": now,
                }
            else:
                changes = self._finish_pass(conn, region, rotation, now)
            repo.update_rotation(conn, rotation.id, **changes)
            return replace(rotation, **changes)

    def _finish_pass(
        self, conn: Connection, region: str, rotation: Rotation, now: datetime
    ) -> dict[str, Any]:
        target = rotation.to_version
        rewrapped = 0
        for stored in repo.all_region_keys(conn, lock=True):
            if stored.kek_version == target:
                continue
            material = self._keyring.unwrap_region_key(region, stored)
            key_id = bytes.fromhex(stored.id)
            wrapped = self._provider.wrap(
                region,
                target,
                material,
                aad.region_key_wrap(region, stored.purpose, key_id, target),
            )
            if repo.rewrap_region_key(
                conn,
                stored.id,
                expected_kek_version=stored.kek_version,
                kek_version=target,
                wrapped=wrapped,
                now=now,
            ):
                rewrapped += 1
        remaining = repo.count_not_at(conn, target)
        changes: dict[str, Any] = {
            "rewrapped": rotation.rewrapped + rewrapped,
            "updated_at": now,
        }
        if remaining == 0:
            changes.update(state=COMPLETED, completed_at=now)
            log.info(
                "kek_rotation_completed",
                region=region,
                rotation_id=rotation.id,
                to_version=target,
                rewrapped=changes["rewrapped"],
            )
        elif rotation.passes < MAX_PASSES:
            changes.update(cursor="", passes=rotation.passes + 1, total=rotation.total + remaining)
        else:
            raise Conflict(
                f"the KEK rotation of region {region!r} still finds {remaining} keys under "
                "older versions after several passes; is another process wrapping under an "
                "old version? Re-run it to resume"
            )
        return changes

    def _rewrap_subject(self, region: str, stored: repo.StoredSubjectKey, target: int) -> bytes:
        key_id = bytes.fromhex(stored.id)
        material = self._provider.unwrap(
            region,
            stored.kek_version,
            stored.wrapped,
            aad.dek_wrap(region, stored.subject_id, key_id, stored.version, stored.kek_version),
        )
        return self._provider.wrap(
            region,
            target,
            material,
            aad.dek_wrap(region, stored.subject_id, key_id, stored.version, target),
        )


def kek_status(keyring: Keyring, region: str) -> KekStatus:
    """The region's KEK versions, what each wraps, and its latest rotation."""
    database = keyring.regions.get(region)
    versions = keyring.provider.versions(region)
    with database.transaction() as conn:
        usage = repo.kek_usage(conn)
        recent = repo.recent_rotations(conn, region, limit=1)
    current = versions[-1] if versions else None
    rows = tuple(
        KekVersionStatus(
            version=version,
            exists=version in versions,
            current=version == current,
            subject_keys=usage.get(version, repo.KekUsage()).subject_keys,
            region_keys=usage.get(version, repo.KekUsage()).region_keys,
        )
        for version in sorted({*versions, *usage})
    )
    return KekStatus(
        region=region,
        provider=keyring.provider.name,
        current_version=current,
        versions=rows,
        last_rotation=recent[0] if recent else None,
    )


def retire_kek(keyring: Keyring, region: str, version: int) -> None:
    """Destroy KEK `version` of `region` for good.

    Raises `NotFound` if it does not exist, `KeyInUse` if it is the current
    version or any stored key is still wrapped under it.
    """
    database = keyring.regions.get(region)
    with database.transaction(write=True) as conn:
        repo.lock_keys_exclusive(conn, region)
        versions = keyring.provider.versions(region)
        if version not in versions:
            raise NotFound(f"region {region!r} has no KEK version {version}")
        if version == versions[-1]:
            raise KeyInUse(
                f"KEK version {version} is the current KEK of region {region!r}; rotate first"
            )
        usage = repo.kek_usage(conn).get(version)
        if usage is not None and usage.total:
            raise KeyInUse(
                f"KEK version {version} of region {region!r} still wraps {usage.total} keys; "
                f"finish a KEK rotation first (bastion keys rotate-kek --region {region})"
            )
        keyring.provider.destroy_version(region, version)
    log.warning("kek_retired", region=region, version=version)
