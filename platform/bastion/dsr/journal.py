"""What a running request leaves behind: its lease, its completed steps, its events.

A step's completion (a `dsr_steps` row, the request's progress and a
`dsr.<type>.<step>` audit event) is written in the step's own last transaction, and
only while this worker still holds the request's lease — so a step is recorded once,
whichever worker ends up finishing the request. (Its work may have been done twice
— once by a worker that lost its lease — which is why every step is idempotent.)
"""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import structlog
from sqlalchemy import Connection

from bastion.audit import AuditEvent
from bastion.clock import Clock
from bastion.crm.auditing import Recorder
from bastion.dsr import repository as repo
from bastion.policy.engine import Policy
from bastion.residency.databases import Database

log = structlog.get_logger("bastion.dsr")

ACTOR = "system:dsr"


class LeaseLost(Exception):
    """Another worker holds this request's lease now; stop without writing."""


class Journal:
    def __init__(
        self,
        *,
        worker_id: str,
        clock: Clock,
        recorder: Recorder,
        policy: Callable[[], Policy],
        lease_seconds: int,
        failpoint: str | None,
    ) -> None:
        self.worker_id = worker_id
        self._clock = clock
        self._recorder = recorder
        self._policy = policy
        self._lease = timedelta(seconds=lease_seconds)
        self._failpoint = failpoint

    def lease_until(self, now: datetime) -> datetime:
        return now + self._lease

    def renew(self, database: Database, request_id: str, *, step: str | None = None) -> None:
        """Extend our lease (and name the step running); `LeaseLost` if it is not ours."""
        values: dict[str, Any] = {"lease_expires_at": self.lease_until(self._clock.now())}
        if step is not None:
            values["step"] = step
        with database.transaction(write=True) as conn:
            if not repo.update_if_leased(conn, request_id, self.worker_id, values):
                raise LeaseLost(request_id)

    def complete(
        self,
        conn: Connection,
        region: str,
        request: dict[str, Any],
        step: str,
        details: dict[str, Any],
        summary: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Record a step as done, with its audit event, in the step's last transaction —
        only while we still hold the lease (else another worker runs the request and
        this transaction rolls back, so nothing is applied twice). Returns `details`."""
        if repo.lease_owner(conn, request["id"]) != self.worker_id:
            raise LeaseLost(request["id"])
        now = self._clock.now()
        repo.complete_step(conn, request["id"], step, now, details)
        progress = dict(request.get("progress") or {})
        progress[step] = {"completed_at": now.isoformat(), **(summary or {})}
        request["progress"] = progress
        repo.update_request(conn, request["id"], progress=progress)
        self.event(conn, region, request, step, summary)
        return details

    def event(
        self,
        conn: Connection,
        region: str,
        request: dict[str, Any],
        step: str,
        summary: dict[str, Any] | None = None,
        record_ids: list[str] | None = None,
    ) -> None:
        """`dsr.<type>.<step>`, naming the request (or `record_ids`); only counts and
        flags of `summary` go into the event, never values."""
        details: dict[str, Any] = {"request": request["id"]}
        for key, value in (summary or {}).items():
            if isinstance(value, int | bool) or value is None:
                details[key] = value
        self._recorder.append(
            conn,
            region,
            AuditEvent.new(
                self._clock,
                actor=ACTOR,
                action=f"dsr.{request['type']}.{step}",
                entity="dsr",
                record_ids=record_ids if record_ids is not None else [request["id"]],
                policy_version=self._policy().version,
                details=details,
            ),
        )

    def hit(self, name: str) -> None:
        """A failpoint: exit at once, as if killed, when it is the one configured."""
        if self._failpoint == name:
            log.warning("failpoint", name=name)
            os._exit(86)
