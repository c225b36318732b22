"""Lead conversion: a lead becomes a contact, an account (new or existing) and
optionally an opportunity, and is marked converted — all in one transaction.

The caller needs `update` on the lead (in scope) and `create` on every record the
conversion makes, and write permission on every field it fills in them (a field
copied from the lead counts as written by the caller): the same rules as if the
caller had made each record by hand, so conversion is no way around a field mask.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection

from bastion.analytics import stages
from bastion.crm import repository
from bastion.crm.access import Access
from bastion.crm.catalog import ENTITIES, EntitySpec
from bastion.crm.pipeline import Change, MergedRecord, not_found, stale
from bastion.crm.records import Record, parse_if_match, to_json_value
from bastion.crm.schemas import validate_create
from bastion.errors import Conflict, FieldError, ValidationFailed
from bastion.principals.caller import Caller
from bastion.residency.ids import InvalidId, RecordId

if TYPE_CHECKING:
    from bastion.crm.pipeline import Pipeline

LEADS, CONTACTS, ACCOUNTS, OPPORTUNITIES = (
    ENTITIES["leads"],
    ENTITIES["contacts"],
    ENTITIES["accounts"],
    ENTITIES["opportunities"],
)


@dataclass(frozen=True, slots=True)
class Conversion:
    lead: Record
    contact: Record
    account: Record
    opportunity: Record | None


@dataclass(frozen=True, slots=True)
class _Options:
    account_id: str | None
    opportunity: dict[str, Any] | None


def convert_lead(
    pipeline: Pipeline,
    caller: Caller,
    lead_id: str,
    body: Mapping[str, Any],
    *,
    if_match: str | None = None,
) -> Conversion:
    principal = caller.principal
    rid = pipeline.route(principal, LEADS, lead_id)
    access = pipeline.access(principal)
    with pipeline.denials(caller, access, rid.region, LEADS, "convert", (lead_id,)):
        return _convert(pipeline, caller, access, rid.region, lead_id, body, if_match)


def _convert(
    pipeline: Pipeline,
    caller: Caller,
    access: Access,
    region: str,
    lead_id: str,
    body: Mapping[str, Any],
    if_match: str | None,
) -> Conversion:
    principal = caller.principal
    options = _options(body)
    lead_scope = access.require(region, LEADS, "update")
    create_scopes = {CONTACTS.name: access.require(region, CONTACTS, "create")}
    if options.account_id is None:
        create_scopes[ACCOUNTS.name] = access.require(region, ACCOUNTS, "create")
    if options.opportunity is not None:
        create_scopes[OPPORTUNITIES.name] = access.require(region, OPPORTUNITIES, "create")
        access.require_writable(
            region,
            OPPORTUNITIES,
            _catalog_names(OPPORTUNITIES, options.opportunity),
            label="opportunity.",
        )
    expected = parse_if_match(if_match) if if_match is not None else None
    database = pipeline.database(region)
    now = pipeline.now()

    changes: list[Change] = []

    def make(
        conn: Connection, spec: EntitySpec, values: dict[str, Any], written: list[str], label: str
    ) -> str:
        access.require_writable(region, spec, written, proposed=values, label=label)
        access.require_in_scope(create_scopes[spec.name], spec, values, "create")
        record_id = str(RecordId.new(spec.prefix, region, now))
        pipeline.insert(conn, spec, record_id, region, now, values)
        stages.record_created(conn, spec.name, record_id, region, values, now)
        set_fields = tuple(sorted(name for name, value in values.items() if value is not None))
        changes.append(Change(region, spec, record_id, "created", set_fields, None, values, now))
        return record_id

    with pipeline.write(database, "a record the conversion links to no longer exists") as conn:
        try:
            stored_lead = pipeline.fetch(
                conn, database, LEADS, lead_id, access.where(LEADS, lead_scope)
            )
        except MergedRecord as merged:
            # A merged lead's survivor is named only to those who may read it.
            if not pipeline.reveals_survivor(conn, access, region, merged):
                raise not_found(LEADS) from None
            raise
        if stored_lead is None:
            raise not_found(LEADS)
        # The lead's personal data is copied server-side into the new records (and
        # sealed there under the new contact's key); the caller sees only what it may.
        lead = pipeline.codec.reveal(
            conn, LEADS, region, stored_lead, [f.name for f in LEADS.encrypted_fields]
        ).values
        if if_match is not None and expected != lead["version"]:
            raise stale(LEADS)
        if lead["status"] == "converted":
            raise Conflict("the lead is already converted")
        owner = {"owner_id": lead["owner_id"] or principal.id, "team_id": lead["team_id"]}
        if options.account_id is not None:
            pipeline.check_refs(
                conn, access, OPPORTUNITIES, region, {"account_id": options.account_id}
            )
            account_id = options.account_id
        else:
            copied = _present({"name": lead["company"], "industry": lead["industry"]})
            account = {**validate_create(ACCOUNTS, copied), **owner}
            account_id = make(conn, ACCOUNTS, account, list(copied), "account.")
        copied = _present(
            {
                "first_name": lead["first_name"],
                "last_name": lead["last_name"],
                "email": lead["email"],
                "phone": lead["phone"],
                "title": lead["title"],
                "mailing_country": lead["country"],
                "email_opt_in": lead["email_opt_in"],
                "account_id": account_id,
            }
        )
        contact = {**validate_create(CONTACTS, copied), **owner}
        contact_id = make(conn, CONTACTS, contact, list(copied), "contact.")
        opportunity_id = None
        if options.opportunity is not None:
            given = {
                "stage": "prospecting",
                **options.opportunity,
                "account_id": account_id,
                "contact_id": contact_id,
            }
            opportunity = _nested("opportunity", OPPORTUNITIES, given)
            for name, value in owner.items():
                if opportunity.get(name) is None:
                    opportunity[name] = value
            opportunity_id = make(conn, OPPORTUNITIES, opportunity, list(given), "opportunity.")
        converted = {
            "status": "converted",
            "converted_at": now,
            "converted_contact_id": contact_id,
            "converted_account_id": account_id,
            "converted_opportunity_id": opportunity_id,
        }
        repository.update_record(
            conn,
            LEADS,
            lead_id,
            expected_version=lead["version"],
            values={**converted, "updated_at": now},
        )
        changed = tuple(sorted(converted))
        after = {**stored_lead, **converted}
        changes.append(Change(region, LEADS, lead_id, "updated", changed, stored_lead, after, now))
        pipeline.changes(conn, caller, changes)
        made = [r for r in (contact_id, account_id, opportunity_id) if r is not None]
        pipeline.recorder.append(
            conn,
            region,
            pipeline.recorder.event(
                caller,
                access.policy.version,
                action="lead.convert",
                entity=LEADS.name,
                record_ids=[lead_id, *made],
                fields=["status", "converted_at", "converted_contact_id", "converted_account_id"],
                details={"new_account": options.account_id is None},
            ),
        )
        shown: dict[str, Record] = {}
        for spec, record_id in (
            (LEADS, lead_id),
            (CONTACTS, contact_id),
            (ACCOUNTS, account_id),
            (OPPORTUNITIES, opportunity_id),
        ):
            if record_id is None:
                continue
            stored = pipeline.fetch(conn, database, spec, record_id)
            if stored is None:
                raise not_found(spec)
            shown[spec.name] = pipeline.show(conn, access, region, spec, stored)
    return Conversion(
        lead=shown[LEADS.name],
        contact=shown[CONTACTS.name],
        account=shown[ACCOUNTS.name],
        opportunity=shown.get(OPPORTUNITIES.name),
    )


def _options(body: Mapping[str, Any]) -> _Options:
    errors: list[FieldError] = []
    unknown = sorted(set(body) - {"account_id", "opportunity"})
    errors.extend(FieldError(name, "is not an option of lead conversion") for name in unknown)
    account_id = body.get("account_id")
    if account_id is not None:
        try:
            parsed = RecordId.parse(account_id) if isinstance(account_id, str) else None
        except InvalidId:
            parsed = None
        if parsed is None or parsed.prefix != ACCOUNTS.prefix:
            errors.append(FieldError("account_id", "must be the id of an account (acc_…)"))
    opportunity = body.get("opportunity")
    if opportunity is not None and not isinstance(opportunity, dict):
        errors.append(FieldError("opportunity", "must be an object of opportunity fields"))
    elif isinstance(opportunity, dict):
        for name in ("account_id", "contact_id"):
            if name in opportunity:
                errors.append(FieldError(f"opportunity.{name}", "is set by the conversion"))
    if errors:
        raise ValidationFailed("invalid conversion options", errors)
    return _Options(account_id, opportunity)


def _catalog_names(spec: EntitySpec, body: Mapping[str, Any]) -> list[str]:
    return [name for name in body if spec.field(name) is not None]


def _nested(prefix: str, spec: EntitySpec, body: Mapping[str, Any]) -> dict[str, Any]:
    """`validate_create` for an object nested under `prefix` in a request body."""
    try:
        return validate_create(spec, body)
    except ValidationFailed as exc:
        raise ValidationFailed(
            exc.detail, [FieldError(f"{prefix}.{e.field}", e.message) for e in exc.errors]
        ) from None


def _present(values: Mapping[str, Any]) -> dict[str, Any]:
    return {k: to_json_value(v) for k, v in values.items() if v is not None}
