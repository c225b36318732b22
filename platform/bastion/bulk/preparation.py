"""Preparing an import's rows: everything about a row that needs no database.

A row's cells become a record body (the mapping's coercion), the body becomes the
values to store (the create's write mask, validation and create scope, exactly as
`POST /v1/{entity}` checks them: `crm.service.new_values`), and the values get their
row key (a keyed hash of who imports them and what they are, `RowPreparer.key`).

For a large file this runs in a helper process (`PreparingProcess`), one batch ahead
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
from concurrent.futures import CancelledError, Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
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


_helper: RowPreparer | None = None  # the helper process's own, built once at its start


def _start_helper(recipe: PreparerRecipe) -> None:
    global _helper  # one preparer per helper process, built by its initializer
    policy, _findings = checked_policy(recipe.policy, regions=recipe.regions)
    access = Access(policy, recipe.principal)
    scope = access.require(recipe.region, recipe.plan.spec, "create")
    _helper = RowPreparer(access, recipe.region, scope, recipe.plan, recipe.secret)


def _prepare_in_helper(cells: Cells) -> list[PreparedRow]:
    assert _helper is not None, "the helper process was not started with a recipe"
    return _helper.batch(cells)


class Preparation:
    """Batches prepared one ahead of the batch being written, handed back in order.

    `send(cells, tag)` queues a batch and yields `(rows, tag)` for the batches before
    it, so the caller writes batch N while batch N + 1 is prepared; `drain()` yields
    the rest. With a `recipe`, batches are prepared in a helper process (the first one
    here, while the helper starts); without one, here, as they are handed back.
    """

    def __init__(self, local: RowPreparer, recipe: PreparerRecipe | None = None) -> None:
        self._local = local
        self._pool: ProcessPoolExecutor | None = None
        if recipe is not None:
            # spawn, not fork: this process has threads (the audit sequencer, the policy
            # watcher), and a forked child would inherit their locks mid-use.
            self._pool = ProcessPoolExecutor(
                max_workers=1,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_start_helper,
                initargs=(recipe,),
            )
        self._ahead: list[tuple[Future[list[PreparedRow]] | None, Cells, int]] = []
        self._sent = 0

    def __enter__(self) -> Preparation:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def send(self, cells: Cells, tag: int) -> Iterator[tuple[list[PreparedRow], int]]:
        """Queue `cells`; yield the batches queued before it, prepared, in order."""
        first = self._sent == 0
        self._sent += 1
        future = None if first or self._pool is None else self._submit(cells)
        self._ahead.append((future, cells, tag))
        while len(self._ahead) > 1:
            yield self._result(*self._ahead.pop(0))

    def drain(self) -> Iterator[tuple[list[PreparedRow], int]]:
        """Every batch still queued, prepared, in order."""
        while self._ahead:
            yield self._result(*self._ahead.pop(0))

    def _submit(self, cells: Cells) -> Future[list[PreparedRow]] | None:
        assert self._pool is not None
        try:
            return self._pool.submit(_prepare_in_helper, cells)
        except BrokenProcessPool:
            self._lost()
            return None

    def _result(
        self, future: Future[list[PreparedRow]] | None, cells: Cells, tag: int
    ) -> tuple[list[PreparedRow], int]:
        if future is not None:
            try:
                return future.result(), tag
            except (BrokenProcessPool, CancelledError):
                self._lost()
        return self._local.batch(cells), tag

    def _lost(self) -> None:
        log.warning("import_helper_lost", detail="preparing the remaining rows in-process")
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
