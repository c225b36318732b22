"""Declarative policy test cases (`policies/tests/*.yaml`) and their runner.

A file holds `cases` (single questions) and a `matrix` (a role's complete rights):

```yaml
cases:
  - name: a rep may not raise a deal past 100k
    roles: [sales_rep]
    region: eu
    entity: opportunities
    action: update                 # a record action
    record: {owner: self, amount: 150000}
    expect:
      allowed: true
      scope: team+own              # optional: the action's row scope
      writable: [stage]            # fields that must be writable on this record
      not_writable: [amount]       # and fields that must not
      readable: [name]             # (read masks likewise: readable / withheld)
      withheld: []

matrix:
  - roles: [support_agent]
    region: eu
    record: {owner: other, team: other}   # whose record (self|other, mine|other)
    resources: {policy: [read]}            # system resources: exactly these actions
    entities:                              # every entity must be listed
      cases:
        actions: [read, list, create, update]   # exactly these are allowed
        scope: {read: region}                   # optional
        record: {status: open}                  # field values for conditions
                                                # (cases may also give `old.status`:
                                                # the record before a write)
        read: all | none | [f, ...] | {all_but: [f, ...]}
        write: all | none | [f, ...] | {all_but: [f, ...]}
```

Every case becomes atomic checks — one action or one field — and each check is
answered twice, by Casbin's `enforce` and by the compiled index. A check fails when
either disagrees with the expectation (so a disagreement between the two engines is
always a failure). The same checks drive the HTTP authorization matrix in the test
suite, so what `bastion policy test` proves is what the API does.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from bastion.crm.catalog import ENTITIES
from bastion.policy.conditions import ConditionError, RecordFacts, record_facts
from bastion.policy.engine import Policy
from bastion.policy.resources import SYSTEM_RESOURCES, entity_actions

CheckKind = Literal["action", "read", "write", "scope"]


class CaseError(ValueError):
    """A test file is malformed; the message names the file and the case."""


@dataclass(frozen=True, slots=True)
class Check:
    """One expectation: `name` is an action (kind action/scope) or a field."""

    source: str  # file::case
    kind: CheckKind
    roles: tuple[str, ...]
    region: str
    entity: str
    name: str
    expected: bool | str  # str only for scope
    facts: RecordFacts
    owner: str
    team: str

    def describe(self) -> str:
        what = {
            "action": f"{self.name} on {self.entity}",
            "scope": f"scope of {self.name} on {self.entity}",
            "read": f"read {self.entity}.{self.name}",
            "write": f"write {self.entity}.{self.name}",
        }[self.kind]
        return f"{'+'.join(self.roles)} in {self.region}: {what}"


@dataclass(frozen=True, slots=True)
class Outcome:
    check: Check
    casbin: bool | str
    index: bool | str

    @property
    def passed(self) -> bool:
        return self.casbin == self.check.expected and self.index == self.check.expected

    def describe(self) -> str:
        return (
            f"{self.check.source}: {self.check.describe()}: expected "
            f"{_show(self.check.expected)}, casbin {_show(self.casbin)}, "
            f"index {_show(self.index)}"
        )


def _show(value: bool | str) -> str:
    if isinstance(value, bool):
        return "allow" if value else "deny"
    return value


def load_checks(directory: Path) -> list[Check]:
    """Every check of every `*.yaml` file in `directory` (sorted by file name)."""
    files = sorted(directory.glob("*.yaml")) + sorted(directory.glob("*.yml"))
    if not files:
        raise CaseError(f"no policy test files (*.yaml) in {directory}")
    checks: list[Check] = []
    for path in files:
        try:
            document = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            raise CaseError(f"{path}: cannot read it as YAML: {exc}") from None
        if not isinstance(document, dict) or not set(document) <= {"cases", "matrix"}:
            raise CaseError(f"{path}: the file must be a mapping with `cases` and/or `matrix`")
        for index, case in enumerate(document.get("cases") or []):
            checks.extend(_case(path, index, case))
        for index, entry in enumerate(document.get("matrix") or []):
            checks.extend(_matrix(path, index, entry))
    return checks


def run_checks(policy: Policy, checks: Iterable[Check]) -> list[Outcome]:
    return [_run(policy, check) for check in checks]


def _run(policy: Policy, check: Check) -> Outcome:
    roles = frozenset(check.roles)
    if check.kind == "scope":
        described = policy.scope(roles, check.region, check.entity, check.name).describe()
        return Outcome(check, described, described)
    if check.kind == "action":
        casbin = policy.enforce(check.roles, check.region, check.entity, check.name, check.facts)
        index = policy.scope(roles, check.region, check.entity, check.name).covers(
            check.facts.scopes
        )
        return Outcome(check, casbin, index)
    action: Literal["read", "write"] = "read" if check.kind == "read" else "write"
    casbin = policy.enforce_field(
        check.roles, check.region, check.entity, check.name, action, check.facts
    )
    index = check.name in policy.mask(roles, check.region, check.entity, action).permitted(
        check.facts
    )
    return Outcome(check, casbin, index)


# -- parsing ---------------------------------------------------------------------------


def _where(path: Path, label: str) -> str:
    return f"{path}::{label}"


def _mapping(value: Any, where: str, allowed: Iterable[str] | None) -> dict[str, Any]:
    """`value` as a mapping whose keys are all in `allowed` (None: any keys)."""
    if not isinstance(value, dict):
        raise CaseError(f"{where}: expected a mapping")
    unknown = sorted(set(value) - set(allowed)) if allowed is not None else []
    if unknown:
        raise CaseError(f"{where}: unknown key(s) {', '.join(map(str, unknown))}")
    return value


def _strings(value: Any, where: str, what: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise CaseError(f"{where}: {what} must be a list of names")
    return value


def _facts(entity: str, record: Mapping[str, Any], where: str) -> tuple[RecordFacts, str, str]:
    attributes = {k: v for k, v in record.items() if k not in ("owner", "team")}
    owner, team = str(record.get("owner", "other")), str(record.get("team", "other"))
    try:
        return record_facts(entity, attributes, owner=owner, team=team), owner, team
    except ConditionError as exc:
        raise CaseError(f"{where}: record: {exc}") from None


def _entity(name: Any, where: str, *, system: bool = False) -> str:
    if name not in ENTITIES and not (system and name in SYSTEM_RESOURCES):
        raise CaseError(f"{where}: unknown entity {name!r}")
    return str(name)


def _fields(entity: str, names: Iterable[str], where: str) -> list[str]:
    spec = ENTITIES.get(entity)
    for name in names:
        if spec is None or spec.field(name) is None:
            raise CaseError(f"{where}: {entity} has no field {name!r}")
    return list(names)


def _case(path: Path, index: int, raw: Any) -> Iterator[Check]:
    where = _where(path, f"cases[{index}]")
    case = _mapping(raw, where, {"name", "roles", "region", "entity", "action", "record", "expect"})
    where = _where(path, str(case.get("name") or f"cases[{index}]"))
    roles = tuple(_strings(case.get("roles"), where, "roles"))
    region = case.get("region")
    if not isinstance(region, str):
        raise CaseError(f"{where}: region must be given")
    entity = _entity(case.get("entity"), where, system=True)
    action = case.get("action")
    if not isinstance(action, str):
        raise CaseError(f"{where}: action must be given")
    facts, owner, team = _facts(entity, _mapping(case.get("record") or {}, where, None), where)
    expect = _mapping(
        case.get("expect"),
        where,
        {"allowed", "scope", "readable", "withheld", "writable", "not_writable"},
    )

    def check(kind: CheckKind, name: str, expected: bool | str) -> Check:
        return Check(where, kind, roles, region, entity, name, expected, facts, owner, team)

    if "allowed" in expect:
        if not isinstance(expect["allowed"], bool):
            raise CaseError(f"{where}: expect.allowed is true or false")
        yield check("action", action, expect["allowed"])
    if "scope" in expect:
        yield check("scope", action, str(expect["scope"]))
    for key, kind, expected in (
        ("readable", "read", True),
        ("withheld", "read", False),
        ("writable", "write", True),
        ("not_writable", "write", False),
    ):
        names = _fields(entity, _strings(expect.get(key, []), where, key), where)
        for name in names:
            yield check(kind, name, expected)  # type: ignore[arg-type]


def _matrix(path: Path, index: int, raw: Any) -> Iterator[Check]:
    where = _where(path, f"matrix[{index}]")
    entry = _mapping(raw, where, {"roles", "region", "record", "entities", "resources"})
    roles = tuple(_strings(entry.get("roles"), where, "roles"))
    where = _where(path, f"matrix[{'+'.join(roles)}]")
    region = entry.get("region")
    if not isinstance(region, str):
        raise CaseError(f"{where}: region must be given")
    base = _mapping(entry.get("record") or {}, where, {"owner", "team"})
    entities = _mapping(entry.get("entities"), where, ENTITIES)
    missing = sorted(set(ENTITIES) - set(entities))
    if missing:
        raise CaseError(f"{where}: list every entity (missing: {', '.join(missing)})")
    resources = _mapping(entry.get("resources") or {}, where, SYSTEM_RESOURCES)
    for resource, actions_raw in resources.items():
        at = f"{where}.{resource}"
        granted = set(_strings(actions_raw or [], at, "actions"))
        unknown = sorted(granted - set(SYSTEM_RESOURCES[resource]))
        if unknown:
            raise CaseError(f"{at}: unknown action(s) {', '.join(unknown)}")
        facts = RecordFacts(resource)
        for action in SYSTEM_RESOURCES[resource]:
            yield Check(
                at, "action", roles, region, resource, action, action in granted, facts, "", ""
            )
    for entity, spec_raw in entities.items():
        at = f"{where}.{entity}"
        spec = _mapping(spec_raw or {}, at, {"actions", "scope", "record", "read", "write"})
        record = {**base, **_mapping(spec.get("record") or {}, at, None)}
        if any(str(key).startswith("old.") for key in record):
            # A matrix describes one stored record (the HTTP matrix test creates it);
            # a write's before/after pair belongs in a case.
            raise CaseError(f"{at}: record: old. values belong in cases, not the matrix")
        facts, owner, team = _facts(entity, record, at)

        def check(kind: CheckKind, name: str, expected: bool | str) -> Check:
            return Check(at, kind, roles, region, entity, name, expected, facts, owner, team)  # noqa: B023

        allowed = set(_strings(spec.get("actions", []), at, "actions"))
        actions = entity_actions(entity)
        unknown = sorted(allowed - set(actions))
        if unknown:
            raise CaseError(f"{at}: unknown action(s) {', '.join(unknown)}")
        for action in actions:
            yield check("action", action, action in allowed)
        for action, described in _mapping(spec.get("scope") or {}, at, actions).items():
            yield check("scope", action, str(described))
        for kind in ("read", "write"):
            if kind not in spec:
                continue
            expected = _field_set(entity, spec[kind], f"{at}.{kind}", writable=kind == "write")
            names = (
                ENTITIES[entity].writable_fields() if kind == "write" else ENTITIES[entity].fields
            )
            for field in names:
                yield check(kind, field.name, field.name in expected)


def _field_set(entity: str, raw: Any, where: str, *, writable: bool) -> set[str]:
    spec = ENTITIES[entity]
    every = {f.name for f in (spec.writable_fields() if writable else spec.fields)}
    if raw == "all":
        return every
    if raw == "none":
        return set()
    if isinstance(raw, dict):
        but = set(
            _fields(
                entity,
                _strings(_mapping(raw, where, {"all_but"}).get("all_but"), where, "all_but"),
                where,
            )
        )
        return every - but
    return set(_fields(entity, _strings(raw, where, "a field list"), where))
