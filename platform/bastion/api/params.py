"""Query parameters of the API's own (non-record) routes: known names only, each at
most once, integers and flags read strictly. The errors name the parameter, never
echo its value."""

from __future__ import annotations

import re
from typing import Any

from starlette.requests import Request

from bastion.errors import BadRequest, FieldError, ValidationFailed

_DIGITS = re.compile(r"[0-9]{1,6}")  # ASCII only: str.isdigit accepts "²"
_NAME = re.compile(r"[a-z_]{1,32}")


def known_params(request: Request, known: frozenset[str]) -> dict[str, str]:
    """The query parameters: 422 for one the operation does not take, 400 for one
    given twice."""
    params: dict[str, str] = {}
    for name, value in request.query_params.multi_items():
        if name not in known:
            raise invalid(name, "is not a parameter of this operation")
        if name in params:
            raise BadRequest(f"the query parameter {name!r} is given more than once")
        params[name] = value
    return params


def all_checked(request: Request, allowed: frozenset[str] | tuple[str, ...]) -> dict[str, str]:
    """The query parameters, each at most once and all known: one 422 naming every bad
    one (a name that is not a plausible parameter name is shown as `query`)."""
    params: dict[str, str] = {}
    errors: list[FieldError] = []
    for name, value in request.query_params.multi_items():
        shown = name if _NAME.fullmatch(name) else "query"
        if name not in allowed:
            errors.append(FieldError(shown, "is not a parameter of this operation"))
        elif name in params:
            errors.append(FieldError(shown, "is given more than once"))
        else:
            params[name] = value
    if errors:
        raise ValidationFailed("invalid query parameters", errors)
    return params


def integer(params: dict[str, str], name: str, low: int, high: int) -> int | None:
    """`params[name]` as an integer in [low, high] (422 otherwise); None when absent."""
    value = params.get(name)
    if value is None:
        return None
    if not _DIGITS.fullmatch(value) or not low <= int(value) <= high:
        raise invalid(name, f"must be an integer from {low} to {high}")
    return int(value)


def paging(params: dict[str, str], default: int = 50) -> dict[str, Any]:
    """`limit` (1-200, default `default`) and `cursor` of a list, as keyword arguments."""
    return {"limit": integer(params, "limit", 1, 200) or default, "cursor": params.get("cursor")}


def flag(params: dict[str, str], name: str) -> bool:
    """`params[name]` as `true` or `false` (422 otherwise); false when absent."""
    value = params.get(name, "false")
    if value not in ("true", "false"):
        raise invalid(name, "must be true or false")
    return value == "true"


def invalid(field: str, message: str) -> ValidationFailed:
    return ValidationFailed("invalid request", [FieldError(field, message)])
