"""The steps every record operation shares: route, authorize, persist.

`RecordService` (get, list, create, update, delete) and lead conversion are built
on `Pipeline`, so the steps run the same way, in the same order, everywhere:

1. route     — the record id names its region; an unknown region, a wrong entity
               prefix or a region outside the principal's is a 404 and nothing is
               queried (`route`).
2. authorize — `crm.access.Access`: the action, the row scope (a WHERE clause) and
               the field masks, from the compiled policy.
3. validate  — the body against the field catalog (`crm.schemas`).
4. (encrypt / decrypt — the encryption layer plugs into `fetch` and `insert`.)
5. persist   — one transaction in the record's region database (`write`);
               optimistic concurrency on `version`.
6. (audit   — the audit layer appends its event inside that same transaction.)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Connection
from sqlalchemy.exc import IntegrityError

from bastion.clock import Clock
from bastion.crm import repository
from bastion.crm.access import Access
from bastion.crm.catalog import ENTITIES, EntitySpec
from bastion.crm.records import Record, render
from bastion.errors import (
    Conflict,
    FieldError,
    NotFound,
    PreconditionFailed,
    ResidencyViolation,
    ValidationFailed,
)
from bastion.policy.engine import Policy
from bastion.principals.tokens import Principal
from bastion.residency.databases import Database, Regions
from bastion.residency.ids import InvalidId, RecordId

Values = dict[str, Any]


class Pipeline:
    def __init__(self, *, regions: Regions, policy: Callable[[], Policy], clock: Clock) -> None:
        self._regions = regions
        self._policy = policy
        self._clock = clock

    def access(self, principal: Principal) -> Access:
        """The caller's rights under the policy in force now (fixed for the call)."""
        return Access(self._policy(), principal)

    def route(self, principal: Principal, spec: EntitySpec, record_id: str) -> RecordId:
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
            raise not_found(spec)
        return rid

    def now(self) -> datetime:
        return self._clock.now()

    def database(self, region: str) -> Database:
        return self._regions.get(region)

    @contextmanager
    def write(self, database: Database, integrity_detail: str) -> Iterator[Connection]:
        """A write transaction; a constraint violation (a race with a delete) is a 409."""
        try:
            with database.transaction(write=True) as conn:
                yield conn
        except IntegrityError:
            raise Conflict(integrity_detail) from None

    def fetch(
        self,
        conn: Connection,
        database: Database,
        spec: EntitySpec,
        record_id: str,
        scope: ColumnElement[bool] | None = None,
    ) -> Values | None:
        """The stored record (typed values), if it exists inside `scope`."""
        row = repository.fetch(conn, spec, record_id, scope=scope)
        if row is None:
            return None
        values = dict(row._mapping)
        check_region(values, database)
        return values

    def insert(
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

    def check_refs(
        self,
        conn: Connection,
        access: Access,
        spec: EntitySpec,
        region: str,
        values: Mapping[str, Any],
    ) -> None:
        """Linked records must exist in the same region, and the caller must be able to
        read them: a link to a record you cannot see is answered as if it did not
        exist, so links are no oracle for records outside your scope."""
        errors: list[FieldError] = []
        for field in spec.fields:
            value = values.get(field.name)
            if field.type != "ref" or field.ref is None or value is None:
                continue
            target = ENTITIES[field.ref]
            scope = access.policy.scope(access.principal.roles, region, target.name, "read")
            if RecordId.parse(value).region != region:
                errors.append(FieldError(field.name, f"must be in the record's region ({region})"))
            elif not scope.permits_any or not repository.exists(
                conn, target, value, scope=access.where(target, scope)
            ):
                errors.append(FieldError(field.name, f"no {target.singular} has that id"))
        if errors:
            raise ValidationFailed("the record links to records that do not exist", errors)

    def show(
        self, access: Access, region: str, spec: EntitySpec, values: Mapping[str, Any]
    ) -> Record:
        """The record as this caller may see it."""
        return render(spec, values, access.readable(region, spec, values))


def entity_spec(name: str) -> EntitySpec:
    spec = ENTITIES.get(name)
    if spec is None:
        raise NotFound(f"there is no entity called {name!r}")
    return spec


def not_found(spec: EntitySpec) -> NotFound:
    return NotFound(f"no {spec.singular} has that id in your regions")


def stale(spec: EntitySpec) -> PreconditionFailed:
    return PreconditionFailed(
        f"the {spec.singular} has changed since that ETag; fetch it again and retry"
    )


def check_region(values: Mapping[str, Any], database: Database) -> None:
    if values["region"] != database.name:
        raise ResidencyViolation(f"a row stored in {database.name} claims another region")
