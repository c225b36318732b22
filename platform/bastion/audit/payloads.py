"""What `verify` reads out of stored payloads: indexed record ids and redaction announcements.

Payloads are parsed as the database's queue trigger parsed them, so a payload
the application wrote by hand (not through `encoding.payload_bytes`) is read the
same way here as it was indexed.
"""

from __future__ import annotations

import json


def index_matches(payload: str, indexed: list[str]) -> bool:
    """Whether the record index rows of an entry are exactly its payload's record ids.

    `payload` is valid JSON text (the queue trigger parsed it when it was inserted,
    and verify has matched it against a chained hash before asking).
    """
    # Fast path, the common case (this runs once per entry of a verify): a valid
    # JSON object whose text ends in `,"record_ids":[]}` or `,"record_ids":["<id>"]}`,
    # with an id free of quotes and backslashes, has exactly that as its last
    # top-level member, which is the one both PostgreSQL and Python read: the final
    # `}` closes the object and the tail cannot lie inside a string.
    if not indexed:
        tail = ',"record_ids":[]}'
    elif len(indexed) == 1 and '"' not in indexed[0] and "\\" not in indexed[0]:
        tail = f',"record_ids":["{indexed[0]}"]}}'
    else:
        tail = None
    if tail is not None and payload.endswith(tail):
        return True
    named = _record_ids(payload)
    if named is None:
        return False
    if len(named) == 1 and len(indexed) == 1:
        return named[0] == indexed[0]
    return sorted(indexed) == sorted(named)


def _record_ids(payload: str) -> list[str] | None:
    """The record ids the queue trigger indexes for `payload` (None: not a payload)."""
    try:
        parsed = json.loads(payload)
    except ValueError:
        return None
    ids = parsed.get("record_ids") if isinstance(parsed, dict) else None
    if ids is None:
        return []
    if not isinstance(ids, list):
        return None
    return [i if isinstance(i, str) else json.dumps(i) for i in ids]


def redaction_announcement(payload: str) -> tuple[str, str, str] | None:
    """(event id, original hash, redacted hash) an `audit.redact` payload names."""
    try:
        parsed = json.loads(payload)
        ids, details = parsed["record_ids"], parsed["details"]
        announced = (ids[0], details["original_sha256"], details["redacted_sha256"])
    except (ValueError, TypeError, KeyError, IndexError):
        return None
    if len(ids) != 1 or not all(isinstance(part, str) for part in announced):
        return None
    return announced
