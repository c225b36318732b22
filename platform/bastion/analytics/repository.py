"""The SQL of pipeline analytics: per-group aggregates of one region's opportunities.

Everything is computed by GROUP BY in the region's own database; no deal row is
fetched into Python, only one row per group (and per group and stage, for stage
velocity). The caller's row scope arrives as a WHERE clause (`crm.access`), so the
figures cover exactly the deals the caller's rights cover.

Two groupings: `tallies` groups by what the query asks (callers who may list the
deals); `cells` always groups by the same fine-grained cell key, whatever the query,
for k-suppression (`analytics.suppression`).

Grouping expressions use SQL literals, never bound parameters, for their constant
parts (date formats): PostgreSQL matches a selected expression to its GROUP BY
entry textually, and two bound parameters never match.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, time
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Connection,
    Integer,
    Numeric,
    and_,
    case,
    cast,
    extract,
    func,
    literal_column,
    select,
    type_coerce,
)

from bastion.analytics.query import GROUPINGS, PipelineQuery
from bastion.analytics.tables import opportunity_stages
from bastion.crm.tables import ENTITY_TABLES

DEALS = ENTITY_TABLES["opportunities"]
HISTORY = opportunity_stages.c
WON, LOST = "closed_won", "closed_lost"

# The values of a group: its `group_by` values in order, then its currency (if measured);
# or of a cell: its values of `CELL_KEY`, in that order.
GroupKey = tuple[Any, ...]
# What a cell is the deals of one owner, team, stage, close month, creation month
# (`YYYY-MM`, UTC) and currency. Both months are in the key so that either period
# field groups and filters by whole cells of the one table.
CELL_KEY = ("owner", "team", "stage", "close_month", "created_month", "currency")
# The opportunity fields a cell key reads (for the audit event).
CELL_FIELDS = ("owner_id", "team_id", "stage", "close_date", "created_at", "currency")


@dataclass(frozen=True, slots=True)
class Measures:
    """Which figures are computed: only those over fields the caller may read."""

    currency: bool = False  # groups carry (and are split by) the currency
    amount: bool = False  # sum of amounts (needs amount and currency)
    weighted: bool = False  # sum of amount * probability (needs probability too)
    stages: bool = False  # win/loss, sales cycle and stage velocity (needs stage)

    @classmethod
    def readable(cls, fields: frozenset[str]) -> Measures:
        money = {"amount", "currency"} <= fields
        return cls(
            currency="currency" in fields,
            amount=money,
            weighted=money and "probability" in fields,
            stages="stage" in fields,
        )

    def fields(self) -> list[str]:
        """The opportunity fields these figures read (for the audit event)."""
        used = {
            "currency": self.currency,
            "amount": self.amount,
            "probability": self.weighted,
            "stage": self.stages,
        }
        return [name for name, on in used.items() if on]


@dataclass(slots=True)
class Tally:
    """The aggregates of one group: exact integers for money (minor units; weighted
    in minor units * percent), day sums for averages. Tallies of the same group in
    several regions add up (`add`), as only aggregates leave a region."""

    count: int = 0
    amount: int = 0
    weighted: Decimal = Decimal(0)
    won: int = 0
    lost: int = 0
    cycle_days: float = 0.0
    cycles: int = 0
    stage_days: dict[str, float] = field(default_factory=dict)
    stage_stays: dict[str, int] = field(default_factory=dict)

    def add(self, other: Tally) -> None:
        self.count += other.count
        self.amount += other.amount
        self.weighted += other.weighted
        self.won += other.won
        self.lost += other.lost
        self.cycle_days += other.cycle_days
        self.cycles += other.cycles
        for stage, days in other.stage_days.items():
            self.stage_days[stage] = self.stage_days.get(stage, 0.0) + days
            self.stage_stays[stage] = self.stage_stays.get(stage, 0) + other.stage_stays[stage]


def tallies(
    conn: Connection,
    query: PipelineQuery,
    measures: Measures,
    rows: ColumnElement[bool] | None,
) -> dict[GroupKey, Tally]:
    """One tally per group of the deals in `rows` (None: every deal of the region)
    that pass the query's date filter."""
    keys = _keys(conn.dialect.name, query, measures)
    return _grouped(conn, keys, _conditions(query, rows), measures)


