"""Running data subjects' requests: claimed, stepped, resumable, never applied twice.

A worker (`bastion worker`, or a thread in the serving process on the embedded
default) claims an approved request with a lease (PostgreSQL: `FOR UPDATE SKIP
LOCKED`, so any number of workers share the queue), then runs the type's steps in
order (`model.STEPS`). A step's work and its completion record (a `dsr_steps` row
and a `dsr.<type>.<step>` audit event) commit in the same transaction, so a step
either happened once or not at all; long steps (deleting thousands of records)
work in batches that are each idempotent. A worker killed at any point leaves a
lease that expires; the next worker resumes at the first step without a record.
Two requests for the same person cannot double-apply: every step re-reads what
still exists.

Failpoints for crash tests: outside production mode, `BASTION_FAILPOINT=<name>`
makes the process exit at once (as if killed) after the named point commits —
`dsr:<step>` after each step, `dsr:erase-batch` after the first deletion batch.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import structlog
from sqlalchemy import Connection, select

from bastion.audit import AuditEvent, AuditLog
from bastion.audit.chain import head
from bastion.clock import Clock
from bastion.crm.catalog import ENTITIES
from bastion.crm.service import RecordService
from bastion.crm.tables import ENTITY_TABLES
from bastion.crypto.envelope import FieldContext
from bastion.crypto.keyring import Keyring
from bastion.dsr import certificate, erasure, package
from bastion.dsr import repository as repo
from bastion.dsr.discovery import discover
from bastion.dsr.model import RUNNABLE, STEPS
from bastion.dsr.settings import DsrSettings
from bastion.errors import BastionError
from bastion.policy.engine import Policy
from bastion.principals.caller import Caller
from bastion.principals.tokens import Principal
from bastion.residency.databases import Database, Regions

log = structlog.get_logger("bastion.dsr")

SYSTEM_ROLE = "dsr_processor"


def system_caller(regions: tuple[str, ...]) -> Caller:
    """The principal jobs act as: audited as `system:dsr`, allowed by the policy's
    `dsr_processor` role (so what a job does is still a policy decision)."""
    return Caller(Principal("system:dsr", "dsr-worker", frozenset({SYSTEM_ROLE}), regions, ()))


def package_context(region: str, request_id: str) -> FieldContext:
    return FieldContext(region, "dsr_packages", request_id, "package")


def corrections_context(region: str, request_id: str) -> FieldContext:
    return FieldContext(region, "dsr_requests", request_id, "corrections")


class DsrRunner:
    def __init__(
        self,
        *,
        regions: Regions,
        keys: Keyring,
        records: RecordService,
        audit: AuditLog,
        clock: Clock,
        settings: DsrSettings,
        policy: Callable[[], Policy],
        worker_id: str,
        failpoints: bool,
    ) -> None:
        self._regions = regions
        self._keys = keys
        self._records = records
        self._audit = audit
        self._clock = clock
        self._settings = settings
        self._policy = policy
        self.worker_id = worker_id
        self._failpoint = os.environ.get("BASTION_FAILPOINT") if failpoints else None
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    # -- the loop --------------------------------------------------------------------

    def run_once(self) -> int:
        """Claim and run every runnable request of every region; how many ran."""
        ran = 0
        for region in self._regions.names:
            database = self._regions.get(region)
            self._expire_packages(database)
            while not self._stop.is_set():
                request_id = self._claim(database)
                if request_id is None:
                    break
                self.run(region, request_id)
                ran += 1
        return ran

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="bastion-dsr", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.run_once()
            except Exception as exc:  # the loop must survive a region being down
                log.error("dsr_loop_failed", error_type=type(exc).__name__)
            self._wake.wait(self._settings.poll_seconds)
            self._wake.clear()

    def _claim(self, database: Database) -> str | None:
        now = self._clock.now()
        with database.transaction(write=True) as conn:
            return repo.claim(conn, now, self.worker_id, self._lease_until(now))

    def _lease_until(self, now: datetime) -> datetime:
        return now + timedelta(seconds=self._settings.lease_seconds)

    # -- one request -----------------------------------------------------------------

    def run(self, region: str, request_id: str) -> str:
        """Run the request's remaining steps; its final status."""
        database = self._regions.get(region)
        with database.transaction(write=True) as conn:
            request = repo.fetch_request(conn, request_id, lock=True)
            if request is None or request["status"] not in RUNNABLE:
                return request["status"] if request else "missing"
            if request["status"] == "approved":
                now = self._clock.now()
                repo.update_request(conn, request_id, status="running", started_at=now)
                self._event(conn, region, request, "started")
                request["status"] = "running"
            done = repo.done_steps(conn, request_id)
        for step in STEPS[request["type"]]:
            if step in done:
                continue
            with database.transaction(write=True) as conn:
                repo.update_request(
                    conn,
                    request_id,
                    step=step,
                    lease_owner=self.worker_id,
                    lease_expires_at=self._lease_until(self._clock.now()),
                )
            try:
                done[step] = getattr(self, f"_{step}")(database, request, done)
            except BastionError as exc:
                return self._fail(database, request, step, exc.detail)
            self._hit(f"dsr:{step}")
        return str(request["status"])

    def _complete(
        self,
        conn: Connection,
        region: str,
        request: dict[str, Any],
        step: str,
        details: dict[str, Any],
        summary: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Record a step as done, with its audit event, in the step's last transaction."""
        now = self._clock.now()
        repo.complete_step(conn, request["id"], step, now, details)
        progress = dict(request.get("progress") or {})
        progress[step] = {"completed_at": now.isoformat(), **(summary or {})}
        request["progress"] = progress
        repo.update_request(conn, request["id"], progress=progress)
        self._event(conn, region, request, step, summary)
        return details

    def _event(
        self,
        conn: Connection,
        region: str,
        request: dict[str, Any],
        step: str,
        summary: dict[str, Any] | None = None,
        record_ids: list[str] | None = None,
    ) -> None:
        details: dict[str, Any] = {"request": request["id"]}
        for key, value in (summary or {}).items():
            if isinstance(value, int | bool) or value is None:
                details[key] = value
        self._records.recorder.append(
            conn,
            region,
            AuditEvent.new(
                self._clock,
                actor="system:dsr",
                action=f"dsr.{request['type']}.{step}",
                entity="dsr",
                record_ids=record_ids if record_ids is not None else [request["id"]],
                policy_version=self._policy().version,
                details=details,
            ),
        )

    def _fail(self, database: Database, request: dict[str, Any], step: str, why: str) -> str:
        with database.transaction(write=True) as conn:
            repo.update_request(
                conn,
                request["id"],
                status="failed",
                error=f"{step}: {why}"[:500],
                lease_owner=None,
                lease_expires_at=None,
                completed_at=self._clock.now(),
            )
            self._event(conn, database.name, request, "failed")
        log.warning("dsr_failed", request=request["id"], step=step)
        return "failed"

    def _hit(self, name: str) -> None:
        if self._failpoint == name:
            log.warning("failpoint", name=name)
            os._exit(86)

    # -- the steps -------------------------------------------------------------------

    def _discover(
        self, database: Database, request: dict[str, Any], done: dict[str, Any]
    ) -> dict[str, Any]:
        region = database.name
        with database.transaction(write=True) as conn:
            found = discover(conn, request["subject_ids"])
            details: dict[str, Any] = {
                "subjects": found.subjects,
                "counts": found.counts(),
                "audit_mentions": found.audit_events,
            }
            if request["type"] == "erasure":
                decisions = erasure.plan(conn, found, self._clock.now())
                details["decisions"] = [d.as_dict() for d in decisions]
                held = set(found.subjects) & set(
                    erasure.active_holds(conn, found.subjects, self._clock.now())
                )
                details["person_held"] = bool(held)
            summary = {"records": len(found.items), "subjects": len(found.subjects)}
            return self._complete(conn, region, request, "discover", details, summary)

    def _package(
        self, database: Database, request: dict[str, Any], done: dict[str, Any]
    ) -> dict[str, Any]:
        region = database.name
        now = self._clock.now()
        with database.transaction(write=True) as conn:
            found = discover(conn, done["discover"]["subjects"])
            data = package.build(
                conn,
                self._records.codec,
                region,
                found,
                request={
                    "id": request["id"],
                    "type": request["type"],
                    "regime": request["regime"],
                    "received_at": request["received_at"].isoformat(),
                    "approved_by": request["approved_by"],
                },
                generated_at=now,
                policy_version=self._policy().version,
            )
            sealed = self._keys.seal(
                conn, request["id"], data, package_context(region, request["id"])
            )
            digest = hashlib.sha256(data).hexdigest()
            expires = now + timedelta(hours=self._settings.package_ttl_hours)
            repo.store_package(
                conn,
                {
                    "request_id": request["id"],
                    "created_at": now,
                    "expires_at": expires,
                    "sha256": digest,
                    "size": len(data),
                    "sealed": sealed,
                },
            )
            details = {"sha256": digest, "bytes": len(data), "expires_at": expires.isoformat()}
            return self._complete(conn, region, request, "package", details, {"bytes": len(data)})

    def _preserve(
        self, database: Database, request: dict[str, Any], done: dict[str, Any]
    ) -> dict[str, Any]:
        region = database.name
        decisions = [erasure.Decision.from_dict(d) for d in done["discover"]["decisions"]]
        subjects = done["discover"]["subjects"]
        with database.transaction(write=True) as conn:
            stored = _stored(conn, [d for d in decisions if d.action == "keep"])
            changed = erasure.preserve(self._keys, conn, region, subjects, decisions, stored)
            kept = sum(1 for d in decisions if d.action == "keep")
            return self._complete(
                conn, region, request, "preserve", {"values": changed}, {"kept": kept}
            )

    def _erase(
        self, database: Database, request: dict[str, Any], done: dict[str, Any]
    ) -> dict[str, Any]:
        region = database.name
        decisions = [erasure.Decision.from_dict(d) for d in done["discover"]["decisions"]]
        with database.transaction(write=True) as conn:
            shelled, indexes = erasure.shell(conn, decisions, self._clock.now())
            if shelled:
                self._event(conn, region, request, "shell", {"records": len(shelled)}, shelled)
        doomed = [d for d in decisions if d.action == "delete"]
        for start in range(0, len(doomed), 500):
            with database.transaction(write=True) as conn:
                deleted = erasure.delete_records(conn, doomed[start : start + 500])
                if deleted:
                    self._event(conn, region, request, "delete", {"records": len(deleted)}, deleted)
            self._hit("dsr:erase-batch")
        with database.transaction(write=True) as conn:
            remaining = erasure.delete_records(conn, doomed)  # none, unless raced: idempotent
            details = {"indexes_cleared": indexes, "late_deletions": len(remaining)}
            summary = {
                "deleted": len(doomed),
                "shelled": sum(d.action == "shell" for d in decisions),
            }
            return self._complete(conn, region, request, "erase", details, summary)

    def _shred(
        self, database: Database, request: dict[str, Any], done: dict[str, Any]
    ) -> dict[str, Any]:
        region = database.name
        with database.transaction(write=True) as conn:
            destroyed = 0
            if not done["discover"].get("person_held"):
                for subject in done["discover"]["subjects"]:
                    destroyed += self._keys.shred(conn, region, subject)
            return self._complete(
                conn, region, request, "shred", {"keys_destroyed": destroyed}, {"keys": destroyed}
            )

    def _certify(
        self, database: Database, request: dict[str, Any], done: dict[str, Any]
    ) -> dict[str, Any]:
        region = database.name
        self._audit.flush(region)
        decisions = [erasure.Decision.from_dict(d) for d in done["discover"]["decisions"]]
        now = self._clock.now()
        with database.transaction(write=True) as conn:
            if repo.fetch_certificate(conn, request["id"]) is not None:
                return self._complete(conn, region, request, "certify", {"reissued": False})
            top = head(conn)
            erased: dict[str, list[str]] = {}
            for decision in decisions:
                if decision.action != "keep":
                    erased.setdefault(decision.entity, []).append(decision.record_id)
            body = {
                "format": certificate.FORMAT,
                "request_id": request["id"],
                "region": region,
                "regime": request["regime"],
                "subject_ids": done["discover"]["subjects"],
                "received_at": request["received_at"].isoformat(),
                "approved_by": request["approved_by"],
                "completed_at": now.isoformat(),
                "policy_version": self._policy().version,
                "erased": {k: sorted(v) for k, v in sorted(erased.items())},
                "kept": [
                    {
                        "entity": d.entity,
                        "record_id": d.record_id,
                        "reason_code": d.reason_code,
                        "reason": d.reason,
                    }
                    for d in decisions
                    if d.action == "keep"
                ],
                "keys_destroyed": done["shred"]["keys_destroyed"],
                "indexes_cleared": done["erase"]["indexes_cleared"],
                "audit": {"chain": region, "head_seq": top.seq, "head_hash": top.hash.hex()},
            }
            key = self._audit.keys.signing_key(region)
            document = certificate.sign(body, key)
            repo.store_certificate(
                conn,
                {
                    "request_id": request["id"],
                    "issued_at": now,
                    "body": json.dumps(document, sort_keys=True),
                    "key_id": document["signature"]["key_id"],
                    "signature": document["signature"]["value"],
                },
            )
            return self._complete(conn, region, request, "certify", {"issued_at": now.isoformat()})

    def _rectify(
        self, database: Database, request: dict[str, Any], done: dict[str, Any]
    ) -> dict[str, Any]:
        region = database.name
        subject = request["subject_ids"][0]
        entity = next(s for s in ENTITIES.values() if subject.startswith(s.prefix + "_"))
        with database.transaction(write=True) as conn:
            blob = request["corrections"]
            corrections = json.loads(
                self._keys.unseal(conn, bytes(blob), corrections_context(region, request["id"]))
            )
        caller = system_caller(self._regions.names)
        current = self._records.get(caller, entity.name, subject)
        changes = {k: v for k, v in corrections.items() if current.get(k) != v}
        if changes:
            self._records.update(
                caller, entity.name, subject, changes, if_match=f'"v{current["version"]}"'
            )
        with database.transaction(write=True) as conn:
            return self._complete(
                conn,
                region,
                request,
                "rectify",
                {"fields": sorted(corrections), "changed": sorted(changes)},
                {"changed": len(changes)},
            )

    def _finish(
        self, database: Database, request: dict[str, Any], done: dict[str, Any]
    ) -> dict[str, Any]:
        region = database.name
        now = self._clock.now()
        result: dict[str, Any] = {"counts": done["discover"]["counts"]}
        status = "completed"
        if request["type"] == "erasure":
            decisions = done["discover"]["decisions"]
            kept = [d for d in decisions if d["action"] == "keep"]
            result |= {
                "erased": sum(1 for d in decisions if d["action"] != "keep"),
                "kept": [
                    {k: d[k] for k in ("entity", "record_id", "reason_code", "reason")}
                    for d in kept
                ],
                "keys_destroyed": done["shred"]["keys_destroyed"],
            }
            status = "partially_completed" if kept else "completed"
        elif request["type"] in ("access", "export"):
            result |= {k: done["package"][k] for k in ("sha256", "bytes", "expires_at")}
        else:
            result |= {"changed": done["rectify"]["changed"]}
        with database.transaction(write=True) as conn:
            repo.update_request(
                conn,
                request["id"],
                status=status,
                result=result,
                completed_at=now,
                step=None,
                lease_owner=None,
                lease_expires_at=None,
            )
            request["status"] = status
            return self._complete(conn, region, request, "finish", {"status": status})

    def _expire_packages(self, database: Database) -> None:
        """Delete expired packages and destroy their keys (so no copy stays readable)."""
        now = self._clock.now()
        with database.transaction(write=True) as conn:
            for request_id in repo.expired_packages(conn, now):
                repo.delete_package(conn, request_id)
                self._keys.shred(conn, database.name, request_id)


def _stored(conn: Connection, decisions: list[erasure.Decision]) -> dict[str, dict[str, Any]]:
    stored: dict[str, dict[str, Any]] = {}
    by_entity: dict[str, list[str]] = {}
    for decision in decisions:
        by_entity.setdefault(decision.entity, []).append(decision.record_id)
    for entity, ids in by_entity.items():
        table = ENTITY_TABLES[entity]
        for start in range(0, len(ids), 500):
            for row in conn.execute(select(table).where(table.c.id.in_(ids[start : start + 500]))):
                stored[str(row.id)] = dict(row._mapping)
    return stored
