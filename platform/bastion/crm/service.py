"""The record pipeline: the one way any caller reads or writes a CRM record.

Every method runs the same steps in the same order (../DESIGN.md, "The pipeline"):

1. route     — the record id names its region; an unknown region, a wrong entity
               prefix or a region outside the principal's is a 404 and nothing is
               queried (`_route`).
2. authorize — the policy decides (principal's roles, region, entity, action) from
               its compiled index (`_authorize`). Field masks and row scopes from
               the policy issue plug in there and nowhere else.
3. validate  — the body against the field catalog (`crm.schemas`).
4. (encrypt / decrypt — the encryption issue plugs in between validate and persist.)
5. persist   — one transaction in the record's region database; optimistic
               concurrency on `version`.
6. (audit   — the audit issue appends its event inside that same transaction.)

The HTTP layer calls these methods from a worker thread; so do the CLI and jobs.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import re
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection, Row, insert, select
from sqlalchemy.exc import IntegrityError

from bastion.clock import Clock
from bastion.crm import repository
from bastion.crm.catalog import ENTITIES, SYSTEM_FIELDS, EntitySpec
from bastion.crm.cursors import CursorCodec, Position
from bastion.crm.schemas import (
    check_filter_value,
    check_required_links,
    validate_create,
    validate_patch,
)
from bastion.crm.tables import idempotency_keys
from bastion.errors import (
    BadRequest,
    Conflict,
    FieldError,
    Forbidden,
    NotFound,
    PreconditionFailed,
    PreconditionRequired,
    ResidencyViolation,
    ValidationFailed,
)
from bastion.policy.engine import Policy
from bastion.principals.tokens import Principal
from bastion.residency.databases import Database, Regions
from bastion.residency.ids import InvalidId, RecordId

MAX_LIMIT = 200
DEFAULT_LIMIT = 50
IDEMPOTENCY_KEY_MAX = 255
_IDEMPOTENCY_KEY_RE = re.compile(r"[\x21-\x7e]{1,255}")
_ETAG_RE = re.compile(r'(?:W/)?"v([0-9]{1,18})"')
# Query parameters of a list that are not field filters.
LIST_PARAMETERS = frozenset({"limit", "cursor", "sort", "region"})
_SYSTEM_SORTS = frozenset({"id", "created_at", "updated_at"})

Record = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Created:
    record: Record
    replayed: bool


@dataclass(frozen=True, slots=True)
class Page:
    data: list[Record]
    next_cursor: str | None


@dataclass(frozen=True, slots=True)
class Conversion:
    lead: Record
    contact: Record
    account: Record
    opportunity: Record | None


@dataclass(frozen=True, slots=True)
class ListQuery:
    """A list request as the caller gave it: raw strings, validated by the service."""

    filters: Mapping[str, str]
    limit: str | None = None
    cursor: str | None = None
    sort: str | None = None
    region: str | None = None


def etag(record: Mapping[str, Any]) -> str:
    return f'"v{record["version"]}"'


def parse_if_match(header: str | None) -> int | None:
    """The version an `If-Match` header names; None if it names none we could have sent.

    A missing header is the caller's problem (428), so callers check that first.
    """
    if header is None:
        raise PreconditionRequired("this request needs an If-Match header with the record's ETag")
    match = _ETAG_RE.fullmatch(header.strip())
    return int(match.group(1)) if match else None


def to_json_value(value: Any) -> Any:
    """The JSON form of a stored value: exact decimals as strings, ISO 8601 times."""
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat().replace("+00:00", "Z")
    if isinstance(value, date):
        return value.isoformat()
    return value


class RecordService:
    def __init__(
        self,
        *,
        regions: Regions,
        policy: Callable[[], Policy],
        clock: Clock,
        cursors: CursorCodec,
    ) -> None:
        self._regions = regions
        self._policy = policy
        self._clock = clock
        self._cursors = cursors

    # -- reads ---------------------------------------------------------------------

    def get(self, principal: Principal, entity: str, record_id: str) -> Record:
        spec = _entity(entity)
        rid = self._route(principal, spec, record_id)
        self._authorize(principal, rid.region, spec, "read")
        database = self._regions.get(rid.region)
        with database.transaction() as conn:
            row = repository.fetch(conn, spec, record_id)
        if row is None:
            raise _not_found(spec)
        return _record(spec, row, database)

    def list_records(self, principal: Principal, entity: str, query: ListQuery) -> Page:
        spec = _entity(entity)
        limit = _limit(query.limit)
        sort = _sort(spec, query.sort)
        filters = _filters(spec, query.filters)
        regions = self._list_regions(principal, spec, query.region)
        fingerprint = json.dumps(
            [spec.name, sorted(query.filters.items()), query.sort or "created_at", regions],
            separators=(",", ":"),
        )
        after = None
        if query.cursor is not None:
            position = self._cursors.open(fingerprint, query.cursor)
            after = (_from_cursor_value(spec, sort.column, position.value), position.id)
        streams: list[list[tuple[Any, Row[Any], Database]]] = []
        for region in regions:
            database = self._regions.get(region)
            with database.transaction() as conn:
                rows = repository.list_records(
                    conn, spec, filters=filters, sort=sort, after=after, limit=limit + 1
                )
            streams.append([(_merge_key(row, sort), row, database) for row in rows])
        merged = list(heapq.merge(*streams, key=lambda item: item[0]))[: limit + 1]
        page = merged[:limit]
        next_cursor = None
        if len(merged) > limit:
            last = page[-1][1]
            value = to_json_value(getattr(last, sort.column))
            next_cursor = self._cursors.seal(fingerprint, Position(value, last.id))
        return Page([_record(spec, row, db) for _key, row, db in page], next_cursor)

    # -- writes --------------------------------------------------------------------

    def create(
        self,
        principal: Principal,
        entity: str,
        body: Mapping[str, Any],
        *,
        idempotency_key: str | None = None,
    ) -> Created:
        spec = _entity(entity)
        fields = dict(body)
        region = self._create_region(principal, fields.pop("region", None))
        self._authorize(principal, region, spec, "create")
        if idempotency_key is not None and not _IDEMPOTENCY_KEY_RE.fullmatch(idempotency_key):
            raise BadRequest("the Idempotency-Key header must be 1-255 printable ASCII characters")
        values = validate_create(spec, fields)
        _check_lead_status(spec, values)
        values["custom"] = _without_nulls(values.get("custom"))
        if values.get("owner_id") is None:
            values["owner_id"] = principal.id
        if values.get("team_id") is None and principal.teams:
            values["team_id"] = principal.teams[0]
        request_hash = _request_hash(spec.name, region, values)
        database = self._regions.get(region)
        if idempotency_key is None:
            return Created(self._insert_new(database, spec, region, values), replayed=False)
        try:
            with database.transaction(write=True) as conn:
                replay = _replay(conn, spec, principal, idempotency_key, request_hash, database)
                if replay is not None:
                    return Created(replay, replayed=True)
                record = self._insert_new(
                    database,
                    spec,
                    region,
                    values,
                    conn=conn,
                    key=(principal.id, idempotency_key, request_hash),
                )
        except IntegrityError:
            # A concurrent request with the same key committed first: answer as its replay.
            with database.transaction() as conn:
                replay = _replay(conn, spec, principal, idempotency_key, request_hash, database)
            if replay is None:
                raise Conflict("the record references a record that no longer exists") from None
            return Created(replay, replayed=True)
        return Created(record, replayed=False)

    def _insert_new(
        self,
        database: Database,
        spec: EntitySpec,
        region: str,
        values: Mapping[str, Any],
        *,
        conn: Connection | None = None,
        key: tuple[str, str, str] | None = None,
    ) -> Record:
        if conn is None:
            with self._write(database, "the record references a record that no longer exists") as c:
                return self._insert_new(database, spec, region, values, conn=c, key=key)
        now = self._clock.now()
        record_id = str(RecordId.new(spec.prefix, region, now))
        self._check_refs(conn, spec, region, values)
        self._insert(conn, spec, record_id, region, now, values)
        if key is not None:
            principal_id, idempotency_key, request_hash = key
            conn.execute(
                insert(idempotency_keys).values(
                    principal_id=principal_id,
                    key=idempotency_key,
                    request_hash=request_hash,
                    entity=spec.name,
                    record_id=record_id,
                    created_at=now,
                )
            )
        return _record(spec, repository.fetch(conn, spec, record_id), database)

    def update(
        self,
        principal: Principal,
        entity: str,
        record_id: str,
        body: Mapping[str, Any],
        *,
        if_match: str | None,
    ) -> Record:
        spec = _entity(entity)
        rid = self._route(principal, spec, record_id)
        self._authorize(principal, rid.region, spec, "update")
        expected = parse_if_match(if_match)
        changes = validate_patch(spec, body)
        _check_lead_status(spec, changes)
        database = self._regions.get(rid.region)
        with self._write(database, "the record references a record that no longer exists") as conn:
            row = repository.fetch(conn, spec, record_id)
            if row is None:
                raise _not_found(spec)
            _check_region(row, database)
            if expected != row.version:
                raise _stale(spec)
            if "custom" in changes:
                changes["custom"] = _merge_custom(row.custom, changes["custom"])
            check_required_links(spec, {**row._mapping, **changes})
            self._check_refs(conn, spec, rid.region, changes)
            changes["updated_at"] = self._clock.now()
            if not repository.update_record(
                conn, spec, record_id, expected_version=row.version, values=changes
            ):
                raise _stale(spec)  # another writer committed between our read and write
            row = repository.fetch(conn, spec, record_id)
        assert row is not None
        return _record(spec, row, database)

    def delete(
        self, principal: Principal, entity: str, record_id: str, *, if_match: str | None
    ) -> None:
        spec = _entity(entity)
        rid = self._route(principal, spec, record_id)
        self._authorize(principal, rid.region, spec, "delete")
        expected = parse_if_match(if_match) if if_match is not None else None
        database = self._regions.get(rid.region)
        referenced = (
            f"the {spec.singular} is still referenced by other records; delete or relink them first"
        )
        with self._write(database, referenced) as conn:
            row = repository.fetch(conn, spec, record_id)
            if row is None:
                raise _not_found(spec)
            _check_region(row, database)
            if if_match is not None and expected != row.version:
                raise _stale(spec)
            if not repository.delete_record(conn, spec, record_id, expected_version=row.version):
                raise _stale(spec)

    def convert_lead(
        self,
        principal: Principal,
        lead_id: str,
        body: Mapping[str, Any],
        *,
        if_match: str | None = None,
    ) -> Conversion:
        """Turn a lead into a contact, an account (new or existing) and optionally an
        opportunity, and mark the lead converted — all in one transaction."""
        leads, contacts, accounts, opportunities = (
            ENTITIES["leads"],
            ENTITIES["contacts"],
            ENTITIES["accounts"],
            ENTITIES["opportunities"],
        )
        rid = self._route(principal, leads, lead_id)
        region = rid.region
        options = _conversion_options(body)
        self._authorize(principal, region, leads, "update")
        self._authorize(principal, region, contacts, "create")
        if options.account_id is None:
            self._authorize(principal, region, accounts, "create")
        if options.opportunity is not None:
            self._authorize(principal, region, opportunities, "create")
        expected = parse_if_match(if_match) if if_match is not None else None
        database = self._regions.get(region)
        now = self._clock.now()
        with self._write(database, "a record the conversion links to no longer exists") as conn:
            lead = repository.fetch(conn, leads, lead_id)
            if lead is None:
                raise _not_found(leads)
            _check_region(lead, database)
            if if_match is not None and expected != lead.version:
                raise _stale(leads)
            if lead.status == "converted":
                raise Conflict("the lead is already converted")
            owner = {"owner_id": lead.owner_id or principal.id, "team_id": lead.team_id}
            if options.account_id is not None:
                self._check_refs(conn, opportunities, region, {"account_id": options.account_id})
                account_id = options.account_id
            else:
                account_id = str(RecordId.new(accounts.prefix, region, now))
                account = validate_create(
                    accounts,
                    _present({"name": lead.company, "industry": lead.industry}),
                )
                self._insert(conn, accounts, account_id, region, now, {**account, **owner})
            contact = validate_create(
                contacts,
                _present(
                    {
                        "first_name": lead.first_name,
                        "last_name": lead.last_name,
                        "email": lead.email,
                        "phone": lead.phone,
                        "title": lead.title,
                        "mailing_country": lead.country,
                        "email_opt_in": lead.email_opt_in,
                        "account_id": account_id,
                    }
                ),
            )
            contact_id = str(RecordId.new(contacts.prefix, region, now))
            self._insert(conn, contacts, contact_id, region, now, {**contact, **owner})
            opportunity_id = None
            if options.opportunity is not None:
                opportunity = _nested(
                    "opportunity",
                    opportunities,
                    {
                        "stage": "prospecting",
                        **options.opportunity,
                        "account_id": account_id,
                        "contact_id": contact_id,
                    },
                )
                for name, value in owner.items():
                    if opportunity.get(name) is None:
                        opportunity[name] = value
                opportunity_id = str(RecordId.new(opportunities.prefix, region, now))
                self._insert(conn, opportunities, opportunity_id, region, now, opportunity)
            repository.update_record(
                conn,
                leads,
                lead_id,
                expected_version=lead.version,
                values={
                    "status": "converted",
                    "converted_at": now,
                    "converted_contact_id": contact_id,
                    "converted_account_id": account_id,
                    "converted_opportunity_id": opportunity_id,
                    "updated_at": now,
                },
            )
            fetched = {
                name: repository.fetch(conn, ENTITIES[name], record)
                for name, record in (
                    ("leads", lead_id),
                    ("contacts", contact_id),
                    ("accounts", account_id),
                    ("opportunities", opportunity_id),
                )
                if record is not None
            }
        return Conversion(
            lead=_record(leads, fetched["leads"], database),
            contact=_record(contacts, fetched["contacts"], database),
            account=_record(accounts, fetched["accounts"], database),
            opportunity=(
                _record(opportunities, fetched["opportunities"], database)
                if "opportunities" in fetched
                else None
            ),
        )

    # -- pipeline steps ------------------------------------------------------------

    def _route(self, principal: Principal, spec: EntitySpec, record_id: str) -> RecordId:
        """The region a record id names. Anything we would not query is a 404."""
        try:
            rid = RecordId.parse(record_id)
        except InvalidId:
            raise NotFound(
                f"no {spec.singular} has that id (it is not a valid record id)"
            ) from None
        if rid.prefix != spec.prefix:
            raise NotFound(f"no {spec.singular} has that id (it is not a {spec.singular} id)")
        if rid.region not in self._regions or rid.region not in principal.regions:
            raise _not_found(spec)
        return rid

    def _authorize(self, principal: Principal, region: str, spec: EntitySpec, action: str) -> None:
        """The policy's decision for this call. Field masks and row scopes go here."""
        if not self._policy().allows(principal.roles, region, spec.name, action):
            raise Forbidden(f"your roles do not allow {action} on {spec.name} in region {region}")

    def _list_regions(
        self, principal: Principal, spec: EntitySpec, requested: str | None
    ) -> list[str]:
        policy = self._policy()
        if requested is not None:
            if requested not in self._regions:
                raise ValidationFailed(
                    "unknown region", [FieldError("region", "is not a configured region")]
                )
            if requested not in principal.regions:
                raise Forbidden(f"you may not access region {requested}")
            self._authorize(principal, requested, spec, "list")
            return [requested]
        regions = [
            r
            for r in principal.regions
            if r in self._regions and policy.allows(principal.roles, r, spec.name, "list")
        ]
        if not regions:
            raise Forbidden(f"your roles do not allow list on {spec.name} in any of your regions")
        return regions

    def _create_region(self, principal: Principal, requested: object) -> str:
        if requested is None:
            if not principal.regions:
                raise Forbidden("you are not permitted in any region")
            return principal.default_region
        if not isinstance(requested, str) or requested not in self._regions:
            raise ValidationFailed(
                "unknown region", [FieldError("region", "must be one of the configured regions")]
            )
        if requested not in principal.regions:
            raise Forbidden(f"you may not create records in region {requested}")
        return requested

    def _check_refs(
        self, conn: Connection, spec: EntitySpec, region: str, values: Mapping[str, Any]
    ) -> None:
        """Referenced records must exist in the same region (nothing links across)."""
        errors: list[FieldError] = []
        for field in spec.fields:
            value = values.get(field.name)
            if field.type != "ref" or field.ref is None or value is None:
                continue
            target = ENTITIES[field.ref]
            if RecordId.parse(value).region != region:
                errors.append(FieldError(field.name, f"must be in the record's region ({region})"))
            elif not repository.exists(conn, target, value):
                errors.append(FieldError(field.name, f"no {target.singular} has that id"))
        if errors:
            raise ValidationFailed("the record links to records that do not exist", errors)

    def _insert(
        self,
        conn: Connection,
        spec: EntitySpec,
        record_id: str,
        region: str,
        now: datetime,
        values: Mapping[str, Any],
    ) -> None:
        repository.insert_record(
            conn,
            spec,
            {
                **values,
                "id": record_id,
                "region": region,
                "version": 1,
                "created_at": now,
                "updated_at": now,
            },
        )

    @contextmanager
    def _write(self, database: Database, integrity_detail: str) -> Iterator[Connection]:
        """A write transaction; a constraint violation (a race with a delete) is a 409."""
        try:
            with database.transaction(write=True) as conn:
                yield conn
        except IntegrityError:
            raise Conflict(integrity_detail) from None


