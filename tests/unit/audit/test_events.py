"""Events hold names and ids only: value-shaped input is refused, and encodings are canonical."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bastion.audit import AuditEvent, InvalidAuditEvent
from bastion.audit.encoding import event_payload, format_time, header_bytes, parse_time
from tests.conftest import FrozenClock
from tests.unit.audit.conftest import CONTACT, make_event

CANARY_EMAIL = "anna.canary@example.com"
CANARY_PHONE = "+4930123456"

VALUE_SHAPED = [
    {"record_ids": [CANARY_EMAIL]},
    {"record_ids": CONTACT},  # a bare string, not a list
    {"fields": ["Anna Schmidt"]},
    {"fields": [CANARY_PHONE]},
    {"reason": "denied for Anna Schmidt"},
    {"reason": CANARY_EMAIL},
    {"details": {"email": CANARY_EMAIL}},
    {"details": {"phone": CANARY_PHONE}},
    {"details": {"note": "Call Anna about the invoice"}},
    {"details": {"amount": 12.5}},
    {"details": {"nested": {"email": CANARY_EMAIL}}},
    {"details": {"Bad Key": 1}},
    {"details": {f"k{i}": i for i in range(17)}},
    {"actor": CANARY_EMAIL},
    {"action": "Record Read"},
    {"entity": "Contacts!"},
    {"decision": "maybe"},
    {"client_address": "anna-laptop.example.com"},
    {"request_id": "id with spaces"},
    {"policy_version": "v" * 65},
    {"record_ids": [f"con_eu_{i:026d}" for i in range(501)]},
]


@pytest.mark.parametrize("overrides", VALUE_SHAPED)
def test_value_shaped_input_is_refused_and_never_echoed(overrides: dict[str, object]) -> None:
    with pytest.raises(InvalidAuditEvent) as raised:
        make_event(FrozenClock(), **overrides)
    message = str(raised.value)
    for canary in (CANARY_EMAIL, CANARY_PHONE, "Anna", "anna"):
        assert canary not in message


def test_a_well_formed_event_is_normalised() -> None:
    event = make_event(
        FrozenClock(),
        record_ids=[CONTACT, CONTACT],
        fields=["email", "custom.tier", "email"],
        client_address="2001:DB8::1",
        reason="rule:sales_rep/*/contacts/read/allow",
    )
    assert event.record_ids == (CONTACT,)
    assert event.fields == ("email", "custom.tier")
    assert event.client_address == "2001:db8::1"
    assert event.id.startswith("evt_")


def test_naive_times_are_refused() -> None:
    with pytest.raises(InvalidAuditEvent):
        AuditEvent(
            id="evt_01jd0000000000000000000000",
            occurred_at=datetime(2026, 1, 1),
            actor="cli",
            action="audit.read",
            entity="audit",
        )


def test_the_payload_encoding_is_canonical_json() -> None:
    event = make_event(FrozenClock(), details={"b": 1, "a": True})
    payload = event_payload(event)
    decoded = json.loads(payload)
    assert list(decoded) == sorted(decoded)
    assert list(decoded["details"]) == ["a", "b"]
    assert payload == json.dumps(decoded, sort_keys=True, separators=(",", ":")).encode()


@given(st.datetimes(min_value=datetime(1971, 1, 1), timezones=st.just(UTC)))
def test_canonical_time_round_trips(moment: datetime) -> None:
    text = format_time(moment)
    assert len(text) == 27
    assert text.endswith("Z")
    assert parse_time(text) == moment


@given(
    seq=st.integers(min_value=1, max_value=2**62),
    version=st.none() | st.from_regex(r"[A-Za-z0-9._-]{1,64}", fullmatch=True),
)
def test_headers_are_distinct_per_position(seq: int, version: str | None) -> None:
    args = ("evt_01jd0000000000000000000000", "2026-01-01T00:00:00.000000Z", "cli")
    one = header_bytes("eu", seq, *args, "audit.read", "audit", "allow", version, None)
    other = header_bytes("eu", seq + 1, *args, "audit.read", "audit", "allow", version, None)
    us = header_bytes("us", seq, *args, "audit.read", "audit", "allow", version, None)
    assert len({one, other, us}) == 3
    assert json.loads(one)[2] == seq
