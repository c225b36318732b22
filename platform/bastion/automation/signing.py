"""Webhook signatures, per the Standard Webhooks specification (standardwebhooks.com).

Each delivery carries three headers:

    webhook-id:        the delivery's id (the same on every retry and replay)
    webhook-timestamp: seconds since the Unix epoch, when this attempt was signed
    webhook-signature: v1,<base64 of HMAC-SHA256(key, "<id>.<timestamp>.<body>")>

The key is the subscription's secret, `whsec_<base64 of 32 random bytes>`, shown once
when the subscription is made and stored sealed under the subscription's own data
key. A receiver verifies by recomputing the HMAC over the raw body it received and
comparing in constant time, and refuses timestamps too far from its own clock
(replays of an old, captured request). `verify` is that check, for receivers in
Python and for the tests.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from collections.abc import Mapping
from datetime import datetime

SECRET_PREFIX = "whsec_"  # noqa: S105 - the marker of a secret's format, not a secret
_SECRET_BYTES = 32
TOLERANCE_SECONDS = 300


class InvalidSignature(ValueError):
    """The request does not carry a valid signature by this secret (or is too old)."""


def new_secret() -> str:
    """A fresh signing secret: `whsec_` and 32 random bytes in base64."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(_SECRET_BYTES)).decode()


def _key(secret: str) -> bytes:
    if not secret.startswith(SECRET_PREFIX):
        raise ValueError("a webhook secret starts with whsec_")
    try:
        return base64.b64decode(secret.removeprefix(SECRET_PREFIX), validate=True)
    except binascii.Error:
        raise ValueError("a webhook secret is whsec_ and base64") from None


def signature(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    """`v1,<base64 HMAC-SHA256>` of `<id>.<timestamp>.<body>` under the secret's key."""
    signed = f"{message_id}.{timestamp}.".encode() + body
    digest = hmac.new(_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def headers(secret: str, message_id: str, at: datetime, body: bytes) -> dict[str, str]:
    """The three Standard Webhooks headers of a delivery signed at `at`."""
    timestamp = int(at.timestamp())
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature(secret, message_id, timestamp, body),
    }


def verify(
    secret: str,
    received: Mapping[str, str],
    body: bytes,
    *,
    now: datetime,
    tolerance_seconds: int = TOLERANCE_SECONDS,
) -> None:
    """Check a received delivery (`received`: its headers, any case). Raises
    `InvalidSignature` when a header is missing, the timestamp is outside the
    tolerance, or no `v1` signature in the header matches."""
    lower = {name.lower(): value for name, value in received.items()}
    message_id = lower.get("webhook-id")
    raw_timestamp = lower.get("webhook-timestamp", "")
    offered = lower.get("webhook-signature", "")
    if not message_id or not raw_timestamp.isdigit() or not offered:
        raise InvalidSignature("missing webhook-id, webhook-timestamp or webhook-signature")
    timestamp = int(raw_timestamp)
    if abs(now.timestamp() - timestamp) > tolerance_seconds:
        raise InvalidSignature("the timestamp is outside the tolerance")
    expected = signature(secret, message_id, timestamp, body)
    # The header may hold several space-separated signatures (during a secret rotation).
    if not any(hmac.compare_digest(expected, candidate) for candidate in offered.split()):
        raise InvalidSignature("no signature matches")
