"""HTML form posts: `application/x-www-form-urlencoded` bodies, parsed with limits.

The console's forms are plain HTML forms, so every POST body is URL-encoded text
(no multipart: nothing is uploaded). A body of another type is 415, one that is not
UTF-8 is 400, one with more than `MAX_FIELDS` fields is 413, and a field given twice
where one is expected is 422 naming it. The body size itself is bounded by the
request middleware (`max_body_bytes`).
"""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import parse_qsl

from starlette.requests import Request

from bastion.errors import (
    FieldError,
    MalformedBody,
    PayloadTooLarge,
    UnsupportedMediaType,
    ValidationFailed,
)

FORM_TYPE = "application/x-www-form-urlencoded"
MAX_FIELDS = 200


class Form:
    """The fields of one form post (names to the values given, in order)."""

    def __init__(self, pairs: Iterable[tuple[str, str]] = ()) -> None:
        self._values: dict[str, list[str]] = {}
        for name, value in pairs:
            self._values.setdefault(name, []).append(value)

    def __contains__(self, name: str) -> bool:
        return name in self._values

    @property
    def names(self) -> list[str]:
        return list(self._values)

    def get(self, name: str) -> str | None:
        """The one value of `name` (None when absent); 422 when it is given twice."""
        values = self._values.get(name)
        if not values:
            return None
        if len(values) > 1:
            raise ValidationFailed(
                "the form is invalid", [FieldError(name, "is given more than once")]
            )
        return values[0]

    def text(self, name: str, *, max_length: int, required: bool = True) -> str | None:
        """The value of `name` without surrounding spaces; None when empty and optional.
        422 naming the field when it is missing (and required) or too long."""
        value = (self.get(name) or "").strip()
        if not value:
            if required:
                raise ValidationFailed("the form is invalid", [FieldError(name, "is required")])
            return None
        if len(value) > max_length:
            raise ValidationFailed(
                "the form is invalid",
                [FieldError(name, f"must be at most {max_length} characters")],
            )
        return value


async def read_form(request: Request) -> Form:
    """The request's URL-encoded body as a `Form` (see the module docstring). An empty
    body is an empty form, whatever its type (it then lacks its CSRF token: 403)."""
    raw = await request.body()
    if not raw:
        return Form()
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type != FORM_TYPE:
        raise UnsupportedMediaType(f"send the form as {FORM_TYPE}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedBody("the form is not UTF-8") from None
    try:
        pairs = parse_qsl(text, keep_blank_values=True, max_num_fields=MAX_FIELDS, errors="strict")
    except UnicodeDecodeError:
        raise MalformedBody("the form's percent-encoding is not UTF-8") from None
    except ValueError:
        raise PayloadTooLarge(f"a form has at most {MAX_FIELDS} fields") from None
    return Form(pairs)
