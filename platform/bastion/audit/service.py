"""`AuditLog`: the audit chains of every database of a deployment, as one service.

It lives on `State.audit`. Writers use the module-level `append(conn, event)`
inside their own transaction and may then call `notify(chain)`; the rest —
chaining, checkpoints, verification, queries, export, pruning, redaction — goes
through this object. Chains are named by their database: each region's name and
`control`.

Sequencing runs three ways, all safe together because each batch takes the
chain's lock: the background `Sequencer` thread of every process (started by
the app lifespan; `sequencer_interval_seconds`, or at once after `notify`), a
synchronous `flush(chain)` (CLI, tests, before a checkpoint), and a redaction
(which chains its own `audit.redact` event before it changes anything).
`health()` reports each chain's backlog and the sequencer's state (`/readyz`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, func, select
from sqlalchemy.exc import SQLAlchemyError

from bastion.audit.chain import append, chain_batch, has_pending, head, lock_chain
from bastion.audit.checkpoints import (
    Checkpoint,
    checkpoint_due,
    list_checkpoints,
    write_checkpoint,
)
from bastion.audit.events import AuditEvent
from bastion.audit.keys import KeyRing
from bastion.audit.queries import EventFilter, Position, fetch_events, render_event
from bastion.audit.retention import PrunePlan, plan_prune, prune, redact
from bastion.audit.sequencer import AuditHealth, ChainHealth, Sequencer
from bastion.audit.settings import AuditSettings
from bastion.audit.tables import AUDIT
from bastion.audit.verify import VerifyReport, verify_chain
from bastion.audit.witness import Witness, parse_witness
from bastion.clock import Clock
from bastion.crm.cursors import CursorCodec, advanced
from bastion.crm.cursors import Position as CursorPosition
from bastion.errors import BadRequest, Conflict, NotFound, RegionUnavailable
from bastion.residency.databases import CONTROL, Database
from bastion.residency.ids import region_of

__all__ = ["AuditLog", "EventPage", "Sequencer", "key_ring"]

_EXPORT_BATCH = 1000


@dataclass(frozen=True, slots=True)
class EventPage:
    data: list[dict[str, Any]]
    next_cursor: str | None


def key_ring(settings: AuditSettings, *, home: Path, production: bool) -> KeyRing:
    """The deployment's checkpoint keys; production never creates a missing key."""
    directory = Path(settings.signing_key_dir) if settings.signing_key_dir else home / "audit-keys"
    return KeyRing(directory, origin=settings.origin, create_missing=not production)


