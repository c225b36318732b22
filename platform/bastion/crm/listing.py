"""List queries: parsing limit, sort and filters, and merging pages across regions.

A list fans out to every region the caller may list in; each region answers one
keyset query (same filters, same sort, the caller's row scope as a WHERE clause),
and the streams are merged in Python in the order the databases returned them.
The next-page cursor is sealed (`crm.cursors`) and bound to the query.
"""

from __future__ import annotations

import heapq
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from bastion.crm import repository
from bastion.crm.catalog import EntitySpec
from bastion.crm.schemas import check_filter_value
from bastion.errors import BadRequest, FieldError, ValidationFailed

MAX_LIMIT = 200
DEFAULT_LIMIT = 50
# Query parameters of a list that are not field filters.
LIST_PARAMETERS = frozenset({"limit", "cursor", "sort", "region"})
SYSTEM_SORTS = frozenset({"id", "created_at", "updated_at"})
_DIGITS = re.compile(r"[0-9]{1,6}")  # ASCII digits only: str.isdigit also accepts "²"


@dataclass(frozen=True, slots=True)
class ListQuery:
    """A list request as the caller gave it: raw strings, validated by the service."""

    filters: Mapping[str, str]
    limit: str | None = None
    cursor: str | None = None
    sort: str | None = None
    region: str | None = None


def parse_limit(raw: str | None) -> int:
    if raw is None:
        return DEFAULT_LIMIT
    if not _DIGITS.fullmatch(raw) or not 1 <= int(raw) <= MAX_LIMIT:
        raise ValidationFailed(
            "invalid limit", [FieldError("limit", f"must be an integer from 1 to {MAX_LIMIT}")]
        )
    return int(raw)


def parse_sort(spec: EntitySpec, raw: str | None) -> repository.Sort:
    if raw is None:
        return repository.Sort("created_at")
    descending = raw.startswith("-")
    name = raw[1:] if descending else raw
    field = spec.field(name)
    if name not in SYSTEM_SORTS and (field is None or not field.sortable):
        raise ValidationFailed(
            "invalid sort",
            [
                FieldError(
                    "sort",
                    f"must be one of: {', '.join(sortable(spec))} (prefix - for descending)",
                )
            ],
        )
    return repository.Sort(name, descending)


def sortable(spec: EntitySpec) -> list[str]:
    return [*sorted(SYSTEM_SORTS), *(f.name for f in spec.fields if f.sortable)]


def parse_filters(spec: EntitySpec, raw: Mapping[str, str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    errors: list[FieldError] = []
    for name, text in raw.items():
        field = spec.field(name)
        if name == "id" or field is None:
            errors.append(FieldError(name, f"is not a filter of {spec.name}"))
        elif not field.filterable:
            errors.append(FieldError(name, "cannot be filtered on"))
        else:
            try:
                values[name] = check_filter_value(field, text)
            except ValidationFailed as exc:
                errors.extend(exc.errors)
    if errors:
        raise ValidationFailed("invalid filters", errors)
    return values


@dataclass(slots=True)
class PageItem:
    region: str
    record: dict[str, Any]
    sort_value: Any  # the stored value of the sort column (never an encrypted field)


@dataclass(slots=True)
class RegionPage:
    """One region's part of a list page, in the order its database returned it."""

    region: str
    items: list[PageItem] = field(default_factory=list)

    def add(self, record: dict[str, Any], sort_value: Any) -> None:
        self.items.append(PageItem(self.region, record, sort_value))


def merge_pages(
    pages: list[RegionPage], sort: repository.Sort, limit: int
) -> tuple[list[PageItem], bool]:
    """The first `limit` items across regions in sort order, and whether more follow."""
    streams = [
        [(merge_key(item.sort_value, item.record["id"], sort), index, item) for item in page.items]
        for index, page in enumerate(pages)
    ]
    merged = [item for _key, _i, item in heapq.merge(*streams, key=lambda e: e[0])][: limit + 1]
    return merged[:limit], len(merged) > limit


def merge_key(value: Any, record_id: str, sort: repository.Sort) -> tuple[Any, ...]:
    """The order the database returned rows in, as a Python key (for merging regions)."""
    if sort.column == "id":
        return (_Reversed(record_id),) if sort.descending else (record_id,)
    if sort.descending:
        return (value is None, _Reversed(value), _Reversed(record_id))
    return (value is None, value, record_id)


class _Reversed:
    """Inverts comparison, for descending keys in `heapq.merge`."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __lt__(self, other: _Reversed) -> bool:
        if self.value is None or other.value is None:
            return False
        return bool(other.value < self.value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Reversed) and self.value == other.value

    __hash__ = None  # type: ignore[assignment]


def from_cursor_value(spec: EntitySpec, column: str, value: Any) -> Any:
    """The stored form of a sort value read back from a cursor."""
    if value is None or column == "id":
        return value
    field = spec.field(column)
    kind = "datetime" if column in SYSTEM_SORTS else (field.type if field else "string")
    try:
        if kind == "datetime":
            return datetime.fromisoformat(value)
        if kind == "date":
            return date.fromisoformat(value)
        if kind == "decimal":
            return Decimal(value)
    except (TypeError, ValueError, ArithmeticError):
        raise BadRequest("the cursor is invalid for this list") from None
    return value
