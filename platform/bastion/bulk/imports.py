"""CSV import: many creates through the pipeline, in batches, resumable and idempotent.

`bastion import contacts file.csv --region eu --map mapping.yaml --as NAME` and
`POST /v1/imports` run the same `Importer.run`:

1. authorize — the `import` action on the entity in the region, and `create`: every row
   is a create and passes the create's checks (fields it may write, validation, its
   create scope), as `crm.service.new_values` runs them for one record.
2. read — the file is hashed and checked to be UTF-8 before anything is written, then
   streamed through `csv.reader`: memory holds two batches (the one being written and
   the next, being prepared: `bulk.preparation`, in a helper process for large files),
   whatever the file's size.
   The header meets the mapping (`bulk.mapping`); every mapping problem is answered at
   once, before any row.
3. batches — `[imports] batch_size` rows per transaction in the region's database. A
   row is either created whole or not at all, and reported: `invalid` (one report line
   per field in error), `duplicate` (its email, phone or mobile matches a record the
   importer can read, or an earlier row of the file), or `skipped` (imported before
   by the same principal, into a record that is still live: the keyed hash of the
   importer and the row's validated values is in `import_rows`). New records get their
   data keys in one statement (`Keyring.new_subject_deks`), their fields sealed and
   blind-indexed as any create, and one `record.import` audit event per batch names
   them (ids and field names, never values) in the same transaction.
4. resume — a batch commits with the run's progress (`rows_done`). Running the same
   file with the same mapping again, as the same principal, continues the last
   unfinished run after its last committed batch; once a run has completed, running
   the file again starts a new run that creates nothing (every row is skipped,
   invalid or a duplicate).

An import run and its report live in the region it wrote to, and only the principal
who ran it may read them. Nothing in them holds a field value: rows are numbered as a
spreadsheet shows them (the header is row 1) and problems name the field and the rule.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import io
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import IO, Any

import structlog
from sqlalchemy import ColumnElement, Connection, and_, delete, insert, or_, select, text, update
from sqlalchemy.exc import DBAPIError

from bastion.analytics import stages
from bastion.bulk.mapping import ColumnPlan, ImportMapping, plan_columns
from bastion.bulk.preparation import Preparation, PreparedRow, PreparerRecipe, RowPreparer
from bastion.bulk.settings import ImportSettings
from bastion.bulk.tables import import_problems, import_rows, imports
from bastion.crm import dedup, repository
from bastion.crm.access import Access
from bastion.crm.catalog import ENTITIES, EntitySpec, FieldSpec
from bastion.crm.codec import from_plaintext
from bastion.crm.cursors import CursorCodec, Position
from bastion.crm.pipeline import Change, entity_spec
from bastion.crm.schemas import validate_patch
from bastion.crm.service import RecordService
from bastion.crm.tables import ENTITY_TABLES
from bastion.crypto.envelope import FieldContext, key_id_of, unseal
from bastion.errors import (
    BadRequest,
    BastionError,
    Conflict,
    FieldError,
    NotFound,
    ValidationFailed,
)
from bastion.policy.compiled import RowScope
from bastion.principals.caller import Caller
from bastion.residency.ids import InvalidId, RecordId

log = structlog.get_logger("bastion.imports")

PREFIX = "imp"
_CHUNK = 1 << 20
_CONFLICT_RETRIES = 3
Progress = Callable[[int], None]  # bytes of the file read so far


@dataclass(frozen=True, slots=True)
class ImportRun:
    """One run of an import, as its report's summary shows it."""

    id: str
    region: str
    entity: str
    principal_id: str  # who ran it: the only one who may read it
    status: str  # running | completed | failed
    file_name: str | None
    source_sha256: str
    rows_done: int
    created: int
    duplicates: int
    invalid: int
    skipped: int
    started_at: datetime
    updated_at: datetime
    completed_at: datetime | None
    error: str | None
    resumed: bool = False

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "region": self.region,
            "entity": self.entity,
            "status": self.status,
            "file_name": self.file_name,
            "source_sha256": self.source_sha256,
            "rows": self.rows_done,
            "created": self.created,
            "duplicates": self.duplicates,
            "invalid": self.invalid,
            "skipped": self.skipped,
            "started_at": self.started_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
            "completed_at": None if self.completed_at is None else self.completed_at.isoformat(),
            "error": self.error,
            "resumed": self.resumed,
        }