# -- helpers ---------------------------------------------------------------------------


def _entity(name: str) -> EntitySpec:
    spec = ENTITIES.get(name)
    if spec is None:
        raise NotFound(f"there is no entity called {name!r}")
    return spec


def _not_found(spec: EntitySpec) -> NotFound:
    return NotFound(f"no {spec.singular} has that id in your regions")


def _stale(spec: EntitySpec) -> PreconditionFailed:
    return PreconditionFailed(
        f"the {spec.singular} has changed since that ETag; fetch it again and retry"
    )


def _check_region(row: Row[Any], database: Database) -> None:
    if row.region != database.name:
        raise ResidencyViolation(f"a row stored in {database.name} claims another region")


def _record(spec: EntitySpec, row: Row[Any] | None, database: Database) -> Record:
    assert row is not None
    _check_region(row, database)
    mapping = row._mapping
    record: Record = {name: to_json_value(mapping[name]) for name in SYSTEM_FIELDS}
    for field in spec.fields:
        record[field.name] = to_json_value(mapping[field.name])
    return record


def _limit(raw: str | None) -> int:
    if raw is None:
        return DEFAULT_LIMIT
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_LIMIT:
        raise ValidationFailed(
            "invalid limit", [FieldError("limit", f"must be an integer from 1 to {MAX_LIMIT}")]
        )
    return int(raw)


