"""Request validation and JSON Schemas, derived from the field catalog.

For every entity the catalog yields a pydantic model for `create` and one for
`patch`. Each field's validator is written here from its `FieldSpec`, and so is
its JSON Schema, so the OpenAPI document and the validator cannot disagree.

Error messages name the rule that failed, never the value: an error body may be
logged or shown to someone who may not read the field.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from functools import cache
from typing import Annotated, Any

import phonenumbers
from pydantic import BaseModel, ConfigDict, Field, PlainValidator, ValidationError, WithJsonSchema
from pydantic import create_model as _pydantic_model
from pydantic_core import PydanticCustomError

from bastion.crm.catalog import ENTITIES, SYSTEM_FIELDS, EntitySpec, FieldSpec
from bastion.errors import FieldError, ValidationFailed
from bastion.residency.ids import ID_MAX_LENGTH, InvalidId, RecordId

_EMAIL_RE = re.compile(r"[^@\s]{1,64}@[^@\s.]+(\.[^@\s.]+)+")
_PHONE_RE = re.compile(r"\+[1-9][0-9]{6,14}")
_URL_RE = re.compile(r"https?://[^\s/?#]+[^\s]*")
_COUNTRY_RE = re.compile(r"[A-Z]{2}")
_CURRENCY_RE = re.compile(r"[A-Z]{3}")
_DATE_RE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_PRINCIPAL_RE = re.compile(r"prn_[0-9a-hjkmnp-tv-z]{26}")
_TEAM_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,63}")
_CUSTOM_KEY_RE = re.compile(r"[a-z][a-z0-9_]{0,62}")
# C0 controls other than tab, newline and carriage return; DEL; and lone surrogates,
# which PostgreSQL cannot store and most clients cannot print.
_FORBIDDEN_CHARS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff]")
_FORBIDDEN_IN_LINE = re.compile(r"[\x00-\x1f\x7f\ud800-\udfff]")

CUSTOM_MAX_KEYS = 50
CUSTOM_MAX_STRING = 1000
CUSTOM_MAX_BYTES = 16_384
_JSON_SAFE_INT = 2**53


def _fail(kind: str, message: str) -> PydanticCustomError:
    return PydanticCustomError(kind, message)


def _text(value: object, spec: FieldSpec, *, multiline: bool) -> str:
    if not isinstance(value, str):
        raise _fail("string_type", "must be a string")
    if spec.max_length is not None and len(value) > spec.max_length:
        raise _fail("too_long", f"must be at most {spec.max_length} characters")
    pattern = _FORBIDDEN_CHARS if multiline else _FORBIDDEN_IN_LINE
    if pattern.search(value):
        raise _fail("bad_characters", "contains control characters or invalid unicode")
    return value


def _matching(pattern: re.Pattern[str], what: str) -> Callable[[object, FieldSpec], object]:
    def check(value: object, spec: FieldSpec) -> str:
        text = _text(value, spec, multiline=False)
        if pattern.fullmatch(text) is None:
            raise _fail("format", f"must be {what}")
        return text

    return check


def _phone(value: object, spec: FieldSpec) -> str:
    """E.164 text that is also a possible number of its country (libphonenumber), so
    every stored phone can be normalised for its blind index."""
    text = _matching(_PHONE_RE, "a phone number in E.164 form, e.g. +4930123456")(value, spec)
    assert isinstance(text, str)
    try:
        possible = phonenumbers.is_possible_number(phonenumbers.parse(text, None))
    except phonenumbers.NumberParseException:
        possible = False
    if not possible:
        raise _fail("format", "must be a possible phone number of its country code")
    return text


def _integer(value: object, spec: FieldSpec) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _fail("int_type", "must be an integer")
    _check_range(value, spec)
    return value


def _decimal(value: object, spec: FieldSpec) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, int | Decimal | str):
        raise _fail("decimal_type", "must be a number or a decimal string")
    try:
        number = Decimal(value) if not isinstance(value, str) else Decimal(value.strip())
    except InvalidOperation:
        raise _fail("decimal_type", "must be a number or a decimal string") from None
    if not number.is_finite():
        raise _fail("decimal_type", "must be a finite number")
    # The range first: quantize() raises InvalidOperation on numbers with more
    # digits than the decimal context holds, and those are out of range anyway.
    _check_range(number, spec)
    scale = spec.scale or 0
    exponent = number.as_tuple().exponent
    try:
        quantized = number.quantize(Decimal(1).scaleb(-scale))
    except InvalidOperation:
        raise _fail("decimal_digits", "must have fewer digits") from None
    if isinstance(exponent, int) and -exponent > scale and number != quantized:
        raise _fail("decimal_places", f"must have at most {scale} decimal places")
    return quantized


def _check_range(number: int | Decimal, spec: FieldSpec) -> None:
    if spec.minimum is not None and number < spec.minimum:
        raise _fail("too_small", f"must be at least {spec.minimum}")
    if spec.maximum is not None and number > spec.maximum:
        raise _fail("too_large", f"must be at most {spec.maximum}")


def _boolean(value: object, spec: FieldSpec) -> bool:
    if not isinstance(value, bool):
        raise _fail("bool_type", "must be true or false")
    return value


def _date(value: object, spec: FieldSpec) -> date:
    if not isinstance(value, str) or _DATE_RE.fullmatch(value) is None:
        raise _fail("date_type", "must be a date as YYYY-MM-DD")
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise _fail("date_type", "must be a valid calendar date") from None


def _datetime(value: object, spec: FieldSpec) -> datetime:
    if not isinstance(value, str) or len(value) > 40 or not _DATE_RE.match(value):
        raise _fail("datetime_type", "must be an RFC 3339 date-time with a time zone")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise _fail("datetime_type", "must be an RFC 3339 date-time with a time zone") from None
    if parsed.tzinfo is None:
        raise _fail("datetime_type", "must include a time zone offset, e.g. Z")
    try:
        return parsed.astimezone(UTC)
    except OverflowError:
        raise _fail("datetime_range", "must lie between years 1 and 9999 in UTC") from None


def _enum(value: object, spec: FieldSpec) -> str:
    if not isinstance(value, str) or value not in spec.choices:
        raise _fail("enum", f"must be one of: {', '.join(spec.choices)}")
    return value


def _ref(value: object, spec: FieldSpec) -> str:
    if not isinstance(value, str):
        raise _fail("string_type", "must be a record id string")
    try:
        parsed = RecordId.parse(value)
    except InvalidId as exc:
        raise _fail("record_id", f"must be a record id: {exc}") from None
    target = ENTITIES[spec.ref or ""]
    if parsed.prefix != target.prefix:
        raise _fail("record_id", f"must be the id of a {target.singular} ({target.prefix}_…)")
    return value


def _custom(value: object, spec: FieldSpec) -> dict[str, object]:
    if not isinstance(value, dict):
        raise _fail("object_type", "must be an object")
    if len(value) > CUSTOM_MAX_KEYS:
        raise _fail("too_many_keys", f"must have at most {CUSTOM_MAX_KEYS} keys")
    clean: dict[str, object] = {}
    for key, item in value.items():
        if _CUSTOM_KEY_RE.fullmatch(key) is None:
            raise _fail("custom_key", "keys must match [a-z][a-z0-9_]{0,62}")
        clean[key] = _custom_value(item)
    if len(json.dumps(clean, ensure_ascii=False).encode()) > CUSTOM_MAX_BYTES:
        raise _fail("too_large", f"must be at most {CUSTOM_MAX_BYTES} bytes as JSON")
    return clean


def _custom_value(item: object) -> object:
    if item is None or isinstance(item, bool):
        return item
    if isinstance(item, int):
        if abs(item) >= _JSON_SAFE_INT:
            raise _fail("custom_value", "integers must lie within ±2^53")
        return item
    if isinstance(item, Decimal):
        if not item.is_finite() or abs(item) >= _JSON_SAFE_INT:
            raise _fail("custom_value", "numbers must be finite and within ±2^53")
        return float(item)
    if isinstance(item, str):
        if len(item) > CUSTOM_MAX_STRING or _FORBIDDEN_CHARS.search(item):
            raise _fail(
                "custom_value",
                f"strings must be at most {CUSTOM_MAX_STRING} characters of printable text",
            )
        return item
    raise _fail("custom_value", "values must be strings, numbers, booleans or null")


_VALIDATORS: Mapping[str, Callable[[object, FieldSpec], object]] = {
    "string": lambda v, s: _text(v, s, multiline=False),
    "text": lambda v, s: _text(v, s, multiline=True),
    "email": _matching(_EMAIL_RE, "an email address"),
    "phone": lambda v, s: _phone(v, s),
    "url": _matching(_URL_RE, "an http(s) URL"),
    "country": _matching(_COUNTRY_RE, "an ISO 3166-1 alpha-2 country code, e.g. DE"),
    "currency": _matching(_CURRENCY_RE, "an ISO 4217 currency code, e.g. EUR"),
    "principal": _matching(_PRINCIPAL_RE, "a principal id (prn_…)"),
    "team": _matching(_TEAM_RE, "a team id: lower-case letters, digits and dashes"),
    "integer": _integer,
    "decimal": _decimal,
    "boolean": _boolean,
    "date": _date,
    "datetime": _datetime,
    "enum": _enum,
    "ref": _ref,
    "json": _custom,
}


def json_schema(spec: FieldSpec) -> dict[str, Any]:
    """The JSON Schema (2020-12, as in OpenAPI 3.1) of one field's value."""
    schema: dict[str, Any]
    match spec.type:
        case "integer":
            schema = {"type": "integer"}
        case "decimal":
            schema = {
                "type": ["string", "number"],
                "format": "decimal",
                "x-decimal-places": spec.scale,
                "pattern": _decimal_pattern(spec),
            }
            schema.update(_decimal_range(spec))
        case "boolean":
            schema = {"type": "boolean"}
        case "date":
            schema = {"type": "string", "format": "date"}
        case "datetime":
            schema = {"type": "string", "format": "date-time"}
        case "enum":
            schema = {"type": "string", "enum": list(spec.choices)}
        case "json":
            schema = {
                "type": "object",
                "maxProperties": CUSTOM_MAX_KEYS,
                "propertyNames": {"pattern": _CUSTOM_KEY_RE.pattern},
                "additionalProperties": {
                    "type": ["string", "number", "boolean", "null"],
                    "maxLength": CUSTOM_MAX_STRING,
                    "pattern": _TEXT_PATTERN,
                    "exclusiveMinimum": -_JSON_SAFE_INT,
                    "exclusiveMaximum": _JSON_SAFE_INT,
                },
            }
        case "ref":
            schema = {"type": "string", "maxLength": ID_MAX_LENGTH, "pattern": _ref_pattern(spec)}
        case "string":
            schema = {"type": "string", "pattern": _LINE_PATTERN}
        case _:
            schema = {"type": "string"}
            pattern = _PATTERNS.get(spec.type)
            if pattern is not None:
                schema["pattern"] = f"^{pattern}$"
            if spec.type == "email":
                schema["format"] = "email"
            if spec.type == "url":
                schema["format"] = "uri"
    if spec.max_length is not None and schema.get("type") == "string":
        schema["maxLength"] = spec.max_length
    if spec.type == "integer":
        if spec.minimum is not None:
            schema["minimum"] = int(spec.minimum)
        if spec.maximum is not None:
            schema["maximum"] = int(spec.maximum)
    schema["description"] = spec.description
    schema["x-classification"] = spec.classification
    schema["x-data-category"] = spec.category
    if spec.encrypted:
        schema["x-encrypted"] = True
    if spec.searchable:
        schema["x-searchable"] = True
    return schema


