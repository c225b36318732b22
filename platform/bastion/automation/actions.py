"""Applying a fired rule's plan: each action once, through the record pipeline.

Every action that changes a record is a `RecordService` call as `system:automation`
(policy, validation, encryption, audit under that principal), with the action's
effect row (`automation_effects`, unique per run and action) written in the same
transaction as the change (`also=`). An action is therefore applied exactly once:
a resumed run skips actions with an effect row, and two workers racing on one
action make one change — the loser's transaction fails on the effect row and rolls
back whole. A webhook action writes its deliveries and its effect row together.

An action the pipeline refuses (the policy does not let automation write the field,
the record is gone, a value is invalid) is recorded as failed with the problem's
code, and the run goes on with the next action. A failure that may pass (a region
or the key service down) propagates: the event is retried later, and the actions
already applied are not applied again.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.exc import IntegrityError

from bastion.automation import repository as repo
from bastion.automation.rules import Rule
from bastion.automation.webhooks import fan_out
from bastion.clock import Clock
from bastion.crm.records import Record, etag
from bastion.crm.service import RecordService, WithWrite
from bastion.errors import BastionError, Conflict, PreconditionFailed
from bastion.jobs.runner import TRANSIENT
from bastion.principals.caller import Caller
from bastion.residency.databases import Database

_STALE_RETRIES = 3


@dataclass(frozen=True, slots=True)
class _Applying:
    """One fired run being applied: where, as whom, which rule, which run."""

    database: Database
    caller: Caller
    rule: Rule
    run: Mapping[str, Any]


class Actions:
    def __init__(self, *, records: RecordService, clock: Clock) -> None:
        self._records = records
        self._clock = clock

    def apply(
        self,
        database: Database,
        caller: Caller,
        rule: Rule,
        run: Mapping[str, Any],
        record: Record | None,
        *,
        fresh: bool,
    ) -> None:
        """Apply the run's actions that have no effect row yet (`fresh`: the run was
        decided just now, so none has)."""
        applying = _Applying(database, caller, rule, run)
        done: dict[int, dict[str, Any]] = {}
        if not fresh:
            with database.transaction() as conn:
                done = repo.effects_of(conn, run["id"])
        current = record
        for index, step in enumerate(run["plan"]):
            if index in done:
                continue
            try:
                current = self._one(applying, index, step, current)
            except TRANSIENT:
                raise
            except (BastionError, IntegrityError) as exc:
                if self._applied(applying, index):
                    continue  # another worker applied it first: its change stands
                code = exc.slug if isinstance(exc, BastionError) else "conflict"
                self._mark(applying, index, "failed", error=code)

    def _one(
        self, applying: _Applying, index: int, step: Mapping[str, Any], current: Record | None
    ) -> Record | None:
        run, rule = applying.run, applying.rule
        kind = step["action"]
        if kind == "create_task":
            effect = self._effect(run, index)
            self._records.create(applying.caller, "activities", step["body"], also=effect)
            return current
        if kind == "webhook":
            with applying.database.transaction(write=True) as conn:
                fan_out(
                    conn,
                    applying.database.name,
                    [step["topic"], "workflow.*"],
                    step["topic"],
                    source_id=run["id"],
                    entity=rule.entity,
                    record_id=run["record_id"],
                    rule_id=rule.id,
                    fields=[],
                    now=self._clock.now(),
                )
                repo.insert_effect(conn, self._row(run, index, "done", run["record_id"]))
            return current
        changes = step.get("changes")
        if not changes or current is None:
            self._mark(applying, index, "skipped", error="nothing-to-do")
            return current
        return self._update(applying, index, changes, current)

    def _update(
        self, applying: _Applying, index: int, changes: Mapping[str, Any], current: Record
    ) -> Record:
        """Apply `changes` to the record, re-reading it when someone else changed it
        in between (the plan holds the values to set, so they still apply)."""
        entity, caller = applying.rule.entity, applying.caller
        for _ in range(_STALE_RETRIES):
            if all(current.get(name) == value for name, value in changes.items()):
                self._mark(applying, index, "skipped", error="unchanged")
                return current
            try:
                return self._records.update(
                    caller,
                    entity,
                    str(current["id"]),
                    dict(changes),
                    if_match=etag(current),
                    also=self._effect(applying.run, index),
                )
            except PreconditionFailed:
                current = self._records.get(caller, entity, str(current["id"]))
        raise Conflict("the record kept changing while automation wrote to it")

    def _effect(self, run: Mapping[str, Any], index: int) -> WithWrite:
        def record_effect(conn: Connection, written: Record) -> None:
            repo.insert_effect(conn, self._row(run, index, "done", str(written["id"])))

        return record_effect

    def _row(
        self,
        run: Mapping[str, Any],
        index: int,
        status: str,
        record_id: str | None,
        error: str | None = None,
    ) -> dict[str, Any]:
        return {
            "run_id": run["id"],
            "action": index,
            "status": status,
            "record_id": record_id,
            "error": error,
            "applied_at": self._clock.now(),
        }

    def _mark(self, applying: _Applying, index: int, status: str, *, error: str) -> None:
        try:
            with applying.database.transaction(write=True) as conn:
                repo.insert_effect(conn, self._row(applying.run, index, status, None, error))
        except IntegrityError:
            return  # another worker recorded this action first; its record stands

    @staticmethod
    def _applied(applying: _Applying, index: int) -> bool:
        with applying.database.transaction() as conn:
            return index in repo.effects_of(conn, applying.run["id"])
