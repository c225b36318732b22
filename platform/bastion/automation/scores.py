"""Scoring leads: the rescoring queue, and a lead's score explained.

`RescoreQueue` (a `bastion.jobs.runner.Queue`) takes the leads asked to be scored
again (new behaviour events, a firmographic field changed, a decay timer), reads each
through the pipeline as `system:automation`, computes its score (`scoring`) and, when
it changed, writes it with `RecordService.update` — audited under automation, with
the history row in the same transaction. That write is a change like any other:
rules on `score` (assign a lead that passes 80) hear it, with `scoring` as its
cause. A lead whose score holds decaying points gets a timer to be scored again.

`ScoreService.explain` answers `GET /v1/leads/{id}/score`: the lead's score, the
breakdown of the computation that gave it, and its history — to a caller who may
read the lead and its `score`; breakdown items about fields it may not read, or
about behaviour events when it may not read those, are summed up as
`withheld_points` instead of shown.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import structlog
from sqlalchemy import Connection

from bastion.automation import repository as repo
from bastion.automation.feed import timer_row
from bastion.automation.model import SCORING, automation_caller
from bastion.automation.scoring import SCORED_ENTITY, Score, ScoringModel
from bastion.automation.tables import automation_rescores
from bastion.clock import Clock
from bastion.crm.access import FieldsForbidden
from bastion.crm.records import Record, etag, to_json_value
from bastion.crm.service import RecordService
from bastion.errors import BastionError, PreconditionFailed
from bastion.jobs import lease
from bastion.jobs.runner import TRANSIENT
from bastion.policy.engine import Policy
from bastion.principals.caller import Caller, Cause
from bastion.residency.databases import Database
from bastion.residency.ids import RecordId

log = structlog.get_logger("bastion.automation")
HISTORY = 50


class RescoreQueue:
    name = "scoring"

    def __init__(
        self,
        *,
        records: RecordService,
        model: Callable[[], ScoringModel | None],
        clock: Clock,
        worker_id: str,
        lease_seconds: int,
        batch_size: int,
        retry_base_seconds: float,
        max_attempts: int,
    ) -> None:
        self._records = records
        self._model = model
        self._max_attempts = max_attempts
        self._clock = clock
        self.worker_id = worker_id
        self._claims = lease.Claimer(
            worker=worker_id, clock=clock, lease=timedelta(seconds=lease_seconds)
        )
        self._batch = batch_size
        self._retry = retry_base_seconds

    def run_region(self, database: Database, stop: threading.Event) -> int:
        scored = 0
        while not stop.is_set():
            claimed = self._claims.take(
                database,
                automation_rescores,
                ready=lambda at: repo.due(automation_rescores, at),
                order_by=(automation_rescores.c.next_attempt_at,),
                limit=self._batch,
            )
            if not claimed:
                break
            with database.transaction() as conn:
                requests = repo.fetch_rescores(conn, claimed)
            scored += self.rescore(
                database, [r for r in requests if r["lease_owner"] == self.worker_id]
            )
        return scored

    def rescore(self, database: Database, requests: list[dict[str, Any]]) -> int:
        """Score the leads of claimed requests; how many were scored. The requests are
        settled together at the end (a worker killed before scores them again, which
        writes nothing where the score did not change)."""
        model = self._model()
        now = self._clock.now()
        events: dict[str, list[tuple[str, datetime]]] = {}
        if model is not None and requests:
            with database.transaction() as conn:
                events = repo.behaviour_of(
                    conn,
                    [r["record_id"] for r in requests],
                    sorted(model.event_types),
                    now - model.horizon,
                )
        done: list[dict[str, Any]] = []
        decaying: list[str] = []
        steady: list[str] = []
        later: list[tuple[dict[str, Any], bool]] = []
        for request in requests:
            lead_id = str(request["record_id"])
            try:
                if model is not None:
                    result = self._score(database, lead_id, model, events.get(lead_id, []), now)
                    (decaying if result.behavioural_points > 0 else steady).append(lead_id)
            except TRANSIENT:
                later.append((request, True))
                continue
            except PreconditionFailed:  # the lead changed while it was scored: again, soon
                later.append((request, False))
                continue
            except BastionError as exc:  # gone, erased, or automation may not read or write it
                log.info("rescore_dropped", lead=lead_id, problem=exc.slug)
            except Exception as exc:  # a bug: retried on the backoff, dropped after a few
                log.error("rescore_crashed", lead=lead_id, error_type=type(exc).__name__)
                if int(request["attempts"]) + 1 < self._max_attempts:
                    later.append((request, True))
                    continue
            done.append(request)
        with database.transaction(write=True) as conn:
            for request in done:
                repo.finish_rescore(
                    conn, request["record_id"], self.worker_id, request["requested_at"]
                )
            if model is not None:
                # Decaying points are scored again as they decay: a timer, not a scan.
                due = now + model.rescore_every
                timers = [
                    timer_row(database.name, SCORING, SCORED_ENTITY, lead_id, due, now)
                    for lead_id in decaying
                ]
                repo.set_timers(conn, timers, move=True)
            if steady:
                repo.drop_timers(conn, steady, rule_id=SCORING)
            for request, wait in later:
                self._later(conn, request, wait=wait)
        return len(done)

    def _score(
        self,
        database: Database,
        lead_id: str,
        model: ScoringModel,
        events: list[tuple[str, datetime]],
        now: datetime,
    ) -> Score:
        """Score the lead, and write the score (with its history row) if it changed."""
        cause = Cause(f"scoring:{lead_id}", SCORING, 0)
        caller = automation_caller(self._records.regions.names, cause)
        lead = self._records.get(caller, SCORED_ENTITY, lead_id)
        result = model.compute(lead, events, now)
        if lead.get("score") == result.value:
            return result

        def history(conn: Connection, written: Record) -> None:
            repo.insert_score(
                conn,
                {
                    "id": str(RecordId.new("lsc", database.name, now)),
                    "region": database.name,
                    "lead_id": lead_id,
                    "model": model.id,
                    "score": result.value,
                    "previous": lead.get("score"),
                    "breakdown": list(result.breakdown),
                    "computed_at": now,
                },
            )

        self._records.update(
            caller,
            SCORED_ENTITY,
            lead_id,
            {"score": result.value},
            if_match=etag(lead),
            also=history,
        )
        return result

    def _later(self, conn: Connection, request: dict[str, Any], *, wait: bool) -> None:
        attempts = int(request["attempts"]) + 1
        delay = (
            lease.backoff(attempts, base_seconds=self._retry, cap_seconds=3600)
            if wait
            else timedelta(0)
        )
        lease.update_if_leased(
            conn,
            automation_rescores,
            request["record_id"],
            self.worker_id,
            {
                "attempts": attempts,
                "next_attempt_at": self._clock.now() + delay,
                "lease_owner": None,
                "lease_expires_at": None,
            },
        )


class ScoreService:
    def __init__(
        self,
        *,
        records: RecordService,
        model: Callable[[], ScoringModel | None],
        policy: Callable[[], Policy],
    ) -> None:
        self._records = records
        self._model = model
        self._policy = policy

    def explain(self, caller: Caller, lead_id: str) -> dict[str, Any]:
        """A lead's score, how it was computed and its history, as `caller` may see them."""
        lead = self._records.get(caller, SCORED_ENTITY, lead_id)
        if "score" not in lead:
            raise FieldsForbidden("you may not read this lead's score", ["leads.score"])
        region = str(lead["region"])
        policy = self._policy()
        events_readable = policy.allows(caller.principal.roles, region, "events", "read")
        database = self._records.database(region)
        with self._records.write(database, "the lead is gone") as conn:
            history = repo.scores(conn, lead_id, HISTORY)
            self._records.recorder.record(
                conn,
                region,
                caller,
                policy.version,
                action="score.read",
                entity=SCORED_ENTITY,
                record_ids=[lead_id],
            )
        readable = {name for name in lead if not name.startswith("_")}
        breakdown: list[dict[str, Any]] = []
        withheld = 0.0
        latest = history[0] if history else None
        for item in (latest or {}).get("breakdown", []):
            if item["kind"] == "firmographic":
                shown = set(item["fields"]) <= readable
            else:
                shown = events_readable
            if shown:
                breakdown.append(item)
            else:
                withheld += float(item["points"])
        model = self._model()
        return {
            "lead_id": lead_id,
            "region": region,
            "score": lead["score"],
            "model": latest["model"] if latest else (model.id if model else None),
            "computed_at": to_json_value(latest["computed_at"]) if latest else None,
            "breakdown": breakdown,
            "withheld_points": round(withheld, 2),
            "history": [
                {
                    "score": entry["score"],
                    "previous": entry["previous"],
                    "computed_at": to_json_value(entry["computed_at"]),
                }
                for entry in history
            ],
        }
