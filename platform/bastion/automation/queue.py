"""The automation queue (a `bastion.jobs.runner.Queue`): timers that came due, then
pending automation events, then what has expired.

A due timer becomes an automation event whose id is derived from the timer's, in the
transaction that deletes the timer, so a timer fires once even if two workers reach
it (the second finds the event there already and the timer gone). A scoring timer
asks for the lead to be scored again instead.

Events are claimed in batches with a lease and processed one by one (`Engine`). An
event that fails is tried again after `retry_base_seconds`, doubling each time, and
marked `failed` (with the error's type, never a value) after `max_attempts`.
"""

from __future__ import annotations

import threading
from datetime import datetime, timedelta
from typing import Any

import structlog

from bastion.automation import repository as repo
from bastion.automation.engine import Engine
from bastion.automation.feed import event_row
from bastion.automation.model import ACTOR, SCORING
from bastion.automation.settings import AutomationSettings
from bastion.automation.tables import automation_events, automation_timers
from bastion.clock import Clock
from bastion.jobs import lease
from bastion.jobs.runner import TRANSIENT
from bastion.residency.databases import Database
from bastion.residency.ids import RecordId

log = structlog.get_logger("bastion.automation")
_PURGE_EVERY = timedelta(hours=1)


class AutomationQueue:
    name = "automation"

    def __init__(
        self, *, engine: Engine, clock: Clock, settings: AutomationSettings, worker_id: str
    ) -> None:
        self._engine = engine
        self._clock = clock
        self._settings = settings
        self.worker_id = worker_id
        self._claims = lease.Claimer(
            worker=worker_id, clock=clock, lease=timedelta(seconds=settings.lease_seconds)
        )
        self._purged: dict[str, datetime] = {}

    def run_region(self, database: Database, stop: threading.Event) -> int:
        ran = self.fire_timers(database, stop)
        while not stop.is_set():
            claimed = self._claim(database)
            if not claimed:
                break
            with database.transaction() as conn:
                events = repo.fetch_events(conn, claimed)
            settled: list[tuple[str, dict[str, Any]]] = []
            for event in events:
                if stop.is_set():
                    break
                if event["lease_owner"] == self.worker_id:
                    settled.append((str(event["id"]), self.process(database, event)))
                    ran += 1
            # One transaction settles the batch: a worker killed before it leaves the
            # batch's events to be processed again, which changes nothing already done
            # (decisions and effects are unique) and does what was not.
            with database.transaction(write=True) as conn:
                for event_id, values in settled:
                    repo.finish_event(conn, event_id, self.worker_id, values)
        self._purge(database)
        return ran

    def _claim(self, database: Database) -> list[str]:
        return self._claims.take(
            database,
            automation_events,
            ready=lambda at: repo.due(automation_events, at),
            order_by=(automation_events.c.next_attempt_at, automation_events.c.id),
            limit=self._settings.batch_size,
        )

    def process(self, database: Database, event: dict[str, Any]) -> dict[str, Any]:
        """Process a claimed event; how to settle it: done, or (it failed) its next
        attempt, or failed for good after `max_attempts`."""
        try:
            self._engine.process(database, event)
        except Exception as exc:  # retried (transient or not), then failed: nothing is lost
            return self._retry(event, exc)
        return {"status": "done", "finished_at": self._clock.now()}

    def _retry(self, event: dict[str, Any], exc: Exception) -> dict[str, Any]:
        attempts = int(event["attempts"]) + 1
        problem = type(exc).__name__
        if not isinstance(exc, TRANSIENT):
            log.error("automation_event_crashed", event=event["id"], error_type=problem)
        now = self._clock.now()
        values: dict[str, Any] = {"attempts": attempts, "error": problem[:200]}
        if attempts >= self._settings.max_attempts:
            return values | {"status": "failed", "finished_at": now}
        wait = lease.backoff(
            attempts, base_seconds=self._settings.retry_base_seconds, cap_seconds=3600
        )
        return values | {"next_attempt_at": now + wait}

    # -- timers --------------------------------------------------------------------------

    def fire_timers(self, database: Database, stop: threading.Event) -> int:
        """Turn every due timer of the region into its automation event (or rescore)."""
        fired = 0
        while not stop.is_set():
            claimed = self._claims.take(
                database,
                automation_timers,
                ready=lambda at: [automation_timers.c.due_at <= at],
                order_by=(automation_timers.c.due_at, automation_timers.c.id),
                limit=self._settings.batch_size,
            )
            if not claimed:
                break
            for timer_id in claimed:
                fired += self._fire(database, timer_id)
        return fired

    def _fire(self, database: Database, timer_id: str) -> int:
        now = self._clock.now()
        with database.transaction(write=True) as conn:
            timer = repo.fetch_timer(conn, timer_id)
            if timer is None or not repo.delete_timer(conn, timer_id, self.worker_id):
                return 0
            if timer["rule_id"] == SCORING:
                repo.request_rescores(conn, database.name, [timer["record_id"]], now)
                return 1
            # The event's id is the timer's: a timer fires once, however often reached.
            event_id = str(RecordId("aev", database.name, RecordId.parse(timer_id).uuid))
            repo.insert_events(
                conn,
                [
                    event_row(
                        database.name,
                        "timer",
                        timer["entity"],
                        timer["record_id"],
                        now,
                        rule_id=timer["rule_id"],
                        actor=ACTOR,
                        event_id=event_id,
                    )
                ],
            )
        return 1

    def _purge(self, database: Database) -> None:
        """Finished events and their runs past `keep_days` (at most hourly)."""
        now = self._clock.now()
        last = self._purged.get(database.name)
        if last is not None and now - last < _PURGE_EVERY:
            return
        self._purged[database.name] = now
        with database.transaction(write=True) as conn:
            repo.purge_events(conn, now - timedelta(days=self._settings.keep_days))
