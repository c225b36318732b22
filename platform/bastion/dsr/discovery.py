"""Everything about a data subject, found through ids and indexed links only.

Starting from the request's subjects (contact and lead ids, resolved from an email
or phone through the blind indexes), discovery follows:

- the same person under another record: the lead a contact was converted from,
  the contact a lead became (`converted_contact_id`), and both ways along merges
  (`quality.merge`, `merged_into`): the survivor a subject was merged into, and the
  tombstones merged into a subject — so a request naming a merged person's old id,
  or filed before the merge, covers what the survivor took and holds now;
- every record sealed under the person's key (`crm.subjects.sealed_under`): their
  own record and the activities and cases about them — `about`;
- every other record that links to them (an opportunity naming them as its
  contact) — `linked`;
- the account they work at — `employer`;
- the audit events that name any of these records (metadata only).

Every step is an indexed lookup (ids, foreign keys, blind indexes): discovery
never scans a table, so its cost depends on the person, not on the region's size.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from sqlalchemy import Connection, func, select

from bastion.audit.tables import AUDIT
from bastion.crm.catalog import ENTITIES, EntitySpec
from bastion.crm.codec import RecordCodec
from bastion.crm.subjects import sealed_under, subject_entity
from bastion.crm.tables import ENTITY_TABLES
from bastion.quality.merge_repository import survivor_of, tombstones_of

Relation = Literal["subject", "about", "linked", "employer"]
SUBJECT_ENTITIES = frozenset(name for name, spec in ENTITIES.items() if spec.data_subject)


@dataclass(frozen=True, slots=True)
class Item:
    """One record found: what it is to the subject, and whose key seals it."""

    entity: str
    record_id: str
    relation: Relation
    key_subject: str
    values: dict[str, Any]

    @property
    def spec(self) -> EntitySpec:
        return ENTITIES[self.entity]

    @property
    def erased(self) -> bool:
        return self.values.get("erased_at") is not None


@dataclass(slots=True)
class Discovery:
    subjects: list[str]
    items: list[Item] = field(default_factory=list)
    audit_events: int = 0

    def counts(self) -> dict[str, dict[str, int]]:
        """Records found per entity and relation (for previews and results)."""
        counted: dict[str, Counter[str]] = {}
        for item in self.items:
            counted.setdefault(item.entity, Counter())[item.relation] += 1
        return {entity: dict(relations) for entity, relations in sorted(counted.items())}

    def keyed_to_subjects(self) -> list[Item]:
        return [i for i in self.items if i.key_subject in self.subjects]


def discover(conn: Connection, subject_ids: Iterable[str]) -> Discovery:
    subjects = same_person(conn, list(dict.fromkeys(subject_ids)))
    found = Discovery(subjects)
    seen: set[str] = set()

    def add(spec: EntitySpec, values: dict[str, Any], relation: Relation) -> None:
        record_id = str(values["id"])
        if record_id in seen:
            return
        seen.add(record_id)
        key = RecordCodec.key_subject(spec, record_id, values)
        found.items.append(Item(spec.name, record_id, relation, key, values))

    for subject in subjects:
        for sealed in sealed_under(conn, subject):
            add(
                sealed.spec, sealed.values, "subject" if sealed.values["id"] == subject else "about"
            )
    for subject in subjects:
        own = subject_entity(subject)
        for spec in ENTITIES.values():
            for ref in spec.fields:
                if ref.type != "ref" or ref.ref != own.name or ref.read_only:
                    continue
                if spec.key_subject_from[:1] == (ref.name,):
                    continue  # every such record is keyed to the subject: found above
                table = ENTITY_TABLES[spec.name]
                for row in conn.execute(select(table).where(table.c[ref.name] == subject)):
                    add(spec, dict(row._mapping), "linked")
    accounts = ENTITY_TABLES["accounts"]
    employers = {
        str(item.values["account_id"])
        for item in list(found.items)
        if item.relation == "subject" and item.values.get("account_id")
    }
    for account_id in sorted(employers):
        account = conn.execute(select(accounts).where(accounts.c.id == account_id)).one_or_none()
        if account is not None:
            add(ENTITIES["accounts"], dict(account._mapping), "employer")
    ids = [item.record_id for item in found.items]
    found.audit_events = _audit_mentions(conn, ids)
    return found


def same_person(conn: Connection, subject_ids: list[str]) -> list[str]:
    """The subjects plus the records that are the same person: lead <-> converted
    contact, and merges both ways (each step an indexed lookup), to a fixed point."""
    leads = ENTITY_TABLES["leads"]
    result = list(subject_ids)
    queue = list(subject_ids)
    while queue:
        subject = queue.pop()
        spec = subject_entity(subject)
        if spec.name == "leads":
            linked = conn.execute(
                select(leads.c.converted_contact_id).where(leads.c.id == subject)
            ).scalar_one_or_none()
            more = [linked] if linked else []
        elif spec.name == "contacts":
            more = list(
                conn.execute(
                    select(leads.c.id).where(leads.c.converted_contact_id == subject)
                ).scalars()
            )
        else:
            more = []
        more += merged_with(conn, spec, subject)
        for other in more:
            if other not in result:
                result.append(str(other))
                queue.append(str(other))
    return result


def merged_with(conn: Connection, spec: EntitySpec, record_id: str) -> list[str]:
    """The records a merge made one person with `record_id`, one step away: the
    survivor it was merged into (which took its chosen values and its related
    records), and the tombstones merged into it (which keep their own data until the
    merge is final; their blind indexes are cleared, so only `merged_into` finds them).
    Only people (contacts, leads) are merged: any other record has none."""
    if not spec.data_subject:
        return []
    survivor = survivor_of(conn, spec, record_id)
    return ([survivor] if survivor else []) + tombstones_of(conn, spec, record_id)


def merged_person(conn: Connection, record_id: str) -> list[str]:
    """`record_id` first, then every record merges made one person with it, however
    many merges away (a loser's survivor, that survivor's other losers, ...)."""
    spec = subject_entity(record_id)
    result = [record_id]
    queue = [record_id]
    while queue:
        for other in merged_with(conn, spec, queue.pop()):
            if other not in result:
                result.append(other)
                queue.append(other)
    return result


def _audit_mentions(conn: Connection, record_ids: list[str]) -> int:
    if not record_ids:
        return 0
    refs = AUDIT.record_refs
    total = 0
    for start in range(0, len(record_ids), 500):
        chunk = record_ids[start : start + 500]
        total += int(
            conn.execute(
                select(func.count()).select_from(refs).where(refs.c.record_id.in_(chunk))
            ).scalar_one()
        )
    return total
