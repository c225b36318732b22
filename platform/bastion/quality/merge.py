"""Merging duplicate people (contacts, leads), reversibly, on the record pipeline.

`POST /v1/{contacts|leads}/merge` names a survivor, 1-10 losers and, per field, the
record whose value the survivor keeps. In ONE transaction of the records' region
(merging across regions is impossible by design: a person's records, keys and audit
trail never leave their region):

1. rights — the `merge` action's row scope covers every record (404 otherwise); each
   chosen field is readable on the record it comes from and writable on the survivor
   (403 naming the fields); no record erased, merged already, preserved by a legal
   hold or an erasure, or the person of an unfinished erasure request (409 saying
   why);
2. the survivor takes the chosen values, sealed under its own key (`seal_changes`),
   its version bumped;
3. every record linking to a loser (each catalog `ref` to the entity, whether the
   caller can see it or not: it belongs to the person) links to the survivor; what
   is sealed under the loser's key is re-sealed under the survivor's (`seal_changes`
   re-keys when the key subject changes);
4. losers become tombstones: `merged_into`, `merged_at`, blind and phonetic indexes
   cleared (lookups, dedup and DSR discovery find the survivor only), their sealed
   fields kept under their own keys so an undo can restore them;
5. a `merges` row records the choices, the moves and the survivor's prior columns
   (ciphertexts, never plaintext; dropped when the merge is undone or final), with
   `undo_until` (`[dedup] merge_undo_days`);
6. open duplicate pairs among these records are closed as `merged`;
7. `record.merge` audit events name the records and the chosen fields, never values.

Undo (`undo`) reverses all of it within the window, if the survivor has not changed
since; afterwards `quality.finalize` shreds the losers' keys (unless a legal hold
postpones it). A tombstone reads as 301 to the survivor
(`crm.pipeline.MovedToSurvivor`) and refuses writes (409), for a caller who may read
the survivor; to anyone else it is a 404.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection

from bastion.crm import repository
from bastion.crm.access import Access, FieldsForbidden
from bastion.crm.catalog import ENTITIES, EntitySpec
from bastion.crm.pipeline import Values, check_region, entity_spec, not_found, stale
from bastion.crm.records import Record, parse_if_match, to_json_value
from bastion.crm.schemas import check_required_links
from bastion.crm.service import RecordService
from bastion.dsr import repository as dsr_repo
from bastion.dsr.discovery import same_person
from bastion.dsr.model import OPEN
from bastion.errors import Conflict, FieldError, Forbidden, NotFound, ValidationFailed
from bastion.policy.compiled import RowScope
from bastion.principals.caller import Caller
from bastion.quality import merge_repository as repo
from bastion.quality.queue import mark_merged
from bastion.quality.settings import DedupSettings
from bastion.residency.databases import Database, Regions
from bastion.residency.ids import InvalidId, RecordId

MERGEABLE = ("contacts", "leads")
MAX_LOSERS = 10
_BODY = frozenset({"survivor_id", "loser_ids", "fields"})
_RACE = "a record of the merge changed while merging; fetch them again and retry"
# Audit events name at most 500 records: moved ids go out in chunks of this many.
_AUDIT_CHUNK = 400


@dataclass(frozen=True, slots=True)
class MergeRequest:
    survivor_id: str
    loser_ids: tuple[str, ...]
    fields: dict[str, str]  # field name -> id of the record its value comes from

    @property
    def ids(self) -> tuple[str, ...]:
        return (self.survivor_id, *self.loser_ids)


@dataclass(frozen=True, slots=True)
class Merged:
    merge: dict[str, Any]
    survivor: Record


def merge_spec(entity: str) -> EntitySpec:
    """The entity of a merge route: people only (contacts, leads)."""
    spec = entity_spec(entity)
    if spec.name not in MERGEABLE:
        raise NotFound(f"{spec.name} cannot be merged: only contacts and leads are people")
    return spec


def parse_request(spec: EntitySpec, body: Mapping[str, Any]) -> MergeRequest:
    """The body as a merge (422 naming every problem): ids of this entity, 1-10 distinct
    losers apart from the survivor, fields a client may write, each taken from one of
    the merged records, every record in one region. Any JSON value in any place is
    answered with a 422, never compared or hashed before its type is checked."""
    errors = [FieldError(n, "is not a field of a merge") for n in sorted(set(body) - _BODY)]
    survivor = body.get("survivor_id")
    if not _is_id_of(spec, survivor):
        errors.append(FieldError("survivor_id", f"must be a {spec.singular} id"))
    given = body.get("loser_ids")
    if not isinstance(given, list) or not 1 <= len(given) <= MAX_LOSERS:
        errors.append(FieldError("loser_ids", f"must be a list of 1 to {MAX_LOSERS} ids"))
        given = []
    losers: list[str] = []
    for index, loser in enumerate(given):
        if _is_id_of(spec, loser):
            losers.append(loser)
        else:
            errors.append(FieldError(f"loser_ids.{index}", f"must be a {spec.singular} id"))
    if len(set(losers)) != len(losers):
        errors.append(FieldError("loser_ids", "must not name a record twice"))
    if survivor in losers:
        errors.append(FieldError("loser_ids", "must not include the survivor"))
    fields = body.get("fields", {})
    if not isinstance(fields, dict):
        errors.append(FieldError("fields", "must be an object of field name -> record id"))
        fields = {}
    ids = {*losers, survivor} if isinstance(survivor, str) else set(losers)
    for name, source in fields.items():
        field = spec.field(name)
        if field is None or field.read_only:
            errors.append(FieldError(f"fields.{name}", f"is not a writable {spec.singular} field"))
        elif not isinstance(source, str) or source not in ids:
            errors.append(FieldError(f"fields.{name}", "must name the survivor or a loser"))
    if errors:
        raise ValidationFailed("invalid merge", errors)
    assert isinstance(survivor, str)  # checked above: no errors
    regions = {RecordId.parse(i).region for i in ids}
    if len(regions) > 1:
        raise ValidationFailed(
            "merging across regions is impossible by design: a person's records, keys and "
            "audit trail never leave their region; merge records of one region only",
            [FieldError("loser_ids", "must all be in the survivor's region")],
        )
    return MergeRequest(survivor, tuple(losers), dict(fields))


def _is_id_of(spec: EntitySpec, value: object) -> bool:
    if not isinstance(value, str):
        return False
    try:
        return RecordId.parse(value).prefix == spec.prefix
    except InvalidId:
        return False


class MergeService:
    def __init__(
        self, *, records: RecordService, regions: Regions, settings: DedupSettings
    ) -> None:
        self._records = records
        self._regions = regions
        self._settings = settings

    def merge(
        self,
        caller: Caller,
        entity: str,
        body: Mapping[str, Any],
        *,
        if_match: str | None = None,
    ) -> Merged:
        """Merge the losers into the survivor (see the module docstring). `if_match`,
        when given, is the survivor's ETag (412 if it changed)."""
        pipeline = self._records
        spec = merge_spec(entity)
        request = parse_request(spec, body)
        rid = pipeline.route(caller.principal, spec, request.survivor_id)
        region = rid.region
        access = pipeline.access(caller.principal)
        database = pipeline.database(region)
        expected = parse_if_match(if_match) if if_match is not None else None
        with pipeline.denials(caller, access, region, spec, "merge", request.ids):
            scope = access.require(region, spec, "merge")
            access.require_writable(region, spec, request.fields)
            with pipeline.write(database, _RACE) as conn:
                repo.lock_records(conn, spec, request.ids)
                stored = {
                    record_id: self._mergeable(conn, database, access, spec, record_id, scope)
                    for record_id in request.ids
                }
                self._refuse_pending_erasure(conn, access, region, request.ids)
                survivor = stored[request.survivor_id]
                if if_match is not None and expected != survivor["version"]:
                    raise stale(spec)
                changes = self._chosen_values(conn, access, region, spec, request, stored)
                proposed = {**survivor, **changes}
                access.require_writable(
                    region, spec, request.fields, proposed=proposed, previous=survivor
                )
                access.require_in_scope(scope, spec, proposed, "merge")
                check_required_links(spec, proposed)
                pipeline.check_refs(conn, access, spec, region, changes)
                merge = self._apply(conn, caller, access, database, spec, request, stored, changes)
                updated = pipeline.fetch(conn, database, spec, request.survivor_id)
                assert updated is not None
                record = pipeline.show(conn, access, region, spec, updated)
                return Merged(render_merge(conn, access, merge), record)

    def _mergeable(
        self,
        conn: Connection,
        database: Database,
        access: Access,
        spec: EntitySpec,
        record_id: str,
        scope: RowScope,
    ) -> Values:
        """A record of the merge as stored: inside the merge scope (404), neither
        erased, merged nor preserved (409 saying why)."""
        row = repository.fetch(conn, spec, record_id, scope=access.where(spec, scope))
        if row is None:
            raise not_found(spec)
        values = dict(row._mapping)
        check_region(values, database)
        if values["erased_at"] is not None:
            raise Conflict(f"{record_id} was erased at its data subject's request")
        if values["merged_into"] is not None:
            raise Conflict(f"{record_id} was already merged into {values['merged_into']}")
        preserved = self._records.preservation(conn, spec, values)
        if preserved is not None:
            raise Conflict(f"{record_id} {preserved[1]}: it cannot be merged")
        return values

    def _refuse_pending_erasure(
        self, conn: Connection, access: Access, region: str, ids: Sequence[str]
    ) -> None:
        """409 while an erasure request about one of these people (under any of their
        records: a converted lead, an earlier merge's tombstone) is not finished: its
        subjects were fixed when it was filed, and merging now would pull the survivor
        into it half-way or move the person's data out of what it already planned. The
        request's id is named only to those who may read data subjects' requests.

        The people are locked as filing a request locks them (`lock_subjects`), so a
        request filed meanwhile waits for this merge and then follows it."""
        people = same_person(conn, list(ids))
        dsr_repo.lock_subjects(conn, people)
        pending = dsr_repo.open_requests_for(conn, people, "erasure", sorted(OPEN))
        if not pending:
            return
        if access.policy.allows(access.principal.roles, region, "dsr", "read"):
            raise Conflict(
                f"erasure request {pending[0]} about these records is not finished: "
                "they cannot be merged before it is"
            )
        raise Conflict(
            "a data subject's request about these records is being handled: they cannot "
            "be merged before it is finished"
        )

    def _chosen_values(
        self,
        conn: Connection,
        access: Access,
        region: str,
        spec: EntitySpec,
        request: MergeRequest,
        stored: Mapping[str, Values],
    ) -> Values:
        """The values the survivor takes from the losers, decrypted: each must be
        readable by the caller on the record it comes from (403 naming them)."""
        unreadable = sorted(
            name
            for name, source in request.fields.items()
            if name not in access.readable(region, spec, stored[source])
        )
        if unreadable:
            raise FieldsForbidden(
                f"you may not read {', '.join(unreadable)} on the records they would be taken from",
                unreadable,
            )
        changes: Values = {}
        for source in request.loser_ids:
            names = [n for n, s in request.fields.items() if s == source]
            if names:
                revealed = self._records.codec.reveal(conn, spec, region, stored[source], names)
                changes.update({name: revealed.values[name] for name in names})
        return changes

    def _apply(
        self,
        conn: Connection,
        caller: Caller,
        access: Access,
        database: Database,
        spec: EntitySpec,
        request: MergeRequest,
        stored: Mapping[str, Values],
        changes: Values,
    ) -> dict[str, Any]:
        pipeline = self._records
        region = database.name
        now = pipeline.now()
        survivor = stored[request.survivor_id]
        columns = pipeline.seal_changes(conn, spec, region, survivor, changes)
        columns["updated_at"] = now
        before = {name: survivor[name] for name in columns}
        if not repository.update_record(
            conn, spec, request.survivor_id, expected_version=survivor["version"], values=columns
        ):
            raise Conflict(_RACE)
        moved = self._move(conn, region, spec, request.loser_ids, request.survivor_id, now)
        for loser in request.loser_ids:
            tombstone: Values = {"merged_into": request.survivor_id, "merged_at": now}
            tombstone |= dict.fromkeys(_index_columns(spec))
            tombstone["updated_at"] = now
            if not repository.update_record(
                conn, spec, loser, expected_version=stored[loser]["version"], values=tombstone
            ):
                raise Conflict(_RACE)
        merge_id = str(RecordId.new(repo.MERGE_PREFIX, region, now))
        merge = {
            "id": merge_id,
            "region": region,
            "entity": spec.name,
            "survivor_id": request.survivor_id,
            "loser_ids": list(request.loser_ids),
            "choices": request.fields,
            "moved": moved,
            "survivor_before": {
                "version": int(survivor["version"]) + 1,  # the version the merge leaves
                "columns": repo.encode_columns(before),
            },
            "merged_by": caller.principal.id,
            "merged_at": now,
            "undo_until": now + timedelta(days=self._settings.merge_undo_days),
            "status": repo.MERGED,
            "undone_by": None,
            "undone_at": None,
        }
        repo.insert_merge(conn, merge)
        mark_merged(conn, spec.name, request.ids, reviewed_by=caller.principal.id, reviewed_at=now)
        self._audit(conn, caller, access, spec, merge, "record.merge", sorted(request.fields))
        return merge

    def _move(
        self,
        conn: Connection,
        region: str,
        spec: EntitySpec,
        sources: Sequence[str],
        target: str,
        now: datetime,
    ) -> list[dict[str, str]]:
        """Relink every record linking to one of `sources` to `target` (re-sealed under
        `target`'s key where it was sealed under a source's); what moved, by id."""
        moved: list[dict[str, str]] = []
        for linked, field in links_to(spec):
            for row in repo.linking(conn, linked, field, sources):
                values = dict(row._mapping)
                origin = str(values[field])
                columns = self._records.seal_changes(conn, linked, region, values, {field: target})
                columns["updated_at"] = now
                if not repository.update_record(
                    conn,
                    linked,
                    str(values["id"]),
                    expected_version=values["version"],
                    values=columns,
                ):
                    raise Conflict(_RACE)
                moved.append(
                    {"entity": linked.name, "id": str(values["id"]), "field": field, "from": origin}
                )
        return moved

    def _audit(
        self,
        conn: Connection,
        caller: Caller,
        access: Access,
        spec: EntitySpec,
        merge: Mapping[str, Any],
        action: str,
        fields: list[str],
    ) -> None:
        """One event per chunk of moved records (an event names at most 500 ids), each
        naming the survivor, the losers and the chosen fields; ids and names only."""
        people = [merge["survivor_id"], *merge["loser_ids"]]
        moved = [m["id"] for m in merge["moved"]]
        chunks = [moved[i : i + _AUDIT_CHUNK] for i in range(0, len(moved), _AUDIT_CHUNK)] or [[]]
        for part, chunk in enumerate(chunks, start=1):
            event = self._records.recorder.event(
                caller,
                access.policy.version,
                action=action,
                entity=spec.name,
                record_ids=[*people, *chunk],
                fields=fields,
                details={
                    "merge_id": merge["id"],
                    "survivor_id": merge["survivor_id"],
                    "losers": len(merge["loser_ids"]),
                    "moved": len(moved),
                    "part": part,
                    "parts": len(chunks),
                },
            )
            self._records.recorder.append(conn, merge["region"], event)

    # -- reading and undoing a merge ----------------------------------------------------

    def get(self, caller: Caller, merge_id: str) -> dict[str, Any]:
        """A merge, for whoever holds the `merge` right on its survivor."""
        database, spec = self._route(caller, merge_id)
        access = self._records.access(caller.principal)
        region = database.name
        with self._records.denials(caller, access, region, spec, "merge", (merge_id,)):
            scope = access.require(region, spec, "merge")
            with database.transaction() as conn:
                merge = repo.fetch_merge(conn, merge_id)
                if merge is None or not _survivor_in_scope(conn, access, spec, merge, scope):
                    raise NotFound("no merge has that id in your regions")
                return render_merge(conn, access, merge)

    def undo(self, caller: Caller, merge_id: str) -> dict[str, Any]:
        """Reverse a merge inside its window: the survivor's prior columns back (409 if
        it changed since the merge), the moved records relinked to their loser and
        re-sealed under its key, the losers live again with their indexes recomputed
        from their own decrypted values. Audited as `record.unmerge`."""
        pipeline = self._records
        database, spec = self._route(caller, merge_id)
        access = pipeline.access(caller.principal)
        region = database.name
        with pipeline.denials(caller, access, region, spec, "merge", (merge_id,)):
            scope = access.require(region, spec, "merge")
            with pipeline.write(database, _RACE) as conn:
                merge = repo.fetch_merge(conn, merge_id)
                if merge is None or not _survivor_in_scope(conn, access, spec, merge, scope):
                    raise NotFound("no merge has that id in your regions")
                now = pipeline.now()
                if merge["status"] != repo.MERGED:
                    raise Conflict(f"the merge is {merge['status']}: it cannot be undone")
                if now > merge["undo_until"]:
                    raise Conflict(
                        "the merge's undo window has closed: it is final (the losers' data "
                        "is shredded at the next housekeeping)"
                    )
                undone = repo.close_merge(
                    conn, merge, repo.UNDONE, undone_by=caller.principal.id, undone_at=now
                )
                if undone is None:
                    raise Conflict("the merge was undone or finalised meanwhile")
                self._restore(conn, database, spec, merge, now)
                self._audit(conn, caller, access, spec, undone, "record.unmerge", [])
                return render_merge(conn, access, undone)

    def _restore(
        self, conn: Connection, database: Database, spec: EntitySpec, merge: Values, now: datetime
    ) -> None:
        pipeline = self._records
        region = database.name
        survivor_id = str(merge["survivor_id"])
        losers = [str(i) for i in merge["loser_ids"]]
        repo.lock_records(conn, spec, [survivor_id, *losers])
        survivor = repository.fetch(conn, spec, survivor_id)
        before = merge["survivor_before"]
        if survivor is None or survivor.version != before["version"]:
            raise Conflict(
                f"the {spec.singular} {survivor_id} changed since the merge; undoing it would "
                "lose that change"
            )
        columns = {**repo.decode_columns(before["columns"]), "updated_at": now}
        if not repository.update_record(
            conn, spec, survivor_id, expected_version=survivor.version, values=columns
        ):
            raise Conflict(_RACE)
        for move in reversed(merge["moved"]):
            linked = ENTITIES[move["entity"]]
            row = repository.fetch(conn, linked, move["id"])
            if row is None or getattr(row, move["field"]) != survivor_id:
                continue  # deleted or relinked since the merge: someone decided otherwise
            values = dict(row._mapping)
            changes = {move["field"]: move["from"]}
            columns = pipeline.seal_changes(conn, linked, region, values, changes)
            columns["updated_at"] = now
            if not repository.update_record(
                conn, linked, move["id"], expected_version=values["version"], values=columns
            ):
                raise Conflict(_RACE)
        searchable = [f.name for f in spec.encrypted_fields if f.index_column or f.phonetic_column]
        for loser in losers:
            row = repository.fetch(conn, spec, loser)
            if row is None or row.merged_into != survivor_id or row.erased_at is not None:
                raise Conflict(f"{loser} is no longer this merge's tombstone")
            stored = dict(row._mapping)
            plain = pipeline.codec.reveal(conn, spec, region, stored, searchable).values
            # Re-derive the indexes from the loser's own values; its ciphertexts stay.
            sealed = pipeline.codec.seal_fields(
                conn, spec, region, loser, {n: plain[n] for n in searchable}, loser
            )
            indexes = {k: v for k, v in sealed.items() if k in _index_columns(spec)}
            columns = {**indexes, "merged_into": None, "merged_at": None, "updated_at": now}
            if not repository.update_record(
                conn, spec, loser, expected_version=stored["version"], values=columns
            ):
                raise Conflict(_RACE)
        repo.reopen_pairs(conn, spec.name, [survivor_id, *losers])

    def _route(self, caller: Caller, merge_id: str) -> tuple[Database, EntitySpec]:
        """The region of a merge id (404 for anything we would not look up) and the
        entity its survivor is of. A caller with no `merge` right in that region is
        refused (403, audited) before anything is read, so the answer does not tell
        whether the merge exists."""
        try:
            rid = RecordId.parse(merge_id)
        except InvalidId:
            raise NotFound("no merge has that id (it is not a merge id)") from None
        if (
            rid.prefix != repo.MERGE_PREFIX
            or rid.region not in self._regions
            or rid.region not in caller.principal.regions
        ):
            raise NotFound("no merge has that id in your regions")
        database = self._regions.get(rid.region)
        policy = self._records.access(caller.principal).policy
        with self._records.recorder.denials(
            database,
            caller,
            policy.version,
            entity="merges",
            action="merge",
            record_ids=(merge_id,),
        ):
            if not any(
                policy.scope(caller.principal.roles, rid.region, entity, "merge").permits_any
                for entity in MERGEABLE
            ):
                raise Forbidden(f"your roles do not allow merge in region {rid.region}")
            with database.transaction() as conn:
                merge = repo.fetch_merge(conn, merge_id)
            if merge is None:
                raise NotFound("no merge has that id in your regions")
        return database, ENTITIES[merge["entity"]]


