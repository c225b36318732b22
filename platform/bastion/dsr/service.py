"""Data subjects' requests as a compliance officer handles them (legal holds are
`holds.py`; carrying requests out is `jobs.py`).

Every operation is a policy decision on the `dsr` resource (create, read, list,
approve — which also covers verifying identity, rejecting and extending —,
download, cancel) in the request's region, and every one is audited there
(`dsr.<type>.<action>`, naming the request and its subjects). A request and
everything about it live in the subject's region; an identifier (email, phone) is
resolved through that region's blind indexes and never stored.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import Any, Literal, NotRequired

from sqlalchemy import Connection, select
from typing_extensions import TypedDict

from bastion.clock import Clock
from bastion.crm.catalog import ENTITIES, ENTITIES_BY_PREFIX
from bastion.crm.cursors import CursorCodec, Position, advanced
from bastion.crm.records import to_json_value
from bastion.crm.schemas import validate_patch
from bastion.crm.service import RecordService
from bastion.crm.tables import ENTITY_TABLES
from bastion.crypto.errors import KeyDestroyed
from bastion.crypto.keyring import Keyring
from bastion.dsr import erasure
from bastion.dsr import repository as repo
from bastion.dsr.certificate import SignedCertificate
from bastion.dsr.discovery import discover, merged_person
from bastion.dsr.gate import Gate
from bastion.dsr.inputs import IDENTIFIERS, check_text, correctable, invalid, parse_create, spec_of
from bastion.dsr.model import (
    FINAL,
    FOUR_EYES,
    OPEN,
    InvalidTransition,
    RequestType,
    due_at,
    require_status,
)
from bastion.dsr.settings import DsrSettings
from bastion.dsr.steps import corrections_context, package_context
from bastion.errors import BadRequest, Conflict, FieldError, Gone, NotFound, ValidationFailed
from bastion.principals.caller import Caller
from bastion.residency.databases import Regions
from bastion.residency.ids import RecordId
from bastion.wire import closed

REQUEST_PREFIX = "dsr"
# The columns of `dsr_requests` a request shows as they are stored; it also shows
# `extended` (as a boolean), `overdue` and `due_soon`. Not shown: the sealed
# corrections, their field names, the lease and the row version.
SHOWN_COLUMNS = (
    "id",
    "region",
    "type",
    "regime",
    "status",
    "subject_ids",
    "identified_by",
    "verification",
    "verification_method",
    "verified_by",
    "verified_at",
    "received_at",
    "due_at",
    "extension_reason",
    "created_by",
    "approved_by",
    "approved_at",
    "started_at",
    "completed_at",
    "rejection_reason",
    "step",
    "progress",
    "result",
    "error",
    "policy_version",
)


@closed
class UntouchedRecord(TypedDict):
    entity: str
    record_id: str
    reason: Literal["not the person's data"]


@closed
class DsrPreview(TypedDict):
    """A dry run of a request: what it would export, or erase, pseudonymise and keep
    (and why), if it ran now."""

    request_id: str
    type: RequestType
    subjects: list[str]
    """The person's records: the subjects and the records merges and conversions
    made the same person."""
    records: dict[str, dict[str, int]]
    """Records found per entity and relation (subject, about, linked, employer)."""
    fields: dict[str, list[str]]
    """The fields of each entity found."""
    audit_mentions: int
    erase: NotRequired[dict[str, list[str]]]
    pseudonymise: NotRequired[dict[str, list[str]]]
    keep: NotRequired[list[erasure.ErasureDecision]]
    untouched: NotRequired[list[UntouchedRecord]]


_PAST = {
    "verify": "verified",
    "approve": "approved",
    "reject": "rejected",
    "cancel": "cancelled",
    "extend": "extended",
}


class DsrService:
    def __init__(
        self,
        *,
        regions: Regions,
        keys: Keyring,
        records: RecordService,
        clock: Clock,
        gate: Gate,
        settings: DsrSettings,
        cursors: CursorCodec,
        wake: Callable[[], None] = lambda: None,
    ) -> None:
        self._regions = regions
        self._keys = keys
        self._records = records
        self._clock = clock
        self._gate = gate
        self._settings = settings
        self._cursors = cursors
        self._wake = wake

    # -- requests ----------------------------------------------------------------------

    def create(self, caller: Caller, body: Mapping[str, Any]) -> dict[str, Any]:
        request_type, regime, region, subject_id, identifier = parse_create(body, self._regions)
        policy = self._gate.allow(caller, region, "dsr", "create")
        now = self._clock.now()
        request_id = str(RecordId.new(REQUEST_PREFIX, region, now))
        database = self._regions.get(region)
        with database.transaction(write=True) as conn:
            if subject_id is not None:
                subjects = self._existing_subjects(conn, subject_id, request_type)
                identified_by = "record"
            else:
                assert identifier is not None
                kind, value = identifier
                subjects, identified_by = self._resolve(conn, region, kind, value), kind
            corrections = None
            if request_type == "rectification":
                corrections = self._corrections(conn, region, request_id, subjects, body)
            repo.lock_subjects(conn, subjects)
            clash = repo.open_requests_for(conn, subjects, request_type, sorted(OPEN))
            if clash:
                raise Conflict(
                    f"an open {request_type} request for this subject exists: {clash[0]}"
                )
            repo.insert_request(
                conn,
                {
                    "id": request_id,
                    "region": region,
                    "type": request_type,
                    "regime": regime,
                    "status": "received",
                    "subject_ids": subjects,
                    "identified_by": identified_by,
                    "verification": "unverified",
                    "received_at": now,
                    "due_at": due_at(regime, now),
                    "extended": 0,
                    "created_by": caller.principal.id,
                    "corrections": corrections,
                    "correction_fields": (
                        sorted(body["corrections"]) if corrections is not None else None
                    ),
                    "policy_version": policy.version,
                    "progress": {},
                    "version": 1,
                },
            )
            self._gate.audit(
                conn,
                caller,
                region,
                policy,
                f"dsr.{request_type}.received",
                [request_id, *subjects],
            )
            stored = repo.fetch_request(conn, request_id)
        assert stored is not None
        return self._render(stored)

    def _existing_subjects(self, conn: Connection, subject_id: str, request_type: str) -> list[str]:
        """The request's subjects for a record id: the record, and every record merges
        made one person with it (`merged_person`), named one first. A merged person's
        old id stays valid: its survivor holds the values and records it took, and
        the survivor's other tombstones hold the rest. A rectification corrects one
        live record, so a tombstone is refused there (422 naming the survivor)."""
        spec = ENTITIES_BY_PREFIX.get(subject_id.split("_", 1)[0])
        if spec is None or not spec.data_subject:
            raise invalid("subject_id", "must be the id of a contact or lead")
        table = ENTITY_TABLES[spec.name]
        row = conn.execute(
            select(table.c.id, table.c.erased_at, table.c.merged_into).where(
                table.c.id == subject_id
            )
        ).one_or_none()
        if row is None:
            raise NotFound(f"no {spec.singular} has that id")
        if row.erased_at is not None:
            raise Gone(f"the {spec.singular} was already erased")
        if request_type == "rectification":
            if row.merged_into is not None:
                raise invalid(
                    "subject_id", f"was merged into {row.merged_into}: rectify that record"
                )
            return [subject_id]
        return merged_person(conn, subject_id)

    def _resolve(self, conn: Connection, region: str, kind: str, value: str) -> list[str]:
        """The contacts and leads whose `kind` matches `value`: blind-index lookups, the
        false positives dropped after decrypting — never a table scan."""
        codec = self._records.codec
        found: list[str] = []
        for entity, names in IDENTIFIERS[kind].items():
            spec = ENTITIES[entity]
            table = ENTITY_TABLES[entity]
            for name in names:
                field = spec.field(name)
                assert field is not None
                assert field.index_column is not None
                try:
                    index = codec.index(conn, spec, region, field, value)
                    wanted = codec.normalized(field, value)
                except ValidationFailed:
                    raise invalid(f"identifier.{kind}", f"is not a valid {kind}") from None
                rows = conn.execute(
                    select(table).where(
                        table.c[field.index_column] == index, table.c.erased_at.is_(None)
                    )
                )
                for row in rows:
                    stored = dict(row._mapping)
                    candidate = codec.open_field(conn, spec, region, stored, field)
                    if codec.matches(field, candidate, wanted) and stored["id"] not in found:
                        found.append(str(stored["id"]))
        return found

    def _corrections(
        self,
        conn: Connection,
        region: str,
        request_id: str,
        subjects: list[str],
        body: Mapping[str, Any],
    ) -> bytes:
        if len(subjects) != 1:
            raise invalid("subject_id", "a rectification needs exactly one contact or lead")
        corrections = body.get("corrections")
        if not isinstance(corrections, dict) or not corrections:
            raise invalid("corrections", "must be an object of the fields to correct")
        spec = spec_of(subjects[0])
        refused = sorted(name for name in corrections if name not in correctable(spec))
        if refused:
            raise ValidationFailed(
                "only the person's own data can be rectified",
                [
                    FieldError(f"corrections.{name}", "is not personal data of the subject")
                    for name in refused
                ],
            )
        try:
            values = validate_patch(spec, corrections)
        except ValidationFailed as exc:
            raise ValidationFailed(
                exc.detail, [FieldError(f"corrections.{e.field}", e.message) for e in exc.errors]
            ) from None
        plain = json.dumps({k: to_json_value(v) for k, v in values.items()}).encode()
        return self._keys.seal(conn, request_id, plain, corrections_context(region, request_id))

    def get(self, caller: Caller, request_id: str) -> dict[str, Any]:
        region = self._gate.route(caller, request_id, REQUEST_PREFIX, "request")
        policy = self._gate.allow(caller, region, "dsr", "read", [request_id])
        with self._regions.get(region).transaction(write=True) as conn:
            stored = self._fetch(conn, request_id)
            self._gate.audit(conn, caller, region, policy, "dsr.read", [request_id])
        return self._render(stored)

    def list(
        self,
        caller: Caller,
        *,
        region: str | None,
        status: str | None,
        overdue: bool,
        due_within_days: int | None,
        limit: int,
        cursor: str | None,
    ) -> dict[str, Any]:
        regions = self._gate.listed_regions(caller, region, "dsr", "list")
        now = self._clock.now()
        statuses = [status] if status else (sorted(OPEN) if overdue or due_within_days else None)
        due_before = now if overdue else None
        if due_within_days is not None:
            due_before = now + timedelta(days=due_within_days)
        fingerprint = json.dumps([regions, status, overdue, due_within_days])
        # One position per region: a region's query never carries another's request.
        positions: dict[str, Position] = {}
        if cursor is not None:
            positions = self._cursors.open_positions(fingerprint, cursor)
        rows: list[tuple[dict[str, Any], str]] = []
        for name in regions:
            at = positions.get(name)
            try:
                after = None if at is None else (datetime.fromisoformat(str(at.value)), at.id)
            except ValueError:
                raise BadRequest("the cursor is invalid for this list") from None
            with self._regions.get(name).transaction() as conn:
                found = repo.list_requests(
                    conn, statuses=statuses, due_before=due_before, after=after, limit=limit + 1
                )
            rows += [(row, name) for row in found]
        rows.sort(key=lambda item: (item[0]["due_at"], item[0]["id"]))
        page, more = rows[:limit], len(rows) > limit
        next_cursor = None
        if more:
            emitted = [(name, Position(r["due_at"].isoformat(), r["id"])) for r, name in page]
            next_cursor = self._cursors.seal_positions(fingerprint, advanced(positions, emitted))
        return {"data": [self._render(r) for r, _name in page], "next_cursor": next_cursor}

    def verify_identity(self, caller: Caller, request_id: str, method: Any) -> dict[str, Any]:
        if not isinstance(method, str) or not 1 <= len(method) <= 64:
            raise invalid("method", "must say how the identity was verified (1-64 characters)")
        return self._transition(
            caller,
            request_id,
            "verify",
            allowed={"received"},
            changes=lambda now: {
                "status": "verified",
                "verification": "verified",
                "verification_method": method,
                "verified_by": caller.principal.id,
                "verified_at": now,
            },
        )

    def approve(self, caller: Caller, request_id: str) -> dict[str, Any]:
        """Approve a verified request. An erasure or a rectification changes data for
        good, so it needs a second person: its creator may not approve it."""

        def changes(now: datetime, stored: dict[str, Any]) -> dict[str, Any]:
            if stored["type"] in FOUR_EYES and stored["created_by"] == caller.principal.id:
                raise InvalidTransition(
                    f"a request for {stored['type']} must be approved by someone other "
                    "than its creator"
                )
            return {"status": "approved", "approved_by": caller.principal.id, "approved_at": now}

        result = self._transition(
            caller, request_id, "approve", allowed={"verified"}, changes_with_request=changes
        )
        self._wake()
        return result

    def reject(self, caller: Caller, request_id: str, reason: Any) -> dict[str, Any]:
        check_text("reason", reason)
        return self._transition(
            caller,
            request_id,
            "reject",
            allowed={"received", "verified"},
            changes=lambda now: {
                "status": "rejected",
                "rejection_reason": reason,
                "completed_at": now,
            },
        )

    def cancel(self, caller: Caller, request_id: str) -> dict[str, Any]:
        return self._transition(
            caller,
            request_id,
            "cancel",
            action="cancel",
            allowed={"received", "verified", "approved"},
            changes=lambda now: {"status": "cancelled", "completed_at": now},
        )

    def extend(self, caller: Caller, request_id: str, reason: Any) -> dict[str, Any]:
        check_text("reason", reason)

        def changes(now: datetime, stored: dict[str, Any]) -> dict[str, Any]:
            if stored["extended"]:
                raise Conflict("the deadline was already extended once")
            if stored["due_at"] <= now:
                raise InvalidTransition(
                    "the deadline has passed; an extension must be decided within it"
                )
            return {
                "extended": 1,
                "extension_reason": reason,
                "due_at": due_at(stored["regime"], stored["received_at"], extended=True),
            }

        return self._transition(
            caller, request_id, "extend", allowed=set(OPEN), changes_with_request=changes
        )

    def _transition(
        self,
        caller: Caller,
        request_id: str,
        verb: str,
        *,
        allowed: set[str],
        action: str = "approve",
        changes: Callable[[datetime], dict[str, Any]] | None = None,
        changes_with_request: Callable[[datetime, dict[str, Any]], dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        region = self._gate.route(caller, request_id, REQUEST_PREFIX, "request")
        policy = self._gate.allow(caller, region, "dsr", action, [request_id])
        now = self._clock.now()
        with self._regions.get(region).transaction(write=True) as conn:
            stored = self._fetch(conn, request_id, lock=True)
            require_status(stored["status"], frozenset(allowed), _PAST[verb])
            if changes is not None:
                values = changes(now)
            else:
                assert changes_with_request is not None
                values = changes_with_request(now, stored)
            repo.update_request(conn, request_id, **values, version=stored["version"] + 1)
            if values.get("status") in FINAL:
                # Nothing will read its corrections again: destroy the request's key.
                self._keys.shred(conn, region, request_id)
            self._gate.audit(
                conn,
                caller,
                region,
                policy,
                f"dsr.{stored['type']}.{verb}",
                [request_id, *stored["subject_ids"]],
            )
            updated = self._fetch(conn, request_id)
        return self._render(updated)

    def preview(self, caller: Caller, request_id: str) -> DsrPreview:
        """A dry run: what would be exported, or erased and kept (and why), right now."""
        region = self._gate.route(caller, request_id, REQUEST_PREFIX, "request")
        policy = self._gate.allow(caller, region, "dsr", "read", [request_id])
        with self._regions.get(region).transaction(write=True) as conn:
            stored = self._fetch(conn, request_id)
            found = discover(conn, stored["subject_ids"])
            preview: DsrPreview = {
                "request_id": request_id,
                "type": stored["type"],
                "subjects": found.subjects,
                "records": found.counts(),
                "fields": {
                    entity: [f.name for f in ENTITIES[entity].fields]
                    for entity in sorted({i.entity for i in found.items})
                },
                "audit_mentions": found.audit_events,
            }
            if stored["type"] == "erasure":
                decisions = erasure.plan(conn, found, self._clock.now())
                preview["erase"] = _grouped(decisions, ("shell", "delete"))
                preview["pseudonymise"] = _grouped(decisions, ("pseudonymise",))
                preview["keep"] = [d.as_dict() for d in decisions if d.action == "keep"]
                preview["untouched"] = [
                    {
                        "entity": i.entity,
                        "record_id": i.record_id,
                        "reason": "not the person's data",
                    }
                    for i in found.items
                    if i.relation == "employer"
                ]
            self._gate.audit(
                conn, caller, region, policy, "dsr.preview", [request_id, *found.subjects]
            )
        return preview

    def package(self, caller: Caller, request_id: str) -> tuple[bytes, str]:
        """The export zip and its SHA-256 (approved, completed, not expired)."""
        region = self._gate.route(caller, request_id, REQUEST_PREFIX, "request")
        policy = self._gate.allow(caller, region, "dsr", "download", [request_id])
        with self._regions.get(region).transaction(write=True) as conn:
            stored = self._fetch(conn, request_id)
            if stored["type"] not in ("access", "export"):
                raise NotFound("only access and export requests have a package")
            if stored["status"] != "completed":
                raise Conflict(f"the package is not ready; the request is {stored['status']}")
            found = repo.fetch_package(conn, request_id)
            if found is None or found["expires_at"] <= self._clock.now():
                raise Gone("the package expired and was destroyed; create a new request")
            try:
                data = self._keys.unseal(
                    conn, bytes(found["sealed"]), package_context(region, request_id)
                )
            except KeyDestroyed:
                raise Gone("the package expired and was destroyed") from None
            self._gate.audit(
                conn,
                caller,
                region,
                policy,
                f"dsr.{stored['type']}.download",
                [request_id, *stored["subject_ids"]],
            )
        return data, str(found["sha256"])

    def certificate(self, caller: Caller, request_id: str) -> SignedCertificate:
        region = self._gate.route(caller, request_id, REQUEST_PREFIX, "request")
        policy = self._gate.allow(caller, region, "dsr", "download", [request_id])
        with self._regions.get(region).transaction(write=True) as conn:
            stored = self._fetch(conn, request_id)
            found = repo.fetch_certificate(conn, request_id)
            if stored["type"] != "erasure":
                raise NotFound("only erasure requests have a certificate")
            if found is None:
                raise Conflict(f"no certificate yet; the request is {stored['status']}")
            self._gate.audit(conn, caller, region, policy, "dsr.erasure.certificate", [request_id])
        document: SignedCertificate = json.loads(found["body"])
        return document

    def _fetch(self, conn: Connection, request_id: str, *, lock: bool = False) -> dict[str, Any]:
        stored = repo.fetch_request(conn, request_id, lock=lock)
        if stored is None:
            raise NotFound("no request has that id")
        return stored

    def _render(self, stored: Mapping[str, Any]) -> dict[str, Any]:
        """A request as the API shows it: its `SHOWN_COLUMNS`, then `extended` and the
        deadline flags (`/openapi.json`'s `DsrRequest` is made from the same columns)."""
        now = self._clock.now()
        shown = {key: to_json_value(stored[key]) for key in SHOWN_COLUMNS}
        shown["extended"] = bool(stored["extended"])
        shown["overdue"] = stored["status"] not in FINAL and stored["due_at"] < now
        shown["due_soon"] = (
            stored["status"] not in FINAL
            and not shown["overdue"]
            and stored["due_at"] < now + timedelta(days=self._settings.due_soon_days)
        )
        return shown


def _grouped(decisions: list[erasure.Decision], actions: tuple[str, ...]) -> dict[str, list[str]]:
    grouped: dict[str, list[str]] = {}
    for decision in decisions:
        if decision.action in actions:
            grouped.setdefault(decision.entity, []).append(decision.record_id)
    return grouped
