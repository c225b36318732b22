"""SQL for automation: its queue, timers, run record and rotations; rescoring, lead
scores and the activity timeline. Webhooks have their own (`webhook_repository`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Select,
    Table,
    and_,
    delete,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite

from bastion.automation.tables import (
    activity_events,
    automation_counters,
    automation_effects,
    automation_events,
    automation_rescores,
    automation_runs,
    automation_timers,
    lead_scores,
)
from bastion.jobs import lease

_CHUNK = 500


def insert_ignoring(
    conn: Connection,
    table: Table,
    rows: Sequence[Mapping[str, Any]],
    keys: Sequence[str],
    *,
    update_columns: Sequence[str] = (),
) -> None:
    """Insert `rows`; a row whose `keys` exist already is left alone, or, with
    `update_columns`, has those columns set to the new row's values (an upsert)."""
    if not rows:
        return
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    statement = dialect.insert(table)
    if update_columns:
        statement = statement.on_conflict_do_update(
            index_elements=list(keys),
            set_={name: statement.excluded[name] for name in update_columns},
        )
    else:
        statement = statement.on_conflict_do_nothing(index_elements=list(keys))
    for start in range(0, len(rows), _CHUNK):
        conn.execute(statement, [dict(r) for r in rows[start : start + _CHUNK]])


# -- the queue ---------------------------------------------------------------------------


def due(table: Table, now: datetime) -> list[ColumnElement[bool]]:
    """Conditions of queue rows that are waiting and due."""
    conditions: list[ColumnElement[bool]] = [table.c.next_attempt_at <= now]
    if "status" in table.c:
        conditions.append(table.c.status == "pending")
    return conditions


