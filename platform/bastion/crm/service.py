"""The record service: the one way any caller reads or writes a CRM record.

Get, list, create, update and delete, each running the pipeline's steps in order
(`crm.pipeline`): route by id, authorize (action, row scope, field masks), validate,
persist in one transaction in the record's region. Lead conversion lives in
`crm.conversion` on the same steps. The HTTP layer calls these methods from a
worker thread; so do the CLI and jobs.
"""

from __future__ import annotations

import heapq
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from bastion.clock import Clock
from bastion.crm import conversion, idempotency, repository
from bastion.crm.access import Access
from bastion.crm.catalog import EntitySpec
from bastion.crm.cursors import CursorCodec, Position
from bastion.crm.listing import (
    SYSTEM_SORTS,
    ListQuery,
    from_cursor_value,
    merge_key,
    parse_filters,
    parse_limit,
    parse_sort,
)
from bastion.crm.pipeline import Pipeline, Values, entity_spec, not_found, stale
from bastion.crm.records import Record, parse_if_match, to_json_value
from bastion.crm.schemas import check_required_links, validate_create, validate_patch
from bastion.errors import Conflict, FieldError, Forbidden, ValidationFailed
from bastion.policy.engine import Policy
from bastion.principals.tokens import Principal
from bastion.residency.databases import Database, Regions
from bastion.residency.ids import RecordId

__all__ = ["Created", "ListQuery", "Page", "RecordService"]


@dataclass(frozen=True, slots=True)
class Created:
    record: Record
    replayed: bool


@dataclass(frozen=True, slots=True)
class Page:
    data: list[Record]
    next_cursor: str | None


