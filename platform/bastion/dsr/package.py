"""The access/export package: a data subject's data, decrypted, in a zip.

Contents:

- `data.json` — every record found, by entity, machine-readable (GDPR Art. 20);
- `<entity>.csv` — the same records, one file per entity;
- `audit.json` — who accessed the person's records and when (metadata, no values);
- `manifest.json` — the request, the region, when and under which policy version it
  was made, each file's SHA-256 and size, and what each relation means.

Only values sealed under the person's own keys are decrypted into the package;
encrypted fields of linked records that belong to someone else (another person's
notes, an account's tax id) are left out, so the package holds the person's data
and nothing of anyone else. The zip is sealed under the request's own data key
before it is stored, and that key is destroyed when the package expires.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
import zipfile
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, select

from bastion.audit.tables import AUDIT
from bastion.crm.catalog import ENTITIES, SYSTEM_FIELDS
from bastion.crm.codec import RecordCodec
from bastion.crm.records import to_json_value
from bastion.dsr.discovery import Discovery, Item

MAX_AUDIT_EVENTS = 10_000
_SAFE_CELL = re.compile(r"-?[0-9]{1,30}(\.[0-9]{1,30})?|\+[1-9][0-9]{6,14}")
RELATIONS = {
    "subject": "the person's own record",
    "about": "a record about the person (sealed under their key)",
    "linked": "a record that names the person",
    "employer": "the organisation the person works at (business data)",
}


def build(
    conn: Connection,
    codec: RecordCodec,
    region: str,
    discovery: Discovery,
    *,
    request: dict[str, Any],
    generated_at: datetime,
    policy_version: str,
    behaviour: list[dict[str, Any]] | None = None,
) -> bytes:
    """The zip for one request, its values decrypted in `conn`'s transaction;
    `behaviour`: the person's activity events (`activity_events.json`, if any)."""
    records: dict[str, list[dict[str, Any]]] = {}
    for item in discovery.items:
        if item.erased:
            continue
        records.setdefault(item.entity, []).append(_record(conn, codec, region, item, discovery))
    files: dict[str, bytes] = {
        "data.json": _json({"region": region, "subjects": discovery.subjects, "records": records}),
        "audit.json": _json(_audit(conn, [i.record_id for i in discovery.items])),
    }
    for entity, rows in sorted(records.items()):
        files[f"{entity}.csv"] = _csv(entity, rows)
    if behaviour:
        files["activity_events.json"] = _json(behaviour)
    manifest = {
        "format": "bastion-dsr-package-v1",
        "request": request,
        "region": region,
        "generated_at": to_json_value(generated_at),
        "policy_version": policy_version,
        "subjects": discovery.subjects,
        "relations": RELATIONS,
        "counts": discovery.counts(),
        "files": {
            name: {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
            for name, data in sorted(files.items())
        },
    }
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in sorted(files.items()):
            archive.writestr(_entry(name, generated_at), data)
        archive.writestr(_entry("manifest.json", generated_at), _json(manifest))
    return buffer.getvalue()


def _entry(name: str, when: datetime) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=when.timetuple()[:6])
    info.compress_type = zipfile.ZIP_DEFLATED
    return info


def _record(
    conn: Connection, codec: RecordCodec, region: str, item: Item, discovery: Discovery
) -> dict[str, Any]:
    spec = item.spec
    own = item.key_subject in discovery.subjects and item.relation in ("subject", "about")
    mine = [f.name for f in spec.encrypted_fields] if own else []
    values = codec.reveal(conn, spec, region, item.values, mine).values
    record: dict[str, Any] = {name: to_json_value(values[name]) for name in SYSTEM_FIELDS}
    record["_relation"] = item.relation
    for field in spec.fields:
        if field.encrypted and field.name not in mine:
            continue  # someone else's sealed data
        record[field.name] = to_json_value(values.get(field.name))
    return record


def _audit(conn: Connection, record_ids: list[str]) -> list[dict[str, Any]]:
    refs, events = AUDIT.record_refs, AUDIT.events
    found: dict[str, dict[str, Any]] = {}
    for start in range(0, len(record_ids), 500):
        rows = conn.execute(
            select(
                events.c.id,
                events.c.occurred_at,
                events.c.actor,
                events.c.action,
                events.c.entity,
                events.c.decision,
                refs.c.record_id,
            )
            .join(refs, refs.c.event_id == events.c.id)
            .where(refs.c.record_id.in_(record_ids[start : start + 500]))
            .order_by(events.c.occurred_at.desc())
            .limit(MAX_AUDIT_EVENTS)
        )
        for row in rows:
            entry = found.setdefault(
                row.id,
                {
                    "occurred_at": to_json_value(row.occurred_at),
                    "actor": row.actor,
                    "action": row.action,
                    "entity": row.entity,
                    "decision": row.decision,
                    "records": [],
                },
            )
            entry["records"].append(row.record_id)
    ordered = sorted(found.values(), key=lambda e: str(e["occurred_at"]), reverse=True)
    return ordered[:MAX_AUDIT_EVENTS]


def _json(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, indent=2, sort_keys=True).encode("utf-8")


def _csv(entity: str, rows: list[dict[str, Any]]) -> bytes:
    spec = ENTITIES[entity]
    columns = ["_relation", *SYSTEM_FIELDS, *(f.name for f in spec.fields)]
    present = [c for c in columns if any(c in row for row in rows)]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=present, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _cell(v) for k, v in row.items()})
    return buffer.getvalue().encode("utf-8")


def _cell(value: Any) -> Any:
    """A CSV cell a spreadsheet will not run as a formula (OWASP CSV injection): text
    starting with = + - @ tab or CR gets a leading ', unless it is exactly a number
    or an E.164 phone number (which a spreadsheet reads as data)."""
    if isinstance(value, dict | list):
        value = json.dumps(value, ensure_ascii=False)
    if (
        isinstance(value, str)
        and value[:1] in ("=", "+", "-", "@", "\t", "\r")
        and _SAFE_CELL.fullmatch(value) is None
    ):
        return "'" + value
    return value
