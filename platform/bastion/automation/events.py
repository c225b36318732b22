"""Activity events: behaviour of leads and contacts (`POST /v1/events`), and their
timeline (`GET /v1/{leads|contacts}/{id}/events`).

A batch is `{"events": [{"id", "type", "subject_id", "occurred_at", "properties"}]}`,
at most `[automation] max_events_per_batch` events (more is 413), all about people of
one region (the subject ids name it). It is checked whole before anything is written
(422 naming `events[i].<key>`; nothing stored), needs the `events create` right in
that region, and every subject must be a lead or contact the caller may read (one it
may not is answered as one that does not exist). It is stored in one transaction of
that region: each event on its subject's timeline, its `properties` sealed under the
subject's data key (they are personal data: a page's URL, a form's fields), one
`events.ingest` audit event naming the subjects, and what the events feed —
rescoring, rules (`feed.ChangeFeed.activities`).

Idempotent by event id: an event whose id the region has stored already is a
duplicate and changes nothing, so a replayed batch changes nothing the second time.
The same id with other content (another type, subject, time or properties) is 409
and nothing of the batch is stored.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import Connection

from bastion.automation import paging
from bastion.automation import repository as repo
from bastion.automation.event_input import Incoming, parse_batch
from bastion.automation.feed import Activity, ChangeFeed
from bastion.automation.model import SUBJECT_ENTITIES
from bastion.automation.settings import AutomationSettings
from bastion.clock import Clock
from bastion.crm.catalog import ENTITIES, ENTITIES_BY_PREFIX
from bastion.crm.cursors import CursorCodec
from bastion.crm.records import to_json_value
from bastion.crm.repository import existing
from bastion.crm.service import RecordService
from bastion.crypto.envelope import FieldContext
from bastion.crypto.errors import KeyDestroyed
from bastion.crypto.keyring import Keyring
from bastion.dsr.gate import Gate
from bastion.errors import Conflict, FieldError, ValidationFailed
from bastion.principals.caller import Caller
from bastion.residency.ids import RecordId


def properties_context(region: str, row_id: str) -> FieldContext:
    return FieldContext(region, "activity_events", row_id, "properties")


class ActivityEvents:
    def __init__(
        self,
        *,
        records: RecordService,
        gate: Gate,
        feed: ChangeFeed,
        clock: Clock,
        settings: AutomationSettings,
        fingerprint_key: bytes,
        cursors: CursorCodec,
    ) -> None:
        self._records = records
        self._gate = gate
        self._feed = feed
        self._clock = clock
        self._settings = settings
        self._key = fingerprint_key
        self._cursors = cursors

    def ingest(self, caller: Caller, body: Mapping[str, Any]) -> dict[str, Any]:
        """Store a batch; how many events were new and how many duplicates."""
        now = self._clock.now()
        incoming = parse_batch(body, now, self._settings.max_events_per_batch)
        region = self._region(caller, incoming)
        policy = self._gate.allow(caller, region, "events", "create")
        database = self._records.database(region)
        with self._records.write(database, "a subject of the batch no longer exists") as conn:
            self._check_subjects(conn, caller, region, incoming)
            fingerprints = {e.id: self._fingerprint(e) for e in incoming}
            known = repo.known_events(conn, list(fingerprints))
            conflicting = [
                f"events[{e.index}]"
                for e in incoming
                if e.id in known and known[e.id] != fingerprints[e.id]
            ]
            if conflicting:
                raise Conflict(
                    f"{', '.join(conflicting[:10])}: these ids were stored before with other "
                    "content; nothing of the batch was stored"
                )
            fresh = [e for e in incoming if e.id not in known]
            stored = self._store(conn, caller, region, fresh, fingerprints, now)
            subjects = sorted({e.subject_id for e in incoming})
            self._records.recorder.record(
                conn,
                region,
                caller,
                policy.version,
                action="events.ingest",
                entity="events",
                record_ids=subjects,
                details={"accepted": len(stored), "duplicates": len(incoming) - len(stored)},
            )
            self._feed.activities(conn, region, caller, stored, now)
        accepted = {a.id for a in stored}
        return {
            "region": region,
            "accepted": len(stored),
            "duplicates": len(incoming) - len(stored),
            "events": [
                {"id": e.id, "status": "accepted" if e.id in accepted else "duplicate"}
                for e in incoming
            ],
        }

    def _store(
        self,
        conn: Connection,
        caller: Caller,
        region: str,
        fresh: list[Incoming],
        fingerprints: Mapping[str, bytes],
        now: datetime,
    ) -> list[Activity]:
        keys = self._records.keys
        rows: list[dict[str, Any]] = []
        by_event: dict[str, Activity] = {}
        for event in fresh:
            row_id = str(RecordId.new("ave", region, now))
            sealed = None
            if event.properties:
                plain = json.dumps(event.properties, separators=(",", ":"), ensure_ascii=False)
                sealed = keys.seal(
                    conn, event.subject_id, plain.encode(), properties_context(region, row_id)
                )
            rows.append(
                {
                    "id": row_id,
                    "region": region,
                    "event_id": event.id,
                    "subject_id": event.subject_id,
                    "type": event.type,
                    "occurred_at": event.occurred_at,
                    "received_at": now,
                    "properties": sealed,
                    "fingerprint": fingerprints[event.id],
                    "source": caller.principal.id,
                }
            )
            entity = ENTITIES_BY_PREFIX[event.subject_id[:3]].name
            by_event[event.id] = Activity(row_id, event.type, event.subject_id, entity)
        repo.insert_activities(conn, rows)
        # A concurrent request with the same events may have stored some first: only
        # the rows that are ours feed scoring and rules.
        ours = repo.stored_activities(conn, [a.id for a in by_event.values()])
        return [a for a in by_event.values() if a.id in ours]

    def _fingerprint(self, event: Incoming) -> bytes:
        return hmac.new(self._key, event.canonical(), hashlib.sha256).digest()

    def _region(self, caller: Caller, events: list[Incoming]) -> str:
        region = RecordId.parse(events[0].subject_id).region
        errors = [
            FieldError(
                f"events[{e.index}].subject_id", f"must be about a person of {region}, as events[0]"
            )
            for e in events
            if RecordId.parse(e.subject_id).region != region
        ]
        if region not in self._records.regions or region not in caller.principal.regions:
            errors = [
                FieldError(
                    f"events[{e.index}].subject_id",
                    "no lead or contact has that id in your regions",
                )
                for e in events
            ]
        if errors:
            raise ValidationFailed("invalid events; nothing was stored", errors[:100])
        return region

    def _check_subjects(
        self, conn: Connection, caller: Caller, region: str, events: list[Incoming]
    ) -> None:
        """Every subject is a live lead or contact in the caller's read scope (one
        outside it is answered as one that does not exist)."""
        access = self._records.access(caller.principal)
        visible: set[str] = set()
        for name in SUBJECT_ENTITIES:
            spec = ENTITIES[name]
            wanted = sorted(
                {e.subject_id for e in events if e.subject_id.startswith(spec.prefix + "_")}
            )
            scope = access.policy.scope(caller.principal.roles, region, name, "read")
            if wanted and scope.permits_any:
                visible |= existing(conn, spec, wanted, scope=access.where(spec, scope))
        missing = [
            FieldError(
                f"events[{e.index}].subject_id", "no lead or contact has that id in your regions"
            )
            for e in events
            if e.subject_id not in visible
        ]
        if missing:
            raise ValidationFailed("invalid events; nothing was stored", missing[:100])

    # -- the timeline ---------------------------------------------------------------------

    def timeline(
        self, caller: Caller, entity: str, subject_id: str, *, limit: int, cursor: str | None
    ) -> dict[str, Any]:
        """A lead's or contact's events, newest first, properties decrypted."""
        subject = self._records.get(caller, entity, subject_id)  # 404 / 410 / 301 as GET
        region = str(subject["region"])
        policy = self._gate.allow(caller, region, "events", "read", [subject_id])
        fingerprint = f"timeline:{subject_id}"
        after = paging.position(self._cursors, fingerprint, cursor)
        database = self._records.database(region)
        keys = self._records.keys
        with self._records.write(database, "the subject is gone") as conn:
            rows, next_cursor = paging.page(
                self._cursors,
                fingerprint,
                repo.timeline(conn, subject_id, after, limit + 1),
                limit,
                "occurred_at",
            )
            data = [shown(conn, keys, region, row) for row in rows]
            self._records.recorder.record(
                conn,
                region,
                caller,
                policy.version,
                action="events.read",
                entity="events",
                record_ids=[subject_id],
                details={"count": len(data)},
            )
        return {"data": data, "next_cursor": next_cursor}


def shown(conn: Connection, keys: Keyring, region: str, row: Mapping[str, Any]) -> dict[str, Any]:
    """A stored activity event as the API shows it, its properties decrypted (absent,
    and named in `_erased`, when its subject's key was destroyed)."""
    event: dict[str, Any] = {
        "id": row["event_id"],
        "subject_id": row["subject_id"],
        "type": row["type"],
        "occurred_at": to_json_value(row["occurred_at"]),
        "received_at": to_json_value(row["received_at"]),
        "properties": None,
    }
    if row["properties"] is not None:
        try:
            context = properties_context(region, row["id"])
            event["properties"] = json.loads(keys.unseal(conn, bytes(row["properties"]), context))
        except KeyDestroyed:
            event["_erased"] = ["properties"]
    return event


def subject_events(
    conn: Connection, keys: Keyring, region: str, subject_ids: list[str]
) -> list[dict[str, Any]]:
    """Every activity event about these people, properties decrypted, oldest first:
    what a data subject's access request returns of their behaviour."""
    return [shown(conn, keys, region, row) for row in repo.activities_of(conn, subject_ids)]
