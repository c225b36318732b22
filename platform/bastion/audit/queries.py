"""Reading events back: filters, keyset pages and the JSON form of an event.

Every filter is served by an index: a record id by `audit_record_refs`' primary
key (record_id, occurred_at, event_id) — "who accessed contact X in the last 90
days" is one range scan — an actor by (actor, occurred_at, id), everything else
by (occurred_at, id) plus the remaining conditions. Pages are keyset pages on
(occurred_at, event id), oldest or newest first.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ColumnElement, Connection, Select, and_, or_, select

from bastion.audit.encoding import b64, format_time
from bastion.audit.events import ACTION_RE, ACTOR_RE, ENTITY_RE, ID_RE
from bastion.audit.tables import AUDIT
from bastion.errors import FieldError, ValidationFailed

MAX_LIMIT = 500
DEFAULT_LIMIT = 50
FILTER_PARAMETERS = ("actor", "record_id", "entity", "action", "decision", "since", "until")


@dataclass(frozen=True, slots=True)
class EventFilter:
    actor: str | None = None
    record_id: str | None = None
    entity: str | None = None
    action: str | None = None
    decision: str | None = None
    since: datetime | None = None
    until: datetime | None = None

    def fingerprint(self) -> list[Any]:
        """A stable description, bound into cursors so one cannot serve another query."""
        return [
            self.actor,
            self.record_id,
            self.entity,
            self.action,
            self.decision,
            format_time(self.since) if self.since else None,
            format_time(self.until) if self.until else None,
        ]


def parse_filter(params: Mapping[str, str | None]) -> EventFilter:
    """An `EventFilter` from raw strings; `ValidationFailed` naming every bad one.

    `since`/`until` are RFC 3339 / ISO 8601 times with a zone (`Z` or an offset);
    `since` is inclusive, `until` exclusive.
    """
    errors: list[FieldError] = []

    def pattern(name: str, regex: Any, message: str) -> str | None:
        value = params.get(name)
        if value is None:
            return None
        if regex.fullmatch(value) is None:
            errors.append(FieldError(name, message))
            return None
        return value

    def moment(name: str) -> datetime | None:
        value = params.get(name)
        if value is None:
            return None
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            parsed = None
        if parsed is None or parsed.tzinfo is None:
            errors.append(FieldError(name, "must be an ISO 8601 time with a zone, e.g. …Z"))
            return None
        return parsed.astimezone(UTC)

    decision = params.get("decision")
    if decision is not None and decision not in ("allow", "deny"):
        errors.append(FieldError("decision", "must be allow or deny"))
        decision = None
    result = EventFilter(
        actor=pattern("actor", ACTOR_RE, "must be a principal id, system:<name> or cli"),
        record_id=pattern("record_id", ID_RE, "must be a record id"),
        entity=pattern("entity", ENTITY_RE, "must be a resource name"),
        action=pattern("action", ACTION_RE, "must be an action such as record.read"),
        decision=decision,
        since=moment("since"),
        until=moment("until"),
    )
    if result.since and result.until and result.since >= result.until:
        errors.append(FieldError("until", "must be later than since"))
    if errors:
        raise ValidationFailed("invalid audit query parameters", errors)
    return result


def parse_limit(raw: str | None, *, default: int = DEFAULT_LIMIT) -> int:
    if raw is None:
        return default
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_LIMIT:
        raise ValidationFailed(
            "invalid limit", [FieldError("limit", f"must be an integer from 1 to {MAX_LIMIT}")]
        )
    return int(raw)


Position = tuple[datetime, str]


def select_events(
    flt: EventFilter, *, after: Position | None, descending: bool, limit: int
) -> Select[Any]:
    """The page query for one database: events, their chain position and redaction flag."""
    events, refs, chain, redactions = AUDIT.events, AUDIT.record_refs, AUDIT.chain, AUDIT.redactions
    source = events.outerjoin(chain, chain.c.event_id == events.c.id).outerjoin(
        redactions, redactions.c.event_id == events.c.id
    )
    time_col, id_col = events.c.occurred_at, events.c.id
    conditions: list[ColumnElement[bool]] = []
    if flt.record_id is not None:
        source = refs.join(source, events.c.id == refs.c.event_id)
        time_col, id_col = refs.c.occurred_at, refs.c.event_id
        conditions.append(refs.c.record_id == flt.record_id)
    if flt.actor is not None:
        conditions.append(events.c.actor == flt.actor)
    if flt.entity is not None:
        conditions.append(events.c.entity == flt.entity)
    if flt.action is not None:
        conditions.append(events.c.action == flt.action)
    if flt.decision is not None:
        conditions.append(events.c.decision == flt.decision)
    if flt.since is not None:
        conditions.append(time_col >= flt.since)
    if flt.until is not None:
        conditions.append(time_col < flt.until)
    if after is not None:
        moment, last_id = after
        if descending:
            conditions.append(or_(time_col < moment, and_(time_col == moment, id_col < last_id)))
        else:
            conditions.append(or_(time_col > moment, and_(time_col == moment, id_col > last_id)))
    order = (time_col.desc(), id_col.desc()) if descending else (time_col, id_col)
    return (
        select(
            events,
            chain.c.seq,
            chain.c.hash,
            chain.c.payload_hash,
            redactions.c.event_id.label("redacted_by"),
        )
        .select_from(source)
        .where(*conditions)
        .order_by(*order)
        .limit(limit)
    )


def fetch_events(
    conn: Connection,
    flt: EventFilter,
    *,
    after: Position | None,
    descending: bool,
    limit: int,
) -> list[Any]:
    return list(
        conn.execute(select_events(flt, after=after, descending=descending, limit=limit)).all()
    )


def render_event(row: Any, chain: str, *, hashes: bool = False) -> dict[str, Any]:
    """The JSON form of an event: names and ids only, as they were recorded.

    `hashes` adds the entry's hashes (exports: what a third party verifies with).
    """
    payload = json.loads(row.payload)
    rendered: dict[str, Any] = {
        "id": row.id,
        "chain": chain,
        "seq": row.seq,
        "occurred_at": format_time(row.occurred_at),
        "actor": row.actor,
        "action": row.action,
        "entity": row.entity,
        "decision": row.decision,
        "record_ids": payload["record_ids"],
        "fields": payload["fields"],
        "reason": payload["reason"],
        "policy_version": row.policy_version,
        "request_id": row.request_id,
        "client_address": payload["client_address"],
        "details": payload["details"],
        "redacted": row.redacted_by is not None,
    }
    if hashes:
        rendered["hash"] = b64(row.hash) if row.hash is not None else None
        rendered["payload_hash"] = b64(row.payload_hash) if row.payload_hash is not None else None
    return rendered
