"""Erasure: what to keep and why, then deleting, shelling and shredding the rest.

The plan (made once, in the `discover` step, and stored with the request so a
resumed job follows the same one) decides per record found:

- a legal hold on the data subject holds everything: nothing is erased;
- a legal hold on a record keeps that record; its encrypted fields are re-sealed
  under the hold's own data key (`preserve`), so shredding the person's key does
  not destroy evidence a court ordered kept — and releasing the hold later and
  erasing again shreds that key too;
- a record about the person that a catalog retention rule covers (a business
  e-mail: commercial correspondence) is kept, re-sealed under a retention key of
  the request, and says why;
- the person's own records (contact, lead) become shells: every personal field,
  encrypted value and blind index cleared, `erased_at` set; the row stays so kept
  records still link to something, and it reads as 410 Gone;
- activities and cases about the person are deleted — unless a kept record still
  links to them, in which case they are kept too and the result says so;
- business records that merely name the person (a deal whose contact they were)
  are the organisation's, not the person's: they are pseudonymised — their link
  now points at the erased shell, and nothing in them identifies the person;
- the employer account is not the person's data and is left alone.

Then every data key of the person is destroyed (`shred`): whatever ciphertext is
left anywhere, backups included (once old KEK versions are retired), is noise.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import Connection, delete, or_, select, update

from bastion.crm.catalog import ENTITIES, EntitySpec
from bastion.crm.tables import ENTITY_TABLES
from bastion.crypto.envelope import FieldContext, key_id_of, reseal
from bastion.crypto.keyring import Keyring
from bastion.dsr.discovery import Discovery, Item
from bastion.dsr.tables import legal_holds

Action = Literal["shell", "delete", "pseudonymise", "keep"]


@dataclass(frozen=True, slots=True)
class Decision:
    entity: str
    record_id: str
    action: Action
    reason_code: str | None = None
    reason: str | None = None
    hold_id: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "entity": self.entity,
            "record_id": self.record_id,
            "action": self.action,
            "reason_code": self.reason_code,
            "reason": self.reason,
            "hold_id": self.hold_id,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Decision:
        return cls(
            data["entity"],
            data["record_id"],
            data["action"],
            data.get("reason_code"),
            data.get("reason"),
            data.get("hold_id"),
        )


def active_holds(
    conn: Connection, targets: Iterable[str], now: datetime
) -> dict[str, dict[str, Any]]:
    """Active legal holds on any of `targets`, by target id."""
    ids = list(dict.fromkeys(targets))
    found: dict[str, dict[str, Any]] = {}
    for start in range(0, len(ids), 500):
        rows = conn.execute(
            select(legal_holds).where(
                legal_holds.c.target_id.in_(ids[start : start + 500]),
                legal_holds.c.released_at.is_(None),
                or_(legal_holds.c.expires_at.is_(None), legal_holds.c.expires_at > now),
            )
        )
        for row in rows:
            found.setdefault(row.target_id, dict(row._mapping))
    return found


def plan(conn: Connection, discovery: Discovery, now: datetime) -> list[Decision]:
    items = [i for i in discovery.items if i.relation != "employer"]
    holds = active_holds(conn, [*discovery.subjects, *(i.record_id for i in items)], now)
    person_hold = next((holds[s] for s in discovery.subjects if s in holds), None)
    decisions: dict[str, Decision] = {}
    for item in items:
        hold = person_hold or holds.get(item.record_id)
        if hold is not None:
            decisions[item.record_id] = Decision(
                item.entity,
                item.record_id,
                "keep",
                "legal-hold",
                f"legal hold {hold['id']}: {hold['reason']}",
                str(hold["id"]),
            )
        elif item.relation == "subject":
            decisions[item.record_id] = Decision(item.entity, item.record_id, "shell")
        elif item.relation == "linked":
            decisions[item.record_id] = Decision(
                item.entity,
                item.record_id,
                "pseudonymise",
                "business-record",
                "the organisation's record; its link now points at the erased shell",
            )
        elif (rule := _retained(item)) is not None:
            decisions[item.record_id] = Decision(
                item.entity, item.record_id, "keep", f"retention:{rule[0]}", rule[1]
            )
        else:
            decisions[item.record_id] = Decision(item.entity, item.record_id, "delete")
    _keep_what_kept_records_need(conn, decisions)
    return list(decisions.values())


def _retained(item: Item) -> tuple[str, str] | None:
    for rule in item.spec.retention:
        if item.values.get(rule.field) in rule.values:
            return rule.code, rule.reason
    return None


def _keep_what_kept_records_need(conn: Connection, decisions: dict[str, Decision]) -> None:
    """A record to be deleted that a surviving record links to is kept instead."""
    shelled = {rid for rid, d in decisions.items() if d.action == "shell"}
    changed = True
    while changed:
        changed = False
        doomed = {rid for rid, d in decisions.items() if d.action == "delete"}
        for record_id in sorted(doomed):
            decision = decisions[record_id]
            if _referenced_by_survivor(conn, ENTITIES[decision.entity], record_id, doomed, shelled):
                decisions[record_id] = Decision(
                    decision.entity,
                    record_id,
                    "keep",
                    "referenced",
                    "kept records link to it; pseudonymised",
                )
                changed = True


def _referenced_by_survivor(
    conn: Connection, target: EntitySpec, record_id: str, doomed: set[str], shelled: set[str]
) -> bool:
    for spec in ENTITIES.values():
        table = ENTITY_TABLES[spec.name]
        for field in spec.fields:
            if field.type != "ref" or field.ref != target.name:
                continue
            rows = conn.execute(
                select(table.c.id).where(table.c[field.name] == record_id)
            ).scalars()
            for other in map(str, rows):
                if other in doomed:
                    continue
                if other in shelled and field.read_only:
                    continue  # a shell's conversion links are cleared when it is shelled
                return True
    return False


# -- the steps ------------------------------------------------------------------------


def retention_key(request_id: str) -> str:
    """The key subject that seals what an erasure request keeps under retention rules."""
    return f"retained:{request_id}"


def preserve(
    keys: Keyring,
    conn: Connection,
    region: str,
    request_id: str,
    subjects: list[str],
    decisions: list[Decision],
    stored: Mapping[str, dict[str, Any]],
) -> int:
    """Kept records sealed under a subject's key are re-sealed under the hold's key, or
    the request's retention key, before the person's key is destroyed. Idempotent;
    returns how many values were re-sealed."""
    changed = 0
    for decision in decisions:
        values = stored.get(decision.record_id)
        if decision.action != "keep" or values is None:
            continue
        spec = ENTITIES[decision.entity]
        columns: dict[str, Any] = {}
        for field in spec.encrypted_fields:
            blob = values.get(field.name)
            if blob is None:
                continue
            blob = bytes(blob)
            old = keys.dek_by_id(conn, region, key_id_of(blob))
            if old.subject_id not in subjects:
                continue  # someone else's key: not the person's data
            keeper = decision.hold_id or retention_key(request_id)
            new = keys.dek_for_subject(conn, region, keeper)
            context = FieldContext(region, spec.table_name, decision.record_id, field.name)
            columns[field.name] = reseal(blob, context, old, new)
        if columns:
            table = ENTITY_TABLES[spec.name]
            conn.execute(update(table).where(table.c.id == decision.record_id).values(**columns))
            changed += len(columns)
    return changed


def delete_records(conn: Connection, decisions: list[Decision]) -> list[str]:
    """Delete the records planned for deletion (dependents first); the ids deleted now."""
    deleted: list[str] = []
    order = ("activities", "cases", "opportunities", "accounts")
    by_entity: dict[str, list[str]] = {}
    for decision in decisions:
        if decision.action == "delete":
            by_entity.setdefault(decision.entity, []).append(decision.record_id)
    for entity in sorted(by_entity, key=lambda e: order.index(e) if e in order else len(order)):
        table = ENTITY_TABLES[entity]
        ids = by_entity[entity]
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            present = list(conn.execute(select(table.c.id).where(table.c.id.in_(chunk))).scalars())
            if present:
                conn.execute(delete(table).where(table.c.id.in_(present)))
                deleted += [str(i) for i in present]
    return deleted


def shell(conn: Connection, decisions: list[Decision], now: datetime) -> tuple[list[str], int]:
    """Turn the person's own records into shells; (ids shelled now, indexes cleared)."""
    shelled: list[str] = []
    indexes = 0
    for decision in decisions:
        if decision.action != "shell":
            continue
        spec = ENTITIES[decision.entity]
        table = ENTITY_TABLES[spec.name]
        current = conn.execute(
            select(table.c.erased_at, table.c.version).where(table.c.id == decision.record_id)
        ).one_or_none()
        if current is None or current.erased_at is not None:
            continue
        columns: dict[str, Any] = {"erased_at": now, "updated_at": now, "custom": None}
        for field in spec.fields:
            if field.personal or field.encrypted:
                columns[field.name] = None
            if field.index_column is not None:
                columns[field.index_column] = None
                indexes += 1
            if field.read_only and field.type == "ref" and field.name != "converted_contact_id":
                columns[field.name] = None
        columns = {k: v for k, v in columns.items() if k in table.c and not table.c[k].primary_key}
        for field in spec.fields:
            if field.required and field.name in columns:
                # A NOT NULL personal column (a last name) keeps an empty placeholder.
                columns[field.name] = b"" if field.encrypted else "(erased)"
        columns["version"] = int(current.version) + 1
        conn.execute(update(table).where(table.c.id == decision.record_id).values(**columns))
        shelled.append(decision.record_id)
    return shelled, indexes
