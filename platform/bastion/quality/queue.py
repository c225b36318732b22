"""The review queue: `duplicate_pairs` rows, written by scans, read and dismissed by people.

A pair is stored once, in id order (`record_id < candidate_id`), unique per entity
and pair; its id (`dup_<region>_…`) names the region whose database holds it.
Statuses: `open` -> `dismissed` (a person said "not the same") or `merged` (the
merge feature, through `mark_merged`). A re-scan refreshes the score and reasons
of an open pair and never touches a dismissed or merged one, so a dismissal
sticks and the queue does not fill with pairs already dealt with.

Reasons were computed with the scanning principal's field mask and are stored by
field name (`{field: {match, similarity}}`). Whoever reads the queue sees only the
reasons on fields it may read in every record of the region, and the score
recomputed from those (`visible_pair`): a reason on a field hidden from the reader
would say that two hidden values are equal. For the same reason the queue selects,
orders and pages by that reader's score, computed in SQL from the stored reasons
(`reader_score`): a pair found only through a hidden field is left out, not listed
with score 0, and the order never ranks one pair above another on hidden evidence.
"""

from __future__ import annotations

import operator
from collections.abc import Collection
from datetime import datetime
from functools import reduce
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Float,
    Row,
    and_,
    func,
    literal,
    or_,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from bastion.crm.records import to_json_value
from bastion.quality.scoring import DIGITS, WEIGHTS, Reason, score
from bastion.quality.tables import duplicate_pairs
from bastion.residency.ids import RecordId

PAIR_PREFIX = "dup"
STATUSES = ("open", "dismissed", "merged")
# The least score of a pair worth a person's review: scans queue no lower pair, and
# the queue shows no pair whose score, from the fields its reader may read, is lower.
QUEUE_MIN_SCORE = 0.7


def upsert_pair(
    conn: Connection,
    *,
    region: str,
    entity: str,
    ids: tuple[str, str],
    value: float,
    reasons: Collection[Reason],
    now: datetime,
) -> None:
    """Queue a pair as open, or refresh an open one; dismissed and merged stay as they are."""
    low, high = sorted(ids)
    insert = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
    statement = insert(duplicate_pairs).values(
        id=str(RecordId.new(PAIR_PREFIX, region, now)),
        region=region,
        entity=entity,
        record_id=low,
        candidate_id=high,
        score=value,
        reasons={r.field: {"match": r.match, "similarity": r.similarity} for r in reasons},
        status="open",
        found_at=now,
    )
    conn.execute(
        statement.on_conflict_do_update(
            index_elements=["entity", "record_id", "candidate_id"],
            set_={"score": statement.excluded.score, "reasons": statement.excluded.reasons},
            where=duplicate_pairs.c.status == "open",
        )
    )


def mark_merged(
    conn: Connection,
    entity: str,
    ids: Collection[str],
    *,
    reviewed_by: str | None = None,
    reviewed_at: datetime | None = None,
) -> int:
    """Close as `merged` the open pairs of `entity` whose two records are both among
    `ids` (a merge's survivor and losers); call it in the merge's transaction.
    Returns how many pairs it closed."""
    wanted = list(ids)
    result = conn.execute(
        update(duplicate_pairs)
        .where(
            duplicate_pairs.c.entity == entity,
            duplicate_pairs.c.status == "open",
            duplicate_pairs.c.record_id.in_(wanted),
            duplicate_pairs.c.candidate_id.in_(wanted),
        )
        .values(status="merged", reviewed_by=reviewed_by, reviewed_at=reviewed_at)
    )
    return result.rowcount or 0


def fetch_pair(conn: Connection, pair_id: str) -> Row[Any] | None:
    return conn.execute(
        select(duplicate_pairs).where(duplicate_pairs.c.id == pair_id)
    ).one_or_none()


def dismiss_pair(conn: Connection, pair_id: str, *, by: str, at: datetime) -> bool:
    """Dismiss an open pair; False if it is no longer open."""
    result = conn.execute(
        update(duplicate_pairs)
        .where(duplicate_pairs.c.id == pair_id, duplicate_pairs.c.status == "open")
        .values(status="dismissed", reviewed_by=by, reviewed_at=at)
    )
    return bool(result.rowcount)


def reader_score(readable: Collection[str]) -> ColumnElement[float]:
    """A pair's score (`scoring.score`, before rounding) from its stored reasons on
    `readable` fields only, as a SQL expression.

    A reader who may read every field a reason can name sees the stored score itself
    (which keeps the `(status, score)` index usable); anyone else gets the noisy-OR
    of the readable fields' stored similarities, a missing reason counting 0."""
    if all(name in readable for name in WEIGHTS):
        return duplicate_pairs.c.score
    factors = [
        1.0
        - WEIGHTS[name]
        * func.coalesce(duplicate_pairs.c.reasons[(name, "similarity")].as_float(), 0.0)
        for name in WEIGHTS
        if name in readable
    ]
    if not factors:
        return literal(0.0, Float())
    return 1.0 - reduce(operator.mul, factors)


def page_of_pairs(
    conn: Connection,
    *,
    entity: str,
    status: str,
    visible: Any,
    readable: Collection[str],
    after: tuple[float, str] | None,
    limit: int,
) -> list[tuple[Row[Any], float]]:
    """Up to `limit` pairs with the score their reader sees (`reader_score` of
    `readable`), that score first (then id), leaving out pairs below
    `QUEUE_MIN_SCORE` and pairs whose two records are not both in the `visible` id
    subquery; keyset after `(score, id)`, the score as this function returned it."""
    pairs = duplicate_pairs.c
    ranking = reader_score(readable)
    # `score` rounds to DIGITS places: keep every pair it would show at the minimum.
    least = QUEUE_MIN_SCORE - 0.5 * 10**-DIGITS
    query = select(duplicate_pairs, ranking.label("reader_score")).where(
        pairs.entity == entity,
        pairs.status == status,
        pairs.record_id.in_(visible),
        pairs.candidate_id.in_(visible),
        ranking >= least,
    )
    if after is not None:
        last_score, last_id = after
        query = query.where(
            or_(ranking < last_score, and_(ranking == last_score, pairs.id > last_id))
        )
    rows = conn.execute(query.order_by(ranking.desc(), pairs.id).limit(limit))
    return [(row, float(row.reader_score)) for row in rows]


def visible_pair(row: Row[Any], readable: Collection[str]) -> dict[str, Any]:
    """A pair as a reader sees it: reasons on `readable` fields only, score from those."""
    reasons = [
        Reason.from_json({"field": name, **row.reasons[name]})
        for name in WEIGHTS
        if name in row.reasons and name in readable
    ]
    return {
        "id": row.id,
        "entity": row.entity,
        "region": row.region,
        "record_id": row.record_id,
        "candidate_id": row.candidate_id,
        "score": score(reasons),
        "reasons": [r.as_json() for r in reasons],
        "status": row.status,
        "found_at": to_json_value(row.found_at),
        "reviewed_by": row.reviewed_by,
        "reviewed_at": to_json_value(row.reviewed_at),
    }
