"""The rule engine: what one automation event makes each rule decide, once.

For an event (a change, a batch of activity events, a timer come due) the engine

1. queues the webhook deliveries of the change's topic (once per subscription);
2. reads the record through the pipeline as `system:automation` (its policy role:
   scope and field mask apply; the read is audited with the event as request id);
3. lets each rule the event triggers decide — per triggering event: the automation
   event, or each activity event of a batch — and records the decision in
   `automation_runs`. The unique (trigger, rule) pair makes the decision once,
   whichever worker, or how many at the same time, gets there; a worker that loses
   the race reads the winner's decision instead of making its own;
4. applies a fired rule's plan (`actions`), each action once.

Loop protection. A change automation makes carries a cause (`Caller.cause`): its
automation event names the rule that made it and sits one level deeper. A rule is
not triggered by its own changes, and past `max_chain_depth` levels no rule is: both
are recorded as `suppressed` runs (`own-change`, `chain-limit`), so an A -> B -> A
chain stops and says where.

Decisions are made on the record as read when the event is processed; a plan is
resolved when it is decided (the owner a rotation chose, the priority an escalation
reaches, a task's due time) and stored, so a run resumed after a crash applies what
was decided, not what the record would make of it now.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

import structlog
from sqlalchemy.exc import IntegrityError

from bastion.audit import AuditEvent
from bastion.automation import repository as repo
from bastion.automation.actions import Actions
from bastion.automation.decision import judge
from bastion.automation.feed import topics
from bastion.automation.model import ACTOR, automation_caller, parse_duration
from bastion.automation.rule_actions import TASK_LINKS
from bastion.automation.rules import Rule, Workflows
from bastion.automation.settings import AutomationSettings
from bastion.automation.webhooks import fan_out
from bastion.clock import Clock
from bastion.crm.service import RecordService
from bastion.errors import BastionError, Gone, NotFound
from bastion.jobs.runner import TRANSIENT
from bastion.policy.engine import Policy
from bastion.principals.caller import Cause
from bastion.residency.databases import Database
from bastion.residency.ids import RecordId

log = structlog.get_logger("bastion.automation")
Members = Callable[[str, str], list[str]]


class Engine:
    def __init__(
        self,
        *,
        records: RecordService,
        workflows: Callable[[], Workflows],
        members: Members,
        clock: Clock,
        settings: AutomationSettings,
        policy: Callable[[], Policy],
    ) -> None:
        self._records = records
        self._workflows = workflows
        self._members = members
        self._clock = clock
        self._settings = settings
        self._policy = policy
        self._actions = Actions(records=records, clock=clock)

    def process(self, database: Database, event: dict[str, Any]) -> None:
        """Everything one automation event causes. Safe to run again, or at the same
        time in another worker: nothing is done twice."""
        self._deliver(database, event)
        triggered = self._triggered(database, event)
        if not triggered:
            return
        regions = self._records.regions.names
        reader = automation_caller(regions, Cause(event["id"], "read", int(event["depth"])))
        record = self._read(reader, event)
        for rule, trigger_id in triggered:
            run, fresh = self._decide(database, event, rule, trigger_id, record)
            if run["outcome"] == "fired":
                caller = automation_caller(
                    regions, Cause(event["id"], rule.id, int(event["depth"]))
                )
                self._actions.apply(database, caller, rule, run, record, fresh=fresh)

    # -- what the event triggers ------------------------------------------------------

    def _deliver(self, database: Database, event: dict[str, Any]) -> None:
        kind = event["kind"]
        if not event["notify"] or kind not in ("created", "updated", "deleted"):
            return
        with database.transaction(write=True) as conn:
            fan_out(
                conn,
                database.name,
                topics(event["entity"], kind),
                f"{event['entity']}.{kind}",
                source_id=event["id"],
                entity=event["entity"],
                record_id=event["record_id"],
                rule_id=None,
                fields=list(event["fields"]),
                now=event["created_at"],
            )

    def _triggered(self, database: Database, event: dict[str, Any]) -> list[tuple[Rule, str]]:
        """(rule, trigger id) pairs: the rules the event triggers, per triggering event."""
        workflows = self._workflows()
        kind, entity = event["kind"], event["entity"]
        if kind == "timer":
            rule = workflows.rule(str(event["rule_id"]))
            return [(rule, event["id"])] if rule is not None and rule.trigger.on == "time" else []
        if kind == "activity":
            return [
                (rule, item["id"])
                for item in event["activities"] or []
                for rule in workflows.for_activity(entity, item["type"])
            ]
        if kind == "deleted":
            return []
        return [(rule, event["id"]) for rule in workflows.for_change(entity, kind, event["fields"])]

    def _read(self, reader: Any, event: dict[str, Any]) -> dict[str, Any] | None:
        try:
            return self._records.get(reader, event["entity"], event["record_id"])
        except TRANSIENT:
            raise
        except (NotFound, Gone):
            return None
        except BastionError as exc:  # merged away, or automation may not read it
            log.info("automation_record_unreadable", record=event["record_id"], problem=exc.slug)
            return None

    # -- deciding ---------------------------------------------------------------------

    def _decide(
        self,
        database: Database,
        event: dict[str, Any],
        rule: Rule,
        trigger_id: str,
        record: dict[str, Any] | None,
    ) -> tuple[dict[str, Any], bool]:
        """The rule's decision about this trigger, and whether it was made just now
        (else it is the one another worker, or an earlier attempt, made)."""
        outcome, reasons = self._judge(event, rule, record)
        for _ in range(2):
            try:
                return self._record_decision(
                    database, event, rule, trigger_id, record, outcome, reasons
                )
            except IntegrityError:
                # Another worker decided first (the unique trigger and rule), or fired
                # the rule on this very version of the record: its decision stands, and
                # everything this transaction did (a rotation's turn) is undone.
                with database.transaction() as conn:
                    decided = repo.run_for(conn, trigger_id, rule.id)
                if decided is not None:
                    return decided, False
        raise RuntimeError("a rule's decision could be neither recorded nor found")

    def _record_decision(
        self,
        database: Database,
        event: dict[str, Any],
        rule: Rule,
        trigger_id: str,
        record: dict[str, Any] | None,
        outcome: str,
        reasons: list[dict[str, Any]],
    ) -> tuple[dict[str, Any], bool]:
        now = self._clock.now()
        with database.transaction(write=True) as conn:
            earlier = repo.run_for(conn, trigger_id, rule.id)
            if earlier is not None:
                return earlier, False
            fired_version = None
            if (
                outcome == "fired"
                and record is not None
                and event["kind"] in ("created", "updated")
            ):
                fired_version = int(record["version"])
                if repo.fired_on(conn, rule.id, str(record["id"]), fired_version):
                    outcome, fired_version = "suppressed", None
                    reasons = [{"code": "same-version", "version": int(record["version"])}]
            plan: list[dict[str, Any]] = []
            if outcome == "fired":
                assert record is not None
                plan = self._plan(conn, database.name, rule, record, now)
            run = {
                "id": str(RecordId.new("arn", database.name, now)),
                "region": database.name,
                "trigger_id": trigger_id,
                "event_id": event["id"],
                "rule_id": rule.id,
                "entity": rule.entity,
                "record_id": event["record_id"],
                "outcome": outcome,
                "reasons": reasons,
                "plan": plan,
                "depth": int(event["depth"]),
                "fired_version": fired_version,
                "decided_at": now,
            }
            repo.insert_run(conn, run)
            if outcome == "fired" or reasons[:1] == [
                {"code": "chain-limit", "depth": run["depth"]}
            ]:
                self._audit(conn, database.name, run, trigger_id)
        self._records.recorder.committed(database)
        return run, True

    def _judge(
        self, event: dict[str, Any], rule: Rule, record: dict[str, Any] | None
    ) -> tuple[str, list[dict[str, Any]]]:
        return judge(
            rule,
            kind=event["kind"],
            record=record,
            previous=event["previous"],
            cause=event["cause"],
            depth=int(event["depth"]),
            max_depth=self._settings.max_chain_depth,
        )

    def _plan(
        self, conn: Any, region: str, rule: Rule, record: dict[str, Any], now: datetime
    ) -> list[dict[str, Any]]:
        """The rule's actions, resolved now (and taking rotation turns in `conn`). Each
        is resolved on the record as the actions before it leave it: a task made after
        an assignment is for the new owner."""
        plan = []
        planned = dict(record)
        for action in rule.actions:
            step: dict[str, Any] = {"action": action.kind}
            options = action.options
            if action.kind == "set":
                step["changes"] = dict(options)
            elif action.kind == "escalate":
                step["changes"] = _escalated(rule, planned, str(options))
            elif action.kind == "assign":
                step["changes"] = self._assignment(conn, region, rule, planned, options)
            elif action.kind == "create_task":
                step["body"] = _task(rule, planned, options, now)
            else:
                step["topic"] = f"workflow.{options}"
            planned.update(step.get("changes") or {})
            plan.append(step)
        return plan

    def _assignment(
        self, conn: Any, region: str, rule: Rule, record: dict[str, Any], options: dict[str, Any]
    ) -> dict[str, Any] | None:
        """The owner (and team) an `assign` action gives the record; None if its pool
        is empty or no territory matches (the effect is then recorded as skipped)."""
        if "owner" in options:
            return {"owner_id": options["owner"]}
        if "round_robin" in options:
            pool = options["round_robin"]
            team = pool.get("team")
            owners = self._members(team, region) if team else list(pool["owners"])
            if not owners:
                return None
            turn = repo.take_turn(conn, rule.id, f"team:{team}" if team else "owners")
            changes = {"owner_id": owners[turn % len(owners)]}
            return {**changes, "team_id": team} if team else changes
        territory = options["territory"]
        value = record.get(territory["field"])
        chosen = territory["teams"].get(value if isinstance(value, str) else None)
        team = chosen or territory.get("default")
        if team is None:
            return None
        if not options.get("rotate"):
            return {"team_id": team}
        members = self._members(team, region)
        if not members:
            return None
        turn = repo.take_turn(conn, rule.id, f"team:{team}")
        return {"team_id": team, "owner_id": members[turn % len(members)]}

    def _audit(self, conn: Any, region: str, run: dict[str, Any], trigger_id: str) -> None:
        """A fired (or suppressed) rule, under the automation principal."""
        self._records.recorder.append(
            conn,
            region,
            AuditEvent.new(
                self._clock,
                actor=ACTOR,
                action=f"automation.{run['outcome']}",
                entity=run["entity"],
                record_ids=list(dict.fromkeys([run["record_id"], run["id"], run["event_id"]])),
                reason=f"rule:{run['rule_id']}",
                policy_version=self._policy().version,
                request_id=run["event_id"],
                details={"depth": run["depth"], "actions": len(run["plan"])},
            ),
        )


def _escalated(rule: Rule, record: dict[str, Any], field: str) -> dict[str, Any] | None:
    """The field one step up its list of values; None when it is at the top already."""
    choices = rule.spec.field(field).choices  # type: ignore[union-attr]
    current = record.get(field)
    position = choices.index(current) if current in choices else -1
    if position + 1 >= len(choices):
        return None
    return {field: choices[position + 1]}


def _task(
    rule: Rule, record: dict[str, Any], options: dict[str, Any], now: datetime
) -> dict[str, Any]:
    """A task about the record, for the record's owner."""
    body: dict[str, Any] = {
        "region": record["region"],
        "type": options.get("type", "task"),
        "subject": options["subject"],
        "status": "planned",
    }
    if "due_in" in options:
        due: datetime = now + parse_duration(options["due_in"])
        body["due_at"] = due.isoformat().replace("+00:00", "Z")
    link = TASK_LINKS[rule.entity]
    if rule.entity == "cases":
        # A case's task is about its person, else its account (activities have no
        # link to a case).
        if record.get("contact_id"):
            body["contact_id"] = record["contact_id"]
        elif record.get("account_id"):
            body["account_id"] = record["account_id"]
    else:
        body[link] = record["id"]
    owner = record.get("owner_id")
    if isinstance(owner, str) and owner.startswith("prn_"):
        body["owner_id"] = owner
    if isinstance(record.get("team_id"), str):
        body["team_id"] = record["team_id"]
    return body