@dataclass(frozen=True, slots=True)
class Problem:
    row: int
    field: str
    kind: str  # invalid | duplicate
    message: str
    existing_id: str | None

    def as_json(self) -> dict[str, Any]:
        return {
            "row": self.row,
            "field": self.field,
            "kind": self.kind,
            "message": self.message,
            "existing_id": self.existing_id,
        }


class ImportFailed(ValidationFailed):
    """The file broke off (not CSV past some row): what came before stays imported, and
    the run can be resumed with a corrected file of the same rows."""

    slug = "import-failed"
    title = "Import failed"

    def __init__(self, detail: str, run_id: str, errors: Sequence[FieldError] = ()) -> None:
        super().__init__(detail, errors)
        self.run_id = run_id

    @property
    def extensions(self) -> dict[str, object]:
        return {**super().extensions, "import_id": self.run_id}


@dataclass(slots=True)
class _Counts:
    created: int = 0
    duplicates: int = 0
    invalid: int = 0
    skipped: int = 0


@dataclass(frozen=True, slots=True)
class _Job:
    """What every batch of one run shares."""

    caller: Caller
    access: Access
    spec: EntitySpec
    region: str
    create_scope: RowScope
    plan: ColumnPlan
    run_id: str
    preparer: RowPreparer


class Importer:
    def __init__(
        self,
        records: RecordService,
        settings: ImportSettings,
        secret: bytes,
        cursors: CursorCodec,
        *,
        failpoint: str | None = None,
    ) -> None:
        self._records = records
        self._settings = settings
        self._cursors = cursors
        # Crash tests: `import:batch` exits the process, as if killed, after a batch commits.
        self._failpoint = failpoint
        # `secret` is derived for this purpose alone (State: "bastion import row key v1").
        self._secret = secret

    # -- running -------------------------------------------------------------------

    def run(
        self,
        caller: Caller,
        entity: str,
        source: IO[bytes],
        *,
        region: str | None = None,
        mapping: ImportMapping | None = None,
        file_name: str | None = None,
        progress: Progress | None = None,
    ) -> ImportRun:
        """Import `source` (a seekable binary CSV file) into `entity` in `region`."""
        records = self._records
        spec = entity_spec(entity)
        chosen = records.create_region(caller.principal, region)
        access = records.access(caller.principal)
        mapping = mapping or ImportMapping()
        with records.denials(caller, access, chosen, spec, "import"):
            access.require(chosen, spec, "import")
            create_scope = access.require(chosen, spec, "create")
            digest = fingerprint(source)
            reader = csv.reader(
                io.TextIOWrapper(source, encoding="utf-8-sig", newline=""),
                delimiter=mapping.delimiter,
                strict=True,  # broken quoting is an error at its row, not a guess
            )
            header = _header(reader)
            plan = plan_columns(spec, header, mapping)
            access.require_writable(chosen, spec, plan.fields)
            _check_defaults(spec, plan)
        run, resumed = self._start(caller, access, spec, chosen, digest, plan, file_name)
        preparer = RowPreparer(access, chosen, create_scope, plan, self._secret)
        job = _Job(caller, access, spec, chosen, create_scope, plan, run.id, preparer)
        try:
            rows_done = self._rows(job, reader, source, run.rows_done, progress)
        except BastionError as exc:
            self._finish(job, "failed", exc.detail, reason=exc.slug)
            raise
        self._finish(job, "completed", None, rows_done=rows_done)
        finished = self._load(chosen, run.id)
        assert finished is not None
        return replace(finished, resumed=resumed)

    def _rows(
        self,
        job: _Job,
        reader: Iterator[list[str]],
        source: IO[bytes],
        done: int,
        progress: Progress | None,
    ) -> int:
        """Read, batch and import every data row after the first `done`; the last row
        number handled (data rows, header excluded). Batches are written one after
        another, in file order; a large file's next batch is prepared meanwhile, in a
        helper process (`bulk.preparation`)."""
        batch: list[tuple[int, list[str]]] = []
        index = batches = 0

        def write(prepared: Iterator[tuple[list[PreparedRow], int]]) -> None:
            nonlocal batches
            for rows, rows_done in prepared:
                self._batch(job, rows, rows_done)
                batches += 1
                if batches & (batches - 1) == 0:  # 1, 2, 4, 8, ... batches in
                    self._refresh_statistics(job)
                if progress is not None:
                    progress(source.tell())

        with Preparation(job.preparer, self._helper_recipe(job, source)) as preparation:
            while True:
                try:
                    cells = next(reader, None)
                except csv.Error as exc:
                    if batch:
                        write(preparation.send(batch, index))
                    write(preparation.drain())
                    raise ImportFailed(
                        f"the file is not valid CSV at row {index + 2}: {exc}; the rows "
                        "before it are imported, and importing the corrected file skips them",
                        job.run_id,
                        [FieldError("file", f"row {index + 2}: {exc}")],
                    ) from None
                if cells is None:
                    break
                index += 1
                if index <= done or not any(cell.strip() for cell in cells):
                    continue  # handled by an earlier run of this import, or a blank line
                batch.append((index + 1, cells))
                if len(batch) >= self._settings.batch_size:
                    write(preparation.send(batch, index))
                    batch = []
            if batch:
                write(preparation.send(batch, index))
            write(preparation.drain())
        if progress is not None:
            progress(source.tell())
        return index

    def _helper_recipe(self, job: _Job, source: IO[bytes]) -> PreparerRecipe | None:
        """What a helper process needs to prepare this run's rows, if the file is large
        enough to be worth one (`[imports] helper_process`, `helper_min_bytes`)."""
        if not self._settings.helper_process:
            return None
        position = source.tell()
        size = source.seek(0, io.SEEK_END)
        source.seek(position)
        if size < self._settings.helper_min_bytes:
            return None
        return PreparerRecipe(
            policy=job.access.policy.source,
            regions=self._records.regions.names,
            principal=job.caller.principal,
            region=job.region,
            plan=job.plan,
            secret=self._secret,
        )

    def _refresh_statistics(self, job: _Job) -> None:
        """PostgreSQL: ANALYZE the tables an import grows, as they double. Autovacuum
        analyzes a minute or more later; until then the planner believes the table is
        as small as it was, and answers the batch's id and blind-index lookups by
        scanning it — each batch slower than the last. A role that may not ANALYZE
        (not the tables' owner) leaves it to autovacuum."""
        database = self._records.database(job.region)
        if database.engine.dialect.name != "postgresql":
            return
        tables = (ENTITY_TABLES[job.spec.name].name, import_rows.name, "subject_keys")
        try:
            with database.transaction(write=True) as conn:
                for name in tables:
                    conn.execute(text(f'ANALYZE "{name}"'))
        except DBAPIError as exc:
            log.info("import_analyze_skipped", region=job.region, error=type(exc).__name__)

    def _batch(self, job: _Job, rows: list[PreparedRow], rows_done: int) -> None:
        """One transaction: the batch's prepared rows checked, created or reported, and
        the run's progress. A concurrent run of the same rows makes the insert of a row
        key fail: the batch then runs again, and finds those rows imported."""
        for attempt in range(_CONFLICT_RETRIES):
            try:
                self._write_batch(job, rows, rows_done)
            except Conflict:
                if attempt == _CONFLICT_RETRIES - 1:
                    raise
                continue
            if self._failpoint == "import:batch":
                log.warning("failpoint", name=self._failpoint)
                os._exit(86)
            return

    def _write_batch(self, job: _Job, rows: list[PreparedRow], rows_done: int) -> None:
        records = self._records
        database = records.database(job.region)
        with records.write(database, "another import wrote the same rows; run it again") as conn:
            pending = [row for row in rows if row.values is not None]
            self._check_links(conn, job, pending)
            pending = [row for row in pending if not row.errors]
            imported = _imported(conn, job.spec, [row.key for row in pending])
            _forget_stale(conn, job.spec, [r.key for r in pending if r.key not in imported])
            # A row that repeats another of this file exactly is a duplicate of it; one
            # that an earlier run imported is skipped.
            duplicates = _repeats(job.run_id, pending, imported)
            fresh = [r for r in pending if r.key not in imported and r.number not in duplicates]
            duplicates.update(_Duplicates(records, conn, job).find(fresh))
            created = [row for row in fresh if row.number not in duplicates]
            ids = self._insert(conn, job, created)
            counts = _Counts(
                created=len(created),
                duplicates=len(duplicates),
                invalid=sum(1 for row in rows if row.errors),
                skipped=sum(1 for r in pending if r.key in imported and r.number not in duplicates),
            )
            _report(conn, job.run_id, rows, duplicates)
            if ids:
                conn.execute(
                    insert(import_rows),
                    [
                        {
                            "entity": job.spec.name,
                            "row_key": row.key,
                            "record_id": record_id,
                            "import_id": job.run_id,
                        }
                        for row, record_id in zip(created, ids, strict=True)
                    ],
                )
            written = sorted(
                {name for row in created for name, v in (row.values or {}).items() if v is not None}
            )
            self._progress(conn, job.run_id, counts, rows_done)
            records.recorder.append(
                conn,
                job.region,
                records.recorder.event(
                    job.caller,
                    job.access.policy.version,
                    action="record.import",
                    entity=job.spec.name,
                    record_ids=ids,
                    fields=written,
                    details={
                        "import_id": job.run_id,
                        "rows": len(rows),
                        "created": counts.created,
                        "duplicates": counts.duplicates,
                        "invalid": counts.invalid,
                        "skipped": counts.skipped,
                    },
                ),
            )

    def _check_links(self, conn: Connection, job: _Job, rows: list[PreparedRow]) -> None:
        """Links must name records of this region the importer can read (one query per
        linked entity for the whole batch, not one per row)."""
        for spec_field in job.spec.fields:
            if spec_field.type != "ref" or spec_field.ref is None:
                continue
            wanted = {
                str(row.values[spec_field.name])
                for row in rows
                if row.values is not None and row.values.get(spec_field.name) is not None
            }
            if not wanted:
                continue
            found = _readable_ids(conn, job.access, job.region, ENTITIES[spec_field.ref], wanted)
            target = ENTITIES[spec_field.ref].singular
            for row in rows:
                value = None if row.values is None else row.values.get(spec_field.name)
                if value is None or value in found:
                    continue
                if _region_of(str(value)) != job.region:
                    message = f"must be in the record's region ({job.region})"
                else:
                    message = f"no {target} has that id"
                row.errors.append(FieldError(spec_field.name, message))

    def _insert(self, conn: Connection, job: _Job, rows: list[PreparedRow]) -> list[str]:
        """The rows as new records: ids, data keys, sealed fields, one executemany."""
        if not rows:
            return []
        records = self._records
        spec, region = job.spec, job.region
        now = records.now()
        ids = [str(RecordId.new(spec.prefix, region, now)) for _ in rows]
        subjects = [
            records.codec.key_subject(spec, record_id, row.values or {})
            for row, record_id in zip(rows, ids, strict=True)
        ]
        new_keys = records.keys.new_subject_deks(
            conn,
            region,
            [s for s, r in zip(subjects, ids, strict=True) if s == r and spec.encrypted_fields],
        )
        table = ENTITY_TABLES[spec.name]
        stored = []
        for row, record_id, subject in zip(rows, ids, subjects, strict=True):
            sealed = records.codec.seal_fields(
                conn,
                spec,
                region,
                record_id,
                row.values or {},
                subject,
                key=new_keys.get(subject),
                indexes=row.indexes,
            )
            stored.append(
                {
                    **sealed,
                    "id": record_id,
                    "region": region,
                    "version": 1,
                    "created_at": now,
                    "updated_at": now,
                }
            )
        # One executemany needs one set of columns: those any row of the batch sets
        # (the rest keep their defaults), not every column of the table.
        columns = dict.fromkeys(name for record in stored for name in record)
        conn.execute(insert(table), [{**columns, **record} for record in stored])
        for record in stored:
            stages.record_created(conn, spec.name, record["id"], region, record, now)
        changes = []
        for row, record_id in zip(rows, ids, strict=True):
            values = row.values or {}
            written = tuple(sorted(name for name, value in values.items() if value is not None))
            changes.append(Change(region, spec, record_id, "created", written, None, values, now))
        records.changes(conn, job.caller, changes)
        return ids

    # -- the run's row -------------------------------------------------------------

    def _start(
        self,
        caller: Caller,
        access: Access,
        spec: EntitySpec,
        region: str,
        digest: str,
        plan: ColumnPlan,
        file_name: str | None,
    ) -> tuple[ImportRun, bool]:
        """The unfinished run of this file, mapping and principal to resume, or a new one."""
        records = self._records
        options = plan.digest(region)
        principal_id = caller.principal.id
        with records.write(records.database(region), "the import could not start") as conn:
            # A region's first records create its blind-index key: here, committed
            # before the batches, so they find it cached instead of each re-reading it.
            if spec.data_subject or any(f.searchable for f in spec.fields):
                records.keys.blind_indexer(region, conn=conn)
            earlier = conn.execute(
                select(imports)
                .where(
                    imports.c.principal_id == principal_id,
                    imports.c.entity == spec.name,
                    imports.c.source_sha256 == digest,
                    imports.c.options_sha256 == options,
                    imports.c.status != "completed",
                )
                .order_by(imports.c.started_at.desc())
                .limit(1)
            ).first()
            now = records.now()
            if earlier is not None:
                run_id = str(earlier.id)
                conn.execute(
                    update(imports)
                    .where(imports.c.id == run_id)
                    .values(status="running", error=None, updated_at=now)
                )
            else:
                run_id = str(RecordId.new(PREFIX, region, now))
                conn.execute(
                    insert(imports).values(
                        id=run_id,
                        region=region,
                        entity=spec.name,
                        principal_id=principal_id,
                        status="running",
                        source_sha256=digest,
                        options_sha256=options,
                        file_name=_file_name(file_name),
                        rows_done=0,
                        created=0,
                        duplicates=0,
                        invalid=0,
                        skipped=0,
                        started_at=now,
                        updated_at=now,
                    )
                )
            records.recorder.append(
                conn,
                region,
                records.recorder.event(
                    caller,
                    access.policy.version,
                    action="import.resume" if earlier is not None else "import.start",
                    entity=spec.name,
                    fields=plan.fields,
                    details={"import_id": run_id},
                ),
            )
            run = _run(conn, run_id)
        assert run is not None
        return run, earlier is not None

    def _progress(self, conn: Connection, run_id: str, counts: _Counts, rows_done: int) -> None:
        conn.execute(
            update(imports)
            .where(imports.c.id == run_id)
            .values(
                rows_done=rows_done,
                created=imports.c.created + counts.created,
                duplicates=imports.c.duplicates + counts.duplicates,
                invalid=imports.c.invalid + counts.invalid,
                skipped=imports.c.skipped + counts.skipped,
                updated_at=self._records.now(),
            )
        )

    def _finish(
        self,
        job: _Job,
        status: str,
        error: str | None,
        *,
        reason: str | None = None,
        rows_done: int | None = None,
    ) -> None:
        """Record how the run ended (`reason`: the failure's problem type, for the log)."""
        records = self._records
        now = records.now()
        values: dict[str, Any] = {"status": status, "error": error, "updated_at": now}
        if status == "completed":
            values["completed_at"] = now
        if rows_done is not None:
            values["rows_done"] = rows_done
        with records.write(records.database(job.region), "the import could not finish") as conn:
            conn.execute(update(imports).where(imports.c.id == job.run_id).values(**values))
            run = _run(conn, job.run_id)
            assert run is not None
            records.recorder.append(
                conn,
                job.region,
                records.recorder.event(
                    job.caller,
                    job.access.policy.version,
                    action=f"import.{status}",
                    entity=job.spec.name,
                    reason=reason,
                    details={
                        "import_id": job.run_id,
                        "rows": run.rows_done,
                        "created": run.created,
                        "duplicates": run.duplicates,
                        "invalid": run.invalid,
                        "skipped": run.skipped,
                    },
                ),
            )

    # -- reading reports -----------------------------------------------------------

    def get(self, caller: Caller, import_id: str) -> ImportRun:
        """A run of the caller's own (404 for anyone else's: runs are not shared)."""
        region = self._route(caller, import_id)
        run = self._load(region, import_id, principal_id=caller.principal.id)
        if run is None:
            raise _no_such_import()
        return run

    def problems(
        self, caller: Caller, import_id: str, *, cursor: str | None = None, limit: int = 100
    ) -> tuple[list[Problem], str | None]:
        """A page of the report's lines in (row, field) order, and the next page's cursor."""
        run = self.get(caller, import_id)
        line = import_problems.c
        query = select(import_problems).where(line.import_id == import_id)
        fingerprint_ = f"import-problems:{import_id}"
        if cursor is not None:
            after = self._cursors.open(fingerprint_, cursor)
            if not isinstance(after.value, int):
                raise BadRequest(
                    "the cursor is invalid, tampered with, or belongs to a different query"
                )
            query = query.where(
                or_(line.row > after.value, and_(line.row == after.value, line.field > after.id))
            )
        with self._records.database(run.region).transaction() as conn:
            found = conn.execute(query.order_by(line.row, line.field).limit(limit + 1)).all()
        page = [Problem(r.row, r.field, r.kind, r.message, r.existing_id) for r in found[:limit]]
        following = None
        if len(found) > limit:
            following = self._cursors.seal(fingerprint_, Position(page[-1].row, page[-1].field))
        return page, following

    def _route(self, caller: Caller, import_id: str) -> str:
        try:
            rid = RecordId.parse(import_id)
        except InvalidId:
            raise _no_such_import() from None
        regions = self._records.regions
        if rid.prefix != PREFIX or rid.region not in regions:
            raise _no_such_import()
        if rid.region not in caller.principal.regions:
            raise _no_such_import()
        return rid.region

    def _load(
        self, region: str, import_id: str, *, principal_id: str | None = None
    ) -> ImportRun | None:
        with self._records.database(region).transaction() as conn:
            run = _run(conn, import_id)
        if run is None or (principal_id is not None and run.principal_id != principal_id):
            return None
        return run


