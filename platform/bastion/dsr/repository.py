"""SQL for data subjects' requests, legal holds, packages and certificates."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    and_,
    delete,
    insert,
    or_,
    select,
    text,
    update,
)

from bastion.crm.catalog import ENTITIES_BY_PREFIX
from bastion.crm.tables import ENTITY_TABLES, idempotency_keys
from bastion.dsr.model import RUNNABLE
from bastion.dsr.tables import dsr_certificates, dsr_packages, dsr_requests, dsr_steps, legal_holds
from bastion.jobs import lease


def insert_request(conn: Connection, values: Mapping[str, Any]) -> None:
    conn.execute(insert(dsr_requests).values(**values))


def fetch_request(
    conn: Connection, request_id: str, *, lock: bool = False
) -> dict[str, Any] | None:
    query = select(dsr_requests).where(dsr_requests.c.id == request_id)
    if lock and conn.dialect.name == "postgresql":
        query = query.with_for_update()
    row = conn.execute(query).one_or_none()
    return None if row is None else dict(row._mapping)


def update_request(conn: Connection, request_id: str, **values: Any) -> None:
    conn.execute(update(dsr_requests).where(dsr_requests.c.id == request_id).values(**values))


def open_requests_for(
    conn: Connection, subject_ids: Sequence[str], request_type: str, open_statuses: Sequence[str]
) -> list[str]:
    """Open requests of this type whose subjects overlap `subject_ids` (few per person)."""
    rows = conn.execute(
        select(dsr_requests.c.id, dsr_requests.c.subject_ids).where(
            dsr_requests.c.type == request_type, dsr_requests.c.status.in_(list(open_statuses))
        )
    ).all()
    wanted = set(subject_ids)
    return [str(r.id) for r in rows if wanted & set(r.subject_ids or [])]


def list_requests(
    conn: Connection,
    *,
    statuses: Sequence[str] | None,
    due_before: datetime | None,
    after: tuple[datetime, str] | None,
    limit: int,
) -> list[dict[str, Any]]:
    """Requests by deadline (soonest first), keyset-paginated on (due_at, id)."""
    conditions: list[ColumnElement[bool]] = []
    if statuses:
        conditions.append(dsr_requests.c.status.in_(list(statuses)))
    if due_before is not None:
        conditions.append(dsr_requests.c.due_at < due_before)
    if after is not None:
        due, last = after
        conditions.append(
            or_(
                dsr_requests.c.due_at > due,
                and_(dsr_requests.c.due_at == due, dsr_requests.c.id > last),
            )
        )
    query = (
        select(dsr_requests)
        .where(*conditions)
        .order_by(dsr_requests.c.due_at, dsr_requests.c.id)
        .limit(limit)
    )
    return [dict(row._mapping) for row in conn.execute(query)]


def claim(
    conn: Connection,
    now: datetime,
    worker: str,
    lease_until: datetime,
    *,
    request_id: str | None = None,
) -> str | None:
    """Take one runnable request whose lease is free (that one, given `request_id`),
    soonest deadline first; None if there is none (`bastion.jobs.lease.claim`)."""
    ready: list[ColumnElement[bool]] = [dsr_requests.c.status.in_(sorted(RUNNABLE))]
    if request_id is not None:
        ready.append(dsr_requests.c.id == request_id)
    claimed = lease.claim(
        conn,
        dsr_requests,
        ready=ready,
        order_by=(dsr_requests.c.due_at, dsr_requests.c.id),
        worker=worker,
        now=now,
        lease_until=lease_until,
    )
    return claimed[0] if claimed else None


def update_if_leased(
    conn: Connection, request_id: str, worker: str, values: Mapping[str, Any]
) -> bool:
    """Update the request if `worker` holds its lease; whether it does."""
    return lease.update_if_leased(conn, dsr_requests, request_id, worker, values)


def lease_owner(conn: Connection, request_id: str) -> str | None:
    return lease.lease_owner(conn, dsr_requests, request_id)


def forget_idempotency(conn: Connection, record_ids: Sequence[str]) -> None:
    """Drop the Idempotency-Key fingerprints of erased records (they hash their values)."""
    for start in range(0, len(record_ids), 500):
        conn.execute(
            delete(idempotency_keys).where(
                idempotency_keys.c.record_id.in_(list(record_ids[start : start + 500]))
            )
        )


def purge_idempotency(conn: Connection, before: datetime) -> None:
    conn.execute(delete(idempotency_keys).where(idempotency_keys.c.created_at < before))


def done_steps(conn: Connection, request_id: str) -> dict[str, dict[str, Any]]:
    rows = conn.execute(select(dsr_steps).where(dsr_steps.c.request_id == request_id))
    return {row.step: dict(row.details) for row in rows}


def complete_step(
    conn: Connection, request_id: str, step: str, now: datetime, details: Mapping[str, Any]
) -> None:
    conn.execute(
        insert(dsr_steps).values(
            request_id=request_id, step=step, completed_at=now, details=dict(details)
        )
    )


# -- packages and certificates -------------------------------------------------------


def store_package(conn: Connection, values: Mapping[str, Any]) -> None:
    conn.execute(delete(dsr_packages).where(dsr_packages.c.request_id == values["request_id"]))
    conn.execute(insert(dsr_packages).values(**values))


def fetch_package(conn: Connection, request_id: str) -> dict[str, Any] | None:
    row = conn.execute(
        select(dsr_packages).where(dsr_packages.c.request_id == request_id)
    ).one_or_none()
    return None if row is None else dict(row._mapping)


def expired_packages(conn: Connection, now: datetime) -> list[str]:
    return [
        str(r)
        for r in conn.execute(
            select(dsr_packages.c.request_id).where(dsr_packages.c.expires_at <= now)
        ).scalars()
    ]


def delete_package(conn: Connection, request_id: str) -> None:
    conn.execute(delete(dsr_packages).where(dsr_packages.c.request_id == request_id))


def store_certificate(conn: Connection, values: Mapping[str, Any]) -> None:
    conn.execute(insert(dsr_certificates).values(**values))


def fetch_certificate(conn: Connection, request_id: str) -> dict[str, Any] | None:
    row = conn.execute(
        select(dsr_certificates).where(dsr_certificates.c.request_id == request_id)
    ).one_or_none()
    return None if row is None else dict(row._mapping)


# -- legal holds -----------------------------------------------------------------------


def insert_hold(conn: Connection, values: Mapping[str, Any]) -> None:
    conn.execute(insert(legal_holds).values(**values))


def fetch_hold(conn: Connection, hold_id: str) -> dict[str, Any] | None:
    row = conn.execute(select(legal_holds).where(legal_holds.c.id == hold_id)).one_or_none()
    return None if row is None else dict(row._mapping)


def list_holds(
    conn: Connection,
    *,
    target_id: str | None,
    active_at: datetime | None,
    before: str | None,
    limit: int,
) -> list[dict[str, Any]]:
    """Holds, newest first (ids are time-ordered), after the id `before` if given."""
    query = select(legal_holds)
    if before is not None:
        query = query.where(legal_holds.c.id < before)
    if target_id is not None:
        query = query.where(legal_holds.c.target_id == target_id)
    if active_at is not None:
        query = query.where(
            legal_holds.c.released_at.is_(None),
            or_(legal_holds.c.expires_at.is_(None), legal_holds.c.expires_at > active_at),
        )
    query = query.order_by(legal_holds.c.id.desc()).limit(limit)
    return [dict(row._mapping) for row in conn.execute(query)]


def release_hold(conn: Connection, hold_id: str, now: datetime, by: str) -> bool:
    """Release a hold not released yet; whether this call released it."""
    result = conn.execute(
        update(legal_holds)
        .where(legal_holds.c.id == hold_id, legal_holds.c.released_at.is_(None))
        .values(released_at=now, released_by=by)
    )
    return result.rowcount == 1


def is_erased(conn: Connection, record_id: str) -> bool:
    """Whether a data subject's record (a contact, a lead) is an erased shell."""
    prefix = record_id.split("_", 1)[0]
    spec = ENTITIES_BY_PREFIX.get(prefix)
    if spec is None or not spec.data_subject:
        return False
    table = ENTITY_TABLES[spec.name]
    erased_at = conn.execute(
        select(table.c.erased_at).where(table.c.id == record_id)
    ).scalar_one_or_none()
    return erased_at is not None


