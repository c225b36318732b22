"""`Idempotency-Key` for creates: the same key and body replay the first result.

Keys are per principal and stored in the record's region database, in the same
transaction as the record they created, so a replay finds exactly what committed.
The same key with a different body is a 422, never a silent second record.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, insert, select

from bastion.crm.records import to_json_value
from bastion.crm.tables import idempotency_keys
from bastion.errors import BadRequest, FieldError, ValidationFailed

_KEY_RE = re.compile(r"[\x21-\x7e]{1,255}")


def check_key(key: str | None) -> None:
    if key is not None and not _KEY_RE.fullmatch(key):
        raise BadRequest("the Idempotency-Key header must be 1-255 printable ASCII characters")


def request_hash(secret: bytes, entity: str, region: str, values: Mapping[str, Any]) -> str:
    """A keyed fingerprint of the request. Keyed (HMAC, with a key that is not in the
    database) because the values include personal data: a plain hash of an email
    address stored next to the record could be reversed by guessing."""
    canonical = json.dumps(
        [entity, region, {k: to_json_value(v) for k, v in values.items()}],
        sort_keys=True,
        separators=(",", ":"),
        default=str,
    )
    return hmac.new(secret, canonical.encode(), hashlib.sha256).hexdigest()


def earlier_record(
    conn: Connection, entity: str, principal_id: str, key: str, body_hash: str
) -> str | None:
    """The id of the record an earlier request with this key created, if any."""
    earlier = conn.execute(
        select(idempotency_keys).where(
            idempotency_keys.c.principal_id == principal_id, idempotency_keys.c.key == key
        )
    ).one_or_none()
    if earlier is None:
        return None
    if earlier.request_hash != body_hash or earlier.entity != entity:
        raise ValidationFailed(
            "this Idempotency-Key was already used with a different request",
            [FieldError("Idempotency-Key", "was used before with a different body")],
        )
    return str(earlier.record_id)


def remember(
    conn: Connection,
    *,
    entity: str,
    principal_id: str,
    key: str,
    body_hash: str,
    record_id: str,
    now: datetime,
) -> None:
    conn.execute(
        insert(idempotency_keys).values(
            principal_id=principal_id,
            key=key,
            request_hash=body_hash,
            entity=entity,
            record_id=record_id,
            created_at=now,
        )
    )
