"""The record service: the one way any caller reads or writes a CRM record.

Get, list, create, update and delete, each running the pipeline's steps in order
(`crm.pipeline`): route by id, authorize (action, row scope, field masks), validate,
encrypt, persist in one transaction in the record's region, audit in that same
transaction. Lead conversion lives in `crm.conversion` on the same steps. The HTTP
layer calls these methods from a worker thread; so do the CLI and jobs.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, and_

from bastion.analytics import stages
from bastion.clock import Clock
from bastion.crm import conversion, dedup, idempotency, repository
from bastion.crm.access import Access
from bastion.crm.catalog import EntitySpec, FieldSpec
from bastion.crm.cursors import CursorCodec, Position, advanced
from bastion.crm.listing import (
    ListQuery,
    RegionPage,
    from_cursor_value,
    merge_pages,
    parse_filters,
    parse_limit,
    parse_sort,
)
from bastion.crm.pipeline import (
    Change,
    MergedRecord,
    MovedToSurvivor,
    Pipeline,
    Values,
    entity_spec,
    not_found,
    stale,
)
from bastion.crm.records import Record, parse_if_match, render, to_json_value
from bastion.crm.schemas import (
    check_custom,
    check_required_links,
    validate_create,
    validate_patch,
)
from bastion.crypto.keyring import Keyring
from bastion.errors import Conflict, FieldError, Forbidden, ValidationFailed
from bastion.policy.compiled import RowScope
from bastion.policy.engine import Policy
from bastion.principals.caller import Caller
from bastion.principals.tokens import Principal
from bastion.residency.databases import Database, Regions
from bastion.residency.ids import RecordId

__all__ = ["Created", "ListQuery", "Page", "RecordService", "WithWrite"]

# Work that must commit with a write or not at all (automation records that it made
# this change): run in the write's transaction, after the write, with the record as
# the caller sees it.
WithWrite = Callable[[Connection, Record], None]

_GONE = "the record references a record that no longer exists"
_CANDIDATES = 100


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
        keys: Keyring,
        idempotency_secret: bytes,
        audit_notify: Callable[[str], None] | None = None,
    ) -> None:
        super().__init__(
            regions=regions, policy=policy, clock=clock, keys=keys, audit_notify=audit_notify
        )
        self._cursors = cursors
        self._idempotency_secret = idempotency_secret

    # -- reads ---------------------------------------------------------------------

    def get(self, caller: Caller, entity: str, record_id: str) -> Record:
        spec = entity_spec(entity)
        rid = self.route(caller.principal, spec, record_id)
        access = self.access(caller.principal)
        with self.denials(caller, access, rid.region, spec, "read", (record_id,)):
            scope = access.require(rid.region, spec, "read")
            database = self.database(rid.region)
            # A write transaction: the read's audit event commits before we answer.
            with self.write(database, _GONE) as conn:
                try:
                    stored = self.fetch(conn, database, spec, record_id, access.where(spec, scope))
                except MergedRecord as merged:
                    # A merged person's old id leads to the survivor, for those who may
                    # read it; to anyone else it is a record that does not exist.
                    if not self.reveals_survivor(conn, access, rid.region, merged):
                        raise not_found(spec) from None
                    raise MovedToSurvivor(merged) from None
                if stored is None:
                    raise not_found(spec)
                record = self.show(conn, access, rid.region, spec, stored)
                self._audit_read(conn, rid.region, caller, access, spec, "read", [record])
        return record

    def list_records(self, caller: Caller, entity: str, query: ListQuery) -> Page:
        spec = entity_spec(entity)
        access = self.access(caller.principal)
        region_for_denial = query.region or (
            caller.principal.default_region if caller.principal.regions else None
        )
        if region_for_denial is None or region_for_denial not in self._regions:
            return self._list(caller, access, spec, query)
        with self.denials(caller, access, region_for_denial, spec, "list"):
            return self._list(caller, access, spec, query)

    def _list(self, caller: Caller, access: Access, spec: EntitySpec, query: ListQuery) -> Page:
        limit = parse_limit(query.limit)
        regions = self.list_regions(access, spec, query.region)
        names = [region for region, _scope in regions]
        # Permission before validation: a field the caller may not read is a 403
        # whatever the filter value, so the answer says nothing about the field.
        filtered = [name for name in query.filters if spec.field(name) is not None]
        if filtered:
            access.require_readable(names, spec, filtered, "filter")
        sorted_by = (query.sort or "").removeprefix("-")
        if spec.field(sorted_by) is not None:
            access.require_readable(names, spec, [sorted_by], "sort")
        sort = parse_sort(spec, query.sort)
        filters = parse_filters(spec, query.filters)
        fingerprint = json.dumps(
            [spec.name, sorted(query.filters.items()), query.sort or "created_at", names],
            separators=(",", ":"),
        )
        # One position per region: a region's query never carries another's row.
        positions: dict[str, Position] = {}
        if query.cursor is not None:
            positions = self._cursors.open_positions(fingerprint, query.cursor)
        # A record links only to records of its own region, so a filter on a link
        # (`account_id=acc_eu_…`) can match only there: the other regions are not
        # asked, and never see the id of a record that is not theirs.
        linked = linked_regions(spec, filters)
        pages = []
        for region, scope in regions:
            if linked is not None and linked != {region}:
                continue
            at = positions.get(region)
            after = None if at is None else (from_cursor_value(spec, sort.column, at.value), at.id)
            pages.append(
                self.region_page(caller, access, spec, region, scope, filters, sort, after, limit)
            )
        merged, more = merge_pages(pages, sort, limit)
        next_cursor = None
        if more:
            emitted = [
                (item.region, Position(to_json_value(item.sort_value), item.record["id"]))
                for item in merged
            ]
            next_cursor = self._cursors.seal_positions(fingerprint, advanced(positions, emitted))
        return Page([item.record for item in merged], next_cursor)

    def region_page(
        self,
        caller: Caller,
        access: Access,
        spec: EntitySpec,
        region: str,
        scope: RowScope,
        filters: Mapping[str, Any],
        sort: repository.Sort,
        after: tuple[Any, str] | None,
        limit: int,
        *,
        action: str = "list",
        readable_only: bool = False,
    ) -> RegionPage:
        """Up to `limit + 1` matching records of one region, audited before returning
        (as `record.<action>`: a list page, or a batch of an export). `readable_only`:
        only rows inside the caller's read scope too (an export never shows a record,
        even as an id, that the caller could not read).

        Filters on encrypted fields match their blind index in SQL; a truncated index
        lets false positives through, which are dropped after decrypting, fetching
        further until the page is full or the region has no more rows."""
        database = self.database(region)
        plain, encrypted = dedup.split_filters(spec, filters)
        searched = [
            (field, self.codec.normalized(field, encrypted[field.name]))
            for field in spec.encrypted_fields
            if field.name in encrypted
        ]
        where = access.where(spec, scope)
        if readable_only:
            read = access.policy.scope(access.principal.roles, region, spec.name, "read")
            if not read.permits_any:
                return RegionPage(region)
            read_where = access.where(spec, read)
            if read_where is not None:
                where = read_where if where is None else and_(where, read_where)
        with self.write(database, _GONE) as conn:
            column_filters = dict(plain)
            for field, wanted in searched:
                assert field.index_column is not None  # filterable encrypted = searchable
                column_filters[field.index_column] = self.codec.index(
                    conn, spec, region, field, wanted
                )
            page = RegionPage(region)
            cursor = after
            # With a blind-index filter, fetch candidates generously: a 16-bit index
            # lets about R / 65,536 false positives through, and a second round trip
            # costs more than a few extra rows.
            batch = max(limit + 1, _CANDIDATES) if searched else limit + 1
            while len(page.items) <= limit:
                rows = repository.list_records(
                    conn,
                    spec,
                    filters=column_filters,
                    sort=sort,
                    after=cursor,
                    limit=batch,
                    scope=where,
                )
                for row in rows:
                    stored = dict(row._mapping)
                    if searched and not self._matches(conn, spec, region, stored, searched):
                        continue  # a blind-index false positive: decrypted, then dropped
                    page.add(self.show(conn, access, region, spec, stored), stored[sort.column])
                if len(rows) < batch or not searched:
                    break
                last = dict(rows[-1]._mapping)
                cursor = (last[sort.column], last["id"])
            page.items = page.items[: limit + 1]
            self._audit_read(
                conn, region, caller, access, spec, action, [i.record for i in page.items[:limit]]
            )
        return page

    def _matches(
        self,
        conn: Connection,
        spec: EntitySpec,
        region: str,
        stored: Mapping[str, Any],
        searched: list[tuple[FieldSpec, str]],
    ) -> bool:
        """Whether a row's searched fields really hold the wanted values (only those
        fields are decrypted; the caller may read them, or it could not filter)."""
        return all(
            self.codec.matches(field, self.codec.open_field(conn, spec, region, stored, field), w)
            for field, w in searched
        )

    def list_regions(
        self, access: Access, spec: EntitySpec, requested: str | None, action: str = "list"
    ) -> list[tuple[str, RowScope]]:
        """The regions to query, each with the caller's `action` scope there."""
        principal = access.principal
        if requested is not None:
            if requested not in self._regions:
                raise ValidationFailed(
                    "unknown region", [FieldError("region", "is not a configured region")]
                )
            if requested not in principal.regions:
                raise Forbidden(f"you may not access region {requested}")
            return [(requested, access.require(requested, spec, action))]
        regions = []
        for region in principal.regions:
            if region not in self._regions:
                continue
            scope = access.policy.scope(principal.roles, region, spec.name, action)
            if scope.permits_any:
                regions.append((region, scope))
        if not regions:
            raise Forbidden(
                f"your roles do not allow {action} on {spec.name} in any of your regions"
            )
        return regions

    def _audit_read(
        self,
        conn: Connection,
        region: str,
        caller: Caller,
        access: Access,
        spec: EntitySpec,
        action: str,
        records: list[Record],
    ) -> None:
        """Which records were returned, with which fields (names, never values)."""
        returned = {
            name
            for name in set().union(*records)
            if not name.startswith("_") and name not in ("id", "region", "version")
        }
        event = self.recorder.event(
            caller,
            access.policy.version,
            action=f"record.{action}",
            entity=spec.name,
            record_ids=[str(r["id"]) for r in records],
            fields=sorted(returned),
            details={"count": len(records)} if action == "list" else None,
        )
        self.recorder.append(conn, region, event)

    # -- writes --------------------------------------------------------------------

    def create(
        self,
        caller: Caller,
        entity: str,
        body: Mapping[str, Any],
        *,
        idempotency_key: str | None = None,
        allow_duplicate: bool = False,
        also: WithWrite | None = None,
    ) -> Created:
        spec = entity_spec(entity)
        fields = dict(body)
        principal = caller.principal
        region = self.create_region(principal, fields.pop("region", None))
        access = self.access(principal)
        with self.denials(caller, access, region, spec, "create"):
            scope = access.require(region, spec, "create")
            idempotency.check_key(idempotency_key)
            values = new_values(access, spec, region, scope, fields)
        database = self.database(region)
        body_hash = (
            idempotency.request_hash(self._idempotency_secret, spec.name, region, values)
            if idempotency_key is not None
            else ""
        )
        try:
            with self.write(database, _GONE) as conn:
                if idempotency_key is not None:
                    earlier = idempotency.earlier_record(
                        conn, spec.name, principal.id, idempotency_key, body_hash
                    )
                    if earlier is not None:
                        return Created(self._replay(conn, access, database, spec, earlier), True)
                indexes = (
                    dedup.refuse_duplicates(self, conn, access, spec, region, values)
                    if not allow_duplicate
                    else {}
                )
                record = self._insert_new(
                    conn, caller, access, database, spec, region, values, indexes=indexes
                )
                if also is not None:
                    also(conn, record)
                if idempotency_key is not None:
                    idempotency.remember(
                        conn,
                        entity=spec.name,
                        principal_id=principal.id,
                        key=idempotency_key,
                        body_hash=body_hash,
                        record_id=str(record["id"]),
                        now=self.now(),
                    )
        except Conflict:
            if idempotency_key is None:
                raise
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
        conn: Connection,
        caller: Caller,
        access: Access,
        database: Database,
        spec: EntitySpec,
        region: str,
        values: Mapping[str, Any],
        *,
        indexes: Mapping[str, bytes] | None = None,
    ) -> Record:
        now = self.now()
        record_id = str(RecordId.new(spec.prefix, region, now))
        self.check_refs(conn, access, spec, region, values)
        self.insert(conn, spec, record_id, region, now, values, indexes=indexes)
        stages.record_created(conn, spec.name, record_id, region, values, now)
        written = sorted(name for name, value in values.items() if value is not None)
        self.recorder.append(
            conn,
            region,
            self.recorder.event(
                caller,
                access.policy.version,
                action="record.create",
                entity=spec.name,
                record_ids=[record_id],
                fields=written,
            ),
        )
        self.changes(
            conn,
            caller,
            [Change(region, spec, record_id, "created", tuple(written), None, values, now)],
        )
        # The values just written, as the caller may see them: no need to read back and
        # decrypt what this request holds in the clear already.
        written_values = {
            **values,
            "id": record_id,
            "region": region,
            "version": 1,
            "created_at": now,
            "updated_at": now,
        }
        return render(spec, written_values, access.readable(region, spec, written_values))

    def _replay(
        self, conn: Connection, access: Access, database: Database, spec: EntitySpec, record_id: str
    ) -> Record:
        try:
            stored = self.fetch(conn, database, spec, record_id)
        except MergedRecord as merged:
            if self.reveals_survivor(conn, access, database.name, merged):
                raise
            stored = None  # merged into a record the caller may not read: as if deleted
        if stored is None:
            raise Conflict(
                f"the {spec.singular} created with this Idempotency-Key has been deleted"
            )
        return self.show(conn, access, database.name, spec, stored)

    def update(
        self,
        caller: Caller,
        entity: str,
        record_id: str,
        body: Mapping[str, Any],
        *,
        if_match: str | None,
        also: WithWrite | None = None,
    ) -> Record:
        spec = entity_spec(entity)
        rid = self.route(caller.principal, spec, record_id)
        access = self.access(caller.principal)
        database = self.database(rid.region)
        with self.denials(caller, access, rid.region, spec, "update", (record_id,)):
            scope = access.require(rid.region, spec, "update")
            expected = parse_if_match(if_match)
            named = _writable_names(spec, body)
            access.require_writable(rid.region, spec, named)
            changes = validate_patch(spec, body)
            check_lead_status(spec, changes)
            with self.write(database, _GONE) as conn:
                stored = self._fetch_writable(conn, access, database, spec, record_id, scope)
                if stored is None:
                    raise not_found(spec)
                if expected != stored["version"]:
                    raise stale(spec)
                preserved = self.preservation(conn, spec, stored)
                if preserved is not None and preserved[0] == "kept":
                    raise Conflict(f"the {spec.singular} {preserved[1]}: it cannot change")
                if "custom" in changes:
                    changes["custom"] = check_custom(
                        spec, _merge_custom(stored["custom"], changes["custom"])
                    )
                proposed = {**stored, **changes}
                access.require_writable(rid.region, spec, named, proposed=proposed, previous=stored)
                access.require_in_scope(scope, spec, proposed, "update")
                check_required_links(spec, proposed)
                self.check_refs(conn, access, spec, rid.region, changes)
                columns = self.seal_changes(conn, spec, rid.region, stored, changes)
                columns["updated_at"] = self.now()
                if not repository.update_record(
                    conn, spec, record_id, expected_version=stored["version"], values=columns
                ):
                    raise stale(spec)  # another writer committed between our read and write
                stages.record_updated(
                    conn, spec.name, record_id, rid.region, stored, changes, columns["updated_at"]
                )
                self.recorder.append(
                    conn,
                    rid.region,
                    self.recorder.event(
                        caller,
                        access.policy.version,
                        action="record.update",
                        entity=spec.name,
                        record_ids=[record_id],
                        fields=sorted(changes),
                        details={"version": int(stored["version"]) + 1},
                    ),
                )
                change = Change(
                    rid.region,
                    spec,
                    record_id,
                    "updated",
                    tuple(sorted(changes)),
                    stored,
                    proposed,
                    columns["updated_at"],
                )
                self.changes(conn, caller, [change])
                updated = self.fetch(conn, database, spec, record_id)
                assert updated is not None
                shown = self.show(conn, access, rid.region, spec, updated)
                if also is not None:
                    also(conn, shown)
                return shown

    def delete(self, caller: Caller, entity: str, record_id: str, *, if_match: str | None) -> None:
        spec = entity_spec(entity)
        rid = self.route(caller.principal, spec, record_id)
        access = self.access(caller.principal)
        database = self.database(rid.region)
        referenced = (
            f"the {spec.singular} is still referenced by other records; delete or relink them first"
        )
        with self.denials(caller, access, rid.region, spec, "delete", (record_id,)):
            scope = access.require(rid.region, spec, "delete")
            expected = parse_if_match(if_match) if if_match is not None else None
            with self.write(database, referenced) as conn:
                stored = self._fetch_writable(conn, access, database, spec, record_id, scope)
                if stored is None:
                    raise not_found(spec)
                if if_match is not None and expected != stored["version"]:
                    raise stale(spec)
                preserved = self.preservation(conn, spec, stored)
                if preserved is not None:
                    raise Conflict(f"the {spec.singular} {preserved[1]}: it cannot be deleted")
                if not repository.delete_record(
                    conn, spec, record_id, expected_version=stored["version"]
                ):
                    raise stale(spec)
                self.recorder.append(
                    conn,
                    rid.region,
                    self.recorder.event(
                        caller,
                        access.policy.version,
                        action="record.delete",
                        entity=spec.name,
                        record_ids=[record_id],
                    ),
                )
                gone = Change(rid.region, spec, record_id, "deleted", (), stored, {}, self.now())
                self.changes(conn, caller, [gone])

    def _fetch_writable(
        self,
        conn: Connection,
        access: Access,
        database: Database,
        spec: EntitySpec,
        record_id: str,
        scope: RowScope,
    ) -> Values | None:
        """`fetch` inside a write's `scope`; a merge's tombstone is a 409 naming its
        survivor only for a caller who may read the survivor, else a 404."""
        try:
            return self.fetch(conn, database, spec, record_id, access.where(spec, scope))
        except MergedRecord as merged:
            if not self.reveals_survivor(conn, access, database.name, merged):
                raise not_found(spec) from None
            raise

    def convert_lead(
        self,
        caller: Caller,
        lead_id: str,
        body: Mapping[str, Any],
        *,
        if_match: str | None = None,
    ) -> conversion.Conversion:
        """Lead -> contact + account (new or existing) + optional opportunity, at once."""
        return conversion.convert_lead(self, caller, lead_id, body, if_match=if_match)

    def create_region(self, principal: Principal, requested: object) -> str:
        """The region a new record goes to: the one asked for (422 unknown, 403 not the
        caller's), else the caller's default region."""
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