class _Duplicates:
    """Rows whose identifiers (email, phone, mobile) match a record the importer can read,
    or an earlier row of the same file: one blind-index query per identifier per batch,
    and the candidates decrypted to drop the false positives of a truncated index."""

    def __init__(self, records: RecordService, conn: Connection, job: _Job) -> None:
        self._records = records
        self._conn = conn
        self._job = job
        spec = job.spec
        self._fields: list[FieldSpec] = []
        self._scope: ColumnElement[bool] | None = None
        if spec.data_subject:
            scope = job.access.policy.scope(
                job.access.principal.roles, job.region, spec.name, "read"
            )
            readable = job.access.mask(job.region, spec, "read").always
            if scope.permits_any:
                self._scope = job.access.where(spec, scope)
                self._fields = [
                    f
                    for name in dedup.IDENTIFIERS
                    if (f := spec.field(name)) is not None
                    and f.index_column is not None
                    and name in readable
                ]

    def find(self, rows: list[PreparedRow]) -> dict[int, tuple[str, str | None, int | None]]:
        """Row number -> (field, existing record id or None, earlier row number or None).
        Each row's identifiers are normalised and indexed once, here; `_insert` stores
        those indexes (`PreparedRow.indexes`)."""
        found: dict[int, tuple[str, str | None, int | None]] = {}
        if not self._fields or not rows:
            return found
        codec = self._records.codec
        spec, region, conn = self._job.spec, self._job.region, self._conn
        identities: dict[int, list[tuple[str, str]]] = {}
        wanted: dict[str, set[bytes]] = {}
        for row in rows:
            for f in self._fields:
                value = (row.values or {}).get(f.name)
                if value is None:
                    continue
                normalized = codec.normalized(f, value)
                index = codec.index_normalized(conn, spec, region, f, normalized)
                row.indexes[f.name] = index
                identities.setdefault(row.number, []).append((f.name, normalized))
                wanted.setdefault(f.name, set()).add(index)
        existing = self._existing(wanted)
        first_in_file: dict[tuple[str, str], int] = {}
        for row in rows:
            mine = identities.get(row.number, [])
            for identity in mine:
                if identity in existing:
                    found[row.number] = (identity[0], existing[identity], None)
                    break
                earlier = first_in_file.get(identity)
                if earlier is not None:
                    found[row.number] = (identity[0], None, earlier)
                    break
            if row.number not in found:
                for identity in mine:
                    first_in_file.setdefault(identity, row.number)
        return found

    def _existing(self, wanted: Mapping[str, set[bytes]]) -> dict[tuple[str, str], str]:
        """(field, normalised value) -> id, of the readable records whose blind index
        matches: candidates by index, confirmed by decrypting (their keys loaded in one
        query, and not cached), so a truncated index's false positives drop out."""
        codec = self._records.codec
        spec, region, conn = self._job.spec, self._job.region, self._conn
        table = ENTITY_TABLES[spec.name]
        candidates: list[tuple[FieldSpec, dict[str, Any]]] = []
        for f in self._fields:
            if f.name not in wanted or f.index_column is None:
                continue
            query = select(table.c.id, table.c.region, table.c[f.name]).where(
                table.c[f.index_column].in_(sorted(wanted[f.name])), *repository.live(table)
            )
            if self._scope is not None:
                query = query.where(self._scope)
            candidates += [(f, dict(stored._mapping)) for stored in conn.execute(query)]
        keys = self._records.keys.deks_by_id(
            conn, region, [key_id_of(stored[f.name]) for f, stored in candidates]
        )
        existing: dict[tuple[str, str], str] = {}
        for f, stored in candidates:
            blob = bytes(stored[f.name])
            key = keys.get(key_id_of(blob))
            if key is None:
                continue  # its person was erased: nothing to match
            context = FieldContext(region, spec.table_name, str(stored["id"]), f.name)
            value = from_plaintext(f, unseal(key, blob, context))
            existing.setdefault((f.name, codec.normalized(f, value)), str(stored["id"]))
        return existing


