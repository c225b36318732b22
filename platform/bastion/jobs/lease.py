"""Leased rows: how a background job is claimed, kept and retried.

Every queue Bastion works in the background (data subjects' requests, automation
events and timers, rescoring, webhook deliveries) is a table in a region database
whose rows carry `lease_owner` and `lease_expires_at`. A worker claims rows whose
lease is free (never taken, or expired) by writing its id and an expiry into them:

- PostgreSQL: `SELECT … FOR UPDATE SKIP LOCKED`, so any number of workers share a
  queue, never wait on each other and never claim the same row;
- SQLite: the write transaction is the lock (one writer at a time).

A worker killed mid-job leaves a lease that expires; the next worker takes the row
over. That is why a job's work is idempotent, and why its completion is written only
while the lease is still the writer's (`update_if_leased`): a worker that lost its
lease to another changes nothing.

A job that fails for a reason that may pass (a region down, a receiver answering
500) is tried again later, each time waiting twice as long (`backoff`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Connection, Table, or_, select, update

from bastion.clock import Clock
from bastion.residency.databases import Database


def free(table: Table, now: datetime) -> ColumnElement[bool]:
    """Rows nobody holds: never leased, or the lease ran out."""
    return or_(table.c.lease_expires_at.is_(None), table.c.lease_expires_at < now)


def any_ready(
    conn: Connection, table: Table, ready: Sequence[ColumnElement[bool]], now: datetime
) -> bool:
    """Whether a row could be claimed now: a plain read, so an idle queue costs no write
    transaction (on SQLite, no write lock) per poll."""
    query = select(table.c[_key(table)]).where(*ready, free(table, now)).limit(1)
    return conn.execute(query).first() is not None


def claim(
    conn: Connection,
    table: Table,
    *,
    ready: Sequence[ColumnElement[bool]],
    order_by: Sequence[Any],
    worker: str,
    now: datetime,
    lease_until: datetime,
    limit: int = 1,
) -> list[str]:
    """Take up to `limit` rows that are `ready` and free, oldest by `order_by` first,
    leasing them to `worker` until `lease_until`; their keys."""
    key = table.c[_key(table)]
    query = select(key).where(*ready, free(table, now)).order_by(*order_by).limit(limit)
    if conn.dialect.name == "postgresql":
        query = query.with_for_update(skip_locked=True)
    claimed = [str(k) for k in conn.execute(query).scalars()]
    if claimed:
        conn.execute(
            update(table)
            .where(key.in_(claimed))
            .values(lease_owner=worker, lease_expires_at=lease_until)
        )
    return claimed


def claim_ready(
    database: Database,
    table: Table,
    *,
    ready: Sequence[ColumnElement[bool]],
    order_by: Sequence[Any],
    worker: str,
    now: datetime,
    lease_until: datetime,
    limit: int,
) -> list[str]:
    """`claim` in a write transaction of its own, after a plain read found something
    to claim (so an idle queue costs no write transaction per poll)."""
    with database.transaction() as conn:
        if not any_ready(conn, table, ready, now):
            return []
    with database.transaction(write=True) as conn:
        return claim(
            conn,
            table,
            ready=ready,
            order_by=order_by,
            worker=worker,
            now=now,
            lease_until=lease_until,
            limit=limit,
        )


class Claimer:
    """Claims rows of leased tables for one worker, `lease` at a time, as of the clock."""

    def __init__(self, *, worker: str, clock: Clock, lease: timedelta) -> None:
        self.worker = worker
        self._clock = clock
        self._lease = lease

    def take(
        self,
        database: Database,
        table: Table,
        *,
        ready: Callable[[datetime], Sequence[ColumnElement[bool]]],
        order_by: Sequence[Any],
        limit: int,
    ) -> list[str]:
        """Up to `limit` rows that are `ready(now)` and free (`claim_ready`)."""
        now = self._clock.now()
        return claim_ready(
            database,
            table,
            ready=ready(now),
            order_by=order_by,
            worker=self.worker,
            now=now,
            lease_until=now + self._lease,
            limit=limit,
        )


def update_if_leased(
    conn: Connection, table: Table, key: str, worker: str, values: Mapping[str, Any]
) -> bool:
    """Update the row if `worker` holds its lease; whether it does."""
    result = conn.execute(
        update(table)
        .where(table.c[_key(table)] == key, table.c.lease_owner == worker)
        .values(**values)
    )
    return result.rowcount == 1


def lease_owner(conn: Connection, table: Table, key: str) -> str | None:
    """Who holds the row's lease (locking the row on PostgreSQL until the transaction
    ends, so the answer stays true while the caller writes)."""
    query = select(table.c.lease_owner).where(table.c[_key(table)] == key)
    if conn.dialect.name == "postgresql":
        query = query.with_for_update()
    owner = conn.execute(query).scalar_one_or_none()
    return None if owner is None else str(owner)


def backoff(attempt: int, *, base_seconds: float, cap_seconds: float) -> timedelta:
    """How long to wait before attempt `attempt + 1`, after `attempt` failures:
    `base`, `2 base`, `4 base`, … never more than `cap`. No jitter: the schedule is
    what the documentation and the tests say it is; leases already spread workers."""
    if attempt < 1:
        return timedelta(0)
    seconds = base_seconds * 2 ** min(attempt - 1, 40)
    return timedelta(seconds=min(seconds, cap_seconds))


def _key(table: Table) -> str:
    """The one-column primary key of a leased table."""
    columns = list(table.primary_key.columns)
    if len(columns) != 1:
        raise ValueError(f"{table.name}: a leased table needs a one-column primary key")
    return columns[0].name