class AuditLog:
    def __init__(
        self,
        *,
        databases: Mapping[str, Database],
        clock: Clock,
        settings: AuditSettings,
        keys: KeyRing,
        cursors: CursorCodec,
    ) -> None:
        self._databases = dict(databases)
        self._clock = clock
        self._settings = settings
        self.keys = keys
        self._cursors = cursors
        self._sequencer: Sequencer | None = None
        if not keys.creates_missing:
            # Production: a missing key is a startup error, not a failed checkpoint later.
            for chain in self._databases:
                keys.signing_key(chain)

    @property
    def chains(self) -> tuple[str, ...]:
        return tuple(self._databases)

    def database(self, chain: str) -> Database:
        """The database holding `chain`; `NotFound` for an unknown one."""
        database = self._databases.get(chain)
        if database is None:
            raise NotFound(f"unknown audit chain {chain!r}")
        return database

    # -- writing -------------------------------------------------------------------

    def record(self, chain: str, event: AuditEvent) -> None:
        """Append `event` in a transaction of its own (when there is no write to join)."""
        with self.database(chain).transaction(write=True) as conn:
            append(conn, event)
        self.notify(chain)

    def notify(self, chain: str | None = None) -> None:
        """Ask the background sequencer to run now rather than at its next tick. Cheap."""
        if self._sequencer is not None:
            self._sequencer.wake()

    def flush(self, chain: str) -> int:
        """Chain every pending event now, waiting for the chain's lock; how many were chained."""
        total = 0
        while True:
            with self.database(chain).transaction(write=True) as conn:
                lock_chain(conn, chain, wait=True)
                chained = chain_batch(conn, chain, self._settings.batch_size)
            total += chained
            if chained < self._settings.batch_size:
                return total

    def tick(self, chain: str) -> int:
        """One opportunistic round: chain what is pending and checkpoint when due.

        Never waits for another sequencer: if one holds the chain's lock, it is
        doing this work already.
        """
        database = self.database(chain)
        now = self._clock.now()
        with database.transaction() as conn:
            if not has_pending(conn) and not self._checkpoint_due(conn, now):
                return 0
        total = 0
        while True:
            with database.transaction(write=True) as conn:
                if not lock_chain(conn, chain, wait=False):
                    return total
                chained = chain_batch(conn, chain, self._settings.batch_size)
                total += chained
                if chained < self._settings.batch_size and self._checkpoint_due(conn, now):
                    write_checkpoint(
                        conn,
                        self.keys.signing_key(chain),
                        self._clock.now(),
                        self.keys.verifiers(chain),
                    )
            if chained < self._settings.batch_size:
                return total

    def _checkpoint_due(self, conn: Connection, now: datetime) -> bool:
        return checkpoint_due(
            conn,
            now,
            every_events=self._settings.checkpoint_every_events,
            interval=timedelta(seconds=self._settings.checkpoint_interval_seconds),
        )

    # -- checkpoints ---------------------------------------------------------------

    def checkpoint(self, chain: str) -> Checkpoint:
        """Flush, then sign a checkpoint of the head (or return the head's existing one).

        `Conflict` when the chain is empty (there is nothing to sign) or when the
        row stored at the head's tree size is not a valid checkpoint of it.
        """
        self.flush(chain)
        key = self.keys.signing_key(chain)
        verifiers = self.keys.verifiers(chain)
        with self.database(chain).transaction(write=True) as conn:
            lock_chain(conn, chain, wait=True)
            checkpoint = write_checkpoint(conn, key, self._clock.now(), verifiers)
        if checkpoint is None:
            raise Conflict(f"the {chain} audit chain is empty; there is nothing to checkpoint")
        return checkpoint

    def checkpoints(
        self, chain: str, *, before: int | None = None, limit: int = 50
    ) -> list[Checkpoint]:
        """Checkpoints, newest first, with tree sizes below `before`."""
        with self.database(chain).transaction() as conn:
            return list_checkpoints(conn, after=before, limit=limit, newest_first=True)

    def verifier_key(self, chain: str) -> str:
        """The chain's current public key as a C2SP verifier key."""
        self.database(chain)
        return self.keys.signing_key(chain).verifier_key

    # -- verification --------------------------------------------------------------

    def verify(
        self,
        chain: str,
        *,
        from_seq: int | None = None,
        progress: Callable[[int], None] | None = None,
        witness: Witness | None = None,
    ) -> VerifyReport:
        """Re-walk the chain and its checkpoints (see `bastion.audit.verify`).

        `ValidationFailed` naming `from` when `from_seq` is more than one past the
        head; `Conflict` when `witness` lies in a pruned segment.
        """
        keys = self.keys.verifiers(chain)
        tolerance = timedelta(seconds=self._settings.clock_tolerance_seconds)
        with self.database(chain).transaction() as conn:
            return verify_chain(
                conn,
                chain,
                keys,
                from_seq=from_seq,
                progress=progress,
                witness=witness,
                clock_tolerance=tolerance,
            )

    def witness(self, chain: str, note: str, *, field: str) -> Witness:
        """The checkpoint in `note`, a signed note kept outside the database, for `verify`.

        `ValidationFailed` naming `field` unless it is a checkpoint of `chain`
        signed by one of the chain's keys (see `bastion.audit.witness`).
        """
        self.database(chain)
        return parse_witness(
            note, self.keys.key_name(chain), self.keys.verifiers(chain), field=field
        )

    def head_seq(self, chain: str) -> int:
        with self.database(chain).transaction() as conn:
            return head(conn).seq

    # -- queries -------------------------------------------------------------------

    def events(
        self,
        chains: list[str],
        flt: EventFilter,
        *,
        limit: int,
        cursor: str | None = None,
        descending: bool = True,
    ) -> EventPage:
        """One page of events across `chains`, merged by time (keyset, sealed cursor).

        Raises `BadRequest` for a cursor that is not ours or belongs to another query.
        """
        home = region_of(flt.record_id)
        if home is not None:
            # A record's events are in its region's chain (or the control chain); no
            # other region's database is sent its id.
            chains = [chain for chain in chains if chain in (home, CONTROL)]
        fingerprint = _fingerprint("events", chains, flt, descending)
        # One position per chain: a region's query never carries another's event.
        positions: dict[str, CursorPosition] = {}
        if cursor is not None:
            positions = self._cursors.open_positions(fingerprint, cursor)
        merged: list[tuple[Any, str]] = []
        for chain in chains:
            at = positions.get(chain)
            after = None if at is None else _position(at)
            with self.database(chain).transaction() as conn:
                rows = fetch_events(conn, flt, after=after, descending=descending, limit=limit + 1)
            merged.extend((row, chain) for row in rows)
        merged.sort(key=lambda item: (item[0].occurred_at, item[0].id), reverse=descending)
        page = merged[:limit]
        next_cursor = None
        if len(merged) > limit:
            emitted = [
                (chain, CursorPosition(row.occurred_at.isoformat(), row.id)) for row, chain in page
            ]
            next_cursor = self._cursors.seal_positions(fingerprint, advanced(positions, emitted))
        return EventPage([render_event(row, chain) for row, chain in page], next_cursor)

    def export(self, chain: str, flt: EventFilter) -> Iterator[dict[str, Any]]:
        """Every matching event of `chain`, oldest first, with hashes; one short
        transaction per batch, so a slow reader never holds a snapshot open."""
        if region_of(flt.record_id) not in (None, chain) and chain != CONTROL:
            return  # another region's record: none of its events are in this chain
        after: Position | None = None
        while True:
            with self.database(chain).transaction() as conn:
                rows = fetch_events(conn, flt, after=after, descending=False, limit=_EXPORT_BATCH)
            for row in rows:
                yield render_event(row, chain, hashes=True)
            if len(rows) < _EXPORT_BATCH:
                return
            after = (rows[-1].occurred_at, rows[-1].id)

    # -- retention and redaction -----------------------------------------------------

    def plan_prune(self, chain: str) -> PrunePlan:
        """What `prune` would remove now; `Conflict` if the checkpoint it would use is bad."""
        cutoff = self._clock.now() - timedelta(days=self._settings.retention_days)
        verifiers = self.keys.verifiers(chain)
        with self.database(chain).transaction() as conn:
            return plan_prune(conn, chain, cutoff, verifiers)

    def prune(self, chain: str, *, actor: str, dry_run: bool = False) -> PrunePlan:
        """Remove the segments older than `retention_days` (see `bastion.audit.retention`).

        Verifies the chain first and refuses (`Conflict`) if it does not verify:
        pruning must never destroy the evidence of tampering. The checkpoint it
        prunes to is checked again under the chain's lock, in the pruning
        transaction (a row inserted after the verify is not trusted).
        """
        plan = self.plan_prune(chain)
        if dry_run or plan.upto_seq is None:
            return plan
        report = self.verify(chain)
        if not report.ok:
            raise Conflict(
                f"the {chain} audit chain does not verify (first bad sequence number "
                f"{report.problem.seq if report.problem else '?'}); not pruning"
            )
        key = self.keys.signing_key(chain)
        verifiers = self.keys.verifiers(chain)
        with self.database(chain).transaction(write=True) as conn:
            lock_chain(conn, chain, wait=True)
            plan = plan_prune(conn, chain, plan.cutoff, verifiers)
            prune(conn, plan, key, verifiers, self._clock, actor=actor)
        self.notify(chain)
        return plan

    def redact(
        self,
        chain: str,
        event_id: str,
        *,
        actor: str,
        reason: str,
        pseudonyms: Mapping[str, str] | None = None,
    ) -> AuditEvent:
        """Redact one event's payload (see `bastion.audit.retention.redact`)."""
        with self.database(chain).transaction(write=True) as conn:
            event = redact(
                conn,
                self._clock,
                chain,
                event_id,
                actor=actor,
                reason=reason,
                pseudonyms=pseudonyms or {},
                batch_size=self._settings.batch_size,
            )
        self.notify(chain)
        return event

    # -- background sequencer and health ---------------------------------------------

    def start(self) -> None:
        """Start this process's background sequencer (idempotent)."""
        if self._sequencer is None:
            self._sequencer = Sequencer(self, self._settings.sequencer_interval_seconds)
            self._sequencer.start()

    def stop(self) -> None:
        """Stop the background sequencer and chain what is left (best effort)."""
        sequencer, self._sequencer = self._sequencer, None
        if sequencer is not None:
            sequencer.stop()

    close = stop

    def health(self) -> AuditHealth:
        """Each chain's backlog and the sequencer's last rounds (never raises for a chain).

        A chain is ok when its database answers and no pending event has waited
        longer than `max_backlog_age_seconds`; the whole is ok when every chain is
        and the sequencer thread, if started, is alive. For `/readyz`.
        """
        sequencer = self._sequencer
        limit = self._settings.max_backlog_age_seconds
        now = self._clock.now()
        chains = []
        for chain in self._databases:
            status = sequencer.status(chain) if sequencer is not None else None
            failures = status.failures if status else 0
            error = status.last_error if status else None
            try:
                with self.database(chain).transaction() as conn:
                    seq = head(conn).seq
                    count, oldest = conn.execute(
                        select(func.count(), func.min(AUDIT.pending.c.occurred_at))
                    ).one()
            except (RegionUnavailable, SQLAlchemyError):
                chains.append(ChainHealth(chain, False, None, None, None, failures, error, False))
                continue
            age = max((now - oldest).total_seconds(), 0.0) if oldest is not None else None
            ok = age is None or age <= limit
            chains.append(ChainHealth(chain, True, seq, int(count), age, failures, error, ok))
        state = sequencer.state if sequencer is not None else "stopped"
        return AuditHealth(state, tuple(chains))


def _fingerprint(kind: str, chains: list[str], flt: EventFilter, descending: bool) -> str:
    return json.dumps(["audit", kind, chains, flt.fingerprint(), descending], separators=(",", ":"))


def _position(position: CursorPosition) -> Position:
    try:
        moment = datetime.fromisoformat(str(position.value))
    except ValueError:
        raise BadRequest("the cursor is invalid") from None
    return moment, position.id