def fingerprint(source: IO[bytes]) -> str:
    """SHA-256 of the file, having checked it is UTF-8 throughout; rewound."""
    digest = hashlib.sha256()
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = 0
    try:
        while chunk := source.read(_CHUNK):
            digest.update(chunk)
            decoder.decode(chunk)
            offset += len(chunk)
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        raise ValidationFailed(
            "the import cannot start",
            [FieldError("file", f"is not UTF-8 text (near byte {offset})")],
        ) from None
    source.seek(0)
    return digest.hexdigest()


def _header(reader: Iterator[list[str]]) -> list[str]:
    try:
        header = next(reader, None)
    except csv.Error as exc:
        raise ValidationFailed(
            "the import cannot start", [FieldError("file", f"row 1: {exc}")]
        ) from None
    if header is None:
        raise ValidationFailed(
            "the import cannot start",
            [FieldError("file", "is empty: the first line must be a header")],
        )
    return header


def _check_defaults(spec: EntitySpec, plan: ColumnPlan) -> None:
    """A mapping's defaults are checked once, not found wrong in every row."""
    if not plan.defaults:
        return
    try:
        validate_patch(spec, plan.defaults)
    except ValidationFailed as exc:
        raise ValidationFailed(
            "the mapping's defaults are invalid",
            [FieldError(f"mapping.defaults.{e.field}", e.message) for e in exc.errors],
        ) from None


