"""Legal holds: a record, or everything about a person, kept through an erasure.

A hold is placed (`legal_holds` create), listed (read) and released (release) in the
held record's region, and audited there (`hold.create`, `hold.release`). Placing or
releasing a hold and carrying out an erasure exclude each other (`repo.lock_holds`):
a hold is never placed on a record an erasure is deleting, nor released under an
erasure that planned to keep what it holds. When a hold ends, what it alone kept
from an erasure goes with it (`kept.py`; an expired hold at the next housekeeping).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import Connection

from bastion.clock import Clock
from bastion.crm.catalog import ENTITIES_BY_PREFIX, EntitySpec
from bastion.crm.codec import RecordCodec
from bastion.crm.cursors import CursorCodec, Position, advanced
from bastion.crm.pipeline import Preservation, Preserved
from bastion.crm.records import to_json_value
from bastion.crypto.keyring import Keyring
from bastion.dsr import kept
from bastion.dsr import repository as repo
from bastion.dsr.erasure import active_holds
from bastion.dsr.gate import Gate
from bastion.dsr.inputs import check_text, invalid, moment
from bastion.errors import Conflict, FieldError, NotFound, ValidationFailed
from bastion.policy.engine import Policy
from bastion.principals.caller import Caller
from bastion.residency.databases import Regions
from bastion.residency.ids import InvalidId, RecordId, region_of

HOLD_PREFIX = "hld"


class LegalHolds:
    def __init__(
        self, *, gate: Gate, regions: Regions, keys: Keyring, clock: Clock, cursors: CursorCodec
    ) -> None:
        self._gate = gate
        self._cursors = cursors
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
            if not repo.record_exists(conn, spec.name, target):
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

    def find(
        self,
        caller: Caller,
        *,
        region: str | None,
        target_id: str | None,
        active: bool,
        limit: int,
        cursor: str | None,
    ) -> dict[str, Any]:
        """Holds newest first, across the caller's regions, a page at a time."""
        regions = self._gate.listed_regions(caller, region, "legal_holds", "read")
        if target_id is not None and (home := region_of(target_id)) is not None:
            # A record's holds live in its own region; no other region hears its id.
            regions = [name for name in regions if name == home]
        fingerprint = json.dumps(["legal-holds", regions, target_id, active])
        # One position per region: a region's query never carries another's hold id.
        positions: dict[str, Position] = {}
        if cursor is not None:
            positions = self._cursors.open_positions(fingerprint, cursor)
        now = self._clock.now()
        holds: list[tuple[dict[str, Any], str]] = []
        for name in regions:
            at = positions.get(name)
            with self._regions.get(name).transaction() as conn:
                found = repo.list_holds(
                    conn,
                    target_id=target_id,
                    active_at=now if active else None,
                    before=None if at is None else at.id,
                    limit=limit + 1,
                )
            holds += [(hold, name) for hold in found]
        holds.sort(key=lambda item: str(item[0]["id"]), reverse=True)
        page, more = holds[:limit], len(holds) > limit
        next_cursor = None
        if more:
            emitted = [(name, Position(str(h["id"]), str(h["id"]))) for h, name in page]
            next_cursor = self._cursors.seal_positions(fingerprint, advanced(positions, emitted))
        return {"data": [_render(h, now) for h, _name in page], "next_cursor": next_cursor}

    def release(self, caller: Caller, hold_id: str) -> dict[str, Any]:
        """End a hold. What it alone kept from an erasure goes at once (`kept.sweep`);
        refused while an erasure touching its target runs (its plan counts on it)."""
        region = self._gate.route(caller, hold_id, HOLD_PREFIX, "legal hold")
        policy = self._gate.allow(caller, region, "legal_holds", "release", [hold_id])
        now = self._clock.now()
        with self._regions.get(region).transaction(write=True) as conn:
            repo.lock_holds(conn, region)
            stored = repo.fetch_hold(conn, hold_id)
            if stored is None:
                raise NotFound("no legal hold has that id")
            target = str(stored["target_id"])
            running = repo.running_erasures_touching(conn, target)
            if running:
                raise Conflict(
                    f"erasure {running[0]} is being carried out on this record and counts on "
                    "the hold; release it once the erasure ends"
                )
            if not repo.release_hold(conn, hold_id, now, caller.principal.id):
                raise Conflict("the legal hold is already released")
            deleted = self._sweep(conn, caller, region, policy, target, now)
            self._gate.audit(
                conn,
                caller,
                region,
                policy,
                "hold.release",
                [hold_id, target],
                "legal_holds",
                {"erased": len(deleted)},
            )
            released = repo.fetch_hold(conn, hold_id)
        assert released is not None
        return _render(released, now)

    def _sweep(
        self,
        conn: Connection,
        caller: Caller,
        region: str,
        policy: Policy,
        target: str,
        now: datetime,
    ) -> list[str]:
        """Sweep the finished erasures that kept `target`; the records deleted."""
        deleted: list[str] = []
        for request_id in repo.erasures_keeping(conn):
            request = repo.fetch_request(conn, request_id, lock=True)
            steps = repo.done_steps(conn, request_id)
            if request is None or not kept.keeping(request, steps, target):
                continue
            swept = kept.sweep(conn, self._keys, request, steps, now)
            if swept is None:
                continue
            for chunk in kept.chunks(swept.deleted):
                self._gate.audit(
                    conn,
                    caller,
                    region,
                    policy,
                    "dsr.erasure.kept_deleted",
                    [request_id, *chunk],
                    details={"records": len(chunk)},
                )
            if swept.remaining == 0:
                self._gate.audit(
                    conn,
                    caller,
                    region,
                    policy,
                    f"dsr.erasure.{kept.DONE}",
                    [request_id],
                    details={"keys": swept.keys_destroyed},
                )
            deleted += swept.deleted
        return deleted


def _render(stored: Mapping[str, Any], now: datetime) -> dict[str, Any]:
    """A hold as the API shows it: every column of `legal_holds`, and `active`
    (`/openapi.json`'s `LegalHold` is made from the same columns)."""
    shown = {k: to_json_value(v) for k, v in stored.items()}
    expired = stored["expires_at"] is not None and stored["expires_at"] <= now
    shown["active"] = stored["released_at"] is None and not expired
    return shown


def preservation(clock: Clock) -> Preservation:
    """What `Pipeline.preservation` asks, answered from legal holds and erasures: a
    record under an active hold (on it, or on the person it is about) may change but
    not be deleted; a record that outlived its data subject's erasure was kept (for a
    hold or a retention rule) and may neither change nor be deleted."""

    def why(conn: Connection, spec: EntitySpec, stored: Mapping[str, Any]) -> Preserved | None:
        record_id = str(stored["id"])
        subject = RecordCodec.key_subject(spec, record_id, stored)
        if subject != record_id and repo.is_erased(conn, subject):
            return ("kept", "was kept after its data subject's erasure")
        holds = active_holds(conn, {record_id, subject}, clock.now())
        if holds:
            hold = next(iter(holds.values()))
            return ("held", f"is under legal hold {hold['id']}")
        return None

    return why