class RecordService(Pipeline):
    def __init__(
        self,
        *,
        regions: Regions,
        policy: Callable[[], Policy],
        clock: Clock,
        cursors: CursorCodec,
    ) -> None:
        super().__init__(regions=regions, policy=policy, clock=clock)
        self._cursors = cursors

    # -- reads ---------------------------------------------------------------------

    def get(self, principal: Principal, entity: str, record_id: str) -> Record:
        spec = entity_spec(entity)
        rid = self.route(principal, spec, record_id)
        access = self.access(principal)
        scope = access.require(rid.region, spec, "read")
        database = self.database(rid.region)
        with database.transaction() as conn:
            values = self.fetch(conn, database, spec, record_id, access.where(spec, scope))
        if values is None:
            raise not_found(spec)
        return self.show(access, rid.region, spec, values)

    def list_records(self, principal: Principal, entity: str, query: ListQuery) -> Page:
        spec = entity_spec(entity)
        access = self.access(principal)
        limit = parse_limit(query.limit)
        sort = parse_sort(spec, query.sort)
        filters = parse_filters(spec, query.filters)
        regions = self._list_regions(access, spec, query.region)
        names = [region for region, _scope in regions]
        if filters:
            access.require_readable(names, spec, filters, "filter")
        if sort.column not in SYSTEM_SORTS:
            access.require_readable(names, spec, [sort.column], "sort")
        fingerprint = json.dumps(
            [spec.name, sorted(query.filters.items()), query.sort or "created_at", names],
            separators=(",", ":"),
        )
        after = None
        if query.cursor is not None:
            position = self._cursors.open(fingerprint, query.cursor)
            after = (from_cursor_value(spec, sort.column, position.value), position.id)
        streams: list[list[tuple[Any, Values, str]]] = []
        for region, scope in regions:
            database = self.database(region)
            with database.transaction() as conn:
                rows = repository.list_records(
                    conn,
                    spec,
                    filters=filters,
                    sort=sort,
                    after=after,
                    limit=limit + 1,
                    scope=access.where(spec, scope),
                )
            stream = []
            for row in rows:
                values = dict(row._mapping)
                stream.append((merge_key(values, sort), values, region))
            streams.append(stream)
        merged = list(heapq.merge(*streams, key=lambda item: item[0]))[: limit + 1]
        page = merged[:limit]
        next_cursor = None
        if len(merged) > limit:
            last = page[-1][1]
            value = to_json_value(last[sort.column])
            next_cursor = self._cursors.seal(fingerprint, Position(value, last["id"]))
        return Page(
            [self.show(access, region, spec, values) for _key, values, region in page],
            next_cursor,
        )

    def _list_regions(
        self, access: Access, spec: EntitySpec, requested: str | None
    ) -> list[tuple[str, Any]]:
        """The regions to query, each with the caller's list scope there."""
        principal = access.principal
        if requested is not None:
            if requested not in self._regions:
                raise ValidationFailed(
                    "unknown region", [FieldError("region", "is not a configured region")]
                )
            if requested not in principal.regions:
                raise Forbidden(f"you may not access region {requested}")
            return [(requested, access.require(requested, spec, "list"))]
        regions = []
        for region in principal.regions:
            if region not in self._regions:
                continue
            scope = access.policy.scope(principal.roles, region, spec.name, "list")
            if scope.permits_any:
                regions.append((region, scope))
        if not regions:
            raise Forbidden(f"your roles do not allow list on {spec.name} in any of your regions")
        return regions

    # -- writes --------------------------------------------------------------------

    def create(
        self,
        principal: Principal,
        entity: str,
        body: Mapping[str, Any],
        *,
        idempotency_key: str | None = None,
    ) -> Created:
        spec = entity_spec(entity)
        fields = dict(body)
        region = self._create_region(principal, fields.pop("region", None))
        access = self.access(principal)
        scope = access.require(region, spec, "create")
        idempotency.check_key(idempotency_key)
        named = _writable_names(spec, fields)
        access.require_writable(region, spec, named)
        values = validate_create(spec, fields)
        _check_lead_status(spec, values)
        values["custom"] = _without_nulls(values.get("custom"))
        if values.get("owner_id") is None:
            values["owner_id"] = principal.id
        if values.get("team_id") is None and principal.teams:
            values["team_id"] = principal.teams[0]
        access.require_writable(region, spec, named, proposed=values)
        access.require_in_scope(scope, spec, values, "create")
        database = self.database(region)
        if idempotency_key is None:
            return Created(self._insert_new(access, database, spec, region, values), False)
        body_hash = idempotency.request_hash(spec.name, region, values)
        try:
            with self.write(database, _GONE) as conn:
                earlier = idempotency.earlier_record(
                    conn, spec.name, principal.id, idempotency_key, body_hash
                )
                if earlier is not None:
                    return Created(self._replay(conn, access, database, spec, earlier), True)
                record = self._insert_new(
                    access,
                    database,
                    spec,
                    region,
                    values,
                    conn=conn,
                    key=(idempotency_key, body_hash),
                )
        except Conflict:
            # A concurrent request with the same key committed first: answer as its replay.
            with database.transaction() as conn:
                earlier = idempotency.earlier_record(
                    conn, spec.name, principal.id, idempotency_key, body_hash
                )
                if earlier is None:
                    raise
                return Created(self._replay(conn, access, database, spec, earlier), True)
        return Created(record, False)

    def _insert_new(
        self,
        access: Access,
        database: Database,
        spec: EntitySpec,
        region: str,
        values: Mapping[str, Any],
        *,
        conn: Any = None,
        key: tuple[str, str] | None = None,
    ) -> Record:
        if conn is None:
            with self.write(database, _GONE) as c:
                return self._insert_new(access, database, spec, region, values, conn=c, key=key)
        now = self._clock.now()
        record_id = str(RecordId.new(spec.prefix, region, now))
        self.check_refs(conn, access, spec, region, values)
        self.insert(conn, spec, record_id, region, now, values)
        if key is not None:
            idempotency.remember(
                conn,
                entity=spec.name,
                principal_id=access.principal.id,
                key=key[0],
                body_hash=key[1],
                record_id=record_id,
                now=now,
            )
        stored = self.fetch(conn, database, spec, record_id)
        assert stored is not None
        return self.show(access, region, spec, stored)

    def _replay(
        self, conn: Any, access: Access, database: Database, spec: EntitySpec, record_id: str
    ) -> Record:
        stored = self.fetch(conn, database, spec, record_id)
        if stored is None:
            raise Conflict(
                f"the {spec.singular} created with this Idempotency-Key has been deleted"
            )
        return self.show(access, database.name, spec, stored)

    def update(
        self,
        principal: Principal,
        entity: str,
        record_id: str,
        body: Mapping[str, Any],
        *,
        if_match: str | None,
    ) -> Record:
        spec = entity_spec(entity)
        rid = self.route(principal, spec, record_id)
        access = self.access(principal)
        scope = access.require(rid.region, spec, "update")
        expected = parse_if_match(if_match)
        named = _writable_names(spec, body)
        access.require_writable(rid.region, spec, named)
        changes = validate_patch(spec, body)
        _check_lead_status(spec, changes)
        database = self.database(rid.region)
        with self.write(database, _GONE) as conn:
            stored = self.fetch(conn, database, spec, record_id, access.where(spec, scope))
            if stored is None:
                raise not_found(spec)
            if expected != stored["version"]:
                raise stale(spec)
            if "custom" in changes:
                changes["custom"] = _merge_custom(stored["custom"], changes["custom"])
            proposed = {**stored, **changes}
            access.require_writable(rid.region, spec, named, proposed=proposed)
            check_required_links(spec, proposed)
            self.check_refs(conn, access, spec, rid.region, changes)
            changes["updated_at"] = self._clock.now()
            if not repository.update_record(
                conn, spec, record_id, expected_version=stored["version"], values=changes
            ):
                raise stale(spec)  # another writer committed between our read and write
            updated = self.fetch(conn, database, spec, record_id)
        assert updated is not None
        return self.show(access, rid.region, spec, updated)

    def delete(
        self, principal: Principal, entity: str, record_id: str, *, if_match: str | None
    ) -> None:
        spec = entity_spec(entity)
        rid = self.route(principal, spec, record_id)
        access = self.access(principal)
        scope = access.require(rid.region, spec, "delete")
        expected = parse_if_match(if_match) if if_match is not None else None
        database = self.database(rid.region)
        referenced = (
            f"the {spec.singular} is still referenced by other records; delete or relink them first"
        )
        with self.write(database, referenced) as conn:
            stored = self.fetch(conn, database, spec, record_id, access.where(spec, scope))
            if stored is None:
                raise not_found(spec)
            if if_match is not None and expected != stored["version"]:
                raise stale(spec)
            if not repository.delete_record(
                conn, spec, record_id, expected_version=stored["version"]
            ):
                raise stale(spec)

    def convert_lead(
        self,
        principal: Principal,
        lead_id: str,
        body: Mapping[str, Any],
        *,
        if_match: str | None = None,
    ) -> conversion.Conversion:
        """Lead -> contact + account (new or existing) + optional opportunity, at once."""
        return conversion.convert_lead(self, principal, lead_id, body, if_match=if_match)

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


_GONE = "the record references a record that no longer exists"


def _writable_names(spec: EntitySpec, body: Mapping[str, Any]) -> list[str]:
    """The catalog fields a body writes (read-only and unknown names are left to
    validation, which answers 422 for them)."""
    return [
        name for name in body if (field := spec.field(name)) is not None and not field.read_only
    ]


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
