"""The steps every record operation shares: route, authorize, encrypt, persist, audit.

`RecordService` (get, list, create, update, delete) and lead conversion are built
on `Pipeline`, so the steps run the same way, in the same order, everywhere:

1. route     — the record id names its region; an unknown region, a wrong entity
               prefix or a region outside the principal's is a 404 and nothing is
               queried (`route`).
2. authorize — `crm.access.Access`: the action, the row scope (a WHERE clause) and
               the field masks, from the compiled policy.
3. validate  — the body against the field catalog (`crm.schemas`).
4. encrypt / decrypt — `crm.codec`: encrypted fields are sealed under the data
               subject's key on the way in (`insert`, `seal_changes`) and only the
               fields the caller may read are opened on the way out (`show`).
5. persist   — one transaction in the record's region database (`write`);
               optimistic concurrency on `version`.
6. audit     — `crm.auditing`: the event goes into that same transaction.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import ColumnElement, Connection
from sqlalchemy.exc import IntegrityError

from bastion.clock import Clock
from bastion.crm import repository
from bastion.crm.access import Access
from bastion.crm.auditing import Recorder
from bastion.crm.catalog import ENTITIES, EntitySpec
from bastion.crm.codec import RecordCodec
from bastion.crm.records import Record, render
from bastion.crypto.keyring import Keyring
from bastion.errors import (
    BastionError,
    Conflict,
    FieldError,
    Gone,
    NotFound,
    PreconditionFailed,
    ResidencyViolation,
    ValidationFailed,
)
from bastion.policy.engine import Policy
from bastion.principals.caller import Caller
from bastion.principals.tokens import Principal
from bastion.residency.databases import Database, Regions
from bastion.residency.ids import InvalidId, RecordId

Values = dict[str, Any]


# Why a stored record must stay as it is: ("held", why) — a legal hold on it or on its
# data subject; it may change but not go — or ("kept", why) — an erasure kept it for a
# hold or a retention rule; neither. None: nothing preserves it. The DSR layer sets
# `Pipeline.preservation` (`dsr.holds.preservation`); on its own the pipeline
# preserves nothing.
Preserved = tuple[Literal["held", "kept"], str]
Preservation = Callable[[Connection, EntitySpec, Mapping[str, Any]], Preserved | None]


def _nothing_preserved(conn: Connection, spec: EntitySpec, stored: Mapping[str, Any]) -> None:
    return None


ChangeKind = Literal["created", "updated", "deleted"]


@dataclass(frozen=True, slots=True)
class Change:
    """A record written, as the change feed hears of it inside the write's transaction.

    `fields` names what the write set. `before` is the stored row before an update or
    delete (encrypted fields still sealed); `after` the record's values after a create
    or update — where the write changed an encrypted field, its new value is in the
    clear there, so a feed must copy out only what it may keep (`automation.feed`
    keeps plain, non-personal fields alone)."""

    region: str
    spec: EntitySpec
    record_id: str
    kind: ChangeKind
    fields: tuple[str, ...]
    before: Mapping[str, Any] | None
    after: Mapping[str, Any]
    at: datetime


# Hears every record write in the write's own transaction (so what it writes commits
# with the change or not at all). Automation sets `Pipeline.changes`
# (`automation.feed.ChangeFeed`); on its own the pipeline tells nobody.
ChangeFeed = Callable[[Connection, Caller, Sequence[Change]], None]


def _nobody_listens(conn: Connection, caller: Caller, changes: Sequence[Change]) -> None:
    return None


class MergedRecord(Conflict):
    """The record is a tombstone of a merge (`quality.merge`): it was merged into
    `survivor_id`, which now holds the person. Writing to it is a conflict naming the
    survivor; a read answers `MovedToSurvivor` instead when the caller may read it."""

    slug = "merged"
    title = "Merged"

    def __init__(self, spec: EntitySpec, survivor_id: str) -> None:
        super().__init__(
            f"the {spec.singular} was merged into {survivor_id}; read and write that one"
        )
        self.spec = spec
        self.survivor_id = survivor_id

    @property
    def extensions(self) -> dict[str, object]:
        return {"merged_into": self.survivor_id}


class MovedToSurvivor(BastionError):
    """301 to the survivor of a merge, for a caller who may read it (RFC 9110 15.4.2:
    the loser's id is permanently replaced; the body is a problem naming the survivor)."""

    status = 301
    slug = "merged"
    title = "Merged"

    def __init__(self, merged: MergedRecord) -> None:
        super().__init__(merged.detail)
        self.survivor_id = merged.survivor_id
        self.location = f"/v1/{merged.spec.name}/{merged.survivor_id}"

    @property
    def extensions(self) -> dict[str, object]:
        return {"merged_into": self.survivor_id}


class Pipeline:
    def __init__(
        self,
        *,
        regions: Regions,
        policy: Callable[[], Policy],
        clock: Clock,
        keys: Keyring,
        audit_notify: Callable[[str], None] | None = None,
    ) -> None:
        self._regions = regions
        self._policy = policy
        self._clock = clock
        self.keys = keys
        self.codec = RecordCodec(keys)
        self.recorder = Recorder(clock, audit_notify)
        self.preservation: Preservation = _nothing_preserved
        self.changes: ChangeFeed = _nobody_listens

    def access(self, principal: Principal) -> Access:
        """The caller's rights under the policy in force now (fixed for the call)."""
        return Access(self._policy(), principal)

    def now(self) -> datetime:
        return self._clock.now()

    @property
    def regions(self) -> Regions:
        return self._regions

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

    def database(self, region: str) -> Database:
        return self._regions.get(region)

    @contextmanager
    def write(self, database: Database, integrity_detail: str) -> Iterator[Connection]:
        """A write transaction; a constraint violation (a race with a delete) is a 409.
        After the commit the audit sequencer is told there is something to chain."""
        try:
            with database.transaction(write=True) as conn:
                yield conn
        except IntegrityError:
            raise Conflict(integrity_detail) from None
        self.recorder.committed(database)

    @contextmanager
    def denials(
        self,
        caller: Caller,
        access: Access,
        region: str,
        spec: EntitySpec,
        action: str,
        record_ids: tuple[str, ...] = (),
    ) -> Iterator[None]:
        """Audit a 403 (or a 404 for `record_ids`) raised inside the block."""
        with self.recorder.denials(
            self.database(region),
            caller,
            access.policy.version,
            entity=spec.name,
            action=action,
            record_ids=record_ids,
        ):
            yield

    def reveals_survivor(
        self, conn: Connection, access: Access, region: str, merged: MergedRecord
    ) -> bool:
        """Whether a caller who reached a merge's tombstone by id may be told where the
        person went (301 on a read, 409 naming the survivor on a write): only if it may
        read the survivor. To anyone else the tombstone is a record that does not exist
        (404): the survivor's id, and that a merge happened, are the survivor's data."""
        spec = merged.spec
        scope = access.policy.scope(access.principal.roles, region, spec.name, "read")
        return scope.permits_any and repository.exists(
            conn, spec, merged.survivor_id, scope=access.where(spec, scope)
        )

    def fetch(
        self,
        conn: Connection,
        database: Database,
        spec: EntitySpec,
        record_id: str,
        scope: ColumnElement[bool] | None = None,
    ) -> Values | None:
        """The stored record (encrypted fields still sealed), if it exists inside `scope`."""
        row = repository.fetch(conn, spec, record_id, scope=scope)
        if row is None:
            return None
        values = dict(row._mapping)
        check_region(values, database)
        if values.get("erased_at") is not None:
            raise Gone(
                f"the {spec.singular} was erased at its data subject's request; "
                "only a pseudonymous shell remains"
            )
        if values.get("merged_into") is not None:
            raise MergedRecord(spec, str(values["merged_into"]))
        return values

    def insert(
        self,
        conn: Connection,
        spec: EntitySpec,
        record_id: str,
        region: str,
        now: datetime,
        values: Mapping[str, Any],
        *,
        indexes: Mapping[str, bytes] | None = None,
    ) -> None:
        """Insert a new record: encrypted fields sealed under its data subject's key.
        `record_id` was generated for this insert (`RecordId.new`); `indexes`: blind
        indexes of `values` computed already (the duplicate check's), by field name."""
        subject = self.codec.key_subject(spec, record_id, values)
        key = None
        if subject == record_id and any(
            values.get(f.name) is not None for f in spec.encrypted_fields
        ):
            # A person created just now (its id was generated for this insert) cannot
            # have a key yet: make it without looking for one or guarding a race.
            key = self.keys.new_subject_deks(conn, region, [subject])[subject]
        sealed = self.codec.seal_fields(
            conn, spec, region, record_id, values, subject, key=key, indexes=indexes
        )
        repository.insert_record(
            conn,
            spec,
            {
                **sealed,
                "id": record_id,
                "region": region,
                "version": 1,
                "created_at": now,
                "updated_at": now,
            },
        )

    def seal_changes(
        self,
        conn: Connection,
        spec: EntitySpec,
        region: str,
        stored: Mapping[str, Any],
        changes: Mapping[str, Any],
    ) -> Values:
        """Column values for an update. If the change moves the record to another data
        subject (an activity relinked to another person), every encrypted field is
        re-encrypted under the new subject's key, so erasing either person shreds
        exactly what is theirs."""
        record_id = str(stored["id"])
        before = self.codec.key_subject(spec, record_id, stored)
        after = self.codec.key_subject(spec, record_id, {**stored, **changes})
        if before == after:
            return self.codec.seal_fields(conn, spec, region, record_id, changes, after)
        names = [f.name for f in spec.encrypted_fields]
        current = self.codec.reveal(conn, spec, region, stored, names).values
        merged = {**{n: current[n] for n in names}, **changes}
        return self.codec.seal_fields(conn, spec, region, record_id, merged, after, fields=names)

    def show(
        self,
        conn: Connection,
        access: Access,
        region: str,
        spec: EntitySpec,
        stored: Mapping[str, Any],
    ) -> Record:
        """The record as this caller may see it: only readable fields, decrypted (what
        an erasure kept, only for those who may see data subjects' requests)."""
        readable = access.readable(region, spec, stored)
        revealed = self.codec.reveal(
            conn, spec, region, stored, readable, restricted_too=access.sees_kept_data(region)
        )
        return render(
            spec,
            revealed.values,
            readable,
            erased=revealed.erased,
            restricted=revealed.restricted,
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