def _sort(spec: EntitySpec, raw: str | None) -> repository.Sort:
    if raw is None:
        return repository.Sort("created_at")
    descending = raw.startswith("-")
    name = raw[1:] if descending else raw
    field = spec.field(name)
    if name not in _SYSTEM_SORTS and (field is None or not field.sortable):
        raise ValidationFailed(
            "invalid sort",
            [
                FieldError(
                    "sort",
                    f"must be one of: {', '.join(_sortable(spec))} (prefix - for descending)",
                )
            ],
        )
    return repository.Sort(name, descending)


def _sortable(spec: EntitySpec) -> list[str]:
    return [*sorted(_SYSTEM_SORTS), *(f.name for f in spec.fields if f.sortable)]


def _filters(spec: EntitySpec, raw: Mapping[str, str]) -> dict[str, Any]:
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


def _merge_key(row: Row[Any], sort: repository.Sort) -> tuple[Any, ...]:
    """The order the database returned rows in, as a Python key (for merging regions)."""
    if sort.column == "id":
        return (_Reversed(row.id),) if sort.descending else (row.id,)
    value = getattr(row, sort.column)
    if sort.descending:
        return (value is None, _Reversed(value), _Reversed(row.id))
    return (value is None, value, row.id)


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


def _from_cursor_value(spec: EntitySpec, column: str, value: Any) -> Any:
    """The stored form of a sort value read back from a cursor."""
    if value is None or column == "id":
        return value
    field = spec.field(column)
    kind = "datetime" if column in _SYSTEM_SORTS else (field.type if field else "string")
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


