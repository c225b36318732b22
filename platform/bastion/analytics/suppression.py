"""k-suppression of pipeline figures for callers who may not list the deals.

Hiding the groups of fewer than k deals that a query happens to produce is not
enough: two queries whose groups differ by one deal (`to=2027-01-31` and
`to=2027-01-30`; `group_by=owner` and `group_by=owner,stage`) are each made of
large groups, yet their difference is that one deal. So every figure a suppressed
caller sees is computed from ONE fixed table per region, whatever the query:

- the deals are counted, in SQL, per cell of owner x team x stage x close month x
  creation month x currency (`repository.CELL_KEY`); a cell of fewer than k deals
  is dropped (and counted in `suppressed_groups`), with everything about its deals:
  amounts, win/loss, sales cycle and their stage history (stage velocity is
  tallied per cell in SQL and kept for the surviving cells only);
- the surviving cells are then rolled up in process to the groups asked for, and
  totals and the summary are sums over the same surviving cells;
- `from`/`to` must be whole months (`require_whole_months`), so a date filter
  keeps or drops whole cells.

Every figure is then a sum over a set of surviving cells, and the difference of
two figures is a sum over surviving cells too: none of them ever isolates a cell
below k, let alone one deal. Both period fields' months are in the cell key, so
switching `period_field` does not change the cells either.

Remaining limits (documented in the README):
- a surviving cell is k deals that share owner, team, stage, months and currency:
  figures over it say, for example, what those k deals of one owner add up to;
  k-suppression hides individuals among k, it does not blur the sums;
- stage velocity averages the stays that ended in each stage, over the deals of the
  surviving cells; a stage's stays can be fewer than k (its average is then null),
  but their sum can still be had by differencing two queries, and so one stay's
  length, though never which of the cell's deals (at least k) it was;
- cells are keyed on owner, team, stage and currency even when the caller may not
  read them, so how many deals survive says a little about how those fields are
  spread (never a value of one deal);
- k holds across queries over the same data, not over time: figures asked before
  and after a deal joins a surviving cell differ by that one deal. This is inherent
  to aggregates over live data; the `analytics.read` audit events show who asks
  repeatedly.
"""

from __future__ import annotations

import calendar
from collections.abc import Mapping

from bastion.analytics.query import PipelineQuery
from bastion.analytics.repository import CELL_KEY, GroupKey, Measures, Tally
from bastion.errors import FieldError, ValidationFailed

_FIELD = {name: CELL_KEY.index(name) for name in CELL_KEY}
_MONTH_OF = {"close_date": _FIELD["close_month"], "created_at": _FIELD["created_month"]}


def require_whole_months(query: PipelineQuery) -> None:
    """`ValidationFailed` unless `from` is the first day of a month and `to` the last
    day of one: a suppressed caller's date filter must keep or drop whole cells."""
    errors = []
    if query.start is not None and query.start.day != 1:
        errors.append(
            FieldError("from", "must be the first day of a month (figures are k-suppressed)")
        )
    if query.end is not None:
        last = calendar.monthrange(query.end.year, query.end.month)[1]
        if query.end.day != last:
            errors.append(
                FieldError("to", "must be the last day of a month (figures are k-suppressed)")
            )
    if errors:
        raise ValidationFailed("k-suppressed figures are asked for by whole months", errors)


def roll_up(
    cells: Mapping[GroupKey, Tally], query: PipelineQuery, measures: Measures, k: int
) -> tuple[dict[GroupKey, Tally], int]:
    """The query's groups (keys as `repository.tallies` makes them) summed over the
    cells of at least `k` deals, and how many cells were dropped."""
    groups: dict[GroupKey, Tally] = {}
    dropped = 0
    for cell, tally in cells.items():
        if tally.count < k:
            dropped += 1
            continue
        key = tuple(_value(cell, name, query) for name in query.group_by)
        if measures.currency:
            key += (cell[_FIELD["currency"]],)
        groups.setdefault(key, Tally()).add(tally)
    return groups, dropped


def _value(cell: GroupKey, name: str, query: PipelineQuery) -> object:
    """The value of grouping `name` for the deals of `cell`, formatted as the SQL of
    `repository.tallies` formats it (`2027-01`, `2027-Q1`, `2027`)."""
    if name != "period":
        return cell[_FIELD[name]]
    month = cell[_MONTH_OF[query.period_field]]
    if month is None or query.period == "month":
        return month
    year = month[:4]
    if query.period == "year":
        return year
    return f"{year}-Q{(int(month[5:7]) + 2) // 3}"
