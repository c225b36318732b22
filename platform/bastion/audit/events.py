"""`AuditEvent`: who did what to which records, when, and whether it was allowed.

An event names things; it never holds a value. Every field is checked against a
narrow pattern when the event is built, so a caller cannot smuggle a record's
value (an email, a phone number, a name with spaces, free text) into the log by
mistake:

| field | shape |
|---|---|
| `id` | `evt_` + 26 Crockford base32 characters of a UUIDv7 (made by `AuditEvent.new`) |
| `occurred_at` | timezone-aware UTC, from the injected clock |
| `actor` | a principal id (`prn_…`), or `system:<name>` / `cli` / `cli:<name>` |
| `action` | dotted lower-case words: `record.read`, `token.create`, `dsr.erasure.completed` |
| `entity` | the resource acted on: an entity (`contacts`) or a system resource (`tokens`) |
| `decision` | `allow` or `deny` |
| `record_ids` | ids (`con_eu_…`, `prn_…`, pseudonyms `psn_…`), at most 500, de-duplicated |
| `fields` | field names (`email`, `custom.tier`), at most 256, de-duplicated |
| `reason` | a code, no spaces: `policy:no-rule`, `rule:auditor/*/contacts/*/deny` |
| `policy_version`, `request_id` | the policy digest and the request id |
| `client_address` | an IP address, normalised (personal data: redactable) |
| `details` | at most 16 keys `[a-z][a-z0-9_]*` with ints, booleans, null, ids or codes |

Codes are lower-case letters, digits and `_ . : / * , = -`: no `@`, no `+`, no
spaces, no upper case — so not an email address, a phone number or a sentence.
This is a guard against accidents in our own code, not a proof: a lower-case
word can still be a name, so callers pass codes and ids, never input.
`InvalidAuditEvent` names the offending field and never echoes its value.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Literal

from bastion.clock import Clock
from bastion.residency.ids import encode_base32, uuid7

Decision = Literal["allow", "deny"]
DetailValue = str | int | bool | None

MAX_RECORD_IDS = 500
MAX_FIELDS = 256
MAX_DETAILS = 16

EVENT_ID_RE = re.compile(r"evt_[0-9a-hjkmnp-tv-z]{26}")
ACTOR_RE = re.compile(r"[a-z]{3}_[0-9a-hjkmnp-tv-z]{16,26}|(?:system|cli)(?::[a-z0-9_.-]{1,64})?")
ACTION_RE = re.compile(r"[a-z][a-z0-9_]{0,31}(?:\.[a-z][a-z0-9_]{0,31}){1,3}")
ENTITY_RE = re.compile(r"[a-z][a-z0-9_]{0,63}")
ID_RE = re.compile(r"[a-z]{3}_(?:[a-z][a-z0-9]{1,15}_)?[0-9a-hjkmnp-tv-z]{16,26}")
FIELD_RE = re.compile(r"[a-z][a-z0-9_]{0,63}(?:\.[a-z][a-z0-9_]{0,63})?")
CODE_RE = re.compile(r"[a-z0-9][a-z0-9_.:/*,=-]{0,199}")
DETAIL_KEY_RE = re.compile(r"[a-z][a-z0-9_]{0,31}")
VERSION_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")
REQUEST_ID_RE = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_INT_RANGE = 1 << 53  # integers a JSON reader in any language keeps exactly


class InvalidAuditEvent(ValueError):
    """An event field has the wrong shape. The message names the field, never its value."""

    def __init__(self, field_name: str, expected: str) -> None:
        super().__init__(f"audit event field {field_name!r} must be {expected}")
        self.field_name = field_name


def new_event_id(now: datetime) -> str:
    """`evt_` + a UUIDv7 in Crockford base32: unique, and sorts by creation time."""
    return f"evt_{encode_base32(uuid7(now).int)}"


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """One audited action. Build it with `AuditEvent.new` (id and time filled in)."""

    id: str
    occurred_at: datetime
    actor: str
    action: str
    entity: str
    decision: Decision = "allow"
    record_ids: tuple[str, ...] = ()
    fields: tuple[str, ...] = ()
    reason: str | None = None
    policy_version: str | None = None
    request_id: str | None = None
    client_address: str | None = None
    details: Mapping[str, DetailValue] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check(EVENT_ID_RE, self.id, "id", "evt_ and 26 base32 characters")
        if not isinstance(self.occurred_at, datetime) or self.occurred_at.utcoffset() is None:
            raise InvalidAuditEvent("occurred_at", "a timezone-aware datetime")
        object.__setattr__(self, "occurred_at", self.occurred_at.astimezone(UTC))
        _check(ACTOR_RE, self.actor, "actor", "a principal id, system:<name> or cli")
        _check(ACTION_RE, self.action, "action", "dotted lower-case words (record.read)")
        _check(ENTITY_RE, self.entity, "entity", "a lower-case resource name")
        if self.decision not in ("allow", "deny"):
            raise InvalidAuditEvent("decision", "allow or deny")
        object.__setattr__(
            self, "record_ids", _names(self.record_ids, ID_RE, "record_ids", MAX_RECORD_IDS)
        )
        object.__setattr__(self, "fields", _names(self.fields, FIELD_RE, "fields", MAX_FIELDS))
        if self.reason is not None:
            _check(CODE_RE, self.reason, "reason", "a code (lower case, no spaces)")
        if self.policy_version is not None:
            _check(VERSION_RE, self.policy_version, "policy_version", "a version string")
        if self.request_id is not None:
            _check(REQUEST_ID_RE, self.request_id, "request_id", "a request id")
        if self.client_address is not None:
            object.__setattr__(self, "client_address", _address(self.client_address))
        object.__setattr__(self, "details", _details(self.details))

    @classmethod
    def new(
        cls,
        clock: Clock,
        *,
        actor: str,
        action: str,
        entity: str,
        decision: Decision = "allow",
        record_ids: Iterable[str] = (),
        fields: Iterable[str] = (),
        reason: str | None = None,
        policy_version: str | None = None,
        request_id: str | None = None,
        client_address: str | None = None,
        details: Mapping[str, DetailValue] | None = None,
    ) -> AuditEvent:
        """An event happening now (by `clock`), with a fresh id.

        Raises `InvalidAuditEvent` when a field has the wrong shape.
        """
        now = clock.now()
        return cls(
            id=new_event_id(now),
            occurred_at=now,
            actor=actor,
            action=action,
            entity=entity,
            decision=decision,
            record_ids=tuple(record_ids),
            fields=tuple(fields),
            reason=reason,
            policy_version=policy_version,
            request_id=request_id,
            client_address=client_address,
            details=dict(details or {}),
        )


def _check(pattern: re.Pattern[str], value: object, name: str, expected: str) -> None:
    if not isinstance(value, str) or pattern.fullmatch(value) is None:
        raise InvalidAuditEvent(name, expected)


def _names(
    values: Iterable[str], pattern: re.Pattern[str], name: str, limit: int
) -> tuple[str, ...]:
    if isinstance(values, str):  # a bare string would be read as its characters
        raise InvalidAuditEvent(name, "a list of strings")
    unique = tuple(dict.fromkeys(values))
    if len(unique) > limit:
        raise InvalidAuditEvent(name, f"at most {limit} entries")
    for value in unique:
        _check(pattern, value, name, "a list of ids or names of the documented shape")
    return unique


def _address(value: str) -> str:
    if not isinstance(value, str) or len(value) > 45:
        raise InvalidAuditEvent("client_address", "an IP address")
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise InvalidAuditEvent("client_address", "an IP address") from None


def _details(values: Mapping[str, DetailValue]) -> Mapping[str, DetailValue]:
    if not isinstance(values, Mapping) or len(values) > MAX_DETAILS:
        raise InvalidAuditEvent("details", f"an object of at most {MAX_DETAILS} keys")
    checked: dict[str, DetailValue] = {}
    for key, value in values.items():
        _check(DETAIL_KEY_RE, key, "details", "keys of lower-case letters, digits and _")
        if value is None or isinstance(value, bool):
            pass
        elif isinstance(value, int):
            if not -_INT_RANGE < value < _INT_RANGE:
                raise InvalidAuditEvent(f"details.{key}", "an integer within ±2^53")
        elif isinstance(value, str):
            if CODE_RE.fullmatch(value) is None and ID_RE.fullmatch(value) is None:
                raise InvalidAuditEvent(f"details.{key}", "an id or a code (no spaces)")
        else:
            raise InvalidAuditEvent(f"details.{key}", "an integer, a boolean, null or a code")
        checked[key] = value
    return MappingProxyType(checked)
