"""The parameters of a pipeline analytics request, parsed and checked (422 naming them)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date

from bastion.errors import FieldError, ValidationFailed

PARAMETERS = ("group_by", "period", "period_field", "from", "to", "region")
# What `group_by` may name, and the opportunity field each groups on (`period`: the
# chosen `period_field`).
GROUPINGS = {"stage": "stage", "owner": "owner_id", "team": "team_id", "period": None}
GRANULARITIES = ("month", "quarter", "year")
PERIOD_FIELDS = ("close_date", "created_at")
_DATE_RE = re.compile(r"\d{4}-\d{2}-\d{2}")


@dataclass(frozen=True, slots=True)
class PipelineQuery:
    """Group by `group_by` (in this order), periods of `period` on `period_field`;
    only deals whose `period_field` falls in [`start`, `end`] (days, inclusive);
    in `region`, or in every region the caller may use."""

    group_by: tuple[str, ...] = ()
    period: str = "month"
    period_field: str = "close_date"
    start: date | None = None
    end: date | None = None
    region: str | None = None

    def grouped_fields(self) -> list[str]:
        """The opportunity fields the grouping reads (the caller must read them)."""
        return [GROUPINGS[name] or self.period_field for name in self.group_by]

    def filtered_fields(self) -> list[str]:
        """The opportunity fields the date filter reads."""
        return [self.period_field] if self.start or self.end else []


def parse_query(params: Mapping[str, str]) -> PipelineQuery:
    """The query from its (already de-duplicated) string parameters; `ValidationFailed`
    naming every bad one. Unknown parameter names are the caller's to refuse."""
    errors: list[FieldError] = []
    group_by: tuple[str, ...] = ()
    raw = params.get("group_by")
    if raw is not None:
        names = raw.split(",")
        if any(name not in GROUPINGS for name in names):
            errors.append(FieldError("group_by", f"must be a comma list of {', '.join(GROUPINGS)}"))
        elif len(set(names)) != len(names):
            errors.append(FieldError("group_by", "names a grouping more than once"))
        else:
            group_by = tuple(names)
    period = params.get("period", "month")
    if period not in GRANULARITIES:
        errors.append(FieldError("period", f"must be one of {', '.join(GRANULARITIES)}"))
    period_field = params.get("period_field", "close_date")
    if period_field not in PERIOD_FIELDS:
        errors.append(FieldError("period_field", f"must be one of {', '.join(PERIOD_FIELDS)}"))
    start = _day(params, "from", errors)
    end = _day(params, "to", errors)
    if start is not None and end is not None and start > end:
        errors.append(FieldError("from", "must not be after `to`"))
    if errors:
        raise ValidationFailed("invalid analytics parameters", errors)
    return PipelineQuery(group_by, period, period_field, start, end, params.get("region"))


def _day(params: Mapping[str, str], name: str, errors: list[FieldError]) -> date | None:
    raw = params.get(name)
    if raw is None:
        return None
    if _DATE_RE.fullmatch(raw) is not None:
        try:
            return date.fromisoformat(raw)
        except ValueError:
            pass
    errors.append(FieldError(name, "must be a date (YYYY-MM-DD)"))
    return None
