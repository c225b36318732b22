"""The change feed: what automation writes inside the transaction of every record
change, and of every batch of activity events (`Pipeline.changes`).

For each change it writes, in that same transaction, only what something is waiting
for — so a deployment without rules, scoring or subscriptions pays nothing but a
lookup:

- an automation event (the outbox row the rule engine claims later), when a rule
  hears the change and could fire on it (decided on the change's own values, as
  automation may read them: a score rising from 40 to 45 does not queue the rule
  for scores past 80), or an active webhook subscription of the region listens to
  its topic (`leads.updated`, `leads.*`);
- timers of the entity's time rules (written on create; moved on each change for
  rules timed from the last change; dropped when the record goes);
- a rescoring request when a lead is created or a field its score depends on changes
  (the score's own change, made by scoring, is not one).

The event carries the change's cause on: a change made by automation (the caller's
`cause`) is one level deeper than the change automation was answering, and names
the rule that made it — which is what loop protection reads.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection

from bastion.automation import repository as repo
from bastion.automation import webhook_repository as hooks
from bastion.automation.decision import judge
from bastion.automation.model import SCORING, automation_principal
from bastion.automation.rules import Rule, Workflows
from bastion.automation.scoring import SCORED_ENTITY, ScoringModel
from bastion.crm.access import Access
from bastion.crm.catalog import EntitySpec
from bastion.crm.pipeline import Change
from bastion.crm.records import WITHHELD, to_json_value
from bastion.principals.caller import Caller
from bastion.principals.tokens import Principal
from bastion.residency.ids import RecordId


@dataclass(frozen=True, slots=True)
class Activity:
    """An activity event just stored: its row id, type and subject."""

    id: str
    type: str
    subject_id: str
    entity: str


def topics(entity: str, kind: str) -> list[str]:
    """The webhook topics a change of `kind` to an `entity` record is delivered under."""
    return [f"{entity}.{kind}", f"{entity}.*"]


def kept_previous(
    spec: EntitySpec, stored: Mapping[str, Any], names: Iterable[str]
) -> dict[str, Any]:
    """Old values of `names` that may be kept outside their record: plain fields that
    are not personal (a status, a priority, a score). Conditions on `old.` of other
    fields see their current value."""
    kept: dict[str, Any] = {}
    for name in names:
        field = spec.field(name)
        if field is not None and not field.encrypted and not field.personal:
            kept[name] = to_json_value(stored.get(name))
    return kept


class ChangeFeed:
    def __init__(
        self,
        *,
        workflows: Callable[[], Workflows],
        scoring: Callable[[], ScoringModel | None],
        access: Callable[[Principal], Access],
        regions: tuple[str, ...],
        max_depth: int,
    ) -> None:
        self._workflows = workflows
        self._scoring = scoring
        self._access = access
        self._automation = automation_principal(regions)
        self._max_depth = max_depth

    def __call__(self, conn: Connection, caller: Caller, changes: Sequence[Change]) -> None:
        if not changes:
            return
        workflows, model = self._workflows(), self._scoring()
        cause = caller.cause
        depth = cause.depth + 1 if cause is not None else 0
        listened: dict[str, bool] = {}
        events: list[dict[str, Any]] = []
        created_timers: list[dict[str, Any]] = []
        moved_timers: list[dict[str, Any]] = []
        rescore: list[str] = []
        gone: list[str] = []
        region = changes[0].region
        for change in changes:
            entity, kind = change.spec.name, change.kind
            rules = self._could_fire(change, caller) if kind != "deleted" else []
            topic = f"{entity}.{kind}"
            if topic not in listened:
                listened[topic] = hooks.listening(conn, topics(entity, kind))
            if rules or listened[topic]:
                previous = (
                    kept_previous(change.spec, change.before, change.fields)
                    if kind == "updated" and change.before is not None
                    else {}
                )
                events.append(
                    event_row(
                        change.region,
                        kind,
                        entity,
                        change.record_id,
                        change.at,
                        fields=list(change.fields),
                        previous=previous,
                        cause=cause.rule if cause is not None else None,
                        depth=depth,
                        actor=caller.principal.id,
                        notify=listened[topic],
                    )
                )
            if kind == "deleted":
                gone.append(change.record_id)
                continue
            for rule in workflows.timed(entity):
                assert rule.trigger.after is not None
                due_at = change.at + rule.trigger.after
                timer = timer_row(
                    change.region, rule.id, entity, change.record_id, due_at, change.at
                )
                if kind == "created":
                    created_timers.append(timer)
                elif rule.trigger.since == "updated":
                    moved_timers.append(timer)
            if model is not None and entity == SCORED_ENTITY:
                by_scoring = cause is not None and cause.rule == SCORING
                if kind == "created" or (
                    not by_scoring and not model.fields.isdisjoint(change.fields)
                ):
                    rescore.append(change.record_id)
        repo.insert_events(conn, events)
        repo.set_timers(conn, created_timers, move=False)
        repo.set_timers(conn, moved_timers, move=True)
        if rescore:
            repo.request_rescores(conn, region, rescore, changes[0].at)
        if gone:
            repo.drop_timers(conn, gone)

    def _could_fire(self, change: Change, caller: Caller) -> list[Rule]:
        """The rules a change triggers that could fire on it: decided on the change's
        own values, as automation may read them (its field mask). One that cannot is
        not queued at all; one that can is decided again, on the record as read, when
        its event is processed."""
        rules = self._workflows().for_change(change.spec.name, change.kind, change.fields)
        if not rules:
            return []
        access = self._access(self._automation)
        readable = access.readable(change.region, change.spec, change.after)
        seen = {name: value for name, value in change.after.items() if name in readable}
        seen[WITHHELD] = [f.name for f in change.spec.fields if f.name not in readable]
        previous = (
            kept_previous(change.spec, change.before, change.fields)
            if change.kind == "updated" and change.before is not None
            else None
        )
        cause = caller.cause
        return [
            rule
            for rule in rules
            if judge(
                rule,
                kind=change.kind,
                record=seen,
                previous=previous,
                cause=cause.rule if cause is not None else None,
                depth=cause.depth + 1 if cause is not None else 0,
                max_depth=self._max_depth,
            )[0]
            != "not_matched"
        ]

    def activities(
        self,
        conn: Connection,
        region: str,
        caller: Caller,
        stored: Sequence[Activity],
        now: datetime,
    ) -> None:
        """What a batch of activity events just stored feeds: rescoring of the leads
        whose model counts these types, and one automation event per subject for the
        rules that hear them."""
        workflows, model = self._workflows(), self._scoring()
        rescore = [
            a.subject_id
            for a in stored
            if model is not None and a.entity == SCORED_ENTITY and a.type in model.event_types
        ]
        if rescore:
            repo.request_rescores(conn, region, rescore, now)
        heard: dict[str, list[Activity]] = {}
        for activity in stored:
            if workflows.for_activity(activity.entity, activity.type):
                heard.setdefault(activity.subject_id, []).append(activity)
        repo.insert_events(
            conn,
            [
                event_row(
                    region,
                    "activity",
                    items[0].entity,
                    subject_id,
                    now,
                    activities=[{"id": a.id, "type": a.type} for a in items],
                    actor=caller.principal.id,
                )
                for subject_id, items in heard.items()
            ],
        )


def event_row(
    region: str,
    kind: str,
    entity: str,
    record_id: str,
    now: datetime,
    *,
    fields: list[str] | None = None,
    previous: dict[str, Any] | None = None,
    activities: list[dict[str, str]] | None = None,
    rule_id: str | None = None,
    cause: str | None = None,
    depth: int = 0,
    actor: str,
    notify: bool = False,
    event_id: str | None = None,
) -> dict[str, Any]:
    """A new automation event, due now."""
    return {
        "id": event_id or str(RecordId.new("aev", region, now)),
        "region": region,
        "kind": kind,
        "entity": entity,
        "record_id": record_id,
        "fields": fields or [],
        "previous": previous or {},
        "activities": activities,
        "rule_id": rule_id,
        "cause": cause,
        "depth": depth,
        "actor": actor,
        "notify": notify,
        "status": "pending",
        "attempts": 0,
        "next_attempt_at": now,
        "lease_owner": None,
        "lease_expires_at": None,
        "error": None,
        "created_at": now,
        "finished_at": None,
    }


def timer_row(
    region: str, rule_id: str, entity: str, record_id: str, due_at: datetime, now: datetime
) -> dict[str, Any]:
    return {
        "id": str(RecordId.new("atm", region, now)),
        "region": region,
        "rule_id": rule_id,
        "entity": entity,
        "record_id": record_id,
        "due_at": due_at,
        "lease_owner": None,
        "lease_expires_at": None,
        "created_at": now,
    }
