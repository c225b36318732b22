"""Workflow rules as code: `workflows/*.yaml`, validated when they load.

```yaml
rules:
  - id: assign-hot-leads               # unique across files: [a-z][a-z0-9-]*
    description: A lead reaching 80 goes to a senior rep, in turn.
    entity: leads
    trigger: {on: changed, fields: [score]}
    when: "score >= 80 and status in new|working"   # one condition or a list
    entering: true      # only when the change makes `when` hold (it did not before)
    actions:
      - assign: {round_robin: {team: senior-sales}}
      - create_task: {subject: Call this lead today, due_in: 4h}
      - webhook: lead.hot                           # topic workflow.lead.hot
```

Triggers (`on`): `created`, `updated` (any change), `changed` (a change to one of
`fields`; a create that sets one counts, with every `old.` field null), `activity`
(behaviour events of `types` about a lead or contact, default any), and `time`
(`after: 48h` from the record's creation, or from its last change with
`since: updated`: a timer written with the record, never a scan of the table; `when`
is checked when it comes due). Conditions: `automation.conditions`. `entering: true`
(created, updated and changed triggers) fires a rule only when the change makes its
conditions hold — they did not hold with the fields' old values — so a lead is
assigned when its score passes 80, not again at 85, 90.

Actions: `set` (plain, non-personal fields to values), `escalate` (an enum field one
step up its list: a case's priority), `assign` (`owner: prn_…`; `round_robin:
{team: T}` or `{owners: [prn_…]}`; `territory: {field: F, teams: {value: team},
default: team}` with `rotate: true` to also take an owner in turn from that team),
`create_task` (an activity of type task, linked to the record, owned by the
record's owner), and `webhook` (a topic subscriptions can listen to).

Every problem is reported at once, each naming the file, the rule and the key
(`WorkflowError.problems`); nothing of a directory that has one loads.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import yaml

from bastion.automation.conditions import parse_when
from bastion.automation.model import (
    ACTIVITY_TYPES,
    RULE_ID_RE,
    SUBJECT_ENTITIES,
    parse_duration,
    yaml_files,
)
from bastion.automation.rule_actions import ACTIONS, check_action
from bastion.crm.catalog import ENTITIES, SYSTEM_FIELDS, EntitySpec
from bastion.policy.conditions import Condition

TRIGGERS = ("created", "updated", "changed", "activity", "time")
MAX_RULES = 500
MAX_ACTIONS = 10


class WorkflowError(ValueError):
    """Workflow files that do not load. `problems` lists every one, each naming the
    file, the rule and the key."""

    def __init__(self, problems: Sequence[str]) -> None:
        shown = "; ".join(problems[:5]) + (
            f"; and {len(problems) - 5} more" if problems[5:] else ""
        )
        super().__init__(f"the workflow rules do not load: {shown}")
        self.problems = tuple(problems)


@dataclass(frozen=True, slots=True)
class Trigger:
    on: str
    fields: frozenset[str] = frozenset()
    activities: frozenset[str] = frozenset()
    after: timedelta | None = None
    since: str = "created"


@dataclass(frozen=True, slots=True)
class Action:
    kind: str
    options: Any  # the rule file's own (validated) value for the action


@dataclass(frozen=True, slots=True)
class Rule:
    id: str
    source: str
    entity: str
    description: str
    trigger: Trigger
    when: tuple[Condition, ...]
    actions: tuple[Action, ...]
    entering: bool = False

    @property
    def spec(self) -> EntitySpec:
        return ENTITIES[self.entity]

    def hears(self, kind: str, fields: Sequence[str]) -> bool:
        """Whether a record change of `kind` writing `fields` triggers this rule."""
        on = self.trigger.on
        if on == "changed":
            return kind in ("created", "updated") and not self.trigger.fields.isdisjoint(fields)
        return on == kind

    def hears_activity(self, activity_type: str) -> bool:
        return self.trigger.on == "activity" and (
            not self.trigger.activities or activity_type in self.trigger.activities
        )

    @property
    def condition_fields(self) -> frozenset[str]:
        return frozenset(name for condition in self.when for name in condition.fields)


@dataclass(frozen=True, slots=True)
class Workflows:
    rules: tuple[Rule, ...] = ()
    version: str = "none"
    _by_id: Mapping[str, Rule] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_id", {rule.id: rule for rule in self.rules})

    def rule(self, rule_id: str) -> Rule | None:
        return self._by_id.get(rule_id)

    def for_change(self, entity: str, kind: str, fields: Sequence[str]) -> list[Rule]:
        """Rules a record change triggers (not time rules: those wait for their timer)."""
        return [r for r in self.rules if r.entity == entity and r.hears(kind, fields)]

    def timed(self, entity: str) -> list[Rule]:
        return [r for r in self.rules if r.entity == entity and r.trigger.on == "time"]

    def for_activity(self, entity: str, activity_type: str) -> list[Rule]:
        return [r for r in self.rules if r.entity == entity and r.hears_activity(activity_type)]


def load_workflows(directory: Path) -> Workflows:
    """Every rule of `directory/*.yaml` (no rules if the directory does not exist).
    Raises `WorkflowError`."""
    try:
        texts = yaml_files(directory)
    except ValueError as exc:
        raise WorkflowError([str(exc)]) from None
    return Workflows() if texts is None else parse_workflows(texts)


def parse_workflows(texts: Mapping[str, str]) -> Workflows:
    """Rules from file name -> YAML text. Raises `WorkflowError`."""
    problems: list[str] = []
    rules: list[Rule] = []
    seen: dict[str, str] = {}
    digest = hashlib.sha256()
    for name, text in sorted(texts.items()):
        digest.update(name.encode() + b"\0" + text.encode() + b"\0")
        for rule in _file_rules(name, text, problems):
            if rule.id in seen:
                problems.append(f"{name}: rule {rule.id!r}: id: also used in {seen[rule.id]}")
                continue
            seen[rule.id] = name
            rules.append(rule)
    if len(rules) > MAX_RULES:
        problems.append(f"at most {MAX_RULES} rules, not {len(rules)}")
    if problems:
        raise WorkflowError(problems)
    return Workflows(tuple(rules), digest.hexdigest()[:16])


def _file_rules(name: str, text: str, problems: list[str]) -> Iterator[Rule]:
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problems.append(f"{name}: not valid YAML{where}")
        return
    if document is None:
        return
    if not isinstance(document, dict) or set(document) - {"rules"}:
        problems.append(f"{name}: the file must be a mapping with one key, rules")
        return
    entries = document.get("rules") or []
    if not isinstance(entries, list):
        problems.append(f"{name}: rules: must be a list")
        return
    for index, entry in enumerate(entries):
        where = f"{name}: rule #{index + 1}"
        if isinstance(entry, dict) and isinstance(entry.get("id"), str):
            where = f"{name}: rule {entry['id']!r}"
        found: list[str] = []
        rule = _rule(name, entry, found)
        problems.extend(f"{where}: {problem}" for problem in found)
        if rule is not None and not found:
            yield rule


_RULE_KEYS = {"id", "description", "entity", "trigger", "when", "entering", "actions"}


def _rule(source: str, entry: object, problems: list[str]) -> Rule | None:
    if not isinstance(entry, dict):
        problems.append("must be a mapping")
        return None
    problems.extend(f"{key}: is not a key of a rule" for key in sorted(set(entry) - _RULE_KEYS))
    rule_id = entry.get("id")
    if not isinstance(rule_id, str) or RULE_ID_RE.fullmatch(rule_id) is None:
        problems.append("id: must be lower-case letters, digits and dashes (at most 64)")
    description = entry.get("description", "")
    if not isinstance(description, str) or len(description) > 500:
        problems.append("description: must be text of at most 500 characters")
    entity = entry.get("entity")
    spec = ENTITIES.get(entity) if isinstance(entity, str) else None
    if spec is None:
        problems.append(f"entity: must be one of {', '.join(ENTITIES)}")
        return None
    trigger = _trigger(spec, entry.get("trigger"), problems)
    when: tuple[Condition, ...] = ()
    try:
        when = parse_when(entry.get("when"), spec.name)
    except ValueError as exc:
        problems.append(f"when: {exc}")
    actions = _actions(spec, entry.get("actions"), problems)
    entering = entry.get("entering", False)
    if not isinstance(entering, bool):
        problems.append("entering: must be true or false")
    elif entering and trigger is not None and trigger.on not in ("created", "updated", "changed"):
        problems.append("entering: goes with created, updated and changed triggers only")
    if trigger is None or problems:
        return None
    assert isinstance(rule_id, str)
    assert isinstance(description, str)
    return Rule(rule_id, source, spec.name, description, trigger, when, actions, bool(entering))


_TRIGGER_KEYS = {
    "created": set(),
    "updated": set(),
    "changed": {"fields"},
    "activity": {"types"},
    "time": {"after", "since"},
}


def _trigger(spec: EntitySpec, raw: object, problems: list[str]) -> Trigger | None:
    if isinstance(raw, dict) and True in raw and "on" not in raw:
        # YAML 1.1 reads a bare `on:` key as the boolean true; it means `on` here.
        raw = {"on" if key is True else key: value for key, value in raw.items()}
    if not isinstance(raw, dict) or raw.get("on") not in TRIGGERS:
        problems.append(f"trigger: must be a mapping whose `on` is one of {', '.join(TRIGGERS)}")
        return None
    on = str(raw["on"])
    extra = set(raw) - {"on"} - _TRIGGER_KEYS[on]
    problems.extend(f"trigger.{key}: is not a key of an {on!r} trigger" for key in sorted(extra))
    if on == "changed":
        names = raw.get("fields")
        if not isinstance(names, list) or not names:
            problems.append("trigger.fields: must list the fields whose change triggers the rule")
            return None
        unknown = [n for n in names if not isinstance(n, str) or not _is_field(spec, n)]
        if unknown:
            problems.append(f"trigger.fields: {spec.name} has no field {unknown[0]!r}")
        return Trigger(on, fields=frozenset(str(n) for n in names))
    if on == "activity":
        if spec.name not in SUBJECT_ENTITIES:
            problems.append("trigger: activity events are about leads and contacts only")
        types = raw.get("types", [])
        if not isinstance(types, list) or not set(types) <= set(ACTIVITY_TYPES):
            problems.append(f"trigger.types: must list some of {', '.join(ACTIVITY_TYPES)}")
            return None
        return Trigger(on, activities=frozenset(types))
    if on == "time":
        since = raw.get("since", "created")
        if since not in ("created", "updated"):
            problems.append("trigger.since: must be created or updated")
        try:
            after = parse_duration(raw.get("after"))
        except ValueError as exc:
            problems.append(f"trigger.after: {exc}")
            return None
        return Trigger(on, after=after, since=str(since))
    return Trigger(on)


def _actions(spec: EntitySpec, raw: object, problems: list[str]) -> tuple[Action, ...]:
    if not isinstance(raw, list) or not raw or len(raw) > MAX_ACTIONS:
        problems.append(f"actions: must be a list of 1 to {MAX_ACTIONS} actions")
        return ()
    actions: list[Action] = []
    for index, item in enumerate(raw):
        where = f"actions[{index}]"
        if not isinstance(item, dict) or len(item) != 1 or next(iter(item)) not in ACTIONS:
            problems.append(f"{where}: must be one of {', '.join(ACTIONS)}, with its options")
            continue
        kind, options = next(iter(item.items()))
        if kind == "webhook" and any(a.kind == "webhook" for a in actions):
            problems.append(f"{where}: a rule has at most one webhook action")
        found: list[str] = []
        check_action(kind, spec, options, found)
        problems.extend(f"{where}.{kind}: {problem}" for problem in found)
        actions.append(Action(kind, options))
    return tuple(actions)


def _is_field(spec: EntitySpec, name: str) -> bool:
    return spec.field(name) is not None and name not in SYSTEM_FIELDS
