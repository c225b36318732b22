"""Request validation derived from the catalog, and the JSON Schemas beside it."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bastion.crm.catalog import ENTITIES, SYSTEM_FIELDS, EntitySpec, FieldSpec
from bastion.crm.schemas import (
    CUSTOM_MAX_BYTES,
    CUSTOM_MAX_KEYS,
    CUSTOM_MAX_STRING,
    check_filter_value,
    create_model,
    json_schema,
    patch_model,
    validate_create,
    validate_patch,
)
from bastion.errors import FieldError, ValidationFailed
from bastion.residency.ids import RecordId

fast = settings(database=None, deadline=None, max_examples=150)

NOW = datetime(2026, 11, 24, 9, 0, tzinfo=UTC)
CANARY = "Canary7q"
ACCOUNTS = ENTITIES["accounts"]
CONTACTS = ENTITIES["contacts"]
LEADS = ENTITIES["leads"]
OPPORTUNITIES = ENTITIES["opportunities"]
ACTIVITIES = ENTITIES["activities"]
CASES = ENTITIES["cases"]


def rid(entity: str, region: str = "eu") -> str:
    return str(RecordId.new(ENTITIES[entity].prefix, region, NOW))


MINIMAL: Mapping[str, dict[str, object]] = {
    "accounts": {"name": "Acme GmbH"},
    "contacts": {"last_name": "Doe"},
    "leads": {"last_name": "Doe", "company": "Acme"},
    "opportunities": {"name": "Big deal", "account_id": rid("accounts"), "stage": "proposal"},
    "activities": {"type": "call", "subject": "Intro call", "contact_id": rid("contacts")},
    "cases": {"subject": "Login broken"},
}
PRINCIPAL = "prn_" + "0123456789abcdefghjkmnpqrs"


def errors_of(
    spec: EntitySpec, body: Mapping[str, object], validate: Callable[..., Any] = validate_create
) -> list[FieldError]:
    with pytest.raises(ValidationFailed) as caught:
        validate(spec, body)
    failure = caught.value
    assert failure.status == 422
    assert failure.errors
    assert all(isinstance(e, FieldError) for e in failure.errors)
    return list(failure.errors)


def error_for(spec: EntitySpec, name: str, value: object) -> str:
    """The one message for one bad field in an otherwise valid create body."""
    errors = errors_of(spec, {**MINIMAL[spec.name], name: value})
    assert [e.field for e in errors] == [name]
    return errors[0].message


def accepted(spec: EntitySpec, name: str, value: object) -> object:
    return validate_create(spec, {**MINIMAL[spec.name], name: value})[name]


def _fields(*types: str) -> list[tuple[EntitySpec, FieldSpec]]:
    return [
        (spec, f)
        for spec in ENTITIES.values()
        for f in spec.writable_fields()
        if not types or f.type in types
    ]


def _ids(cases: list[tuple[EntitySpec, FieldSpec]]) -> list[str]:
    return [f"{spec.name}.{f.name}" for spec, f in cases]


# --- required, unknown and read-only fields ------------------------------------------


@pytest.mark.parametrize("entity", list(ENTITIES))
def test_minimal_bodies_validate(entity: str) -> None:
    spec = ENTITIES[entity]
    values = validate_create(spec, MINIMAL[entity])
    assert set(values) == {f.name for f in spec.writable_fields()}
    for name, value in values.items():
        assert value == MINIMAL[entity].get(name)


@pytest.mark.parametrize("entity", list(ENTITIES))
def test_required_fields_must_be_present_and_not_null(entity: str) -> None:
    spec = ENTITIES[entity]
    required = [f.name for f in spec.fields if f.required]
    assert required
    errors = errors_of(spec, {})
    assert {e.field: e.message for e in errors if e.field in required} == dict.fromkeys(
        required, "is required"
    )
    for name in required:
        body = {**MINIMAL[entity], name: None}
        assert errors_of(spec, body) == [FieldError(name, "must not be null")]
        assert errors_of(spec, {name: None}, validate_patch) == [
            FieldError(name, "must not be null")
        ]


@pytest.mark.parametrize("entity", list(ENTITIES))
def test_unknown_fields_are_rejected(entity: str) -> None:
    spec = ENTITIES[entity]
    for validate in (validate_create, validate_patch):
        errors = errors_of(spec, {**MINIMAL[entity], "nickname": "x"}, validate)
        assert errors == [FieldError("nickname", f"is not a field of {spec.singular}")]


@pytest.mark.parametrize("entity", list(ENTITIES))
@pytest.mark.parametrize("name", SYSTEM_FIELDS)
def test_system_fields_are_read_only(entity: str, name: str) -> None:
    spec = ENTITIES[entity]
    for validate in (validate_create, validate_patch):
        errors = errors_of(spec, {**MINIMAL[entity], name: "x"}, validate)
        assert errors == [FieldError(name, "is read-only")]


READ_ONLY = [(spec, f) for spec in ENTITIES.values() for f in spec.fields if f.read_only]


@pytest.mark.parametrize(("spec", "field"), READ_ONLY, ids=_ids(READ_ONLY))
def test_read_only_catalog_fields_are_rejected(spec: EntitySpec, field: FieldSpec) -> None:
    value = "2026-11-24T09:00:00Z" if field.type == "datetime" else rid(field.ref or "accounts")
    for validate in (validate_create, validate_patch):
        errors = errors_of(spec, {**MINIMAL[spec.name], field.name: value}, validate)
        assert errors == [FieldError(field.name, "is read-only")]


def test_lead_conversion_fields_are_read_only() -> None:
    assert {f.name for spec, f in READ_ONLY if spec is LEADS} == {
        "converted_at",
        "converted_contact_id",
        "converted_account_id",
        "converted_opportunity_id",
    }
    assert errors_of(LEADS, {"converted_at": "2026-11-24T09:00:00Z"}, validate_patch) == [
        FieldError("converted_at", "is read-only")
    ]


@pytest.mark.parametrize("body", [[], "x", 1, None, [("name", "x")]])
def test_the_body_must_be_an_object(body: Any) -> None:
    errors = errors_of(ACCOUNTS, body)
    assert [e.field for e in errors] == ["(body)"]


def test_several_errors_are_all_reported() -> None:
    errors = errors_of(ACCOUNTS, {"website": "ftp://x", "employee_count": -1, "bogus": 1})
    assert {e.field for e in errors} == {"name", "website", "employee_count", "bogus"}
    with pytest.raises(ValidationFailed) as caught:
        validate_create(ACCOUNTS, {"website": "ftp://x", "employee_count": -1, "bogus": 1})
    assert caught.value.detail == "the account is invalid: 4 field error(s)"


# --- patch ---------------------------------------------------------------------------


def test_patch_returns_only_the_fields_sent() -> None:
    assert validate_patch(ACCOUNTS, {}) == {}
    assert validate_patch(ACCOUNTS, {"industry": "Retail"}) == {"industry": "Retail"}
    assert validate_patch(ACCOUNTS, {"website": None}) == {"website": None}
    assert validate_patch(ACCOUNTS, {"annual_revenue": "5"}) == {"annual_revenue": Decimal("5.00")}


def test_patch_validates_like_create() -> None:
    assert errors_of(ACCOUNTS, {"employee_count": "many"}, validate_patch) == [
        FieldError("employee_count", "must be an integer")
    ]


def test_activities_need_something_to_be_about() -> None:
    body = {"type": "call", "subject": "Intro call"}
    errors = errors_of(ACTIVITIES, body)
    assert [e.field for e in errors] == list(ACTIVITIES.require_one_of)
    for name in ACTIVITIES.require_one_of:
        target = ACTIVITIES.field(name)
        assert target is not None
        assert target.ref is not None
        values = validate_create(ACTIVITIES, {**body, name: rid(target.ref)})
        assert values[name] is not None
    # A patch may leave the links alone.
    assert validate_patch(ACTIVITIES, {"subject": "x"}) == {"subject": "x"}


# --- strings, lengths and characters -------------------------------------------------

TEXTUAL = _fields("string", "text")


@pytest.mark.parametrize(("spec", "field"), TEXTUAL, ids=_ids(TEXTUAL))
def test_max_length(spec: EntitySpec, field: FieldSpec) -> None:
    assert field.max_length is not None
    longest = "\u00e9" * field.max_length  # characters, not bytes
    assert accepted(spec, field.name, longest) == longest
    message = error_for(spec, field.name, "x" * (field.max_length + 1))
    assert message == f"must be at most {field.max_length} characters"


@pytest.mark.parametrize(("spec", "field"), TEXTUAL, ids=_ids(TEXTUAL))
@pytest.mark.parametrize("value", [1, 1.5, Decimal(1), True, ["x"], {"x": 1}], ids=repr)
def test_strings_must_be_strings(spec: EntitySpec, field: FieldSpec, value: object) -> None:
    assert error_for(spec, field.name, value) == "must be a string"


@pytest.mark.parametrize(
    "char", ["\x00", "\x07", "\x1b", "\x7f", "\n", "\r", "\t", "\ud800"], ids=repr
)
def test_single_line_strings_reject_control_characters(char: str) -> None:
    message = error_for(ACCOUNTS, "name", f"Acme{char}GmbH")
    assert message == "contains control characters or invalid unicode"


@pytest.mark.parametrize("char", ["\n", "\r", "\t"], ids=repr)
def test_text_allows_line_breaks_and_tabs(char: str) -> None:
    assert accepted(ACCOUNTS, "description", f"one{char}two") == f"one{char}two"


@pytest.mark.parametrize(
    "char", ["\x00", "\x08", "\x0b", "\x0c", "\x1f", "\x7f", "\udc80"], ids=repr
)
def test_text_rejects_other_control_characters(char: str) -> None:
    message = error_for(ACCOUNTS, "description", f"one{char}two")
    assert message == "contains control characters or invalid unicode"


def test_unicode_text_is_kept() -> None:
    assert accepted(ACCOUNTS, "name", "M\u00fcller & S\u00f6hne \u4e2d\U0001f600") == (
        "M\u00fcller & S\u00f6hne \u4e2d\U0001f600"
    )


# --- formats -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "name", "good", "bad"),
    [
        (
            CONTACTS,
            "email",
            ["a@b.co", "first.last+tag@mail.example.com", "\u00fc@b\u00fc.de"],
            ["", "ab.co", "a@b", "@b.co", "a@@b.co", "a@b..co", "a b@c.de", "a@b.co ", "a@.co"],
        ),
        (
            CONTACTS,
            "phone",
            ["+4930123456", "+14155552671", "+447911123456", "+351212345678"],
            [
                "+1234567",  # E.164-shaped, but too short for country code 1
                "+999123456789",  # no such country code
                "4930123456",
                "+0301234567",
                "+49 30 123456",
                "+49-30-123456",
                "+123456",
                "+\u0664\u0669301234567",
                "+4930123456\n",
            ],
        ),
        (
            ACCOUNTS,
            "website",
            ["https://example.com", "http://x", "https://example.com/a?b=c#d"],
            ["example.com", "ftp://example.com", "https://", "https:// x", "HTTPS://X.COM"],
        ),
        (ACCOUNTS, "billing_country", ["DE", "US"], ["de", "D", "D1", "\u00c4\u00d6"]),
        (ACCOUNTS, "currency", ["EUR", "USD"], ["eur", "EU", "E1R", "\u20ac\u20ac\u20ac"]),
        (ACCOUNTS, "owner_id", [PRINCIPAL], ["prn_", "usr_" + PRINCIPAL[4:], PRINCIPAL.upper()]),
        (ACCOUNTS, "team_id", ["sales", "sales-emea-2", "7"], ["Sales", "-sales", "sales_emea"]),
    ],
)
def test_formats(spec: EntitySpec, name: str, good: list[str], bad: list[str]) -> None:
    for value in good:
        assert accepted(spec, name, value) == value
    for value in bad:
        message = error_for(spec, name, value)
        assert message.startswith("must be") or message.startswith("contains"), value


def test_format_fields_have_length_limits_too() -> None:
    assert error_for(ACCOUNTS, "billing_country", "DEU") == "must be at most 2 characters"
    assert error_for(ACCOUNTS, "currency", "EURO") == "must be at most 3 characters"
    assert error_for(CONTACTS, "phone", "+1234567890123456") == "must be at most 16 characters"
    assert error_for(CONTACTS, "email", "a" * 64 + "@" + "b" * 190 + ".de").startswith("must be")
    assert error_for(ACCOUNTS, "website", "https://x/" + "a" * 2040).startswith("must be at most")


# --- numbers -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("1234.5", Decimal("1234.50")),
        ("1234.50", Decimal("1234.50")),
        ("1234.500", Decimal("1234.50")),
        (" 12 ", Decimal("12.00")),
        ("0", Decimal("0.00")),
        ("1e2", Decimal("100.00")),
        (12, Decimal("12.00")),
        (Decimal("12.34"), Decimal("12.34")),
        (Decimal("12.340"), Decimal("12.34")),
        (Decimal("1E+2"), Decimal("100.00")),
        ("999999999999999.99", Decimal("999999999999999.99")),
    ],
)
def test_decimals_are_accepted_and_quantized(value: object, expected: Decimal) -> None:
    result = accepted(ACCOUNTS, "annual_revenue", value)
    assert result == expected
    assert isinstance(result, Decimal)
    assert result.as_tuple().exponent == -2


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("12.345", "must have at most 2 decimal places"),
        (Decimal("12.345"), "must have at most 2 decimal places"),
        (Decimal("0.001"), "must have at most 2 decimal places"),
        ("1e-3", "must have at most 2 decimal places"),
        ("-1", "must be at least 0"),
        (-1, "must be at least 0"),
        ("1000000000000000", "must be at most 999999999999999.99"),
        (Decimal("1E+20"), "must be at most 999999999999999.99"),
        ("NaN", "must be a finite number"),
        ("Infinity", "must be a finite number"),
        (Decimal("-Infinity"), "must be a finite number"),
        ("twelve", "must be a number or a decimal string"),
        ("", "must be a number or a decimal string"),
        ("12,50", "must be a number or a decimal string"),
        (1.5, "must be a number or a decimal string"),
        (True, "must be a number or a decimal string"),
        ([1], "must be a number or a decimal string"),
    ],
    ids=repr,
)
def test_invalid_decimals(value: object, message: str) -> None:
    assert error_for(ACCOUNTS, "annual_revenue", value) == message


@pytest.mark.parametrize(
    "value",
    [
        "1234567890123456789012345678.001",
        Decimal("1234567890123456789012345678.001"),  # a JSON number, parsed as Decimal
    ],
    ids=repr,
)
def test_decimals_with_more_digits_than_the_context_fail_validation(value: object) -> None:
    # Too large and too precise at once: must be a 422, not an uncaught
    # decimal.InvalidOperation from quantize().
    message = error_for(ACCOUNTS, "annual_revenue", value)
    assert message.startswith("must")


@fast
@given(
    st.decimals(
        allow_nan=False,
        allow_infinity=False,
        places=2,
        min_value=0,
        max_value=Decimal("999999999999999.99"),
    )
)
def test_any_two_place_decimal_in_range_round_trips(value: Decimal) -> None:
    assert accepted(OPPORTUNITIES, "amount", value) == value
    assert accepted(OPPORTUNITIES, "amount", str(value)) == value


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (0, None),
        (100, None),
        (-1, "must be at least 0"),
        (101, "must be at most 100"),
        ("50", "must be an integer"),
        (Decimal("50"), "must be an integer"),
        (Decimal("50.5"), "must be an integer"),
        (50.0, "must be an integer"),
        (True, "must be an integer"),
        (False, "must be an integer"),
    ],
    ids=repr,
)
def test_integers(value: object, message: str | None) -> None:
    if message is None:
        assert accepted(LEADS, "score", value) == value
    else:
        assert error_for(LEADS, "score", value) == message


@pytest.mark.parametrize(
    ("value", "message"),
    [(True, None), (False, None), ("true", "must be true or false"), (1, "must be true or false")],
    ids=repr,
)
def test_booleans(value: object, message: str | None) -> None:
    if message is None:
        assert accepted(CONTACTS, "do_not_contact", value) is value
    else:
        assert error_for(CONTACTS, "do_not_contact", value) == message


# --- dates and times -----------------------------------------------------------------


def test_dates() -> None:
    assert accepted(CONTACTS, "birthdate", "2024-02-29") == date(2024, 2, 29)
    assert error_for(CONTACTS, "birthdate", "2023-02-29") == "must be a valid calendar date"
    for bad in (
        "2024-1-01",
        "20240101",
        "2024-01-01T00:00:00Z",
        "01.02.2024",
        "\uff12\uff10\uff12\uff14-01-01",
        "2024-01-01\n",
        20240101,
    ):
        assert error_for(CONTACTS, "birthdate", bad) == "must be a date as YYYY-MM-DD", bad


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2026-11-24T09:00:00Z", datetime(2026, 11, 24, 9, 0, tzinfo=UTC)),
        ("2026-11-24T09:00:00+00:00", datetime(2026, 11, 24, 9, 0, tzinfo=UTC)),
        ("2026-11-24T11:00:00+02:00", datetime(2026, 11, 24, 9, 0, tzinfo=UTC)),
        ("2026-11-24T04:30:00.250-04:30", datetime(2026, 11, 24, 9, 0, 0, 250000, tzinfo=UTC)),
    ],
)
def test_datetimes_are_normalised_to_utc(value: str, expected: datetime) -> None:
    result = accepted(CASES, "closed_at", value)
    assert result == expected
    assert isinstance(result, datetime)
    assert result.tzinfo is UTC


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("2026-11-24T09:00:00", "must include a time zone offset, e.g. Z"),
        ("2026-11-24", "must include a time zone offset, e.g. Z"),
        ("2026-11-24T25:00:00Z", "must be an RFC 3339 date-time with a time zone"),
        ("2026-13-24T09:00:00Z", "must be an RFC 3339 date-time with a time zone"),
        ("24.11.2026 09:00", "must be an RFC 3339 date-time with a time zone"),
        ("2026-11-24T09:00:00Z" + " " * 30, "must be an RFC 3339 date-time with a time zone"),
        (1764000000, "must be an RFC 3339 date-time with a time zone"),
    ],
    ids=repr,
)
def test_invalid_datetimes(value: object, message: str) -> None:
    assert error_for(CASES, "closed_at", value) == message


@pytest.mark.parametrize(
    "value", ["9999-12-31T23:59:59-01:00", "0001-01-01T00:00:00+01:00"], ids=repr
)
def test_datetimes_that_leave_the_calendar_in_utc_fail_validation(value: str) -> None:
    # Valid RFC 3339, but converting to UTC overflows datetime's range: must be a
    # 422, not an uncaught OverflowError from astimezone().
    message = error_for(CASES, "closed_at", value)
    assert message.startswith("must")


# --- enums and references ------------------------------------------------------------


def test_enums() -> None:
    spec = LEADS.field("source")
    assert spec is not None
    for choice in spec.choices:
        assert accepted(LEADS, "source", choice) == choice
    expected = f"must be one of: {', '.join(spec.choices)}"
    for bad in ("Web", "web ", "", "other\x00", 1, ["web"]):
        assert error_for(LEADS, "source", bad) == expected


REFS = _fields("ref")


@pytest.mark.parametrize(("spec", "field"), REFS, ids=_ids(REFS))
def test_refs_must_carry_the_target_prefix(spec: EntitySpec, field: FieldSpec) -> None:
    assert field.ref is not None
    target = ENTITIES[field.ref]
    good = rid(field.ref, "us")
    assert accepted(spec, field.name, good) == good
    for other in ENTITIES.values():
        if other is target:
            continue
        message = error_for(spec, field.name, rid(other.name))
        assert message == f"must be the id of a {target.singular} ({target.prefix}_…)"


@pytest.mark.parametrize(
    "value",
    [
        "",
        "acc_eu_",
        "ACC_EU_01M86DZPZYEHMVCB1S3M40N3BK",
        "acc_eu_01m86dzpzyehmvcb1s3m40n3bk\n",
        "acc_eu_01m86dzpzyehmvcb1s3m40n3bkk",
        "acc_eu_01m86dzpzyehmvcb1s3m40n3bi",
        "acc_" + "e" * 40 + "_01m86dzpzyehmvcb1s3m40n3bk",
    ],
    ids=repr,
)
def test_refs_must_be_record_ids(value: str) -> None:
    assert error_for(CONTACTS, "account_id", value).startswith("must be a record id")


def test_refs_must_be_strings() -> None:
    assert error_for(CONTACTS, "account_id", 42) == "must be a record id string"


# --- custom JSON ---------------------------------------------------------------------


def test_custom_values() -> None:
    value = {"a": Decimal("1.5"), "b": None, "c": True, "d": "x\ny", "e": 7, "f": -(2**53) + 1}
    assert accepted(ACCOUNTS, "custom", value) == {
        "a": 1.5,
        "b": None,
        "c": True,
        "d": "x\ny",
        "e": 7,
        "f": -(2**53) + 1,
    }
    many = {f"k{i}": i for i in range(CUSTOM_MAX_KEYS)}
    assert accepted(ACCOUNTS, "custom", many) == many
    assert accepted(ACCOUNTS, "custom", {}) == {}


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({f"k{i}": i for i in range(CUSTOM_MAX_KEYS + 1)}, f"must have at most {CUSTOM_MAX_KEYS}"),
        ({"Bad": 1}, "keys must match"),
        ({"1a": 1}, "keys must match"),
        ({"a-b": 1}, "keys must match"),
        ({"a" * 64: 1}, "keys must match"),
        ({"": 1}, "keys must match"),
        ({"a": {"b": 1}}, "values must be strings, numbers, booleans or null"),
        ({"a": [1, 2]}, "values must be strings, numbers, booleans or null"),
        ({"a": 1.5}, "values must be strings, numbers, booleans or null"),
        ({"a": 2**53}, "integers must lie within"),
        ({"a": -(2**53)}, "integers must lie within"),
        ({"a": Decimal("NaN")}, "numbers must be finite"),
        ({"a": Decimal("1E+20")}, "numbers must be finite"),
        ({"a": "x" * (CUSTOM_MAX_STRING + 1)}, f"strings must be at most {CUSTOM_MAX_STRING}"),
        ({"a": "bell\x07"}, "strings must be at most"),
        ({"a": "\ud800"}, "strings must be at most"),
        (
            {f"k{i}": "\u00e9" * CUSTOM_MAX_STRING for i in range(9)},
            f"must be at most {CUSTOM_MAX_BYTES} bytes",
        ),
        ([1], "must be an object"),
        ("{}", "must be an object"),
    ],
    ids=lambda v: repr(v)[:40],
)
def test_invalid_custom_values(value: object, message: str) -> None:
    assert error_for(ACCOUNTS, "custom", value).startswith(message)


# --- error messages never echo the value ---------------------------------------------


def _bad_values() -> list[tuple[EntitySpec, str, object]]:
    c = CANARY
    cases: list[tuple[EntitySpec, str, object]] = [
        (ACCOUNTS, "name", c * 30),
        (ACCOUNTS, "name", f"{c}\x00"),
        (ACCOUNTS, "description", f"{c}\x1b[31m"),
        (ACCOUNTS, "website", f"ftp://{c}.example.com"),
        (ACCOUNTS, "billing_country", c),
        (ACCOUNTS, "currency", c),
        (ACCOUNTS, "annual_revenue", f"12.{c}"),
        (ACCOUNTS, "annual_revenue", f"1.001{c}"),
        (ACCOUNTS, "employee_count", f"12{c}"),
        (ACCOUNTS, "type", c),
        (ACCOUNTS, "owner_id", f"prn_{c}"),
        (ACCOUNTS, "team_id", c),
        (ACCOUNTS, "custom", {"a": {"b": c}}),
        (ACCOUNTS, "custom", {"a": c * 200}),
        (ACCOUNTS, "custom", {c: 1}),
        (ACCOUNTS, "custom", c),
        (CONTACTS, "email", f"{c}@nowhere"),
        (CONTACTS, "email", f"{c} {c}@example.com"),
        (CONTACTS, "phone", f"+49{c}"),
        (CONTACTS, "birthdate", f"1990-01-{c}"),
        (CONTACTS, "birthdate", "1990-02-30"),
        (CONTACTS, "do_not_contact", c),
        (CONTACTS, "account_id", f"acc_eu_{c}"),
        (CONTACTS, "account_id", f"led_{c.lower()}_" + rid("leads").split("_")[2]),
        (CONTACTS, "last_name", None),
        (LEADS, "score", c),
        (CASES, "closed_at", f"2026-11-24T{c}"),
        (CASES, "closed_at", "2026-11-24T09:00:00"),
        (OPPORTUNITIES, "stage", c),
    ]
    return cases


@pytest.mark.parametrize(
    ("spec", "name", "value"),
    _bad_values(),
    ids=[f"{s.name}.{n}-{i}" for i, (s, n, _v) in enumerate(_bad_values())],
)
def test_error_messages_never_contain_the_value(spec: EntitySpec, name: str, value: object) -> None:
    with pytest.raises(ValidationFailed) as caught:
        validate_create(spec, {**MINIMAL[spec.name], name: value})
    failure = caught.value
    assert [e.field for e in failure.errors] == [name]
    texts = [failure.detail, str(failure), *(e.message for e in failure.errors)]
    for text in texts:
        assert CANARY not in text
        assert CANARY.lower() not in text.lower()
        if isinstance(value, str) and len(value) > 3:
            assert value not in text


VALUE_FIELDS = _fields()


def _failure(
    validate: Callable[..., Any], spec: EntitySpec, body: Mapping[str, object]
) -> ValidationFailed | None:
    try:
        validate(spec, body)
    except ValidationFailed as failure:
        return failure
    return None


@fast
@given(st.sampled_from(VALUE_FIELDS), st.text(max_size=20), st.text(max_size=20))
def test_no_rejection_ever_echoes_the_value(
    case: tuple[EntitySpec, FieldSpec], before: str, after: str
) -> None:
    spec, field = case
    text = f"{before}{CANARY}{after}"
    value: object = {"k": text} if field.type == "json" else text
    for validate in (validate_create, validate_patch):
        failure = _failure(validate, spec, {**MINIMAL[spec.name], field.name: value})
        if failure is not None:
            assert CANARY not in failure.detail
            for error in failure.errors:
                assert CANARY not in error.message
                assert CANARY not in error.field


# --- filter values -------------------------------------------------------------------


def _field(spec: EntitySpec, name: str) -> FieldSpec:
    field = spec.field(name)
    assert field is not None
    return field


@pytest.mark.parametrize(
    ("spec", "name", "raw", "expected"),
    [
        (ACCOUNTS, "employee_count", "42", 42),
        (ACCOUNTS, "employee_count", "0", 0),
        (CONTACTS, "do_not_contact", "true", True),
        (CONTACTS, "do_not_contact", "false", False),
        (ACCOUNTS, "annual_revenue", "12.5", Decimal("12.50")),
        (ACCOUNTS, "currency", "EUR", "EUR"),
        (ACCOUNTS, "type", "customer", "customer"),
        (CONTACTS, "birthdate", "1990-01-31", date(1990, 1, 31)),
        (CASES, "closed_at", "2026-11-24T10:00:00+01:00", datetime(2026, 11, 24, 9, tzinfo=UTC)),
        (ACCOUNTS, "name", "Acme", "Acme"),
    ],
)
def test_filter_values_are_parsed_to_the_field_type(
    spec: EntitySpec, name: str, raw: str, expected: object
) -> None:
    assert check_filter_value(_field(spec, name), raw) == expected


_INVALID_FILTERS = [
    (ACCOUNTS, "employee_count", f"4{CANARY}"),
    (ACCOUNTS, "employee_count", "\u0664\u0662"),  # Arabic-Indic 42
    (ACCOUNTS, "employee_count", "1e3"),
    (ACCOUNTS, "employee_count", "-1"),
    (ACCOUNTS, "employee_count", "9" * 19),
    (CONTACTS, "do_not_contact", "True"),
    (CONTACTS, "do_not_contact", "1"),
    (ACCOUNTS, "annual_revenue", f"{CANARY}"),
    (ACCOUNTS, "annual_revenue", "1.005"),
    (ACCOUNTS, "currency", CANARY),
    (ACCOUNTS, "type", CANARY),
    (CONTACTS, "birthdate", f"1990-{CANARY}"),
    (CASES, "closed_at", "2026-11-24T10:00:00"),
    (CONTACTS, "account_id", rid("contacts")),
    (CONTACTS, "account_id", f"acc_eu_{CANARY}"),
    (ACCOUNTS, "name", f"{CANARY}\x00"),
]


@pytest.mark.parametrize(
    ("spec", "name", "raw"),
    _INVALID_FILTERS,
    # Not the values: a generated id would name the test differently in every process.
    ids=[f"{spec.name}-{name}-{n}" for n, (spec, name, _raw) in enumerate(_INVALID_FILTERS)],
)
def test_invalid_filter_values(spec: EntitySpec, name: str, raw: str) -> None:
    with pytest.raises(ValidationFailed) as caught:
        check_filter_value(_field(spec, name), raw)
    failure = caught.value
    assert [e.field for e in failure.errors] == [name]
    assert name in failure.detail
    for text in (failure.detail, *(e.message for e in failure.errors)):
        assert raw not in text
        assert CANARY not in text


@pytest.mark.parametrize(
    ("spec", "name", "raw"),
    [
        (ACCOUNTS, "annual_revenue", "1234567890123456789012345678.001"),
        (CASES, "closed_at", "9999-12-31T23:59:59-01:00"),
    ],
    ids=["decimal", "datetime"],
)
def test_out_of_context_filter_values_fail_validation(
    spec: EntitySpec, name: str, raw: str
) -> None:
    # Same defects as for bodies: must raise ValidationFailed (a 422), nothing else.
    with pytest.raises(ValidationFailed):
        check_filter_value(_field(spec, name), raw)


# --- JSON Schema ---------------------------------------------------------------------


@pytest.mark.parametrize("entity", list(ENTITIES))
def test_model_json_schema_lists_every_writable_field(entity: str) -> None:
    spec = ENTITIES[entity]
    writable = [f.name for f in spec.writable_fields()]
    schema = create_model(spec).model_json_schema()
    assert list(schema["properties"]) == writable
    assert sorted(schema.get("required", [])) == sorted(f.name for f in spec.fields if f.required)
    assert schema.get("additionalProperties") is False
    for f in spec.fields:
        if f.read_only:
            assert f.name not in schema["properties"]
    patch = patch_model(spec).model_json_schema()
    assert list(patch["properties"]) == writable
    assert "required" not in patch


@pytest.mark.parametrize("entity", list(ENTITIES))
def test_model_json_schema_is_the_field_schema(entity: str) -> None:
    spec = ENTITIES[entity]
    properties = create_model(spec).model_json_schema()["properties"]
    for f in spec.writable_fields():
        prop = properties[f.name]
        expected = json_schema(f)
        if f.required:
            assert {k: v for k, v in prop.items() if k != "title"} == expected
        else:
            assert prop["anyOf"] == [expected, {"type": "null"}]


ALL_FIELDS = [(spec, f) for spec in ENTITIES.values() for f in spec.fields]


@pytest.mark.parametrize(("spec", "field"), ALL_FIELDS, ids=_ids(ALL_FIELDS))
def test_field_schema_metadata(spec: EntitySpec, field: FieldSpec) -> None:
    schema = json_schema(field)
    assert schema["description"] == field.description
    assert schema["x-classification"] == field.classification
    assert schema["x-data-category"] == field.category
    assert schema.get("x-encrypted", False) is field.encrypted
    assert schema.get("x-searchable", False) is field.searchable
    if field.max_length is not None and schema["type"] == "string":
        assert schema["maxLength"] == field.max_length
    if field.type == "enum":
        assert schema["enum"] == list(field.choices)
    if field.type == "integer":
        assert schema["minimum"] == field.minimum
        assert schema["maximum"] == field.maximum


@pytest.mark.parametrize(("spec", "field"), REFS, ids=_ids(REFS))
def test_ref_schema_pattern_agrees_with_the_validator(spec: EntitySpec, field: FieldSpec) -> None:
    pattern = json_schema(field)["pattern"]
    for other in ENTITIES.values():
        value = rid(other.name, "us")
        assert (re.search(pattern, value) is not None) == (other.name == field.ref)


@pytest.mark.parametrize(
    ("spec", "name", "values"),
    [
        (ACCOUNTS, "name", ["Acme", "Acme\tGmbH", "Ac\x00me", "Acme\n", "Acme\x7f", "Äcme ✓"]),
        (ACCOUNTS, "annual_revenue", ["0", "12.5", "12.34", "12.345", "-1", "1" * 16]),
        (CONTACTS, "phone", ["+4930123456", "4930123456", "+0301234567", "+12"]),
        (ACCOUNTS, "billing_country", ["DE", "de", "D"]),
        (ACCOUNTS, "currency", ["EUR", "eur", "EU"]),
        (ACCOUNTS, "team_id", ["sales-emea", "-x", "Sales"]),
        (ACCOUNTS, "owner_id", [PRINCIPAL, "prn_x"]),
    ],
)
def test_schema_patterns_agree_with_the_validator(
    spec: EntitySpec, name: str, values: list[str]
) -> None:
    pattern = json_schema(_field(spec, name))["pattern"]
    for value in values:
        try:
            validate_create(spec, {**MINIMAL[spec.name], name: value})
            valid = True
        except ValidationFailed:
            valid = False
        # JSON Schema patterns are ECMA-262: `$` is the end of the text, never before a
        # final newline as in Python.
        assert (re.search(pattern.replace("$", r"\Z"), value) is not None) == valid, value
