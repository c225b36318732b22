"""What `POST /v1/events` takes: a batch of behaviour events, checked whole before
anything is stored. Every error names `events[i].<key>` and never quotes the value."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from bastion.automation.model import ACTIVITY_TYPES
from bastion.errors import FieldError, PayloadTooLarge, ValidationFailed
from bastion.residency.ids import InvalidId, RecordId

_EVENT_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
_PROPERTY = re.compile(r"[a-z][a-z0-9_]{0,62}")
MAX_PROPERTIES = 20
MAX_PROPERTY_TEXT = 1000
MAX_PROPERTIES_BYTES = 8192
# Clocks differ: an event may say it happened a little in the future, not more.
FUTURE_SLACK = timedelta(minutes=5)
MAX_AGE = timedelta(days=730)
_EVENT_KEYS = {"id", "type", "subject_id", "occurred_at", "properties"}


@dataclass(frozen=True, slots=True)
class Incoming:
    index: int
    id: str
    type: str
    subject_id: str
    occurred_at: datetime
    properties: dict[str, Any] | None

    def canonical(self) -> bytes:
        return json.dumps(
            [self.id, self.type, self.subject_id, self.occurred_at.isoformat(), self.properties],
            sort_keys=True,
            separators=(",", ":"),
            ensure_ascii=False,
        ).encode()


def parse_batch(body: Mapping[str, Any], now: datetime, limit: int) -> list[Incoming]:
    """The events of a batch, checked whole: 422 naming every `events[i].<key>` that
    is wrong (nothing is stored), 413 past `limit` events."""
    unknown = sorted(set(body) - {"events"})
    events = body.get("events")
    if unknown or not isinstance(events, list) or not events:
        raise ValidationFailed(
            "invalid batch",
            [FieldError("events", "must be a non-empty list of events")]
            + [FieldError(name, "is not a field of a batch") for name in unknown],
        )
    if len(events) > limit:
        raise PayloadTooLarge(f"a batch holds at most {limit} events; split it")
    errors: list[FieldError] = []
    parsed: list[Incoming] = []
    seen: dict[str, int] = {}
    for index, raw in enumerate(events):
        found = _event(index, raw, now, errors)
        if found is None:
            continue
        if found.id in seen:
            errors.append(FieldError(f"events[{index}].id", f"repeats events[{seen[found.id]}].id"))
            continue
        seen[found.id] = index
        parsed.append(found)
    if errors:
        raise ValidationFailed("invalid events; nothing was stored", errors[:100])
    return parsed


def _event(index: int, raw: object, now: datetime, errors: list[FieldError]) -> Incoming | None:
    where = f"events[{index}]"
    if not isinstance(raw, dict):
        errors.append(FieldError(where, "must be an object"))
        return None
    before = len(errors)
    errors.extend(
        FieldError(f"{where}.{k}", "is not a field of an event")
        for k in sorted(set(raw) - _EVENT_KEYS)
    )
    event_id = raw.get("id")
    if not isinstance(event_id, str) or _EVENT_ID.fullmatch(event_id) is None:
        errors.append(FieldError(f"{where}.id", "must be 1-64 letters, digits or . _ : -"))
    kind = raw.get("type")
    if kind not in ACTIVITY_TYPES:
        errors.append(FieldError(f"{where}.type", f"must be one of {', '.join(ACTIVITY_TYPES)}"))
    subject = raw.get("subject_id")
    try:
        parsed = RecordId.parse(subject) if isinstance(subject, str) else None
    except InvalidId:
        parsed = None
    if parsed is None or parsed.prefix not in ("led", "con"):
        errors.append(FieldError(f"{where}.subject_id", "must be the id of a lead or a contact"))
    occurred = _time(raw.get("occurred_at"), now)
    if occurred is None:
        errors.append(
            FieldError(
                f"{where}.occurred_at",
                "must be an RFC 3339 time with a zone, not in the future, at most 2 years old",
            )
        )
    properties = raw.get("properties")
    if isinstance(properties, dict):
        # Numbers arrive as exact decimals; behaviour properties are counts and sizes.
        properties = {k: _number(v) for k, v in properties.items()}
    problem = _properties_problem(properties)
    if problem is not None:
        errors.append(FieldError(f"{where}.properties", problem))
    if len(errors) > before:
        return None
    assert isinstance(event_id, str)
    assert isinstance(kind, str)
    assert isinstance(subject, str)
    assert occurred is not None
    return Incoming(index, event_id, kind, subject, occurred, properties or None)


def _number(value: object) -> object:
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    return value


def _time(value: object, now: datetime) -> datetime | None:
    if not isinstance(value, str) or len(value) > 40:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if parsed.tzinfo is None or parsed > now + FUTURE_SLACK or parsed < now - MAX_AGE:
        return None
    return parsed.astimezone(now.tzinfo)


def _properties_problem(properties: object) -> str | None:
    if properties is None:
        return None
    if not isinstance(properties, dict) or len(properties) > MAX_PROPERTIES:
        return f"must be an object of at most {MAX_PROPERTIES} keys"
    for key, value in properties.items():
        if not isinstance(key, str) or _PROPERTY.fullmatch(key) is None:
            return "keys must be lower-case letters, digits and _"
        if isinstance(value, str) and len(value) > MAX_PROPERTY_TEXT:
            return f"text values must be at most {MAX_PROPERTY_TEXT} characters"
        if value is not None and not isinstance(value, str | int | float | bool):
            return "values must be text, numbers, true/false or null"
        if isinstance(value, float) and not math.isfinite(value):
            return "numbers must be finite"
    size = len(json.dumps(properties, separators=(",", ":"), ensure_ascii=False))
    if size > MAX_PROPERTIES_BYTES:
        return f"must be at most {MAX_PROPERTIES_BYTES} bytes as JSON"
    return None
