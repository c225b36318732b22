"""Newest-first pages of automation's lists (runs, subscriptions, deliveries, the
activity timeline): keyset cursors on (time, id), sealed like the record lists'
(`crm.cursors`) and bound to the list they belong to."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, TypeVar

from bastion.crm.cursors import CursorCodec, Position
from bastion.errors import BadRequest

Row = TypeVar("Row", bound=dict[str, Any])


def position(
    cursors: CursorCodec, fingerprint: str, cursor: str | None
) -> tuple[datetime, str] | None:
    """Where the page after `cursor` starts; None for the first page. `BadRequest`
    for a cursor that is not ours, or is another list's."""
    if cursor is None:
        return None
    at = cursors.open(fingerprint, cursor)
    try:
        return datetime.fromisoformat(str(at.value)), at.id
    except ValueError:
        raise BadRequest(
            "the cursor is invalid, tampered with, or belongs to a different query"
        ) from None


def page(
    cursors: CursorCodec, fingerprint: str, rows: Sequence[Row], limit: int, column: str
) -> tuple[list[Row], str | None]:
    """The first `limit` of `rows` (fetched as `limit + 1`), and the next page's cursor."""
    shown = list(rows[:limit])
    if len(rows) <= limit or not shown:
        return shown, None
    last = shown[-1]
    return shown, cursors.seal(fingerprint, Position(last[column].isoformat(), str(last["id"])))