def _imported(conn: Connection, spec: EntitySpec, keys: list[str]) -> dict[str, tuple[str, str]]:
    """Row key -> (record id, import run id), for rows imported before whose record is
    still a live record (not deleted, erased or merged away). Two lookups by primary
    key, not a join: a planner may answer a join by scanning the entity's table."""
    if not keys:
        return {}
    found = conn.execute(
        select(import_rows.c.row_key, import_rows.c.record_id, import_rows.c.import_id).where(
            import_rows.c.entity == spec.name, import_rows.c.row_key.in_(sorted(set(keys)))
        )
    ).all()
    if not found:
        return {}
    table = ENTITY_TABLES[spec.name]
    live = set(
        conn.execute(
            select(table.c.id).where(
                table.c.id.in_(sorted({str(r.record_id) for r in found})),
                *repository.live(table),
            )
        ).scalars()
    )
    return {
        str(r.row_key): (str(r.record_id), str(r.import_id)) for r in found if r.record_id in live
    }


def _forget_stale(conn: Connection, spec: EntitySpec, keys: list[str]) -> None:
    """Keys whose record is no longer live (a merge tombstone, an erased shell): the
    row is imported afresh, under its key."""
    if keys:
        conn.execute(
            delete(import_rows).where(
                import_rows.c.entity == spec.name, import_rows.c.row_key.in_(sorted(set(keys)))
            )
        )