def _writable_names(spec: EntitySpec, body: Mapping[str, Any]) -> list[str]:
    """The catalog fields a body writes (read-only and unknown names are left to
    validation, which answers 422 for them)."""
    return [
        name for name in body if (field := spec.field(name)) is not None and not field.read_only
    ]


def new_values(
    access: Access,
    spec: EntitySpec,
    region: str,
    scope: RowScope,
    fields: Mapping[str, Any],
) -> Values:
    """A create body as the values to store: the fields it may write (403 naming the
    others), validated (422), owner and team defaulted to the caller's, inside the
    caller's create scope (403). Shared by creates and imports; needs no database."""
    principal = access.principal
    named = _writable_names(spec, fields)
    access.require_writable(region, spec, named)
    values = validate_create(spec, fields)
    check_lead_status(spec, values)
    values["custom"] = _without_nulls(values.get("custom"))
    if values.get("owner_id") is None:
        values["owner_id"] = principal.id
    if values.get("team_id") is None and principal.teams:
        values["team_id"] = principal.teams[0]
    access.require_writable(region, spec, named, proposed=values)
    access.require_in_scope(scope, spec, values, "create")
    return values


def check_lead_status(spec: EntitySpec, values: Mapping[str, Any]) -> None:
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


def linked_regions(spec: EntitySpec, filters: Mapping[str, Any]) -> set[str] | None:
    """The regions of the records that the link filters name (None: no link filter)."""
    links = [
        value
        for name, value in filters.items()
        if (field := spec.field(name)) is not None and field.type == "ref"
    ]
    if not links:
        return None
    return {RecordId.parse(value).region for value in links}