def _check_lead_status(spec: EntitySpec, values: Mapping[str, Any]) -> None:
    if spec.name == "leads" and values.get("status") == "converted":
        raise ValidationFailed(
            "a lead becomes converted only through conversion",
            [FieldError("status", "`converted` is set by POST /v1/leads/{id}/convert")],
        )


def _without_nulls(custom: Any) -> Any:
    if isinstance(custom, dict):
        return {k: v for k, v in custom.items() if v is not None}
    return custom


def _merge_custom(current: Any, patch: Any) -> Any:
    """JSON merge patch (RFC 7396) of the `custom` object: null deletes a key."""
    if patch is None:
        return None
    merged = dict(current or {})
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = value
    return merged


def _request_hash(entity: str, region: str, values: Mapping[str, Any]) -> str:
    canonical = json.dumps(
        [entity, region, {k: to_json_value(v) for k, v in values.items()}],
        sort_keys=True,
        separators=(",", ":"),
        default=str,
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def _replay(
    conn: Connection,
    spec: EntitySpec,
    principal: Principal,
    key: str,
    request_hash: str,
    database: Database,
) -> Record | None:
    """The record an earlier request with this Idempotency-Key created, if any."""
    earlier = conn.execute(
        select(idempotency_keys).where(
            idempotency_keys.c.principal_id == principal.id, idempotency_keys.c.key == key
        )
    ).one_or_none()
    if earlier is None:
        return None
    if earlier.request_hash != request_hash or earlier.entity != spec.name:
        raise ValidationFailed(
            "this Idempotency-Key was already used with a different request",
            [FieldError("Idempotency-Key", "was used before with a different body")],
        )
    row = repository.fetch(conn, spec, earlier.record_id)
    if row is None:
        raise Conflict(f"the {spec.singular} created with this Idempotency-Key has been deleted")
    return _record(spec, row, database)


@dataclass(frozen=True, slots=True)
class _ConversionOptions:
    account_id: str | None
    opportunity: dict[str, Any] | None


def _conversion_options(body: Mapping[str, Any]) -> _ConversionOptions:
    errors: list[FieldError] = []
    unknown = sorted(set(body) - {"account_id", "opportunity"})
    errors.extend(FieldError(name, "is not an option of lead conversion") for name in unknown)
    account_id = body.get("account_id")
    if account_id is not None:
        try:
            parsed = RecordId.parse(account_id) if isinstance(account_id, str) else None
        except InvalidId:
            parsed = None
        if parsed is None or parsed.prefix != ENTITIES["accounts"].prefix:
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
    return _ConversionOptions(account_id, opportunity)


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
