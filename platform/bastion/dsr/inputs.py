"""Checking what a compliance officer sends: a new request, reasons, moments in time.

Everything here refuses bad input with a `ValidationFailed` naming each field, before
any database is touched.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from bastion.crm.catalog import ENTITIES, ENTITIES_BY_PREFIX, EntitySpec
from bastion.crm.schemas import validate_patch
from bastion.dsr.model import REGIMES, TYPES
from bastion.errors import FieldError, ValidationFailed
from bastion.residency.databases import Regions
from bastion.residency.ids import InvalidId, RecordId

# How a person may be identified, and where: identifier -> entity -> fields.
IDENTIFIERS: Mapping[str, Mapping[str, tuple[str, ...]]] = {
    "email": {"contacts": ("email",), "leads": ("email",)},
    "phone": {"contacts": ("phone", "mobile"), "leads": ("phone",)},
}
_CREATE_KEYS = frozenset({"type", "regime", "subject_id", "region", "identifier", "corrections"})
_TEXT_MAX = 500


def parse_create(
    body: Mapping[str, Any], regions: Regions
) -> tuple[str, str, str, str | None, tuple[str, str] | None]:
    """(type, regime, region, subject id, identifier) of a new request: a request names
    its subject by id, or by region and one identifier (email or phone)."""
    errors: list[FieldError] = [
        FieldError(name, "is not a field of a request") for name in sorted(set(body) - _CREATE_KEYS)
    ]
    request_type, regime = body.get("type"), body.get("regime", "gdpr")
    if request_type not in TYPES:
        errors.append(FieldError("type", f"must be one of {', '.join(TYPES)}"))
    if regime not in REGIMES:
        errors.append(FieldError("regime", f"must be one of {', '.join(REGIMES)}"))
    if request_type != "rectification" and "corrections" in body:
        errors.append(FieldError("corrections", "only a rectification has corrections"))
    subject_id, identifier = body.get("subject_id"), body.get("identifier")
    region: Any = None
    parsed_identifier = None
    if (subject_id is None) == (identifier is None):
        errors.append(FieldError("subject_id", "give subject_id, or region and identifier"))
    elif subject_id is not None:
        try:
            parsed = RecordId.parse(subject_id) if isinstance(subject_id, str) else None
        except InvalidId:
            parsed = None
        spec = ENTITIES_BY_PREFIX.get(parsed.prefix) if parsed else None
        if parsed is None or spec is None or not spec.data_subject:
            errors.append(FieldError("subject_id", "must be the id of a contact or lead"))
        else:
            region = parsed.region
            if "region" in body and body["region"] != region:
                errors.append(FieldError("region", "must be the subject's region"))
    else:
        region = body.get("region")
        if not isinstance(identifier, dict) or len(identifier) != 1:
            errors.append(FieldError("identifier", "must be one of {email: …} or {phone: …}"))
        else:
            ((kind, value),) = identifier.items()
            if kind not in IDENTIFIERS or not isinstance(value, str) or not 1 <= len(value) <= 254:
                errors.append(FieldError("identifier", "must be one of {email: …} or {phone: …}"))
            elif not _valid_identifier(kind, value):
                errors.append(FieldError(f"identifier.{kind}", f"is not a valid {kind}"))
            else:
                parsed_identifier = (kind, value)
    if region is not None and (not isinstance(region, str) or region not in regions):
        errors.append(FieldError("region", "must be a configured region"))
    elif region is None and identifier is not None:
        errors.append(FieldError("region", "is required with an identifier"))
    if errors:
        raise ValidationFailed("invalid request", errors)
    return str(request_type), str(regime), str(region), subject_id, parsed_identifier


def _valid_identifier(kind: str, value: str) -> bool:
    """Whether `value` is what the catalog accepts in the identifier's first field."""
    entity, names = next(iter(IDENTIFIERS[kind].items()))
    try:
        validate_patch(ENTITIES[entity], {names[0]: value})
    except ValidationFailed:
        return False
    return True


def correctable(spec: EntitySpec) -> frozenset[str]:
    """What a rectification may change: the person's own personal data — not links,
    ownership, consent or business fields, which are not theirs to correct here."""
    return frozenset(
        f.name
        for f in spec.writable_fields()
        if f.personal and f.category != "consent" and f.type not in ("ref", "principal", "team")
    )


def spec_of(record_id: str) -> EntitySpec:
    """The entity of an id already known to be a CRM record's."""
    return ENTITIES_BY_PREFIX[record_id.split("_", 1)[0]]


def check_text(name: str, value: Any) -> None:
    if not isinstance(value, str) or not 1 <= len(value.strip()) <= _TEXT_MAX:
        raise invalid(name, f"must be text of 1-{_TEXT_MAX} characters")


def moment(value: Any, name: str) -> datetime | None:
    """An RFC 3339 date-time with an offset, in UTC; None stays None."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise invalid(name, "must be an RFC 3339 date-time with a time zone")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise invalid(name, "must be an RFC 3339 date-time with a time zone") from None
    if parsed.tzinfo is None:
        raise invalid(name, "must include a time zone offset")
    try:
        return parsed.astimezone(UTC)
    except OverflowError:
        raise invalid(name, "must lie between years 1 and 9999 in UTC") from None


def invalid(field: str, message: str) -> ValidationFailed:
    return ValidationFailed("invalid request", [FieldError(field, message)])