# What `_FORBIDDEN_IN_LINE` and `_FORBIDDEN_CHARS` refuse, as JSON Schema patterns
# (lone surrogates cannot occur in JSON text that is valid UTF-8). Long text fields
# (up to 100,000 characters) do not carry theirs: generating from such a pattern
# takes a schema-driven client or fuzzer hundreds of megabytes.
_LINE_PATTERN = "^[^\\u0000-\\u001f\\u007f]*$"
_TEXT_PATTERN = "^[^\\u0000-\\u0008\\u000b\\u000c\\u000e-\\u001f\\u007f]*$"


def _decimal_pattern(spec: FieldSpec) -> str:
    """The plain decimal strings within the field's range and scale (the validator also
    takes an exponent or surrounding spaces; this is what a client should send)."""
    digits = "+" if spec.maximum is None else f"{{1,{len(str(abs(int(Decimal(spec.maximum)))))}}}"
    sign = "" if spec.minimum is not None and spec.minimum >= 0 else "-?"
    fraction = f"(\\.[0-9]{{1,{spec.scale}}})?" if spec.scale else ""
    return f"^{sign}[0-9]{digits}{fraction}$"


def _decimal_range(spec: FieldSpec) -> dict[str, int | float]:
    """The field's range as exact JSON numbers (a bound a float cannot hold exactly,
    such as 999999999999999.99, becomes the exclusive bound one step beyond it)."""
    step = Decimal(1).scaleb(-(spec.scale or 0))
    bounds: dict[str, int | float] = {}
    for key, exclusive, bound, beyond in (
        ("minimum", "exclusiveMinimum", spec.minimum, -step),
        ("maximum", "exclusiveMaximum", spec.maximum, step),
    ):
        if bound is None:
            continue
        bound = Decimal(bound)
        if bound == bound.to_integral_value():
            bounds[key] = int(bound)
        elif Decimal(float(bound)) == bound:
            bounds[key] = float(bound)
        elif (bound + beyond) == (bound + beyond).to_integral_value():
            bounds[exclusive] = int(bound + beyond)
    return bounds


