"""Export of one entity as CSV or JSON lines: exactly what the caller could read.

An export is a list without pages, under its own action: the caller needs `export`
on the entity (its row scope, within the caller's read scope, is the WHERE clause,
region by region: an export never names a record the caller could not read), and each
record is shown through the pipeline (`Pipeline.show`), so field masks, conditional
ones included, apply per record and a withheld field is never decrypted, let alone
written out. Filters and the region parameter are those of the list endpoint, and
so are the steps: the regions and scopes (`RecordService.list_regions`) and each
region's batch (`RecordService.region_page`: blind-index filters, `show`, audit)
run under the `export` action, not as a second copy of the list's code.

Memory stays bounded: each region is read in keyset batches of `BATCH` records
(ordered by `created_at`, then id) and the regions' streams are merged lazily, so
at most one batch per region is held at a time. Each batch is read in its own
transaction in its region's database, and its `record.export` event (ids and
field names, never values) commits with that transaction, before any record of
the batch is handed to the caller: if the audit log refuses the event, the stream
ends there, and no unaudited row ever leaves. The first batch of every region is
read before `export_records` returns, so a failure there is still an ordinary
error response; a later failure cuts the stream short (the client sees an
incomplete transfer, never a silently shorter file ending cleanly).

Batches are separate transactions, not one snapshot: a record created while an
export runs may or may not be in it, and none appears twice (keyset order).

CSV (RFC 4180, UTF-8, CRLF): the header is `id, region, version, created_at,
updated_at`, the catalog fields the caller may read in at least one of the
exported regions, and `_withheld`: the fields a row does not give (withheld by the
mask for that record, or erased or restricted after a data subject's erasure),
separated by spaces. Missing values are empty cells, booleans `true`/`false`,
`custom` JSON text. Against formula injection in spreadsheets (OWASP "CSV
Injection"), a cell starting with `=`, `+`, `-`, `@`, a tab or a carriage return
gets a leading apostrophe, so a spreadsheet shows it as text instead of
evaluating it; this includes negative numbers (`'-5`). JSON lines: one record per
line, exactly as `GET /v1/{entity}/{id}` renders it; no escaping is needed there.
"""

from __future__ import annotations

import csv
import heapq
import io
import json
from collections.abc import Iterable, Iterator, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

from bastion.audit.events import MAX_RECORD_IDS
from bastion.crm.access import Access
from bastion.crm.catalog import SYSTEM_FIELDS, EntitySpec
from bastion.crm.listing import PageItem, RegionPage, merge_key, parse_filters
from bastion.crm.pipeline import entity_spec
from bastion.crm.records import ERASED, RESTRICTED, WITHHELD, Record
from bastion.crm.repository import Sort
from bastion.crm.service import RecordService, linked_regions
from bastion.errors import FieldError, ValidationFailed
from bastion.policy.compiled import RowScope
from bastion.principals.caller import Caller

__all__ = ["BATCH", "FORMATS", "Export", "ExportQuery", "export_records"]

# One audit event names every record of a batch, and an event names at most
# MAX_RECORD_IDS records.
BATCH = MAX_RECORD_IDS
# Format -> (media type, file extension).
FORMATS: Mapping[str, tuple[str, str]] = {
    "csv": ("text/csv; charset=utf-8", "csv"),
    "jsonl": ("application/x-ndjson", "jsonl"),
}
# Cells a spreadsheet would read as a formula (or as the start of one).
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
# The order of an export in every region: oldest first, then by id (unique).
_ORDER = Sort("created_at")
# Encoded output is handed on in chunks of about this size, not one per record.
_CHUNK_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True)
class ExportQuery:
    """An export request as the caller gave it: raw strings, validated here."""

    format: str
    filters: Mapping[str, str]
    region: str | None = None


@dataclass(frozen=True, slots=True)
class Export:
    """A prepared export: authorized, its first batches read and audited; `chunks`
    reads (and audits) the rest as it is consumed."""

    filename: str
    media_type: str
    chunks: Iterator[bytes]


