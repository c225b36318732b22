"""`Automation`: every part of CRM automation, built once on the `State`.

It loads the workflow rules and the scoring model (a file that does not validate
stops the process from starting, as a policy file does), hangs the change feed on
the record pipeline, and holds the services the API calls (activity events, scores,
webhook subscriptions, the run record) and the queues the job runner works
(automation events and timers, rescoring, webhook deliveries).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bastion.automation import paging
from bastion.automation import repository as repo
from bastion.automation.delivery import DeliveryQueue
from bastion.automation.engine import Engine
from bastion.automation.events import ActivityEvents
from bastion.automation.feed import ChangeFeed
from bastion.automation.queue import AutomationQueue
from bastion.automation.rules import Workflows, load_workflows
from bastion.automation.scores import RescoreQueue, ScoreService
from bastion.automation.scoring import ScoringModel, load_scoring
from bastion.automation.webhooks import Webhooks
from bastion.clock import Clock
from bastion.config import Settings
from bastion.crm.cursors import CursorCodec
from bastion.crm.records import to_json_value
from bastion.crm.service import RecordService
from bastion.dsr.gate import Gate
from bastion.errors import FieldError, ValidationFailed
from bastion.jobs.runner import Queue
from bastion.policy.engine import Policy
from bastion.principals.caller import Caller
from bastion.principals.tokens import TokenService
from bastion.residency.ids import region_of

_RUN_FIELDS = (
    "id",
    "region",
    "rule_id",
    "entity",
    "record_id",
    "trigger_id",
    "event_id",
    "outcome",
    "reasons",
    "plan",
    "depth",
    "decided_at",
)


class Automation:
    def __init__(
        self,
        *,
        settings: Settings,
        records: RecordService,
        tokens: TokenService,
        gate: Gate,
        clock: Clock,
        policy: Callable[[], Policy],
        cursors: CursorCodec,
        worker_id: str,
        fingerprint_key: bytes,
    ) -> None:
        config = settings.automation
        self.workflows: Workflows = load_workflows(config.workflows)
        self.scoring: ScoringModel | None = load_scoring(config.scoring)
        self._gate = gate
        self._records = records
        self._cursors = cursors
        self.feed = ChangeFeed(
            workflows=lambda: self.workflows,
            scoring=lambda: self.scoring,
            access=records.access,
            regions=records.regions.names,
            max_depth=config.max_chain_depth,
        )
        records.changes = self.feed
        self.engine = Engine(
            records=records,
            workflows=lambda: self.workflows,
            members=tokens.team_members,
            clock=clock,
            settings=config,
            policy=policy,
        )
        self._settings = settings
        self._clock = clock
        self._policy = policy
        self._owner = tokens.principal_by_id
        self.queue, self.rescores, self.deliveries = self.worker_queues(worker_id)
        self.events = ActivityEvents(
            records=records,
            gate=gate,
            feed=self.feed,
            clock=clock,
            settings=config,
            fingerprint_key=fingerprint_key,
            cursors=cursors,
        )
        self.scores = ScoreService(records=records, model=lambda: self.scoring, policy=policy)
        self.webhooks = Webhooks(
            regions=records.regions,
            keys=records.keys,
            gate=gate,
            clock=clock,
            settings=settings.webhooks,
            production=settings.mode == "production",
            cursors=cursors,
        )

    def worker_queues(self, worker_id: str) -> tuple[AutomationQueue, RescoreQueue, DeliveryQueue]:
        """The automation queues as worked by `worker_id` (this process's own, or more
        workers in one process: each claims with its own id)."""
        config = self._settings.automation
        return (
            AutomationQueue(
                engine=self.engine, clock=self._clock, settings=config, worker_id=worker_id
            ),
            RescoreQueue(
                records=self._records,
                model=lambda: self.scoring,
                clock=self._clock,
                worker_id=worker_id,
                lease_seconds=config.lease_seconds,
                batch_size=config.batch_size,
                retry_base_seconds=config.retry_base_seconds,
                max_attempts=config.max_attempts,
            ),
            DeliveryQueue(
                records=self._records,
                keys=self._records.keys,
                owner=self._owner,
                clock=self._clock,
                settings=self._settings.webhooks,
                policy=self._policy,
                worker_id=worker_id,
                lease_seconds=config.lease_seconds,
            ),
        )

    @property
    def queues(self) -> tuple[Queue, ...]:
        """The job runner's automation queues, in the order a pass runs them: events
        first (their changes ask for rescoring), then scores (their changes are events
        again, run on the next pass), then webhook deliveries."""
        return (self.queue, self.rescores, self.deliveries)

    def close(self) -> None:
        self.deliveries.close()

    def runs(
        self,
        caller: Caller,
        *,
        region: str | None,
        record_id: str | None,
        rule_id: str | None,
        limit: int,
        cursor: str | None,
    ) -> dict[str, Any]:
        """The run record, newest first: what each rule decided about which event,
        why, and what its actions did (`automation read`)."""
        chosen = region
        if record_id is not None:
            chosen = region_of(record_id)
            if chosen is None or (region is not None and region != chosen):
                raise ValidationFailed(
                    "invalid request",
                    [FieldError("record_id", "must be a record id (of the region asked for)")],
                )
        name = self._gate.one_region(caller, chosen, "automation", "read")
        fingerprint = f"runs:{name}:{record_id}:{rule_id}"
        before = paging.position(self._cursors, fingerprint, cursor)
        with self._records.database(name).transaction() as conn:
            found = repo.runs(
                conn, record_id=record_id, rule_id=rule_id, before=before, limit=limit + 1
            )
        shown, next_cursor = paging.page(self._cursors, fingerprint, found, limit, "decided_at")
        data = [_shown_run(run) for run in shown]
        return {"data": data, "next_cursor": next_cursor}


def _shown_run(run: dict[str, Any]) -> dict[str, Any]:
    shown = {key: to_json_value(run[key]) for key in _RUN_FIELDS}
    shown["effects"] = [
        {
            "action": effect["action"],
            "status": effect["status"],
            "record_id": effect["record_id"],
            "error": effect["error"],
            "applied_at": to_json_value(effect["applied_at"]),
        }
        for effect in run.get("effects", [])
    ]
    return shown
