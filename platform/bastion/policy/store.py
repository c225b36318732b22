"""Policy versions in the control database, and how every worker follows the active one.

Policies are files in git (`policies/`), loaded with pycasbin's file adapter. The
control database records each version's text, which version is active, and every
change (who, when, old -> new, the diff). That is how a reload reaches every
worker process on every host without a restart:

- `bastion policy reload` or `POST /v1/policy/reload` loads the files, refuses them
  when they do not parse or lint finds errors (the running policy stays), and
  otherwise records and activates the new version;
- each worker's `PolicyWatcher` polls the active version (one indexed read every
  few seconds), builds a changed policy aside from the recorded text and swaps it
  in with one assignment; a version it cannot build is logged and skipped, the
  previous policy keeps running;
- at start a process activates its own files only when their version has never
  been recorded, so an old host restarting with old files never rolls a newer
  policy back; otherwise it follows the active version.
"""

from __future__ import annotations

import difflib
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

import structlog
from sqlalchemy import Connection, insert, select, update
from typing_extensions import TypedDict

from bastion.audit import AuditEvent, append
from bastion.clock import Clock
from bastion.errors import RegionUnavailable
from bastion.policy.engine import Policy, PolicySource
from bastion.policy.tables import policy_active, policy_changes, policy_versions
from bastion.residency.databases import Database
from bastion.wire import Timestamp, closed

log = structlog.get_logger("bastion.policy")
_ACTIVE_ID = 1


@closed
class PolicyActivation(TypedDict):
    """A policy version made active: when, by whom, why, and what changed."""

    changed_at: Timestamp
    actor: str
    old_version: str | None
    """Null for the first version ever activated."""
    new_version: str
    reason: str
    diff: str
    """A unified diff of model.conf and policy.csv."""


@dataclass(frozen=True, slots=True)
class PolicyChange:
    changed_at: datetime
    actor: str
    old_version: str | None
    new_version: str
    reason: str
    diff: str

    def as_dict(self) -> PolicyActivation:
        return {
            "changed_at": self.changed_at.isoformat().replace("+00:00", "Z"),
            "actor": self.actor,
            "old_version": self.old_version,
            "new_version": self.new_version,
            "reason": self.reason,
            "diff": self.diff,
        }


class PolicyStore:
    def __init__(self, control: Database, clock: Clock) -> None:
        self._control = control
        self._clock = clock

    def active_version(self) -> str | None:
        with self._control.transaction() as conn:
            return conn.execute(
                select(policy_active.c.version).where(policy_active.c.id == _ACTIVE_ID)
            ).scalar_one_or_none()

    def source(self, version: str) -> PolicySource | None:
        with self._control.transaction() as conn:
            row = conn.execute(
                select(policy_versions).where(policy_versions.c.version == version)
            ).one_or_none()
        if row is None:
            return None
        return PolicySource(row.model_text, row.policy_text, row.origin)

    def activate(
        self, source: PolicySource, *, actor: str, reason: str, only_if_new: bool = False
    ) -> PolicyChange | None:
        """Record `source` and make it the active version; the change, or None if the
        active version already is this one (or, with `only_if_new`, if this version
        was ever recorded before)."""
        now = self._clock.now()
        with self._control.transaction(write=True) as conn:
            known = _known(conn, source.version)
            if known and only_if_new:
                return None
            if not known:
                conn.execute(
                    insert(policy_versions).values(
                        version=source.version,
                        model_text=source.model_text,
                        policy_text=source.policy_text,
                        origin=source.origin[:500],
                        recorded_at=now,
                        recorded_by=actor[:200],
                    )
                )
            old = conn.execute(
                select(policy_active.c.version).where(policy_active.c.id == _ACTIVE_ID)
            ).scalar_one_or_none()
            if old == source.version:
                return None
            if old is None:
                conn.execute(
                    insert(policy_active).values(
                        id=_ACTIVE_ID, version=source.version, changed_at=now
                    )
                )
                old_source = None
            else:
                conn.execute(
                    update(policy_active)
                    .where(policy_active.c.id == _ACTIVE_ID)
                    .values(version=source.version, changed_at=now)
                )
                old_row = conn.execute(
                    select(policy_versions).where(policy_versions.c.version == old)
                ).one()
                old_source = PolicySource(old_row.model_text, old_row.policy_text, old_row.origin)
            change = PolicyChange(
                changed_at=now,
                actor=actor[:200],
                old_version=old,
                new_version=source.version,
                reason=reason[:500],
                diff=text_diff(old_source, source),
            )
            conn.execute(
                insert(policy_changes).values(
                    changed_at=change.changed_at,
                    actor=change.actor,
                    old_version=change.old_version,
                    new_version=change.new_version,
                    reason=change.reason,
                    diff=change.diff,
                )
            )
            # The control database's audit log, in the same transaction.
            append(
                conn,
                AuditEvent.new(
                    self._clock,
                    actor=actor,
                    action="policy.activate",
                    entity="policy",
                    policy_version=source.version,
                    details={"old_version": old, "new_version": source.version},
                ),
            )
        return change

    def history(self, limit: int = 50) -> list[PolicyChange]:
        with self._control.transaction() as conn:
            rows = conn.execute(
                select(policy_changes)
                .order_by(policy_changes.c.changed_at.desc(), policy_changes.c.id.desc())
                .limit(limit)
            ).all()
        return [
            PolicyChange(r.changed_at, r.actor, r.old_version, r.new_version, r.reason, r.diff)
            for r in rows
        ]


def _known(conn: Connection, version: str) -> bool:
    found = conn.execute(
        select(policy_versions.c.version).where(policy_versions.c.version == version)
    ).first()
    return found is not None


def text_diff(old: PolicySource | None, new: PolicySource) -> str:
    """A unified diff of model.conf and policy.csv between two versions."""
    parts: list[str] = []
    for name, before, after in (
        ("model.conf", old.model_text if old else "", new.model_text),
        ("policy.csv", old.policy_text if old else "", new.policy_text),
    ):
        parts.extend(
            difflib.unified_diff(
                before.splitlines(keepends=True),
                after.splitlines(keepends=True),
                fromfile=f"a/{name}",
                tofile=f"b/{name}",
            )
        )
    return "".join(parts)


class PolicyWatcher:
    """A daemon thread that keeps this process on the active policy version."""

    def __init__(
        self,
        store: PolicyStore,
        current: Callable[[], Policy],
        build: Callable[[PolicySource], Policy],
        swap: Callable[[Policy], None],
        *,
        interval: float = 2.0,
    ) -> None:
        self._store = store
        self._current = current
        self._build = build
        self._swap = swap
        self._interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failed: str | None = None

    def sync(self) -> bool:
        """Adopt the active version if it differs from ours; whether we changed."""
        try:
            active = self._store.active_version()
        except RegionUnavailable:
            return False  # the control database is down: keep the policy we have
        if active is None or active == self._current().version or active == self._failed:
            return False
        source = self._store.source(active)
        if source is None:
            return False
        try:
            policy = self._build(source)
        except Exception as exc:  # any failure to build leaves the running policy in force
            self._failed = active
            log.error("policy_reload_failed", version=active, error=str(exc)[:500])
            return False
        old = self._current().version
        self._swap(policy)
        self._failed = None
        log.info("policy_reloaded", old_version=old, new_version=policy.version)
        return True

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._run, name="bastion-policy-watcher", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self.sync()