def _repeats(
    run_id: str, rows: list[PreparedRow], imported: Mapping[str, tuple[str, str]]
) -> dict[int, tuple[str, str | None, int | None]]:
    """Rows equal to an earlier row of this file: in this batch (by row number), or
    imported by an earlier batch of this run (by the record it became)."""
    repeats: dict[int, tuple[str, str | None, int | None]] = {}
    first: dict[str, int] = {}
    for row in rows:
        earlier = imported.get(row.key)
        if earlier is not None and earlier[1] == run_id:
            repeats[row.number] = ("(row)", earlier[0], None)
        elif row.key in first:
            repeats[row.number] = ("(row)", None, first[row.key])
        else:
            first[row.key] = row.number
    return repeats


def _readable_ids(
    conn: Connection, access: Access, region: str, target: EntitySpec, wanted: set[str]
) -> set[str]:
    """The ids in `wanted` of live records of `target` (not erased, not merged away)
    inside the caller's read scope."""
    scope = access.policy.scope(access.principal.roles, region, target.name, "read")
    if not scope.permits_any:
        return set()
    table = ENTITY_TABLES[target.name]
    same_region = [value for value in wanted if _region_of(value) == region]
    if not same_region:
        return set()
    query = select(table.c.id).where(table.c.id.in_(sorted(same_region)), *repository.live(table))
    where = access.where(target, scope)
    if where is not None:
        query = query.where(where)
    return {str(value) for value in conn.execute(query).scalars()}


