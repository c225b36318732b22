"""Legal holds: a record, or everything about a person, kept through an erasure.

A hold is placed (`legal_holds` create), listed (read) and released (release) in the
held record's region, and audited there (`hold.create`, `hold.release`). Placing a
hold and carrying out an erasure exclude each other (`repo.lock_holds`): a hold is
never placed on a record an erasure is deleting. When a hold ends, what it alone
kept from an erasure goes with it.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, delete, select

from bastion.clock import Clock
from bastion.crm.catalog import ENTITIES_BY_PREFIX
from bastion.crm.codec import RecordCodec
from bastion.crm.records import to_json_value
from bastion.crm.tables import ENTITY_TABLES
from bastion.crypto.keyring import Keyring
from bastion.dsr import repository as repo
from bastion.dsr.gate import Gate
from bastion.dsr.inputs import check_text, invalid, moment, spec_of
from bastion.errors import Conflict, FieldError, NotFound, ValidationFailed
from bastion.principals.caller import Caller
from bastion.residency.databases import Regions
from bastion.residency.ids import InvalidId, RecordId

HOLD_PREFIX = "hld"
_LIST_MAX = 500


class LegalHolds:
    def __init__(self, *, gate: Gate, regions: Regions, keys: Keyring, clock: Clock) -> None:
        self._gate = gate
        self._regions = regions
        self._keys = keys
        self._clock = clock

    def create(self, caller: Caller, body: Mapping[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(body) - {"target_id", "reason", "expires_at"})
        if unknown:
            raise ValidationFailed(
                "invalid legal hold",
                [FieldError(n, "is not a field of a legal hold") for n in unknown],
            )
        target = body.get("target_id")
        if not isinstance(target, str):
            raise invalid("target_id", "must be a record id")
        check_text("reason", body.get("reason"))
        expires = moment(body.get("expires_at"), "expires_at")
        try:
            parsed = RecordId.parse(target)
        except InvalidId:
            raise invalid("target_id", "must be a record id") from None
        if parsed.prefix not in ENTITIES_BY_PREFIX or parsed.region not in self._regions:
            raise invalid("target_id", "must be the id of a CRM record")
        region = parsed.region
        policy = self._gate.allow(caller, region, "legal_holds", "create", [target])
        now = self._clock.now()
        if expires is not None and expires <= now:
            raise invalid("expires_at", "must be in the future")
        hold_id = str(RecordId.new(HOLD_PREFIX, region, now))
        spec = ENTITIES_BY_PREFIX[parsed.prefix]
        with self._regions.get(region).transaction(write=True) as conn:
            repo.lock_holds(conn, region)
            table = ENTITY_TABLES[spec.name]
            if conn.execute(select(table.c.id).where(table.c.id == target)).first() is None:
                raise NotFound(f"no {spec.singular} has that id")
            running = repo.running_erasures_touching(conn, target)
            if running:
                raise Conflict(
                    f"erasure {running[0]} is being carried out on this record; a hold placed "
                    "now could not be honoured — cancel it first, or hold after it ends"
                )
            repo.insert_hold(
                conn,
                {
                    "id": hold_id,
                    "region": region,
                    "target_id": target,
                    "reason": body["reason"],
                    "created_by": caller.principal.id,
                    "created_at": now,
                    "expires_at": expires,
                },
            )
            self._gate.audit(
                conn, caller, region, policy, "hold.create", [hold_id, target], "legal_holds"
            )
            stored = repo.fetch_hold(conn, hold_id)
        assert stored is not None
        return _render(stored, now)

    def list(
        self, caller: Caller, *, region: str | None, target_id: str | None, active: bool
    ) -> dict[str, Any]:
        regions = self._gate.listed_regions(caller, region, "legal_holds", "read")
        now = self._clock.now()
        holds: list[dict[str, Any]] = []
        for name in regions:
            with self._regions.get(name).transaction() as conn:
                holds += repo.list_holds(
                    conn, target_id=target_id, active_at=now if active else None, limit=_LIST_MAX
                )
        return {"data": [_render(h, now) for h in holds], "next_cursor": None}

    def release(self, caller: Caller, hold_id: str) -> dict[str, Any]:
        region = self._gate.route(caller, hold_id, HOLD_PREFIX, "legal hold")
        policy = self._gate.allow(caller, region, "legal_holds", "release", [hold_id])
        now = self._clock.now()
        with self._regions.get(region).transaction(write=True) as conn:
            stored = repo.fetch_hold(conn, hold_id)
            if stored is None:
                raise NotFound("no legal hold has that id")
            if stored["released_at"] is not None:
                raise Conflict("the legal hold is already released")
            repo.release_hold(conn, hold_id, now, caller.principal.id)
            erased = self._erase_released(conn, region, stored)
            self._gate.audit(
                conn,
                caller,
                region,
                policy,
                "hold.release",
                [hold_id, stored["target_id"]],
                "legal_holds",
                {"erased": erased},
            )
            released = repo.fetch_hold(conn, hold_id)
        assert released is not None
        return _render(released, now)

    def _erase_released(self, conn: Connection, region: str, hold: Mapping[str, Any]) -> bool:
        """When a hold ends, what it alone kept from an erasure goes: a held activity or
        case about a person who was since erased is deleted, and the hold's key (which
        sealed what it kept) is destroyed. Whether a record was erased."""
        target = str(hold["target_id"])
        spec = spec_of(target)
        table = ENTITY_TABLES[spec.name]
        row = conn.execute(select(table).where(table.c.id == target)).one_or_none()
        erased = False
        if row is not None and not spec.data_subject and spec.key_subject_from:
            values = dict(row._mapping)
            subject = RecordCodec.key_subject(spec, target, values)
            if subject != target and _is_erased(conn, subject):
                conn.execute(delete(table).where(table.c.id == target))
                erased = True
        self._keys.shred(conn, region, str(hold["id"]))
        return erased


def _render(stored: Mapping[str, Any], now: datetime) -> dict[str, Any]:
    shown = {k: to_json_value(v) for k, v in stored.items()}
    expired = stored["expires_at"] is not None and stored["expires_at"] <= now
    shown["active"] = stored["released_at"] is None and not expired
    return shown


def _is_erased(conn: Connection, record_id: str) -> bool:
    table = ENTITY_TABLES[spec_of(record_id).name]
    if "erased_at" not in table.c:
        return False
    erased_at = conn.execute(
        select(table.c.erased_at).where(table.c.id == record_id)
    ).scalar_one_or_none()
    return erased_at is not None
