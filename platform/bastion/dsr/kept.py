"""What an erasure kept, and when it goes.

An erasure keeps a record it would otherwise delete while a legal hold covers it
(the record, or the person) or a catalog retention rule still applies to it —
counted from the request's completion, for the rule's years. Each record is judged
on its own, by every reason at once: a held e-mail whose hold is released stays for
its retention period; a retained e-mail that a hold covers when its period ends
stays while the hold lasts. Released and expired holds count for nothing.

`sweep` deletes the kept records of one finished erasure that may go now, and once
none is left destroys the request's key (`erasure.kept_key`) and records the
`kept_released` step, so the request is not looked at again. It runs when a hold is
released (for the erasures that kept its target) and in housekeeping (holds that
expired, retention periods that ended).

An erasure that a hold on the person kept in full erased nothing: there is nothing
to sweep, and the person's records are theirs again once the hold ends (a new
request erases them).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection

from bastion.crm.catalog import ENTITIES
from bastion.crypto.keyring import Keyring
from bastion.dsr import repository as repo
from bastion.dsr.erasure import (
    Decision,
    active_holds,
    delete_records,
    kept_key,
    retention_years,
    stored_records,
)

DONE = "kept_released"
# Ids per audit event naming deleted records (an event names at most 500).
EVENT_IDS = 400


@dataclass(frozen=True, slots=True)
class Swept:
    deleted: list[str]
    remaining: int
    keys_destroyed: int


def keeping(request: Mapping[str, Any], steps: Mapping[str, Any], target_id: str) -> bool:
    """Whether a finished erasure kept `target_id` (or erased it as its subject)."""
    discover = steps.get("discover") or {}
    kept = {d["record_id"] for d in discover.get("decisions", []) if d["action"] == "keep"}
    return target_id in kept or target_id in request["subject_ids"]


def sweep(
    conn: Connection,
    keys: Keyring,
    request: Mapping[str, Any],
    steps: Mapping[str, Any],
    now: datetime,
) -> Swept | None:
    """Delete what `request` kept and nothing keeps any more; None when there is
    nothing to look at (not a finished erasure, or already swept empty)."""
    discover = steps.get("discover")
    finished = request["completed_at"]
    if request["type"] != "erasure" or finished is None or discover is None or DONE in steps:
        return None
    if discover.get("person_held"):
        repo.complete_step(conn, request["id"], DONE, now, {"person_held": True})
        return Swept([], 0, 0)
    kept = [Decision.from_dict(d) for d in discover["decisions"] if d["action"] == "keep"]
    rows = stored_records(conn, kept)
    subjects = list(discover["subjects"])
    holds = active_holds(conn, [*subjects, *rows], now)
    doomed = []
    if not any(s in holds for s in subjects):  # a hold placed on the shell keeps it all
        doomed = [
            Decision(d.entity, d.record_id, "delete")
            for d in kept
            if d.record_id in rows
            and d.record_id not in holds
            and not _retained(d.entity, rows[d.record_id], finished, now)
        ]
    deleted = delete_records(conn, doomed)
    remaining = len(rows) - len(deleted)
    destroyed = 0
    if remaining == 0:
        destroyed = keys.shred(conn, request["region"], kept_key(request["id"]))
        repo.complete_step(conn, request["id"], DONE, now, {"deleted": len(deleted)})
    return Swept(deleted, remaining, destroyed)


def _retained(entity: str, row: Mapping[str, Any], finished: datetime, now: datetime) -> bool:
    years = retention_years(ENTITIES[entity], row)
    return years > 0 and finished + timedelta(days=round(365.25 * years)) > now


def chunks(ids: Sequence[str], size: int = EVENT_IDS) -> Iterator[list[str]]:
    for start in range(0, len(ids), size):
        yield list(ids[start : start + size])