def _region_of(record_id: str) -> str | None:
    try:
        return RecordId.parse(record_id).region
    except InvalidId:
        return None


def _report(
    conn: Connection,
    run_id: str,
    rows: list[PreparedRow],
    duplicates: Mapping[int, tuple[str, str | None, int | None]],
) -> None:
    lines: dict[tuple[int, str], dict[str, Any]] = {}
    for row in rows:
        for error in row.errors:
            lines.setdefault(
                (row.number, error.field[:64]),
                {"kind": "invalid", "message": error.message[:500], "existing_id": None},
            )
    for number, (name, existing, earlier) in duplicates.items():
        if name == "(row)":
            message = f"repeats row {earlier} of this file" if earlier else "repeats an earlier row"
        elif earlier is not None:
            message = f"matches row {earlier} of this file"
        else:
            message = "matches a record that exists already"
        lines[(number, name)] = {"kind": "duplicate", "message": message, "existing_id": existing}
    if lines:
        conn.execute(
            insert(import_problems),
            [
                {"import_id": run_id, "row": number, "field": name, **line}
                for (number, name), line in sorted(lines.items())
            ],
        )


def _run(conn: Connection, run_id: str) -> ImportRun | None:
    row = conn.execute(select(imports).where(imports.c.id == run_id)).first()
    if row is None:
        return None
    return ImportRun(
        id=row.id,
        region=row.region,
        entity=row.entity,
        principal_id=row.principal_id,
        status=row.status,
        file_name=row.file_name,
        source_sha256=row.source_sha256,
        rows_done=row.rows_done,
        created=row.created,
        duplicates=row.duplicates,
        invalid=row.invalid,
        skipped=row.skipped,
        started_at=row.started_at,
        updated_at=row.updated_at,
        completed_at=row.completed_at,
        error=row.error,
    )


def _file_name(name: str | None) -> str | None:
    if name is None:
        return None
    cleaned = "".join(ch for ch in name.replace("\\", "/").rsplit("/", 1)[-1] if ch.isprintable())
    return cleaned[:255] or None


def _no_such_import() -> NotFound:
    return NotFound("no import of yours has that id in your regions")
