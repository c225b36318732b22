"""Preparing an import's rows: everything about a row that needs no database.

A row's cells become a record body (the mapping's coercion), the body becomes the
values to store (the create's write mask, validation and create scope, exactly as
`POST /v1/{entity}` checks them: `crm.service.new_values`), and the values get their
row key (a keyed hash of who imports them and what they are, `RowPreparer.key`).

For a large file this runs in a helper process (`Preparation`), one batch ahead
of the batch being written: preparing is a quarter of an import's time and pure
Python, and a second thread would only take turns with the writer for the
interpreter. The helper gets what it needs to prepare rows and nothing more: the
policy's text (it compiles the same policy version the import runs under), the
principal, the column plan and the row-key secret. Never a database URL, a data
key or a blind-index key; it sees the file's cells, which the importer sent anyway.
If the helper dies, the import goes on preparing in its own process.
"""

from __future__ import annotations

import hmac
import json
import multiprocessing
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

import structlog

from bastion.bulk.mapping import ColumnPlan
from bastion.crm.access import Access, FieldsForbidden
from bastion.crm.pipeline import Values
from bastion.crm.service import new_values
from bastion.errors import FieldError, Forbidden, ValidationFailed
from bastion.policy.compiled import RowScope
from bastion.policy.engine import PolicySource
from bastion.policy.lint import checked_policy
from bastion.principals.tokens import Principal

log = structlog.get_logger("bastion.imports")

Cells = Sequence[tuple[int, list[str]]]  # (row number as a spreadsheet shows it, cells)


@dataclass(slots=True)
class PreparedRow:
    """One data row on its way through a batch."""

    number: int
    values: Values | None = None
    key: str = ""
    errors: list[FieldError] = field(default_factory=list)
    indexes: dict[str, bytes] = field(default_factory=dict)  # blind indexes computed so far


class RowPreparer:
    """Prepares the rows of one import run (one principal, entity, region and plan)."""

    def __init__(
        self, access: Access, region: str, create_scope: RowScope, plan: ColumnPlan, secret: bytes
    ) -> None:
        self._access = access
        self._region = region
        self._scope = create_scope
        self._plan = plan
        self._row_key = hmac.new(secret, digestmod="sha256")

    def batch(self, cells: Cells) -> list[PreparedRow]:
        return [self.row(number, row) for number, row in cells]

    def row(self, number: int, cells: list[str]) -> PreparedRow:
        """Coercion, validation, the create's policy checks, and the row's key."""
        row = PreparedRow(number)
        width = len(self._plan.targets)
        if len(cells) != width:
            row.errors.append(
                FieldError("(row)", f"has {len(cells)} cells; the header has {width}")
            )
            return row
        body, row.errors = self._plan.body(cells)
        if row.errors:
            return row
        spec = self._plan.spec
        try:
            values = new_values(self._access, spec, self._region, self._scope, body)
        except ValidationFailed as exc:
            row.errors = list(exc.errors) or [FieldError("(row)", exc.detail)]
            return row
        except FieldsForbidden as exc:
            row.errors = [FieldError(name, "you may not write it here") for name in exc.fields]
            return row
        except Forbidden:
            row.errors = [FieldError("(row)", "is outside the records you may create")]
            return row
        row.values = values
        row.key = self.key(values)
        return row

    def key(self, values: Mapping[str, Any]) -> str:
        """The row's key: a keyed hash of who imports it and its validated values. Per
        importer, so another principal's import can be no oracle for what exists."""
        canonical = json.dumps(
            {name: value for name, value in values.items() if value is not None},
            sort_keys=True,
            separators=(",", ":"),
            default=str,
        )
        mac = self._row_key.copy()
        parts = (self._plan.spec.name, self._access.principal.id, canonical)
        mac.update(b"\0".join(part.encode() for part in parts))
        return mac.hexdigest()


@dataclass(frozen=True, slots=True)
class PreparerRecipe:
    """What a helper process builds its `RowPreparer` from (all of it picklable)."""

    policy: PolicySource
    regions: tuple[str, ...]
    principal: Principal
    region: str
    plan: ColumnPlan
    secret: bytes

    def __repr__(self) -> str:  # the secret never reaches a log or a traceback
        return f"PreparerRecipe(entity={self.plan.spec.name!r}, region={self.region!r})"


