"""Pipeline analytics: figures over opportunities, within the caller's rights.

Rights, per region (`Access`, from the compiled policy):
- `list` on opportunities: figures over the deals the caller could list and read
  (its list scope AND its read scope: a deal whose fields it may not read adds
  nothing to a figure);
- else `analytics read`: figures over that grant's scope (the whole region), with
  k-suppression (`analytics.suppression`): every figure, total and summary is a
  roll-up of one fixed table of fine-grained cells from which the cells of fewer
  than k deals (`[analytics] min_group_size`) are dropped, and `from`/`to` must be
  whole months, so no difference of two answers recovers a dropped cell;
- neither: 403.
Suppression is applied in each region before the regions are combined, so asking
for one region and for all of them cannot be differenced either.

Fields: grouping or filtering on a field the caller may not read in every deal of
every queried region is a 403 naming it. A metric over such a field is left out
and named in `_withheld`. A field readable only under a record condition (a
conditional mask, e.g. amounts below a threshold) counts as not readable: its
metric is withheld rather than computed over rows the condition would hide
(policy conditions are not compiled to SQL; see `policy.scopes`).

Each region is queried in its own database (GROUP BY there; only aggregates come
back) and audited there: one `analytics.read` event per region, committed before
the figures are returned, naming fields, never record ids.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

from sqlalchemy import ColumnElement, and_

from bastion.analytics import repository, suppression
from bastion.analytics.query import PipelineQuery
from bastion.analytics.repository import GroupKey, Measures, Tally
from bastion.analytics.settings import AnalyticsSettings
from bastion.crm.access import Access
from bastion.crm.catalog import ENTITIES, OPPORTUNITY_STAGES, SYSTEM_FIELDS
from bastion.crm.pipeline import Pipeline
from bastion.errors import FieldError, Forbidden, ValidationFailed
from bastion.principals.caller import Caller
from bastion.residency.databases import Regions

OPPORTUNITIES = ENTITIES["opportunities"]
# What a response may leave out for want of readable fields, as its keys name them.
WITHHOLDABLE = ("currency", "amount", "weighted_amount", "summary")


def _amount_scale() -> int:
    amount = OPPORTUNITIES.field("amount")
    assert amount is not None
    assert amount.scale is not None
    return amount.scale


_SCALE = _amount_scale()
_CENT = Decimal(1).scaleb(-_SCALE)
_PERCENT = 2  # probability is in percent: weighted sums carry two more decimals


@dataclass(frozen=True, slots=True)
class _Basis:
    """What the caller's rights make of one region: the deals its figures cover,
    whether groups are k-suppressed, and the fields it may read in every deal."""

    region: str
    rows: ColumnElement[bool] | None
    suppressed: bool
    readable: frozenset[str]


class PipelineAnalytics:
    """Pipeline figures on the record pipeline's steps: its `Access` for rights, its
    region databases and transactions, its audit recorder."""

    def __init__(
        self, *, pipeline: Pipeline, regions: Regions, settings: AnalyticsSettings
    ) -> None:
        self._pipeline = pipeline
        self._regions = regions
        self._k = settings.min_group_size

    def figures(self, caller: Caller, query: PipelineQuery) -> dict[str, Any]:
        """The figures as a JSON object (see `api.analytics` for its schema).

        Raises `ValidationFailed` for an unknown region, `Forbidden` for a region
        outside the caller's, for no rights, or for grouping or filtering on a field
        it may not read (naming the fields). Denials are audited in the region asked
        about (or the caller's default region)."""
        principal = caller.principal
        access = self._pipeline.access(principal)
        denied_in = query.region or (principal.default_region if principal.regions else None)
        if denied_in is None or denied_in not in self._regions:
            return self._figures(caller, access, query)
        with self._pipeline.denials(caller, access, denied_in, OPPORTUNITIES, "analytics"):
            return self._figures(caller, access, query)

    def _figures(self, caller: Caller, access: Access, query: PipelineQuery) -> dict[str, Any]:
        bases = self._bases(access, query.region)
        names = [basis.region for basis in bases]
        # Permission before anything is queried: a field the caller may not read is a
        # 403 whatever the data, so the answer says nothing about the field.
        grouped = [f for f in query.grouped_fields() if f not in SYSTEM_FIELDS]
        if grouped:
            access.require_readable(names, OPPORTUNITIES, grouped, "group figures")
        filtered = [f for f in query.filtered_fields() if f not in SYSTEM_FIELDS]
        if filtered:
            access.require_readable(names, OPPORTUNITIES, filtered, "filter figures")
        if any(basis.suppressed for basis in bases):
            suppression.require_whole_months(query)
        measures = Measures.readable(frozenset.intersection(*(b.readable for b in bases)))
        combined: dict[GroupKey, Tally] = {}
        suppressed = 0
        for basis in bases:
            shown, hidden = self._region_tallies(caller, access, query, measures, basis)
            suppressed += hidden
            for key, tally in shown.items():
                combined.setdefault(key, Tally()).add(tally)
        k = self._k if any(basis.suppressed for basis in bases) else None
        return _render(query, measures, names, combined, suppressed, k)

    def _bases(self, access: Access, requested: str | None) -> list[_Basis]:
        principal = access.principal
        if requested is not None:
            if requested not in self._regions:
                raise ValidationFailed(
                    "unknown region", [FieldError("region", "is not a configured region")]
                )
            if requested not in principal.regions:
                raise Forbidden(f"you may not access region {requested}")
            basis = self._basis(access, requested)
            if basis is None:
                raise Forbidden(
                    "your roles allow neither list on opportunities nor analytics read "
                    f"in region {requested}"
                )
            return [basis]
        bases = [
            basis
            for region in principal.regions
            if region in self._regions and (basis := self._basis(access, region)) is not None
        ]
        if not bases:
            raise Forbidden(
                "your roles allow neither list on opportunities nor analytics read "
                "in any of your regions"
            )
        return bases

    def _basis(self, access: Access, region: str) -> _Basis | None:
        roles = access.principal.roles
        readable = access.mask(region, OPPORTUNITIES, "read").always
        listed = access.policy.scope(roles, region, OPPORTUNITIES.name, "list")
        if listed.permits_any:
            read = access.policy.scope(roles, region, OPPORTUNITIES.name, "read")
            clauses = [
                clause
                for clause in (
                    access.where(OPPORTUNITIES, listed),
                    access.where(OPPORTUNITIES, read),
                )
                if clause is not None
            ]
            return _Basis(region, and_(*clauses) if clauses else None, False, readable)
        granted = access.policy.scope(roles, region, "analytics", "read")
        if granted.permits_any:
            return _Basis(region, access.where(OPPORTUNITIES, granted), True, readable)
        return None

    def _region_tallies(
        self,
        caller: Caller,
        access: Access,
        query: PipelineQuery,
        measures: Measures,
        basis: _Basis,
    ) -> tuple[dict[GroupKey, Tally], int]:
        """The region's shown groups and how many groups (under suppression: cells)
        were suppressed, audited there."""
        database = self._pipeline.database(basis.region)
        # A write transaction: the read's audit event commits before we answer.
        with self._pipeline.write(database, "the figures could not be read") as conn:
            if basis.suppressed:
                cells = repository.cells(conn, query, measures, basis.rows)
                shown, hidden = suppression.roll_up(cells, query, measures, self._k)
            else:
                shown, hidden = repository.tallies(conn, query, measures, basis.rows), 0
            used = {*query.grouped_fields(), *query.filtered_fields(), *measures.fields()}
            if basis.suppressed:
                used.update(repository.CELL_FIELDS)  # read to form the cells, never shown
            event = self._pipeline.recorder.event(
                caller,
                access.policy.version,
                action="analytics.read",
                entity=OPPORTUNITIES.name,
                fields=sorted(used),
                details={
                    "group_by": ",".join(query.group_by) or None,
                    "period": query.period if "period" in query.group_by else None,
                    "period_field": query.period_field,
                    "from": query.start.isoformat() if query.start else None,
                    "to": query.end.isoformat() if query.end else None,
                    "suppressed": basis.suppressed,
                    "groups": len(shown),
                    "suppressed_groups": hidden,
                },
            )
            self._pipeline.recorder.append(conn, basis.region, event)
        return shown, hidden


def _render(
    query: PipelineQuery,
    measures: Measures,
    regions: list[str],
    tallies: Mapping[GroupKey, Tally],
    suppressed: int,
    k: int | None,
) -> dict[str, Any]:
    groups = []
    for key in sorted(tallies, key=_sort_key):
        group: dict[str, Any] = dict(zip(query.group_by, key, strict=False))
        groups.append({**group, **_metrics(measures, key, tallies[key])})
    by_currency: dict[GroupKey, Tally] = {}
    for key, tally in tallies.items():
        total = by_currency.setdefault(key[-1:] if measures.currency else (), Tally())
        total.count += tally.count
        total.amount += tally.amount
        total.weighted += tally.weighted
    shown = {
        "currency": measures.currency,
        "amount": measures.amount,
        "weighted_amount": measures.weighted,
        "summary": measures.stages,
    }
    figures: dict[str, Any] = {
        "group_by": list(query.group_by),
        "period": query.period,
        "period_field": query.period_field,
        "from": query.start.isoformat() if query.start else None,
        "to": query.end.isoformat() if query.end else None,
        "regions": regions,
        "groups": groups,
        "totals": [
            _metrics(measures, key, by_currency[key]) for key in sorted(by_currency, key=_sort_key)
        ],
    }
    if measures.stages:
        figures["summary"] = _summary(tallies.values(), k)
    figures["suppressed_groups"] = suppressed
    figures["min_group_size"] = k
    figures["_withheld"] = [name for name in WITHHOLDABLE if not shown[name]]
    return figures


def _metrics(measures: Measures, key: GroupKey, tally: Tally) -> dict[str, Any]:
    shown: dict[str, Any] = {}
    if measures.currency:
        shown["currency"] = key[-1]
    shown["count"] = tally.count
    if measures.amount:
        shown["amount"] = str(Decimal(tally.amount).scaleb(-_SCALE).quantize(_CENT))
    if measures.weighted:
        weighted = tally.weighted.scaleb(-_SCALE - _PERCENT)
        shown["weighted_amount"] = str(weighted.quantize(_CENT, rounding=ROUND_HALF_EVEN))
    return shown


def _summary(tallies: Iterable[Tally], k: int | None) -> dict[str, Any]:
    """Win/loss, sales cycle and stage velocity over the given (shown) groups. Under
    suppression an average of fewer than k deals is null: it would describe too
    few deals to stay anonymous."""
    whole = Tally()
    for tally in tallies:
        whole.add(tally)
    decided = whole.won + whole.lost
    velocity = [
        {
            "stage": stage,
            "average_days": _average(whole.stage_days[stage], whole.stage_stays[stage], k),
            "count": whole.stage_stays[stage],
        }
        for stage in OPPORTUNITY_STAGES
        if whole.stage_stays.get(stage)
    ]
    return {
        "win_loss": {
            "won": whole.won,
            "lost": whole.lost,
            "ratio": round(whole.won / decided, 4) if decided else None,
        },
        "average_sales_cycle_days": _average(whole.cycle_days, whole.cycles, k),
        "stage_velocity": velocity,
    }


def _average(total: float, count: int, k: int | None) -> float | None:
    if count == 0 or (k is not None and count < k):
        return None
    return round(total / count, 2)


def _sort_key(key: GroupKey) -> tuple[tuple[bool, str], ...]:
    return tuple((value is None, "" if value is None else str(value)) for value in key)
