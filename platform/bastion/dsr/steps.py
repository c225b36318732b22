"""The steps of a data subject's request (`model.STEPS`), each resumable.

Each step reads what it needs from the steps before it (`done`: their recorded
details), does its work in one or more transactions, and records itself through
the journal in its last one. A step that runs again after a crash re-reads what
still exists, so repeating it changes nothing that already happened.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from datetime import timedelta
from typing import Any, NotRequired

from typing_extensions import TypedDict

from bastion.audit import AuditLog
from bastion.audit.chain import head
from bastion.automation.events import subject_events
from bastion.clock import Clock
from bastion.crm.service import RecordService
from bastion.crypto.envelope import FieldContext
from bastion.crypto.keyring import Keyring
from bastion.dsr import certificate, erasure
from bastion.dsr import package as export_package
from bastion.dsr import repository as repo
from bastion.dsr.discovery import discover as discover_subjects
from bastion.dsr.inputs import spec_of
from bastion.dsr.journal import Journal
from bastion.dsr.settings import DsrSettings
from bastion.policy.engine import Policy
from bastion.principals.caller import Caller
from bastion.principals.tokens import Principal
from bastion.quality.merge_repository import finalize_for_subjects
from bastion.residency.databases import Database, Regions
from bastion.wire import Timestamp, extensible

SYSTEM_ROLE = "dsr_processor"
_BATCH = 500


@extensible
class DsrResult(TypedDict):
    """What a completed request did: records found per entity and relation, then for
    an erasure what was erased, pseudonymised and kept (and why), for an access or
    export request its package, for a rectification the fields it changed."""

    counts: dict[str, dict[str, int]]
    erased: NotRequired[int]
    pseudonymised: NotRequired[int]
    kept: NotRequired[list[erasure.KeptRecord]]
    keys_destroyed: NotRequired[int]
    sha256: NotRequired[str]
    bytes: NotRequired[int]
    expires_at: NotRequired[Timestamp]
    """When the package is destroyed."""
    changed: NotRequired[list[str]]
    """The fields a rectification changed (those already right are not)."""


def system_caller(regions: tuple[str, ...]) -> Caller:
    """The principal jobs act as: audited as `system:dsr`, allowed by the policy's
    `dsr_processor` role (so what a job does is still a policy decision)."""
    return Caller(Principal("system:dsr", "dsr-worker", frozenset({SYSTEM_ROLE}), regions, ()))


def package_context(region: str, request_id: str) -> FieldContext:
    return FieldContext(region, "dsr_packages", request_id, "package")


def corrections_context(region: str, request_id: str) -> FieldContext:
    return FieldContext(region, "dsr_requests", request_id, "corrections")


class Steps:
    def __init__(
        self,
        *,
        journal: Journal,
        regions: Regions,
        keys: Keyring,
        records: RecordService,
        audit: AuditLog,
        clock: Clock,
        settings: DsrSettings,
        policy: Callable[[], Policy],
    ) -> None:
        self._journal = journal
        self._regions = regions
        self._keys = keys
        self._records = records
        self._audit = audit
        self._clock = clock
        self._settings = settings
        self._policy = policy

    def discover(
        self, database: Database, request: dict[str, Any], done: dict[str, Any]
    ) -> dict[str, Any]:
        region = database.name
        with database.transaction(write=True) as conn:
            repo.lock_holds(conn, region)  # a hold is seen by this plan, or refused later
            found = discover_subjects(conn, request["subject_ids"])
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
            return self._journal.complete(conn, region, request, "discover", details, summary)

    def package(
        self, database: Database, request: dict[str, Any], done: dict[str, Any]
    ) -> dict[str, Any]:
        region = database.name
        now = self._clock.now()
        with database.transaction(write=True) as conn:
            found = discover_subjects(conn, done["discover"]["subjects"])
            data = export_package.build(
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
                behaviour=subject_events(conn, self._keys, region, found.subjects),
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
            return self._journal.complete(
                conn, region, request, "package", details, {"bytes": len(data)}
            )

    def preserve(
        self, database: Database, request: dict[str, Any], done: dict[str, Any]
    ) -> dict[str, Any]:
        region = database.name
        decisions = [erasure.Decision.from_dict(d) for d in done["discover"]["decisions"]]
        subjects = done["discover"]["subjects"]
        with database.transaction(write=True) as conn:
            changed = 0
            if not done["discover"].get("person_held"):
                # Only what outlives the person's key needs another: a held person's
                # key is not destroyed (shred), so their kept records stay as they are.
                stored = erasure.stored_records(conn, [d for d in decisions if d.action == "keep"])
                changed = erasure.preserve(
                    self._keys, conn, region, request["id"], subjects, decisions, stored
                )
            kept = sum(1 for d in decisions if d.action == "keep")
            return self._journal.complete(
                conn, region, request, "preserve", {"values": changed}, {"kept": kept}
            )

    def erase(
        self, database: Database, request: dict[str, Any], done: dict[str, Any]
    ) -> dict[str, Any]:
        region = database.name
        decisions = [erasure.Decision.from_dict(d) for d in done["discover"]["decisions"]]
        with database.transaction(write=True) as conn:
            shelled, indexes = erasure.shell(conn, decisions, self._clock.now())
            if shelled:
                self._journal.event(
                    conn, region, request, "shell", {"records": len(shelled)}, shelled
                )
            if "erase.shell" not in done:
                # What shelling did, kept for the certificate even if we crash after.
                repo.complete_step(
                    conn, request["id"], "erase.shell", self._clock.now(), {"indexes": indexes}
                )
                done["erase.shell"] = {"indexes": indexes}
        doomed = [d for d in decisions if d.action == "delete"]
        for start in range(0, len(doomed), _BATCH):
            self._journal.renew(database, request["id"])
            with database.transaction(write=True) as conn:
                deleted = erasure.delete_records(conn, doomed[start : start + _BATCH])
                if deleted:
                    self._journal.event(
                        conn, region, request, "delete", {"records": len(deleted)}, deleted
                    )
                    repo.forget_idempotency(conn, deleted)
            self._journal.hit("dsr:erase-batch")
        with database.transaction(write=True) as conn:
            remaining = erasure.delete_records(conn, doomed)  # none, unless raced: idempotent
            repo.forget_idempotency(conn, [d.record_id for d in decisions if d.action == "shell"])
            details = {
                "indexes_cleared": done["erase.shell"]["indexes"],
                "late_deletions": len(remaining),
            }
            summary = {
                "deleted": len(doomed),
                "shelled": sum(d.action == "shell" for d in decisions),
            }
            return self._journal.complete(conn, region, request, "erase", details, summary)

    def shred(
        self, database: Database, request: dict[str, Any], done: dict[str, Any]
    ) -> dict[str, Any]:
        region = database.name
        with database.transaction(write=True) as conn:
            destroyed = 0
            if not done["discover"].get("person_held"):
                for subject in done["discover"]["subjects"]:
                    destroyed += self._keys.shred(conn, region, subject)
                # The merges into the person erased their losers too: nothing to undo.
                finalize_for_subjects(conn, done["discover"]["subjects"])
            return self._journal.complete(
                conn, region, request, "shred", {"keys_destroyed": destroyed}, {"keys": destroyed}
            )

    def certify(
        self, database: Database, request: dict[str, Any], done: dict[str, Any]
    ) -> dict[str, Any]:
        region = database.name
        self._audit.flush(region)
        decisions = [erasure.Decision.from_dict(d) for d in done["discover"]["decisions"]]
        now = self._clock.now()
        with database.transaction(write=True) as conn:
            if repo.fetch_certificate(conn, request["id"]) is not None:
                return self._journal.complete(conn, region, request, "certify", {"reissued": False})
            top = head(conn)
            erased: dict[str, list[str]] = {}
            pseudonymised: dict[str, list[str]] = {}
            for decision in decisions:
                if decision.action in ("shell", "delete"):
                    erased.setdefault(decision.entity, []).append(decision.record_id)
                elif decision.action == "pseudonymise":
                    pseudonymised.setdefault(decision.entity, []).append(decision.record_id)
            body: certificate.ErasureCertificateBody = {
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
                "pseudonymised": {k: sorted(v) for k, v in sorted(pseudonymised.items())},
                "kept": [d.kept_record() for d in decisions if d.action == "keep"],
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
            return self._journal.complete(
                conn, region, request, "certify", {"issued_at": now.isoformat()}
            )

    def rectify(
        self, database: Database, request: dict[str, Any], done: dict[str, Any]
    ) -> dict[str, Any]:
        region = database.name
        subject = request["subject_ids"][0]
        entity = spec_of(subject)
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
            return self._journal.complete(
                conn,
                region,
                request,
                "rectify",
                {"fields": sorted(corrections), "changed": sorted(changes)},
                {"changed": len(changes)},
            )

    def finish(
        self, database: Database, request: dict[str, Any], done: dict[str, Any]
    ) -> dict[str, Any]:
        region = database.name
        now = self._clock.now()
        result: DsrResult = {"counts": done["discover"]["counts"]}
        status = "completed"
        if request["type"] == "erasure":
            decisions = [erasure.Decision.from_dict(d) for d in done["discover"]["decisions"]]
            kept = [d.kept_record() for d in decisions if d.action == "keep"]
            result["erased"] = sum(1 for d in decisions if d.action in ("shell", "delete"))
            result["pseudonymised"] = sum(1 for d in decisions if d.action == "pseudonymise")
            result["kept"] = kept
            result["keys_destroyed"] = done["shred"]["keys_destroyed"]
            status = "partially_completed" if kept else "completed"
        elif request["type"] in ("access", "export"):
            package = done["package"]
            result["sha256"] = package["sha256"]
            result["bytes"] = package["bytes"]
            result["expires_at"] = package["expires_at"]
        else:
            result["changed"] = done["rectify"]["changed"]
        with database.transaction(write=True) as conn:
            # Recorded while the lease is still ours; then the request lets it go.
            details = self._journal.complete(conn, region, request, "finish", {"status": status})
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
            if request["type"] == "rectification":
                # The corrections are applied: nothing reads them again.
                self._keys.shred(conn, region, request["id"])
            request["status"] = status
            return details
