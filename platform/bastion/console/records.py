"""CRM records as the logged-in principal may see and change them.

Lists are `RecordService.list_records` (keyset pages across the principal's
regions, its row scope in SQL), a record page is `get`, saving the edit form is
`update` with `If-Match` set to the version the form was rendered from (a record
changed meanwhile is 412, nothing is written). Withheld fields come out of the
pipeline as names only (`_withheld`): the page says "withheld" where the value
would be, so the value is never in the page at all.
"""

from __future__ import annotations

import json
import re
from typing import Any

from starlette.responses import Response
from starlette.routing import Route

from bastion.console.pages import PATH, Visit, page
from bastion.crm.catalog import ENTITIES, EntitySpec, FieldSpec
from bastion.crm.listing import ListQuery
from bastion.errors import FieldError, NotFound, ValidationFailed

# The columns of each list (every field is on the record's own page).
SUMMARY = {
    "accounts": ("name", "industry", "billing_country", "type"),
    "contacts": ("last_name", "first_name", "email", "account_id"),
    "leads": ("last_name", "company", "email", "status"),
    "opportunities": ("name", "stage", "amount", "currency", "close_date"),
    "activities": ("type", "subject", "status", "due_at"),
    "cases": ("subject", "status", "priority", "contact_id"),
}
_INTEGER_RE = re.compile(r"-?[0-9]{1,18}")
_NOTICES = {"saved": "Saved.", "unchanged": "Nothing to save: no field was changed."}
FIELD_PREFIX = "f."


def _spec(visit: Visit) -> EntitySpec:
    spec = ENTITIES.get(visit.request.path_params["entity"])
    if spec is None:
        raise NotFound(f"there is no such entity; try one of {', '.join(ENTITIES)}")
    return spec


def _filterable(visit: Visit, spec: EntitySpec) -> list[str]:
    """Fields the principal may filter on: readable in every record of its regions."""
    policy, principal = visit.state.policy, visit.principal
    readable = [
        policy.mask(principal.roles, region, spec.name, "read").always
        for region in principal.regions
    ]
    return [
        f.name for f in spec.fields if f.filterable and all(f.name in mask for mask in readable)
    ]


@page
async def index(visit: Visit) -> Response:
    entities = visit.nav.entities
    if not entities:
        raise NotFound("your roles do not allow listing any kind of record")
    return visit.redirect(f"{PATH}/records/{entities[0]}")


@page
async def listing(visit: Visit) -> Response:
    spec = _spec(visit)
    region = visit.param("region")
    name, value = visit.param("field"), visit.param("value")
    filters = {name: value} if name is not None and value is not None else {}
    page_of = await visit.call(
        visit.state.records.list_records,
        visit.caller,
        spec.name,
        ListQuery(
            filters=filters,
            limit=str(visit.page_size),
            cursor=visit.param("cursor"),
            sort="-created_at",
            region=region,
        ),
    )
    query = {k: v for k, v in (("region", region), ("field", name), ("value", value)) if v}
    return visit.render(
        "records/list.html",
        spec=spec,
        columns=SUMMARY[spec.name],
        records=page_of.data,
        pages=visit.pager(query, page_of.next_cursor),
        query=query,
        region=region,
        filter_field=name,
        filter_value=value,
        filterable=_filterable(visit, spec),
    )


@page
async def record_page(visit: Visit) -> Response:
    spec = _spec(visit)
    record = await visit.call(
        visit.state.records.get, visit.caller, spec.name, visit.request.path_params["record_id"]
    )
    return _render_record(visit, spec, record, notice=_NOTICES.get(visit.param("done") or ""))


