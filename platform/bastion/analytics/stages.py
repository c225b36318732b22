"""Stage history of opportunities, written by the record pipeline with each change.

`crm.service` (create, update) and `crm.conversion` (a lead converted into a deal)
call these functions inside the write's own transaction, so the history commits or
rolls back with the change that moved the deal: it can never claim a stage the deal
was not in. Stage velocity and the sales cycle are computed from it in SQL
(`analytics.repository`).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, func, insert, select, update

from bastion.analytics.tables import opportunity_stages

OPPORTUNITIES = "opportunities"


def record_created(
    conn: Connection,
    entity: str,
    record_id: str,
    region: str,
    values: Mapping[str, Any],
    at: datetime,
) -> None:
    """A new opportunity enters its first stage (seq 1) when it is created; records
    of other entities have no stage history."""
    if entity != OPPORTUNITIES:
        return
    conn.execute(
        insert(opportunity_stages).values(
            opportunity_id=record_id, seq=1, region=region, stage=values["stage"], entered_at=at
        )
    )


def record_updated(
    conn: Connection,
    entity: str,
    record_id: str,
    region: str,
    stored: Mapping[str, Any],
    changes: Mapping[str, Any],
    at: datetime,
) -> None:
    """An update that moves an opportunity to another stage closes the open stage
    row and opens the next one. Call it after the versioned update succeeded: the
    row lock it holds serialises concurrent moves of the same deal, so `seq` cannot
    be taken twice."""
    if entity != OPPORTUNITIES or "stage" not in changes or changes["stage"] == stored["stage"]:
        return
    history = opportunity_stages.c
    conn.execute(
        update(opportunity_stages)
        .where(history.opportunity_id == record_id, history.left_at.is_(None))
        .values(left_at=at)
    )
    last = conn.execute(
        select(func.coalesce(func.max(history.seq), 0)).where(history.opportunity_id == record_id)
    ).scalar_one()
    conn.execute(
        insert(opportunity_stages).values(
            opportunity_id=record_id,
            seq=int(last) + 1,
            region=region,
            stage=changes["stage"],
            entered_at=at,
        )
    )
