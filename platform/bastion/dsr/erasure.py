"""Erasure: what to keep and why, then deleting, shelling and shredding the rest.

The plan (made once, in the `discover` step, and stored with the request so a
resumed job follows the same one) decides per record found:

- a legal hold on the data subject holds everything: nothing is erased, and the
  person's key is not destroyed;
- a legal hold on a record keeps that record;
- a record about the person that a catalog retention rule covers (a business
  e-mail: commercial correspondence) is kept, and says why;
- the person's own records (contact, lead) become shells: every personal field,
  encrypted value and blind index cleared, `erased_at` set; the row stays so kept
  records still link to something, and it reads as 410 Gone;
- activities and cases about the person are deleted;
- business records that merely name the person (a deal whose contact they were)
  are the organisation's, not the person's: they stay, and their link now points
  at the erased shell — a pseudonym (they hold no personal field of the person;
  their own free text is the organisation's and is not rewritten);
- the employer account is not the person's data and is left alone.

What is kept has its encrypted fields re-sealed under the request's own key
(`preserve`, `kept_key`), so every data key of the person can then be destroyed
(`shred`): whatever ciphertext is left anywhere, backups included (once old KEK
versions are retired), is noise. Kept records go when nothing keeps them any more
(`kept.sweep`). Nothing in the catalog links to an activity or a case, so deleting
them never leaves a dangling link (tests/unit/dsr/test_rules.py checks it stays so).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import Connection, delete, or_, select, update
from typing_extensions import TypedDict

from bastion.automation import repository as automation
from bastion.automation import webhook_repository as webhooks
from bastion.crm.catalog import ENTITIES, EntitySpec
from bastion.crm.codec import KEPT_PREFIX
from bastion.crm.tables import ENTITY_TABLES, import_rows
from bastion.crypto.envelope import FieldContext, key_id_of, reseal
from bastion.crypto.keyring import Keyring
from bastion.dsr.discovery import Discovery, Item
from bastion.dsr.tables import legal_holds
from bastion.wire import closed, extensible

Action = Literal["shell", "delete", "pseudonymise", "keep"]
_BATCH = 500


@closed
class ErasureDecision(TypedDict):
    """What an erasure does with one record it found, and why."""

    entity: str
    record_id: str
    action: Action
    reason_code: str | None
    reason: str | None
    hold_id: str | None
    """The legal hold that keeps the record, if one does."""


@extensible
class KeptRecord(TypedDict):
    """A record an erasure kept, and why (a legal hold, a retention rule)."""

    entity: str
    record_id: str
    reason_code: str | None
    reason: str | None


@dataclass(frozen=True, slots=True)
class Decision:
    entity: str
    record_id: str
    action: Action
    reason_code: str | None = None
    reason: str | None = None
    hold_id: str | None = None

    def as_dict(self) -> ErasureDecision:
        return {
            "entity": self.entity,
            "record_id": self.record_id,
            "action": self.action,
            "reason_code": self.reason_code,
            "reason": self.reason,
            "hold_id": self.hold_id,
        }

    def kept_record(self) -> KeptRecord:
        """The record as results and certificates name it, if the decision keeps it."""
        return {
            "entity": self.entity,
            "record_id": self.record_id,
            "reason_code": self.reason_code,
            "reason": self.reason,
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
    for start in range(0, len(ids), _BATCH):
        rows = conn.execute(
            select(legal_holds).where(
                legal_holds.c.target_id.in_(ids[start : start + _BATCH]),
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
    return list(decisions.values())


def _retained(item: Item) -> tuple[str, str] | None:
    for rule in item.spec.retention:
        if item.values.get(rule.field) in rule.values:
            return rule.code, rule.reason
    return None


def retention_years(spec: EntitySpec, values: Mapping[str, Any]) -> int:
    """How many years the catalog's retention rules keep a record with these values
    (0: none applies). Rules test plain fields, so stored rows answer as they are."""
    return max(
        (rule.years for rule in spec.retention if values.get(rule.field) in rule.values),
        default=0,
    )


# -- the steps ------------------------------------------------------------------------


def kept_key(request_id: str) -> str:
    """The key subject that seals what an erasure request keeps (held or retained)."""
    return f"{KEPT_PREFIX}{request_id}"


def preserve(
    keys: Keyring,
    conn: Connection,
    region: str,
    request_id: str,
    subjects: list[str],
    decisions: list[Decision],
    stored: Mapping[str, dict[str, Any]],
) -> int:
    """Kept records sealed under a subject's key are re-sealed under the request's
    `kept_key` before the person's key is destroyed. Idempotent; returns how many
    values were re-sealed."""
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
            new = keys.dek_for_subject(conn, region, kept_key(request_id))
            context = FieldContext(region, spec.table_name, decision.record_id, field.name)
            columns[field.name] = reseal(blob, context, old, new)
        if columns:
            table = ENTITY_TABLES[spec.name]
            conn.execute(update(table).where(table.c.id == decision.record_id).values(**columns))
            changed += len(columns)
    return changed


def stored_records(conn: Connection, decisions: list[Decision]) -> dict[str, dict[str, Any]]:
    """The stored rows of the decisions' records that still exist, by id."""
    stored: dict[str, dict[str, Any]] = {}
    by_entity: dict[str, list[str]] = {}
    for decision in decisions:
        by_entity.setdefault(decision.entity, []).append(decision.record_id)
    for entity, ids in by_entity.items():
        table = ENTITY_TABLES[entity]
        for start in range(0, len(ids), _BATCH):
            chunk = ids[start : start + _BATCH]
            for row in conn.execute(select(table).where(table.c.id.in_(chunk))):
                stored[str(row.id)] = dict(row._mapping)
    return stored


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
        for start in range(0, len(ids), _BATCH):
            chunk = ids[start : start + _BATCH]
            present = list(conn.execute(select(table.c.id).where(table.c.id.in_(chunk))).scalars())
            if present:
                conn.execute(delete(table).where(table.c.id.in_(present)))
                forget_imported(conn, present)
                forget_automation(conn, present)
                deleted += [str(i) for i in present]
    return deleted


def forget_imported(conn: Connection, record_ids: Sequence[str]) -> None:
    """Drop the import row keys of erased records: a keyed hash of the person's values
    is pseudonymous data about them, and goes with the rest. (Importing the same file
    again would then create the person again: a suppression list is not kept.)"""
    if record_ids:
        conn.execute(delete(import_rows).where(import_rows.c.record_id.in_(list(record_ids))))


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
            if field.phonetic_column is not None:
                columns[field.phonetic_column] = None
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
    forget_imported(conn, shelled)
    forget_automation(conn, shelled)
    return shelled, indexes


def forget_automation(conn: Connection, record_ids: Sequence[str]) -> None:
    """What automation keeps about erased records: the person's activity events and
    scores, timers, queued events and run records about them, webhook deliveries and
    their log. (The audit log keeps its pseudonymous trail.)"""
    if record_ids:
        automation.forget_subjects(conn, record_ids)
        webhooks.forget_records(conn, record_ids)