def insert_events(conn: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
    insert_ignoring(conn, automation_events, rows, ["id"])


def fetch_events(conn: Connection, event_ids: Sequence[str]) -> list[dict[str, Any]]:
    """These events, in the order given (those that exist)."""
    rows = conn.execute(
        select(automation_events).where(automation_events.c.id.in_(list(event_ids)))
    )
    found = {row.id: dict(row._mapping) for row in rows}
    return [found[i] for i in event_ids if i in found]


def finish_event(conn: Connection, event_id: str, worker: str, values: Mapping[str, Any]) -> bool:
    """Settle a claimed event (done, failed, or waiting for its next attempt), if this
    worker still holds it; whether it did."""
    settled = {"lease_owner": None, "lease_expires_at": None, **values}
    return lease.update_if_leased(conn, automation_events, event_id, worker, settled)


def purge_events(conn: Connection, before: datetime) -> int:
    """Delete finished events (and their runs) older than `before`; how many events."""
    old = list(
        conn.execute(
            select(automation_events.c.id)
            .where(
                automation_events.c.status != "pending",
                automation_events.c.finished_at < before,
            )
            .limit(_CHUNK)
        ).scalars()
    )
    if old:
        runs = select(automation_runs.c.id).where(automation_runs.c.event_id.in_(old))
        conn.execute(delete(automation_effects).where(automation_effects.c.run_id.in_(runs)))
        conn.execute(delete(automation_runs).where(automation_runs.c.event_id.in_(old)))
        conn.execute(delete(automation_events).where(automation_events.c.id.in_(old)))
    return len(old)


# -- timers ------------------------------------------------------------------------------


def set_timers(conn: Connection, rows: Sequence[Mapping[str, Any]], *, move: bool) -> None:
    """Write timers; one a rule already has for the record stays (`move=False`) or comes
    due at the new time (`move=True`: rules timed from the last change)."""
    insert_ignoring(
        conn,
        automation_timers,
        rows,
        ["rule_id", "record_id"],
        update_columns=("due_at",) if move else (),
    )


def fetch_timer(conn: Connection, timer_id: str) -> dict[str, Any] | None:
    row = conn.execute(
        select(automation_timers).where(automation_timers.c.id == timer_id)
    ).one_or_none()
    return None if row is None else dict(row._mapping)


def delete_timer(conn: Connection, timer_id: str, worker: str) -> bool:
    result = conn.execute(
        delete(automation_timers).where(
            automation_timers.c.id == timer_id, automation_timers.c.lease_owner == worker
        )
    )
    return result.rowcount == 1


def drop_timers(conn: Connection, record_ids: Sequence[str], *, rule_id: str | None = None) -> None:
    """The records' timers (only the one of `rule_id`, if given)."""
    query = delete(automation_timers).where(automation_timers.c.record_id.in_(list(record_ids)))
    if rule_id is not None:
        query = query.where(automation_timers.c.rule_id == rule_id)
    conn.execute(query)


# -- runs, effects, rotations ------------------------------------------------------------


def run_for(conn: Connection, trigger_id: str, rule_id: str) -> dict[str, Any] | None:
    row = conn.execute(
        select(automation_runs).where(
            automation_runs.c.trigger_id == trigger_id, automation_runs.c.rule_id == rule_id
        )
    ).one_or_none()
    return None if row is None else dict(row._mapping)


def fired_on(conn: Connection, rule_id: str, record_id: str, version: int) -> bool:
    """Whether the rule fired on this version of the record already."""
    query = select(automation_runs.c.id).where(
        automation_runs.c.rule_id == rule_id,
        automation_runs.c.record_id == record_id,
        automation_runs.c.fired_version == version,
    )
    return conn.execute(query).first() is not None


def insert_run(conn: Connection, values: Mapping[str, Any]) -> None:
    conn.execute(insert(automation_runs).values(**values))


def effects_of(conn: Connection, run_id: str) -> dict[int, dict[str, Any]]:
    rows = conn.execute(select(automation_effects).where(automation_effects.c.run_id == run_id))
    return {int(row.action): dict(row._mapping) for row in rows}


def insert_effect(conn: Connection, values: Mapping[str, Any]) -> None:
    conn.execute(insert(automation_effects).values(**values))


def newest_first(
    query: Select[Any],
    column: ColumnElement[Any],
    key: ColumnElement[Any],
    before: tuple[datetime, str] | None,
    limit: int,
) -> Select[Any]:
    """`query` ordered newest first on (`column`, `key`), after the keyset `before`
    (ids alone are not enough: two made in the same millisecond sort at random)."""
    if before is not None:
        at, last = before
        query = query.where(or_(column < at, and_(column == at, key < last)))
    return query.order_by(column.desc(), key.desc()).limit(limit)


def runs(
    conn: Connection,
    *,
    record_id: str | None,
    rule_id: str | None,
    before: tuple[datetime, str] | None,
    limit: int,
) -> list[dict[str, Any]]:
    """Runs, newest first, with their effects."""
    query = select(automation_runs)
    if record_id is not None:
        query = query.where(automation_runs.c.record_id == record_id)
    if rule_id is not None:
        query = query.where(automation_runs.c.rule_id == rule_id)
    query = newest_first(query, automation_runs.c.decided_at, automation_runs.c.id, before, limit)
    found = [dict(r._mapping) for r in conn.execute(query)]
    if found:
        effects = conn.execute(
            select(automation_effects).where(
                automation_effects.c.run_id.in_([r["id"] for r in found])
            )
        )
        by_run: dict[str, list[dict[str, Any]]] = {}
        for effect in effects:
            by_run.setdefault(effect.run_id, []).append(dict(effect._mapping))
        for run in found:
            run["effects"] = sorted(by_run.get(run["id"], []), key=lambda e: e["action"])
    return found


def take_turn(conn: Connection, rule_id: str, pool: str) -> int:
    """The next turn of a rule's rotation over a pool (0, 1, 2, …), counted once per
    call in the caller's transaction (the row is locked on PostgreSQL until it ends)."""
    query = select(automation_counters.c.next).where(
        automation_counters.c.rule_id == rule_id, automation_counters.c.pool == pool
    )
    if conn.dialect.name == "postgresql":
        query = query.with_for_update()
    current = conn.execute(query).scalar_one_or_none()
    if current is None:
        insert_ignoring(
            conn,
            automation_counters,
            [{"rule_id": rule_id, "pool": pool, "next": 0}],
            ["rule_id", "pool"],
        )
        current = conn.execute(query).scalar_one()
    conn.execute(
        update(automation_counters)
        .where(automation_counters.c.rule_id == rule_id, automation_counters.c.pool == pool)
        .values(next=int(current) + 1)
    )
    return int(current)


# -- rescoring and scores ----------------------------------------------------------------


def request_rescores(conn: Connection, region: str, lead_ids: Sequence[str], now: datetime) -> None:
    """Ask for these leads to be scored again (one row per lead, however many asks)."""
    rows = [
        {
            "record_id": lead_id,
            "region": region,
            "requested_at": now,
            "attempts": 0,
            "next_attempt_at": now,
        }
        for lead_id in dict.fromkeys(lead_ids)
    ]
    insert_ignoring(
        conn, automation_rescores, rows, ["record_id"], update_columns=("requested_at",)
    )


def fetch_rescores(conn: Connection, lead_ids: Sequence[str]) -> list[dict[str, Any]]:
    rows = conn.execute(
        select(automation_rescores).where(automation_rescores.c.record_id.in_(list(lead_ids)))
    )
    return [dict(row._mapping) for row in rows]


def finish_rescore(conn: Connection, lead_id: str, worker: str, requested_at: datetime) -> bool:
    """Drop the request if nothing asked again since `requested_at`; else let it go
    (another pass scores the newer ask). Whether it was dropped."""
    done = conn.execute(
        delete(automation_rescores).where(
            automation_rescores.c.record_id == lead_id,
            automation_rescores.c.lease_owner == worker,
            automation_rescores.c.requested_at == requested_at,
        )
    )
    if done.rowcount == 1:
        return True
    lease.update_if_leased(
        conn, automation_rescores, lead_id, worker, {"lease_owner": None, "lease_expires_at": None}
    )
    return False


def insert_score(conn: Connection, values: Mapping[str, Any]) -> None:
    conn.execute(insert(lead_scores).values(**values))


def scores(conn: Connection, lead_id: str, limit: int) -> list[dict[str, Any]]:
    """A lead's scores, newest first."""
    query = (
        select(lead_scores)
        .where(lead_scores.c.lead_id == lead_id)
        .order_by(lead_scores.c.computed_at.desc(), lead_scores.c.id.desc())
        .limit(limit)
    )
    return [dict(r._mapping) for r in conn.execute(query)]


# -- the activity timeline ---------------------------------------------------------------


def known_events(conn: Connection, event_ids: Sequence[str]) -> dict[str, bytes]:
    """Event ids already stored in this region, with their fingerprints."""
    found: dict[str, bytes] = {}
    for start in range(0, len(event_ids), _CHUNK):
        chunk = list(event_ids[start : start + _CHUNK])
        rows = conn.execute(
            select(activity_events.c.event_id, activity_events.c.fingerprint).where(
                activity_events.c.event_id.in_(chunk)
            )
        )
        found.update({str(r.event_id): bytes(r.fingerprint) for r in rows})
    return found


def insert_activities(conn: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
    insert_ignoring(conn, activity_events, rows, ["event_id"])


def stored_activities(conn: Connection, row_ids: Sequence[str]) -> set[str]:
    """Which of these activity event rows exist."""
    found: set[str] = set()
    for start in range(0, len(row_ids), _CHUNK):
        chunk = list(row_ids[start : start + _CHUNK])
        query = select(activity_events.c.id).where(activity_events.c.id.in_(chunk))
        found.update(str(i) for i in conn.execute(query).scalars())
    return found


def activities_of(conn: Connection, subject_ids: Sequence[str]) -> list[dict[str, Any]]:
    """Every activity event about these subjects, oldest first."""
    query = (
        select(activity_events)
        .where(activity_events.c.subject_id.in_(list(subject_ids)))
        .order_by(activity_events.c.occurred_at, activity_events.c.id)
    )
    return [dict(row._mapping) for row in conn.execute(query)]


def behaviour_of(
    conn: Connection, subject_ids: Sequence[str], types: Sequence[str], since: datetime
) -> dict[str, list[tuple[str, datetime]]]:
    """(type, occurred_at) of each subject's events of `types` since `since`."""
    found: dict[str, list[tuple[str, datetime]]] = {}
    for start in range(0, len(subject_ids), _CHUNK):
        rows = conn.execute(
            select(
                activity_events.c.subject_id, activity_events.c.type, activity_events.c.occurred_at
            ).where(
                activity_events.c.subject_id.in_(list(subject_ids[start : start + _CHUNK])),
                activity_events.c.type.in_(list(types)),
                activity_events.c.occurred_at >= since,
            )
        )
        for row in rows:
            found.setdefault(str(row.subject_id), []).append((str(row.type), row.occurred_at))
    return found


def timeline(
    conn: Connection, subject_id: str, after: tuple[datetime, str] | None, limit: int
) -> list[dict[str, Any]]:
    """A subject's events, newest first, keyset-paginated on (occurred_at, id)."""
    query = newest_first(
        select(activity_events).where(activity_events.c.subject_id == subject_id),
        activity_events.c.occurred_at,
        activity_events.c.id,
        after,
        limit,
    )
    return [dict(r._mapping) for r in conn.execute(query)]


def forget_subjects(conn: Connection, record_ids: Sequence[str]) -> int:
    """Everything automation keeps about these records (an erasure): their activity
    events, scores, pending rescores and timers, queued events and the runs about
    them. How many activity events went."""
    ids = list(record_ids)
    if not ids:
        return 0
    gone = conn.execute(delete(activity_events).where(activity_events.c.subject_id.in_(ids)))
    conn.execute(delete(lead_scores).where(lead_scores.c.lead_id.in_(ids)))
    conn.execute(delete(automation_rescores).where(automation_rescores.c.record_id.in_(ids)))
    drop_timers(conn, ids)
    runs_about = select(automation_runs.c.id).where(automation_runs.c.record_id.in_(ids))
    conn.execute(delete(automation_effects).where(automation_effects.c.run_id.in_(runs_about)))
    conn.execute(delete(automation_runs).where(automation_runs.c.record_id.in_(ids)))
    conn.execute(delete(automation_events).where(automation_events.c.record_id.in_(ids)))
    return int(gone.rowcount or 0)
