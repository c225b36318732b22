"""The canonical encodings and hashes of the chain: the verification contract.

Anyone holding an export (or the tables) and a chain's public key can re-check the
chain with nothing but this description:

* **timestamp**: `YYYY-MM-DDTHH:MM:SS.ffffffZ` — UTC, always six fractional digits.
* **header** of the entry at sequence number `seq` of chain `chain` (the database
  name: `eu`, `us`, `control`): the UTF-8 bytes of the JSON array

      ["bastion-audit-v1", chain, seq, id, occurred_at, actor, action, entity,
       decision, policy_version, request_id]

  with `seq` a JSON integer, absent optional values as `null`, no whitespace
  (separators `,` and `:`), non-ASCII characters as themselves (not `\\u`
  escapes). Binding `chain` and `seq` into the header means an entry cannot be
  moved to another position or another region's chain without detection.
* **payload**: the UTF-8 bytes of the JSON object
  `{"client_address", "details", "fields", "reason", "record_ids"}` with keys
  sorted, no whitespace, lists in the event's order. Values are only strings,
  integers (|n| < 2^53), booleans and null, and keys are ASCII, so this is also
  the RFC 8785 (JCS) form. The payload is stored as exactly these bytes
  (`audit_events.payload`), so verifying never re-encodes it.
* **entry hash**: `hash[seq] = SHA-256(hash[seq-1] ‖ SHA-256(header) ‖ SHA-256(payload))`,
  with `hash[0]` = 32 zero bytes (the empty chain). `SHA-256(payload)` is also
  stored per entry (`audit_chain.payload_hash`), so a payload can later be
  redacted without breaking the chain: a redacted entry is checked against the
  stored payload hash, and the redaction is itself a recorded, chained event.

Hashes in exports and signed checkpoints are standard base64 (with padding).
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

from bastion.audit.events import AuditEvent, DetailValue

HEADER_TAG = "bastion-audit-v1"
GENESIS = bytes(32)
_TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"


def format_time(moment: datetime) -> str:
    """The canonical timestamp: UTC, microseconds, `Z`."""
    return moment.astimezone(UTC).strftime(_TIME_FORMAT)


def parse_time(text: str) -> datetime:
    """Inverse of `format_time`."""
    return datetime.strptime(text, _TIME_FORMAT).replace(tzinfo=UTC)


def _json(value: object) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), sort_keys=True).encode()


def payload_bytes(
    *,
    record_ids: Sequence[str],
    fields: Sequence[str],
    client_address: str | None,
    reason: str | None,
    details: Mapping[str, DetailValue],
) -> bytes:
    """The canonical payload: what can be redacted later."""
    return _json(
        {
            "client_address": client_address,
            "details": dict(details),
            "fields": list(fields),
            "reason": reason,
            "record_ids": list(record_ids),
        }
    )


def event_payload(event: AuditEvent) -> bytes:
    return payload_bytes(
        record_ids=event.record_ids,
        fields=event.fields,
        client_address=event.client_address,
        reason=event.reason,
        details=event.details,
    )


def header_bytes(
    chain: str,
    seq: int,
    event_id: str,
    occurred_at: str,
    actor: str,
    action: str,
    entity: str,
    decision: str,
    policy_version: str | None,
    request_id: str | None,
) -> bytes:
    """The canonical header of an entry (`occurred_at` already in canonical form)."""
    # A list, not sort_keys over an object: position is the schema.
    return json.dumps(
        [
            HEADER_TAG,
            chain,
            seq,
            event_id,
            occurred_at,
            actor,
            action,
            entity,
            decision,
            policy_version,
            request_id,
        ],
        ensure_ascii=False,
        separators=(",", ":"),
    ).encode()


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def entry_hash(prev_hash: bytes, header: bytes, payload_hash: bytes) -> bytes:
    """`SHA-256(prev ‖ SHA-256(header) ‖ payload_hash)`."""
    return hashlib.sha256(prev_hash + hashlib.sha256(header).digest() + payload_hash).digest()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