def cells(
    conn: Connection,
    query: PipelineQuery,
    measures: Measures,
    rows: ColumnElement[bool] | None,
) -> dict[GroupKey, Tally]:
    """One tally per cell (`CELL_KEY`) of the deals in `rows` that pass the query's
    date filter, whatever the query groups by, every cell included (even of one
    deal): the caller drops the small ones. The cell key is fixed so that every
    query answered from cells is a union of the same cells; the date filter keeps
    or drops whole cells only if `from`/`to` are whole months, which the caller
    checks first (`suppression.require_whole_months`)."""
    dialect = conn.dialect.name
    expressions = {
        "owner": DEALS.c.owner_id,
        "team": DEALS.c.team_id,
        "stage": DEALS.c.stage,
        "close_month": _period(dialect, "close_date", "month"),
        "created_month": _period(dialect, "created_at", "month"),
        "currency": DEALS.c.currency,
    }
    keys = [expressions[name].label(f"k{i}") for i, name in enumerate(CELL_KEY)]
    return _grouped(conn, keys, _conditions(query, rows), measures)


def _grouped(
    conn: Connection,
    keys: Sequence[ColumnElement[Any]],
    where: Sequence[ColumnElement[bool]],
    measures: Measures,
) -> dict[GroupKey, Tally]:
    """One tally per value of `keys` (labelled k0, k1, ...) over the deals `where` holds."""
    dialect = conn.dialect.name
    won = opportunity_stages.alias("won")
    columns: list[ColumnElement[Any]] = [func.count().label("count")]
    if measures.amount:
        columns.append(func.sum(type_coerce(DEALS.c.amount, BigInteger)).label("amount"))
    if measures.weighted:
        # NUMERIC: an amount in minor units times a percentage can exceed BIGINT.
        product = cast(type_coerce(DEALS.c.amount, BigInteger), Numeric) * DEALS.c.probability
        columns.append(type_coerce(func.sum(product), BigInteger).label("weighted"))
    source: Any = DEALS
    if measures.stages:
        columns += [
            func.sum(case((DEALS.c.stage == WON, 1), else_=0)).label("won"),
            func.sum(case((DEALS.c.stage == LOST, 1), else_=0)).label("lost"),
            # Sales cycle: creation to entering closed_won, for deals that are won now
            # (their open stage row is closed_won).
            func.sum(_days(dialect, won.c.entered_at, DEALS.c.created_at)).label("cycle_days"),
            func.count(won.c.entered_at).label("cycles"),
        ]
        source = DEALS.outerjoin(
            won,
            and_(
                won.c.opportunity_id == DEALS.c.id,
                won.c.stage == WON,
                won.c.left_at.is_(None),
            ),
        )
    statement = select(*keys, *columns).select_from(source).where(*where).group_by(*keys)
    found: dict[GroupKey, Tally] = {}
    for row in conn.execute(statement).mappings():
        key = tuple(row[f"k{i}"] for i in range(len(keys)))
        found[key] = Tally(
            count=int(row["count"]),
            amount=int(row["amount"] or 0) if measures.amount else 0,
            weighted=_exact(row["weighted"]) if measures.weighted else Decimal(0),
            won=int(row["won"] or 0) if measures.stages else 0,
            lost=int(row["lost"] or 0) if measures.stages else 0,
            cycle_days=float(row["cycle_days"] or 0) if measures.stages else 0.0,
            cycles=int(row["cycles"] or 0) if measures.stages else 0,
        )
    if measures.stages:
        _add_stage_velocity(conn, found, keys, where)
    return found