_PATTERNS = {
    "phone": _PHONE_RE.pattern,
    "country": _COUNTRY_RE.pattern,
    "currency": _CURRENCY_RE.pattern,
    "principal": _PRINCIPAL_RE.pattern,
    "team": _TEAM_RE.pattern,
}


def _ref_pattern(spec: FieldSpec) -> str:
    return f"^{ENTITIES[spec.ref or ''].prefix}_[a-z][a-z0-9]{{1,15}}_[0-9a-hjkmnp-tv-z]{{26}}$"


def _field_type(spec: FieldSpec, *, nullable: bool) -> Any:
    check = _VALIDATORS[spec.type]

    def validate(value: object) -> object:
        if value is None:
            if not nullable:
                raise _fail("null", "must not be null")
            return None
        return check(value, spec)

    schema = json_schema(spec)
    if nullable:
        schema = {"anyOf": [schema, {"type": "null"}]}
    return Annotated[Any, PlainValidator(validate), WithJsonSchema(schema)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


@cache
def create_model(spec: EntitySpec) -> type[BaseModel]:
    """The model of a create body: required fields must be present and not null."""
    fields: dict[str, Any] = {}
    for f in spec.writable_fields():
        if f.required:
            fields[f.name] = (_field_type(f, nullable=False), ...)
        else:
            fields[f.name] = (_field_type(f, nullable=True), Field(default=None))
    return _pydantic_model(f"{spec.singular.title()}Create", __base__=_Strict, **fields)


@cache
def patch_model(spec: EntitySpec) -> type[BaseModel]:
    """The model of a PATCH body: every field optional; null clears optional fields."""
    fields: dict[str, Any] = {
        f.name: (_field_type(f, nullable=not f.required), Field(default=None))
        for f in spec.writable_fields()
    }
    return _pydantic_model(f"{spec.singular.title()}Patch", __base__=_Strict, **fields)


def validate_create(spec: EntitySpec, body: Mapping[str, object]) -> dict[str, object]:
    """Validated create values (all writable fields; absent optional ones are None)."""
    model = _validate(create_model(spec), spec, body)
    values = model.model_dump()
    check_required_links(spec, values)
    return values


def validate_patch(spec: EntitySpec, body: Mapping[str, object]) -> dict[str, object]:
    """Validated patch values: only the fields present in `body`."""
    model = _validate(patch_model(spec), spec, body)
    return model.model_dump(include=model.model_fields_set)


def check_required_links(spec: EntitySpec, values: Mapping[str, object]) -> None:
    if spec.require_one_of and all(values.get(name) is None for name in spec.require_one_of):
        raise ValidationFailed(
            f"a {spec.singular} needs at least one of: {', '.join(spec.require_one_of)}",
            [FieldError(name, "at least one of these must be set") for name in spec.require_one_of],
        )


def _validate(model: type[BaseModel], spec: EntitySpec, body: Mapping[str, object]) -> BaseModel:
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        errors = [_field_error(spec, err) for err in exc.errors(include_input=False)]
        raise ValidationFailed(
            f"the {spec.singular} is invalid: {len(errors)} field error(s)", errors
        ) from None


def _field_error(spec: EntitySpec, err: Mapping[str, Any]) -> FieldError:
    loc = err.get("loc", ())
    name = ".".join(str(part) for part in loc) or "(body)"
    if err.get("type") == "extra_forbidden":
        field = spec.field(name)
        if name in SYSTEM_FIELDS or (field is not None and field.read_only):
            return FieldError(name, "is read-only")
        return FieldError(name, f"is not a field of {spec.singular}")
    if err.get("type") == "missing":
        return FieldError(name, "is required")
    return FieldError(name, str(err.get("msg", "is invalid")))


def check_custom(spec: EntitySpec, merged: object) -> object:
    """The `custom` object after a merge patch, checked again as a whole: the key
    and size limits hold for the result, not only for each patch."""
    if merged is None:
        return None
    field = spec.field("custom")
    assert field is not None
    try:
        return _custom(merged, field)
    except PydanticCustomError as exc:
        raise ValidationFailed(
            "the custom fields are invalid after this change", [FieldError("custom", exc.message())]
        ) from None


def check_filter_value(spec: FieldSpec, raw: str) -> object:
    """Parse a query-string filter value to the field's type (raises ValidationFailed)."""
    value: object = raw
    if spec.type == "integer":
        value = int(raw) if re.fullmatch(r"-?[0-9]{1,18}", raw) else raw
    elif spec.type == "boolean":
        value = {"true": True, "false": False}.get(raw, raw)
    elif spec.type == "decimal":
        value = raw
    try:
        return _VALIDATORS[spec.type](value, spec)
    except PydanticCustomError as exc:
        raise ValidationFailed(
            f"invalid filter on {spec.name}", [FieldError(spec.name, exc.message())]
        ) from None
