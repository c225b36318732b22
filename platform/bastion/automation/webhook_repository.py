"""SQL for webhook subscriptions, their topics, deliveries and the delivery log."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, delete, exists, func, insert, select, update

from bastion.automation.repository import insert_ignoring, newest_first
from bastion.automation.tables import (
    webhook_attempts,
    webhook_deliveries,
    webhook_subscriptions,
    webhook_topics,
)

ACTIVE = "active"


def insert_subscription(conn: Connection, values: Mapping[str, Any], topics: Sequence[str]) -> None:
    conn.execute(insert(webhook_subscriptions).values(**values))
    conn.execute(
        insert(webhook_topics), [{"subscription_id": values["id"], "topic": t} for t in topics]
    )


def fetch_subscription(conn: Connection, subscription_id: str) -> dict[str, Any] | None:
    row = conn.execute(
        select(webhook_subscriptions).where(webhook_subscriptions.c.id == subscription_id)
    ).one_or_none()
    if row is None:
        return None
    found = dict(row._mapping)
    found["topics"] = topics_of(conn, [subscription_id])[subscription_id]
    return found


def topics_of(conn: Connection, subscription_ids: Sequence[str]) -> dict[str, list[str]]:
    topics: dict[str, list[str]] = {s: [] for s in subscription_ids}
    rows = conn.execute(
        select(webhook_topics).where(webhook_topics.c.subscription_id.in_(list(subscription_ids)))
    )
    for row in rows:
        topics[row.subscription_id].append(row.topic)
    return {s: sorted(t) for s, t in topics.items()}


def list_subscriptions(
    conn: Connection, *, before: tuple[datetime, str] | None, limit: int
) -> list[dict[str, Any]]:
    """Active subscriptions, newest first."""
    query = newest_first(
        select(webhook_subscriptions).where(webhook_subscriptions.c.status == ACTIVE),
        webhook_subscriptions.c.created_at,
        webhook_subscriptions.c.id,
        before,
        limit,
    )
    found = [dict(r._mapping) for r in conn.execute(query)]
    topics = topics_of(conn, [s["id"] for s in found])
    for subscription in found:
        subscription["topics"] = topics[subscription["id"]]
    return found


def delete_subscription(conn: Connection, subscription_id: str, now: datetime) -> bool:
    """Mark a subscription deleted (its secret dropped); pending deliveries are
    cancelled. Whether it was active."""
    result = conn.execute(
        update(webhook_subscriptions)
        .where(
            webhook_subscriptions.c.id == subscription_id, webhook_subscriptions.c.status == ACTIVE
        )
        .values(status="deleted", secret=None, deleted_at=now)
    )
    conn.execute(delete(webhook_topics).where(webhook_topics.c.subscription_id == subscription_id))
    conn.execute(
        update(webhook_deliveries)
        .where(
            webhook_deliveries.c.subscription_id == subscription_id,
            webhook_deliveries.c.status == "pending",
        )
        .values(status="cancelled", lease_owner=None, lease_expires_at=None)
    )
    return result.rowcount == 1


def listening(conn: Connection, topics: Sequence[str]) -> bool:
    """Whether any active subscription listens to one of `topics`."""
    query = select(
        exists().where(
            webhook_topics.c.topic.in_(list(topics)),
            webhook_subscriptions.c.id == webhook_topics.c.subscription_id,
            webhook_subscriptions.c.status == ACTIVE,
        )
    )
    return bool(conn.execute(query).scalar())


def subscribers(conn: Connection, topics: Sequence[str]) -> list[str]:
    """Active subscriptions listening to one of `topics`."""
    query = (
        select(webhook_topics.c.subscription_id)
        .join(webhook_subscriptions, webhook_subscriptions.c.id == webhook_topics.c.subscription_id)
        .where(webhook_topics.c.topic.in_(list(topics)), webhook_subscriptions.c.status == ACTIVE)
        .distinct()
    )
    return sorted(str(s) for s in conn.execute(query).scalars())


def insert_deliveries(conn: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
    """New deliveries; one per subscription and source event, however often asked."""
    insert_ignoring(conn, webhook_deliveries, rows, ["subscription_id", "source_id"])


def fetch_delivery(conn: Connection, delivery_id: str) -> dict[str, Any] | None:
    row = conn.execute(
        select(webhook_deliveries).where(webhook_deliveries.c.id == delivery_id)
    ).one_or_none()
    return None if row is None else dict(row._mapping)


def update_delivery(conn: Connection, delivery_id: str, values: Mapping[str, Any]) -> None:
    conn.execute(
        update(webhook_deliveries).where(webhook_deliveries.c.id == delivery_id).values(**values)
    )


def insert_attempt(conn: Connection, values: Mapping[str, Any]) -> None:
    conn.execute(insert(webhook_attempts).values(**values))


def next_attempt_number(conn: Connection, delivery_id: str) -> int:
    """Attempts are numbered across replays, so the log keeps every one."""
    last = conn.execute(
        select(func.max(webhook_attempts.c.number)).where(
            webhook_attempts.c.delivery_id == delivery_id
        )
    ).scalar_one_or_none()
    return int(last or 0) + 1


def attempts_of(conn: Connection, delivery_ids: Sequence[str]) -> dict[str, list[dict[str, Any]]]:
    found: dict[str, list[dict[str, Any]]] = {d: [] for d in delivery_ids}
    rows = conn.execute(
        select(webhook_attempts)
        .where(webhook_attempts.c.delivery_id.in_(list(delivery_ids)))
        .order_by(webhook_attempts.c.number)
    )
    for row in rows:
        found[row.delivery_id].append(dict(row._mapping))
    return found


def deliveries(
    conn: Connection,
    subscription_id: str,
    *,
    status: str | None,
    before: tuple[datetime, str] | None,
    limit: int,
) -> list[dict[str, Any]]:
    """A subscription's deliveries, newest first."""
    query = select(webhook_deliveries).where(
        webhook_deliveries.c.subscription_id == subscription_id
    )
    if status is not None:
        query = query.where(webhook_deliveries.c.status == status)
    query = newest_first(
        query, webhook_deliveries.c.created_at, webhook_deliveries.c.id, before, limit
    )
    return [dict(r._mapping) for r in conn.execute(query)]


def forget_records(conn: Connection, record_ids: Sequence[str]) -> None:
    """Deliveries about erased records, and their log."""
    doomed = select(webhook_deliveries.c.id).where(
        webhook_deliveries.c.record_id.in_(list(record_ids))
    )
    conn.execute(delete(webhook_attempts).where(webhook_attempts.c.delivery_id.in_(doomed)))
    conn.execute(
        delete(webhook_deliveries).where(webhook_deliveries.c.record_id.in_(list(record_ids)))
    )