def links_to(spec: EntitySpec) -> list[tuple[EntitySpec, str]]:
    """Every (entity, field) of the catalog that links to a record of `spec`, read-only
    links too (a lead's `converted_contact_id`): all of them move with the person."""
    return [
        (linked, field.name)
        for linked in ENTITIES.values()
        for field in linked.fields
        if field.type == "ref" and field.ref == spec.name
    ]


def _index_columns(spec: EntitySpec) -> list[str]:
    """The blind and phonetic index columns of the entity's fields."""
    return [
        column
        for field in spec.encrypted_fields
        for column in (field.index_column, field.phonetic_column)
        if column is not None
    ]


def _survivor_in_scope(
    conn: Connection, access: Access, spec: EntitySpec, merge: Mapping[str, Any], scope: RowScope
) -> bool:
    table_scope = access.where(spec, scope)
    return repository.fetch(conn, spec, str(merge["survivor_id"]), scope=table_scope) is not None


def render_merge(conn: Connection, access: Access, merge: Mapping[str, Any]) -> dict[str, Any]:
    """A merge as the API shows it to `access`'s principal: ids, field names and times;
    never what it keeps to undo itself (the survivor's prior ciphertexts). The `merge`
    right covers the people merged, not what linked to them: a moved record is listed
    only inside the caller's read scope on its entity (decided in SQL), the others
    (and any deleted since, by an erasure) are counted in `moved_withheld`."""
    region = str(merge["region"])
    by_entity: dict[str, list[str]] = {}
    for move in merge["moved"]:
        by_entity.setdefault(move["entity"], []).append(move["id"])
    visible: set[str] = set()
    for entity, ids in by_entity.items():
        spec = ENTITIES[entity]
        scope = access.policy.scope(access.principal.roles, region, entity, "read")
        if scope.permits_any:
            visible |= repo.visible_ids(conn, spec, ids, access.where(spec, scope))
    shown = [
        {"entity": m["entity"], "id": m["id"], "field": m["field"], "from": m.get("from")}
        for m in merge["moved"]
        if m["id"] in visible
    ]
    return {
        "id": merge["id"],
        "region": region,
        "entity": merge["entity"],
        "survivor_id": merge["survivor_id"],
        "loser_ids": list(merge["loser_ids"]),
        "fields": dict(merge["choices"]),
        "moved": shown,
        "moved_withheld": len(merge["moved"]) - len(shown),
        "status": merge["status"],
        "merged_by": merge["merged_by"],
        "merged_at": to_json_value(merge["merged_at"]),
        "undo_until": to_json_value(merge["undo_until"]),
        "undone_by": merge["undone_by"],
        "undone_at": to_json_value(merge["undone_at"]),
    }
