"""Row scopes as SQL: the WHERE clause a `RowScope` compiles to for one principal.

Policies *name* scopes; this module owns what each name means on a table
(research/policy-engine.md: pycasbin has no partial evaluation, and turning
condition text into SQL would be an injection risk):

    all, region   TRUE (every row of the region's table)
    own           owner_id = :principal
    team          team_id IN (:teams)          FALSE for a principal in no team

Granted scopes are ORed; denied scopes are subtracted with null-safe negations (a
row without an owner is not "own", so a deny of `own` does not hide it).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Any

from sqlalchemy import ColumnElement, Table, and_, false, not_, or_, true

from bastion.policy.compiled import RowScope
from bastion.policy.conditions import WHOLE_REGION


def classify(values: Mapping[str, Any], principal_id: str, teams: Sequence[str]) -> frozenset[str]:
    """The scope names a record falls into for a principal (`own`, `team`)."""
    classes = set()
    if values.get("owner_id") is not None and values.get("owner_id") == principal_id:
        classes.add("own")
    if values.get("team_id") is not None and values.get("team_id") in teams:
        classes.add("team")
    return frozenset(classes)


def scope_clause(
    scope: RowScope, table: Table, principal_id: str, teams: Sequence[str]
) -> ColumnElement[bool] | None:
    """The WHERE clause selecting exactly the rows `scope` covers; None for all rows.

    Clauses are immutable and cached per (scope, table, principal, teams): building
    SQLAlchemy expressions costs tens of microseconds, a lookup well under one.
    """
    if scope.unrestricted:
        return None
    return _cached_clause(scope, table, principal_id, tuple(teams))


@lru_cache(maxsize=4096)
def _cached_clause(
    scope: RowScope, table: Table, principal_id: str, teams: tuple[str, ...]
) -> ColumnElement[bool]:
    if not scope.permits_any:
        return false()
    granted = [_matches(name, table, principal_id, teams) for name in sorted(scope.allow)]
    clause: ColumnElement[bool] = or_(*granted) if len(granted) > 1 else granted[0]
    denied = [_differs(name, table, principal_id, teams) for name in sorted(scope.deny)]
    return and_(clause, *denied) if denied else clause


def _matches(
    name: str, table: Table, principal_id: str, teams: Sequence[str]
) -> ColumnElement[bool]:
    if name in WHOLE_REGION:
        return true()
    if name == "own":
        return table.c.owner_id == principal_id
    if name == "team":
        return table.c.team_id.in_(list(teams)) if teams else false()
    raise ValueError(f"unknown scope {name!r}")


def _differs(
    name: str, table: Table, principal_id: str, teams: Sequence[str]
) -> ColumnElement[bool]:
    if name in WHOLE_REGION:
        return false()
    if name == "own":
        return or_(table.c.owner_id.is_(None), table.c.owner_id != principal_id)
    if name == "team":
        if not teams:
            return true()
        return or_(table.c.team_id.is_(None), not_(table.c.team_id.in_(list(teams))))
    raise ValueError(f"unknown scope {name!r}")