def _add_stage_velocity(
    conn: Connection,
    found: dict[GroupKey, Tally],
    keys: Sequence[ColumnElement[Any]],
    where: Sequence[ColumnElement[bool]],
) -> None:
    """Days spent in each stage, over the stays that have ended, per group."""
    days = _days(conn.dialect.name, HISTORY.left_at, HISTORY.entered_at)
    statement = (
        select(
            *keys,
            HISTORY.stage.label("history_stage"),
            func.sum(days).label("days"),
            func.count().label("stays"),
        )
        .select_from(DEALS.join(opportunity_stages, HISTORY.opportunity_id == DEALS.c.id))
        .where(*where, HISTORY.left_at.is_not(None))
        .group_by(*keys, HISTORY.stage)
    )
    for row in conn.execute(statement).mappings():
        tally = found.get(tuple(row[f"k{i}"] for i in range(len(keys))))
        if tally is None:
            continue  # a deal committed between the two statements (read committed)
        stage = str(row["history_stage"])
        tally.stage_days[stage] = float(row["days"] or 0)
        tally.stage_stays[stage] = int(row["stays"])


def _keys(dialect: str, query: PipelineQuery, measures: Measures) -> list[ColumnElement[Any]]:
    expressions: list[ColumnElement[Any]] = []
    for name in query.group_by:
        column = GROUPINGS[name]
        if column is None:
            expressions.append(_period(dialect, query.period_field, query.period))
        else:
            expressions.append(DEALS.c[column])
    if measures.currency:
        expressions.append(DEALS.c.currency)
    return [expression.label(f"k{i}") for i, expression in enumerate(expressions)]


def _conditions(
    query: PipelineQuery, rows: ColumnElement[bool] | None
) -> list[ColumnElement[bool]]:
    where = [] if rows is None else [rows]
    if query.period_field == "close_date":
        if query.start is not None:
            where.append(DEALS.c.close_date >= query.start)
        if query.end is not None:
            where.append(DEALS.c.close_date <= query.end)
    else:
        # Whole UTC days; the end as its last microsecond, so 9999-12-31 still works.
        if query.start is not None:
            where.append(DEALS.c.created_at >= datetime.combine(query.start, time.min, UTC))
        if query.end is not None:
            where.append(DEALS.c.created_at <= datetime.combine(query.end, time.max, UTC))
    return where


def _period(dialect: str, period_field: str, period: str) -> ColumnElement[Any]:
    """`2027-01` (month), `2027-Q1` (quarter) or `2027` (year) of `period_field`,
    in UTC."""
    column: ColumnElement[Any] = DEALS.c[period_field]
    if dialect == "postgresql":
        if period_field == "created_at":
            column = func.timezone(literal_column("'UTC'"), column)
        pattern = {"month": "'YYYY-MM'", "quarter": "'YYYY-\"Q\"Q'", "year": "'YYYY'"}
        return func.to_char(column, literal_column(pattern[period]))
    # SQLite stores dates and naive UTC times as ISO 8601 text.
    if period == "quarter":
        month = cast(func.strftime(literal_column("'%m'"), column), Integer)
        # `op("/")`: SQL's integer division (SQLAlchemy's `/` would make it exact).
        quarter = (month + literal_column("2")).self_group().op("/")(literal_column("3"))
        year = func.strftime(literal_column("'%Y'"), column)
        return year.op("||")(literal_column("'-Q'")).op("||")(quarter)
    pattern = {"month": "'%Y-%m'", "year": "'%Y'"}
    return func.strftime(literal_column(pattern[period]), column)


def _days(dialect: str, later: ColumnElement[Any], earlier: ColumnElement[Any]) -> Any:
    """Days between two timestamps, with fractions."""
    if dialect == "postgresql":
        return extract("epoch", later - earlier) / literal_column("86400.0")
    return func.julianday(later) - func.julianday(earlier)


def _exact(value: Any) -> Decimal:
    """A sum as an exact Decimal (PostgreSQL answers NUMERIC, SQLite an integer)."""
    return Decimal(0) if value is None else Decimal(value)