def export_records(
    records: RecordService, caller: Caller, entity: str, query: ExportQuery
) -> Export:
    """Prepare the export of `entity` for `caller`.

    Raises before anything is produced: `NotFound` for an unknown entity,
    `ValidationFailed` for an unknown format, filter or region, `Forbidden` when the
    caller may not export the entity (in the region asked for, or in any of its
    regions), `FieldsForbidden` naming a filter field it cannot read in every
    exported region. Denials are audited in the region asked about (or the
    caller's default region), as for lists.
    """
    spec = entity_spec(entity)
    if query.format not in FORMATS:
        raise ValidationFailed(
            "unknown export format", [FieldError("format", f"must be one of: {', '.join(FORMATS)}")]
        )
    access = records.access(caller.principal)
    with _denials(records, caller, access, spec, query.region):
        regions = records.list_regions(access, spec, query.region, "export")
        names = [region for region, _scope in regions]
        # As for lists: a field the caller cannot read in every row is a 403 whatever
        # the filter value, so the answer says nothing about the field.
        filtered = [name for name in query.filters if spec.field(name) is not None]
        if filtered:
            access.require_readable(names, spec, filtered, "filter")
        filters = parse_filters(spec, query.filters)
    # A link filter names a record of one region: the others are not asked.
    linked = linked_regions(spec, filters)
    reads = [
        _RegionRead(records, caller, access, spec, region, scope, filters)
        for region, scope in regions
        if linked is None or linked == {region}
    ]
    # First batches now, while an error can still be an error response.
    streams = [_records_of(read, read.batch(None)) for read in reads]
    merged = heapq.merge(
        *streams, key=lambda item: merge_key(item.sort_value, item.record["id"], _ORDER)
    )
    items = (item.record for item in merged)
    media_type, extension = FORMATS[query.format]
    if query.format == "csv":
        chunks = _chunked(_csv_lines(_columns(access, spec, names), items))
    else:
        chunks = _chunked(_json_lines(items))
    stamp = records.now().strftime("%Y%m%dT%H%M%SZ")
    filename = f"{spec.name}-{query.region or 'all'}-{stamp}.{extension}"
    return Export(filename, media_type, chunks)


def _denials(
    records: RecordService,
    caller: Caller,
    access: Access,
    spec: EntitySpec,
    requested: str | None,
) -> AbstractContextManager[None]:
    """Audit a denial in the region asked about, else the caller's default region (as
    lists do); when that is no configured region there is no log to write it to."""
    principal = caller.principal
    region = requested or (principal.default_region if principal.regions else None)
    if region is None or region not in records.regions:
        return nullcontext()
    return records.denials(caller, access, region, spec, "export")


@dataclass(frozen=True, slots=True)
class _RegionRead:
    """What reading one region's part of an export needs, batch after batch."""

    records: RecordService
    caller: Caller
    access: Access
    spec: EntitySpec
    region: str
    scope: RowScope
    filters: Mapping[str, Any]

    def batch(self, after: tuple[Any, str] | None) -> RegionPage:
        """The next records after `after`, the first BATCH of them audited as
        `record.export` in the region's log, in the transaction that read them. Up
        to BATCH + 1 come back: the extra one only says that more follow."""
        return self.records.region_page(
            self.caller,
            self.access,
            self.spec,
            self.region,
            self.scope,
            self.filters,
            _ORDER,
            after,
            BATCH,
            action="export",
            readable_only=True,
        )


def _records_of(read: _RegionRead, first: RegionPage) -> Iterator[PageItem]:
    """A region's records in export order, from its first batch on; each further
    batch is read (and audited) only once the previous one has been consumed."""
    page = first
    while True:
        yield from page.items[:BATCH]
        if len(page.items) <= BATCH:
            return
        last = page.items[BATCH - 1]
        page = read.batch((last.sort_value, str(last.record["id"])))


def _columns(access: Access, spec: EntitySpec, regions: Iterable[str]) -> list[str]:
    """The CSV header: system fields, the catalog fields readable (for some record)
    in at least one exported region, in catalog order, and `_withheld`."""
    readable: set[str] = set()
    for region in regions:
        readable |= access.mask(region, spec, "read").possible
    fields = [field.name for field in spec.fields if field.name in readable]
    return [*SYSTEM_FIELDS, *fields, WITHHELD]


def _csv_lines(columns: list[str], records: Iterable[Record]) -> Iterator[str]:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(columns)
    for record in records:
        withheld = [*record[WITHHELD], *record.get(ERASED, ()), *record.get(RESTRICTED, ())]
        writer.writerow(
            [
                " ".join(withheld) if name == WITHHELD else _cell(record.get(name))
                for name in columns
            ]
        )
        yield buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()
    if buffer.tell():  # no record: the header alone
        yield buffer.getvalue()


def _cell(value: Any) -> str:
    """A record value as CSV text, defused if a spreadsheet would take it for a formula."""
    if value is None:
        return ""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, dict | list):
        text = json.dumps(value, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    else:
        text = str(value)
    return "'" + text if text.startswith(_FORMULA_STARTS) else text


def _json_lines(records: Iterable[Record]) -> Iterator[str]:
    for record in records:
        yield json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n"


def _chunked(lines: Iterable[str]) -> Iterator[bytes]:
    """UTF-8 bytes in chunks of about _CHUNK_BYTES (one per record would cost a
    thread hop per record in the HTTP layer)."""
    pending: list[bytes] = []
    size = 0
    for line in lines:
        data = line.encode()
        pending.append(data)
        size += len(data)
        if size >= _CHUNK_BYTES:
            yield b"".join(pending)
            pending, size = [], 0
    if pending:
        yield b"".join(pending)