def _serve(connection: Connection, recipe: PreparerRecipe) -> None:
    """The helper process: build the preparer from the recipe, then answer each batch
    of cells it is sent with the prepared rows, until the pipe closes."""
    policy, _findings = checked_policy(recipe.policy, regions=recipe.regions)
    access = Access(policy, recipe.principal)
    scope = access.require(recipe.region, recipe.plan.spec, "create")
    preparer = RowPreparer(access, recipe.region, scope, recipe.plan, recipe.secret)
    with connection:
        while True:
            try:
                cells = connection.recv()
            except (EOFError, OSError):  # the import closed the pipe (or died)
                return
            connection.send(preparer.batch(cells))


@dataclass(slots=True)
class _Queued:
    cells: Cells
    tag: int
    at_helper: bool = False  # sent to the helper, its answer not yet read
    rows: list[PreparedRow] | None = None


class Preparation:
    """Batches prepared one ahead of the batch being written, handed back in order.

    `send(cells, tag)` queues a batch and yields `(rows, tag)` for the batches before
    it, so the caller writes batch N while batch N + 1 is prepared; `drain()` yields
    the rest. With a `recipe`, batches after the first are prepared in a helper
    process (the first here, while the helper starts); without one, here.

    The helper is a plain process and a pipe, read and written by the caller's own
    thread only: a process pool's feeder and result threads would take turns with
    that thread for the interpreter after every database call (measured: slower than
    no helper at all). The helper holds one batch at a time; its answer is read
    before the next is sent, so a send never waits on a full pipe.
    """

    def __init__(self, local: RowPreparer, recipe: PreparerRecipe | None = None) -> None:
        self._local = local
        self._helper: BaseProcess | None = None
        self._pipe: Connection | None = None
        self._queue: list[_Queued] = []
        if recipe is not None:
            # spawn, not fork: this process has threads (the audit sequencer, the policy
            # watcher), and a forked child would inherit their locks mid-use.
            context = multiprocessing.get_context("spawn")
            mine, theirs = context.Pipe()
            self._helper = context.Process(
                target=_serve, args=(theirs, recipe), name="bastion-import-prepare", daemon=True
            )
            self._helper.start()
            theirs.close()
            self._pipe = mine

    def __enter__(self) -> Preparation:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop()

    def send(self, cells: Cells, tag: int) -> Iterator[tuple[list[PreparedRow], int]]:
        """Queue `cells`; yield the batches queued before it, prepared, in order."""
        queued = _Queued(cells, tag)
        if self._pipe is not None and self._queue:  # the first batch stays here
            self._collect()  # the helper's last answer: it is idle now
            queued.at_helper = self._transmit(cells)  # False if the helper is gone
        self._queue.append(queued)
        while len(self._queue) > 1:
            yield self._ready(self._queue.pop(0))

    def drain(self) -> Iterator[tuple[list[PreparedRow], int]]:
        """Every batch still queued, prepared, in order."""
        while self._queue:
            yield self._ready(self._queue.pop(0))

    def _ready(self, queued: _Queued) -> tuple[list[PreparedRow], int]:
        if queued.at_helper:
            self._collect()
        if queued.rows is None:  # prepared here: the first batch, or the helper is gone
            queued.rows = self._local.batch(queued.cells)
        return queued.rows, queued.tag

    def _transmit(self, cells: Cells) -> bool:
        if self._pipe is None:
            return False
        try:
            self._pipe.send(cells)
        except OSError:
            self._lost()
            return False
        return True

    def _collect(self) -> None:
        """Read the helper's answer for the batch it holds, if any."""
        for queued in self._queue:
            if not queued.at_helper:
                continue
            queued.at_helper = False
            if self._pipe is None:
                return  # lost: the batch is prepared here when its turn comes
            try:
                queued.rows = self._pipe.recv()
            except (EOFError, OSError):
                self._lost()
            return

    def _lost(self) -> None:
        log.warning("import_helper_lost", detail="preparing the remaining rows in-process")
        self._stop()

    def _stop(self) -> None:
        if self._pipe is not None:
            self._pipe.close()  # the helper's recv() ends: it returns
            self._pipe = None
        if self._helper is not None:
            self._helper.join(timeout=5)
            if self._helper.is_alive():
                self._helper.kill()
                self._helper.join()
            self._helper = None