def _render_record(
    visit: Visit,
    spec: EntitySpec,
    record: dict[str, Any],
    *,
    notice: str | None = None,
    errors: dict[str, str] | None = None,
    submitted: dict[str, str] | None = None,
    version: int | None = None,
    status: int = 200,
) -> Response:
    region = str(record["region"])
    mask = visit.state.policy.mask(visit.principal.roles, region, spec.name, "write")
    may_update = visit.state.policy.scope(
        visit.principal.roles, region, spec.name, "update"
    ).permits_any
    editable = [f for f in spec.writable_fields() if f.name in mask.possible] if may_update else []
    return visit.render(
        "records/record.html",
        status=status,
        spec=spec,
        record=record,
        editable=editable,
        conditions=mask.conditions(),
        withheld=set(record.get("_withheld", ())),
        erased=set(record.get("_erased", ())),
        restricted=set(record.get("_restricted", ())),
        notice=notice,
        errors=errors or {},
        submitted=submitted or {},
        version=record["version"] if version is None else version,
        shown=shown_value,
        prefix=FIELD_PREFIX,
    )


def shown_value(field: FieldSpec, value: Any) -> str:
    """A record value as an edit form's input holds it."""
    if value is None:
        return ""
    if field.type == "boolean":
        return "true" if value else "false"
    if field.type == "json":
        return json.dumps(value, ensure_ascii=False)
    return str(value)


@page
async def save(visit: Visit) -> Response:
    spec = _spec(visit)
    record_id = visit.request.path_params["record_id"]
    version = visit.form.text("version", max_length=18)
    assert version is not None
    if not version.isdigit():
        raise ValidationFailed("the form is invalid", [FieldError("version", "must be a number")])
    records = visit.state.records
    current = await visit.call(records.get, visit.caller, spec.name, record_id)
    withheld = set(current.get("_withheld", ()))
    submitted = {
        name.removeprefix(FIELD_PREFIX): visit.form.get(name) or ""
        for name in visit.form.names
        if name.startswith(FIELD_PREFIX)
    }
    try:
        changes = _changes(spec, current, submitted, withheld)
        if not changes:
            return visit.redirect(f"{PATH}/records/{spec.name}/{record_id}", done="unchanged")
        await visit.call(
            records.update, visit.caller, spec.name, record_id, changes, if_match=f'"v{version}"'
        )
    except ValidationFailed as exc:
        errors = {e.field: e.message for e in exc.errors} or {"(form)": exc.detail}
        # The form keeps the version it was made from: fixing the input and saving
        # again must not overwrite what someone else saved meanwhile (412 instead).
        return _render_record(
            visit,
            spec,
            current,
            errors=errors,
            submitted=submitted,
            version=int(version),
            status=exc.status,
        )
    return visit.redirect(f"{PATH}/records/{spec.name}/{record_id}", done="saved")


def _changes(
    spec: EntitySpec, current: dict[str, Any], submitted: dict[str, str], withheld: set[str]
) -> dict[str, Any]:
    """The JSON merge patch of the fields the form changed. A field the caller may
    write but not read is only sent when something was typed into it."""
    changes: dict[str, Any] = {}
    errors: list[FieldError] = []
    for name, text in submitted.items():
        field = spec.field(name)
        if field is None or field.read_only:
            errors.append(FieldError(name, "is not a field you can edit here"))
            continue
        if name in withheld and not text.strip():
            continue
        try:
            value = _parsed(field, text)
        except ValueError as exc:
            errors.append(FieldError(name, str(exc)))
            continue
        if name in withheld or value != current.get(name):
            changes[name] = value
    if errors:
        raise ValidationFailed("the form is invalid", errors)
    return changes


def _parsed(field: FieldSpec, text: str) -> Any:
    """A form input's text as the JSON value the record API takes (the pipeline
    validates it; here only what a form cannot say is translated)."""
    text = text.strip()
    if not text:
        return None
    if field.type == "integer":
        return int(text) if _INTEGER_RE.fullmatch(text) else text
    if field.type == "boolean":
        return {"true": True, "false": False}.get(text, text)
    if field.type == "json":
        try:
            return json.loads(text)
        except ValueError:
            raise ValueError("must be a JSON object") from None
    return text


routes = [
    Route("/records", index, methods=["GET"]),
    Route("/records/{entity}", listing, methods=["GET"]),
    Route("/records/{entity}/{record_id}", record_page, methods=["GET"]),
    Route("/records/{entity}/{record_id}", save, methods=["POST"]),
]
