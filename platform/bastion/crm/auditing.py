"""The audit step of the pipeline: one event per read, write and denial.

Writes append their event inside the write's own transaction (both commit or
neither; a failed append fails the request). Reads append theirs inside the read's
transaction, opened as a write, so the response is never sent for a read the log
does not hold. Denials (403, and 404 for an id outside the caller's scope) are
recorded in a transaction of their own in the region asked about, then the error
goes on to the caller.

Events name records and fields, never values (`bastion.audit.events` refuses
value-shaped input). Every event carries the policy version that decided it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager

import structlog
from sqlalchemy import Connection
from sqlalchemy.exc import SQLAlchemyError

from bastion.audit import AuditEvent, append
from bastion.audit.events import Decision, DetailValue
from bastion.clock import Clock
from bastion.crm.access import FieldsForbidden
from bastion.errors import BastionError, Forbidden, NotFound
from bastion.principals.caller import Caller
from bastion.residency.databases import Database

log = structlog.get_logger("bastion.audit")


class AuditUnavailable(BastionError):
    """The audit log did not take an event: the request fails, nothing is written."""

    status = 503
    slug = "audit-unavailable"
    title = "Audit log unavailable"

    def __init__(self, region: str) -> None:
        super().__init__(
            f"the audit log of region {region!r} cannot record this request; nothing was "
            "done; retry later"
        )
        self.region = region


class Recorder:
    def __init__(self, clock: Clock, notify: Callable[[str], None] | None = None) -> None:
        self._clock = clock
        self._notify = notify

    def event(
        self,
        caller: Caller,
        policy_version: str,
        *,
        action: str,
        entity: str,
        decision: Decision = "allow",
        record_ids: Iterable[str] = (),
        fields: Iterable[str] = (),
        reason: str | None = None,
        details: Mapping[str, DetailValue] | None = None,
    ) -> AuditEvent:
        return AuditEvent.new(
            self._clock,
            actor=caller.principal.id,
            action=action,
            entity=entity,
            decision=decision,
            record_ids=record_ids,
            fields=fields,
            reason=reason,
            policy_version=policy_version,
            request_id=caller.request_id,
            client_address=caller.client_address,
            details=details,
        )

    def record(
        self,
        conn: Connection,
        region: str,
        caller: Caller,
        policy_version: str,
        *,
        action: str,
        entity: str,
        record_ids: Iterable[str] = (),
        details: Mapping[str, DetailValue] | None = None,
    ) -> None:
        """`event` then `append`: an allowed action of `caller`, in the transaction."""
        event = self.event(
            caller,
            policy_version,
            action=action,
            entity=entity,
            record_ids=record_ids,
            details=details,
        )
        self.append(conn, region, event)

    def append(self, conn: Connection, region: str, event: AuditEvent) -> None:
        """Append in the caller's transaction on `region`'s database. If the log cannot
        take the event, the request fails with 503 and its transaction (the write
        too) rolls back."""
        try:
            append(conn, event)
        except SQLAlchemyError as exc:
            cause = type(getattr(exc, "orig", None) or exc).__name__
            log.error("audit_append_failed", database=region, cause=cause)
            raise AuditUnavailable(region) from None

    def committed(self, database: Database) -> None:
        """After a commit: let the sequencer chain the new events soon."""
        if self._notify is not None:
            self._notify(database.name)

    @contextmanager
    def denials(
        self,
        database: Database,
        caller: Caller,
        policy_version: str,
        *,
        entity: str,
        action: str,
        record_ids: Iterable[str] = (),
    ) -> Iterator[None]:
        """Record a 403, or a 404 for an addressed record, raised inside the block."""
        try:
            yield
        except FieldsForbidden as exc:
            self._denied(
                database,
                caller,
                policy_version,
                entity,
                action,
                record_ids,
                exc.fields,
                "policy:field-denied",
            )
            raise
        except Forbidden:
            self._denied(
                database,
                caller,
                policy_version,
                entity,
                action,
                record_ids,
                (),
                "policy:action-denied",
            )
            raise
        except NotFound:
            if record_ids:
                self._denied(
                    database,
                    caller,
                    policy_version,
                    entity,
                    action,
                    record_ids,
                    (),
                    "policy:not-found-in-scope",
                )
            raise

    def _denied(
        self,
        database: Database,
        caller: Caller,
        policy_version: str,
        entity: str,
        action: str,
        record_ids: Iterable[str],
        fields: Iterable[str],
        reason: str,
    ) -> None:
        event = self.event(
            caller,
            policy_version,
            action=f"record.{action}",
            entity=entity,
            decision="deny",
            record_ids=record_ids,
            fields=[f.rpartition(".")[2] for f in fields],
            reason=reason,
        )
        with database.transaction(write=True) as conn:
            self.append(conn, database.name, event)
        self.committed(database)