def record_exists(conn: Connection, entity: str, record_id: str) -> bool:
    table = ENTITY_TABLES[entity]
    return conn.execute(select(table.c.id).where(table.c.id == record_id)).first() is not None


def lock_holds(conn: Connection, region: str) -> None:
    """Serialize legal-hold creation with erasure planning in a region (PostgreSQL;
    SQLite write transactions are serial already): a hold is either seen by a plan
    or refused while that erasure runs — never silently ignored."""
    _advisory_lock(conn, f"bastion dsr holds {region}")


def lock_subjects(conn: Connection, subject_ids: Sequence[str]) -> None:
    """Serialize request creation per person (PostgreSQL; SQLite write transactions
    are serial already), so that "no open request of this type yet, then insert" is
    one step: two officers filing the same erasure at once get one request and a 409."""
    for subject_id in sorted(set(subject_ids)):  # one order: no deadlock
        _advisory_lock(conn, f"bastion dsr subject {subject_id}")


def _advisory_lock(conn: Connection, name: str) -> None:
    """A transaction-scoped PostgreSQL advisory lock on `name` (no-op elsewhere)."""
    if conn.dialect.name != "postgresql":
        return
    digest = hashlib.sha256(name.encode()).digest()
    conn.execute(
        text("SELECT pg_advisory_xact_lock(:key)"),
        {"key": int.from_bytes(digest[:8], "big", signed=True)},
    )


def running_erasures_touching(conn: Connection, target_id: str) -> list[str]:
    """Erasures being carried out whose subjects or plan include `target_id`."""
    rows = conn.execute(
        select(dsr_requests.c.id, dsr_requests.c.subject_ids).where(
            dsr_requests.c.type == "erasure", dsr_requests.c.status == "running"
        )
    ).all()
    touching = []
    for row in rows:
        if target_id in (row.subject_ids or []):
            touching.append(str(row.id))
            continue
        plan = conn.execute(
            select(dsr_steps.c.details).where(
                dsr_steps.c.request_id == row.id, dsr_steps.c.step == "discover"
            )
        ).scalar_one_or_none()
        decisions = (plan or {}).get("decisions", [])
        if any(d.get("record_id") == target_id for d in decisions):
            touching.append(str(row.id))
    return touching


def erasures_keeping(conn: Connection) -> list[str]:
    """Finished erasures that may still keep records (`kept.sweep` has not emptied)."""
    swept = select(dsr_steps.c.request_id).where(dsr_steps.c.step == "kept_released")
    rows = conn.execute(
        select(dsr_requests.c.id).where(
            dsr_requests.c.type == "erasure",
            dsr_requests.c.status == "partially_completed",
            dsr_requests.c.id.not_in(swept),
        )
    ).scalars()
    return [str(r) for r in rows]
