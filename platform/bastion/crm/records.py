"""Records as the API shows them: JSON values, ETags, and the read mask applied.

A record leaves the service as a dict of its system fields (`id`, `region`,
`version`, `created_at`, `updated_at`), the catalog fields the caller may read, and
`_withheld`: the names of the catalog fields it may not (absent, never null). A
withheld field's value is dropped here, before the record leaves the service, so
it cannot reach a response, a log line or an error body. `_erased`, present only
when not empty, names readable fields whose data key was destroyed (the person
they were about was erased): they are absent, never returned as garbage.
`_restricted`, likewise, names readable fields kept after the person's erasure
(a legal hold, a retention rule) that only those who handle data subjects'
requests may see.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from bastion.crm.catalog import SYSTEM_FIELDS, EntitySpec
from bastion.errors import PreconditionRequired

Record = dict[str, Any]
WITHHELD = "_withheld"
ERASED = "_erased"
RESTRICTED = "_restricted"
_ETAG_RE = re.compile(r'(?:W/)?"v([0-9]{1,18})"')


def to_json_value(value: Any) -> Any:
    """The JSON form of a stored value: exact decimals as strings, ISO 8601 times."""
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat().replace("+00:00", "Z")
    if isinstance(value, date):
        return value.isoformat()
    return value


# The field types whose stored values are not JSON values already.
_CONVERTED_TYPES = frozenset({"decimal", "date", "datetime"})
_layouts: dict[str, tuple[tuple[str, bool], ...]] = {}


def _layout(spec: EntitySpec) -> tuple[tuple[str, bool], ...]:
    """Each field of `spec` in API order, and whether its value needs `to_json_value`
    (rendering runs for every record of every list: the type decides, once)."""
    layout = _layouts.get(spec.name)
    if layout is None:
        layout = tuple((f.name, f.type in _CONVERTED_TYPES) for f in spec.fields)
        _layouts[spec.name] = layout
    return layout


def render(
    spec: EntitySpec,
    values: Mapping[str, Any],
    readable: frozenset[str],
    *,
    erased: tuple[str, ...] = (),
    restricted: tuple[str, ...] = (),
) -> Record:
    """The record as the caller may see it: permitted fields only, the rest named."""
    record: Record = {name: to_json_value(values[name]) for name in SYSTEM_FIELDS}
    withheld = []
    hidden = erased or restricted
    for name, converted in _layout(spec):
        if hidden and (name in erased or name in restricted):
            continue
        if name in readable:
            value = values.get(name)
            record[name] = to_json_value(value) if converted else value
        else:
            withheld.append(name)
    record[WITHHELD] = withheld
    if erased:
        record[ERASED] = list(erased)
    if restricted:
        record[RESTRICTED] = list(restricted)
    return record


def etag(record: Mapping[str, Any]) -> str:
    return f'"v{record["version"]}"'


def parse_if_match(header: str | None) -> int | None:
    """The version an `If-Match` header names; None if it names none we could have sent.

    A missing header is the caller's problem (428), so callers check that first.
    """
    if header is None:
        raise PreconditionRequired("this request needs an If-Match header with the record's ETag")
    if header.strip() == "*":
        # RFC 9110 lets `*` match any current version, which is exactly the lost update
        # the header is required to prevent.
        raise PreconditionRequired(
            "If-Match: * matches any version and would allow lost updates; send the record's ETag"
        )
    match = _ETAG_RE.fullmatch(header.strip())
    return int(match.group(1)) if match else None
