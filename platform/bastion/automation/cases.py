"""Workflow rule test cases (`workflows/tests/*.yaml`), and checks of the rules
against the policy — what `bastion workflows test` and `bastion workflows check` run.

```yaml
cases:
  - name: a lead passing 80 goes to the senior team
    rule: assign-hot-leads
    event: {kind: updated, fields: [score]}     # created | updated | activity | timer
    record: {score: 85, status: working}        # as GET shows it
    previous: {score: 70}                       # old values of changed fields
    expect: {fires: true}
  - name: a lead already past 80 is not assigned again
    rule: assign-hot-leads
    event: {kind: updated, fields: [score]}
    record: {score: 90, status: working}
    previous: {score: 85}
    expect: {fires: false, outcome: not_matched}
```

An activity event names its `type` (`{kind: activity, type: form_submitted}`); a
case may also give the event's `cause` (the rule whose change it was) and `depth`.
A case passes when the rule is triggered by the event (else its outcome is
`not_triggered`) and decides as expected — with the very function the engine uses
(`decision.judge`), on the record as given.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from bastion.automation.decision import judge
from bastion.automation.model import ACTIVITY_TYPES, ROLE, yaml_files
from bastion.automation.rules import Rule, Workflows
from bastion.automation.scoring import SCORED_ENTITY, ScoringModel
from bastion.policy.engine import Policy

_CASE_KEYS = {"name", "rule", "event", "record", "previous", "expect"}
_OUTCOMES = ("fired", "not_matched", "suppressed", "skipped", "not_triggered")


class CaseError(ValueError):
    """A test file is malformed; the message names the file and the case."""


@dataclass(frozen=True, slots=True)
class Outcome:
    source: str
    rule: str
    expected: str | None
    fires: bool | None
    outcome: str
    reasons: tuple[dict[str, Any], ...]

    @property
    def passed(self) -> bool:
        if self.fires is not None and self.fires != (self.outcome == "fired"):
            return False
        return self.expected is None or self.expected == self.outcome

    def describe(self) -> str:
        wanted = self.expected or ("fired" if self.fires else "not fired")
        held = ", ".join(
            f"{r['condition']} ({'held' if r['held'] else 'did not hold'})"
            if "condition" in r
            else str(r.get("code"))
            for r in self.reasons
        )
        return f"{self.source}: rule {self.rule}: expected {wanted}, got {self.outcome}" + (
            f" [{held}]" if held else ""
        )


def run_cases(directory: Path, workflows: Workflows, *, max_depth: int) -> list[Outcome]:
    """Every case of `directory/*.yaml` (sorted by file name), decided."""
    try:
        texts = yaml_files(directory)
    except ValueError as exc:
        raise CaseError(str(exc)) from None
    if not texts:
        raise CaseError(f"no workflow test files (*.yaml) in {directory}")
    outcomes = []
    for name, text in texts.items():
        try:
            document = yaml.safe_load(text)
        except yaml.YAMLError:
            raise CaseError(f"{name}: not valid YAML") from None
        if not isinstance(document, dict) or not isinstance(document.get("cases"), list):
            raise CaseError(f"{name}: must be a mapping with a list of cases")
        for index, case in enumerate(document["cases"]):
            outcomes.append(_run(f"{name}::cases[{index}]", case, workflows, max_depth))
    return outcomes


def _run(source: str, case: object, workflows: Workflows, max_depth: int) -> Outcome:
    if (
        not isinstance(case, dict)
        or set(case) - _CASE_KEYS
        or not isinstance(case.get("name"), str)
    ):
        raise CaseError(f"{source}: a case is a mapping of {', '.join(sorted(_CASE_KEYS))}")
    where = f"{source} ({case['name']})"
    rule = workflows.rule(str(case.get("rule")))
    if rule is None:
        raise CaseError(f"{where}: rule: no rule has that id")
    event = case.get("event") or {}
    record = case.get("record") or {}
    previous = case.get("previous")
    expect = case.get("expect") or {}
    if not isinstance(event, dict) or not isinstance(record, dict) or not isinstance(expect, dict):
        raise CaseError(f"{where}: event, record and expect are mappings")
    if previous is not None and not isinstance(previous, dict):
        raise CaseError(f"{where}: previous is a mapping")
    unknown = [name for name in [*record, *(previous or {})] if rule.spec.field(name) is None]
    if unknown:
        raise CaseError(f"{where}: {rule.entity} has no field {unknown[0]!r}")
    fires = expect.get("fires")
    expected = expect.get("outcome")
    if (fires is not None and not isinstance(fires, bool)) or (
        expected is not None and expected not in _OUTCOMES
    ):
        raise CaseError(f"{where}: expect: fires is true/false; outcome one of {_OUTCOMES}")
    kind = str(event.get("kind", "updated"))
    if not _triggers(rule, kind, event, where):
        return Outcome(source, rule.id, expected, fires, "not_triggered", ())
    outcome, reasons = judge(
        rule,
        kind=kind,
        record={"id": "case", "region": "case", **record},
        previous=previous,
        cause=event.get("cause"),
        depth=int(event.get("depth", 0)),
        max_depth=max_depth,
    )
    return Outcome(source, rule.id, expected, fires, outcome, tuple(reasons))


def _triggers(rule: Rule, kind: str, event: Mapping[str, Any], where: str) -> bool:
    if kind == "activity":
        activity = event.get("type")
        if activity not in ACTIVITY_TYPES:
            raise CaseError(f"{where}: event.type: one of {', '.join(ACTIVITY_TYPES)}")
        return rule.hears_activity(str(activity))
    if kind == "timer":
        return rule.trigger.on == "time"
    if kind not in ("created", "updated"):
        raise CaseError(f"{where}: event.kind: created, updated, activity or timer")
    fields = event.get("fields", [])
    if not isinstance(fields, list):
        raise CaseError(f"{where}: event.fields: a list of field names")
    return rule.hears(kind, [str(f) for f in fields])


def policy_findings(
    workflows: Workflows, scoring: ScoringModel | None, policy: Policy, regions: tuple[str, ...]
) -> list[str]:
    """What the rules need that the policy does not give the `automation` role, per
    region: to read their entity, the fields their conditions test, to write what
    their actions set, to create tasks. (At run time such a rule records what the
    pipeline refused; this says so before.)"""
    roles = frozenset({ROLE})
    findings: list[str] = []
    for region in regions:
        for rule in workflows.rules:
            where = f"{rule.source}: rule {rule.id!r} in {region}"
            if not policy.allows(roles, region, rule.entity, "read"):
                findings.append(f"{where}: automation may not read {rule.entity}")
                continue
            readable = policy.mask(roles, region, rule.entity, "read").possible
            for name in sorted(rule.condition_fields - readable):
                findings.append(f"{where}: automation may not read {rule.entity}.{name}")
            writes = _written(rule)
            if writes and not policy.allows(roles, region, rule.entity, "update"):
                findings.append(f"{where}: automation may not update {rule.entity}")
            writable = policy.mask(roles, region, rule.entity, "write").possible
            for name in sorted(writes - writable):
                findings.append(f"{where}: automation may not write {rule.entity}.{name}")
            if any(a.kind == "create_task" for a in rule.actions) and not policy.allows(
                roles, region, "activities", "create"
            ):
                findings.append(f"{where}: automation may not create activities")
        if scoring is not None:
            readable = policy.mask(roles, region, SCORED_ENTITY, "read").possible
            for name in sorted(scoring.fields - readable):
                findings.append(f"scoring model in {region}: automation may not read leads.{name}")
            if "score" not in policy.mask(roles, region, SCORED_ENTITY, "write").possible:
                findings.append(f"scoring model in {region}: automation may not write leads.score")
    return findings


def _written(rule: Rule) -> set[str]:
    written: set[str] = set()
    for action in rule.actions:
        if action.kind == "set":
            written.update(action.options)
        elif action.kind == "escalate":
            written.add(str(action.options))
        elif action.kind == "assign":
            written.update(
                {"owner_id", "team_id"} if "territory" not in action.options else {"team_id"}
            )
            if action.options.get("rotate"):
                written.add("owner_id")
    return written
