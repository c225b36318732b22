"""Standard Webhooks signatures: the published test vector, and what verify refuses."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from bastion.automation.signing import (
    InvalidSignature,
    headers,
    new_secret,
    signature,
    verify,
)

# The specification's own example (standardwebhooks.com, and every reference library).
VECTOR_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
VECTOR_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
VECTOR_TIMESTAMP = 1614265330
VECTOR_BODY = b'{"test": 2432232314}'
VECTOR_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_signatures_reproduce_the_specification_test_vector() -> None:
    assert signature(VECTOR_SECRET, VECTOR_ID, VECTOR_TIMESTAMP, VECTOR_BODY) == VECTOR_SIGNATURE


def test_a_signed_delivery_verifies_and_any_change_to_it_does_not() -> None:
    secret = new_secret()
    at = datetime(2026, 11, 24, 9, 0, tzinfo=UTC)
    signed = headers(secret, "whd_eu_1", at, b'{"a":1}')
    verify(secret, signed, b'{"a":1}', now=at + timedelta(seconds=30))
    with pytest.raises(InvalidSignature):
        verify(secret, signed, b'{"a":2}', now=at)
    with pytest.raises(InvalidSignature):
        verify(new_secret(), signed, b'{"a":1}', now=at)
    with pytest.raises(InvalidSignature):
        verify(secret, {**signed, "webhook-id": "whd_eu_2"}, b'{"a":1}', now=at)
    with pytest.raises(InvalidSignature, match="tolerance"):
        verify(secret, signed, b'{"a":1}', now=at + timedelta(minutes=6))
    with pytest.raises(InvalidSignature, match="missing"):
        verify(secret, {"webhook-id": "x"}, b"", now=at)


def test_a_header_with_several_signatures_verifies_if_one_matches() -> None:
    at = datetime.fromtimestamp(VECTOR_TIMESTAMP, UTC)
    received = {
        "Webhook-Id": VECTOR_ID,
        "Webhook-Timestamp": str(VECTOR_TIMESTAMP),
        "Webhook-Signature": f"v1,bm9wZQ== {VECTOR_SIGNATURE}",
    }
    verify(VECTOR_SECRET, received, VECTOR_BODY, now=at)


def test_secrets_are_whsec_and_32_random_bytes() -> None:
    first, second = new_secret(), new_secret()
    assert first.startswith("whsec_")
    assert first != second
    with pytest.raises(ValueError, match="whsec_"):
        signature("not-a-secret", VECTOR_ID, 1, b"")
