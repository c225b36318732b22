"""The decision index: the loaded policy compiled for the request path.

Casbin's `enforce` scans every policy line per call (milliseconds at 10k lines,
research/policy-engine.md), so requests never call it. At load time each role's
rules (its own and every inherited role's) are expanded into two tables:

- (region, resource, action) -> the row scopes its allow and deny rules name;
- (region, entity, read|write) -> per field, the conditions of its allow and deny rules.

A principal holding several roles gets the union of its roles' entries, memoized
per role set, so a decision on the request path is one dict lookup. Deny overrides
allow across all of a principal's roles, exactly as Casbin decides for a subject
linked to all of them (tests/unit/policy checks the two agree on random requests).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from itertools import product
from typing import TypeVar

from bastion.policy.conditions import WHOLE_REGION, Condition, RecordFacts
from bastion.policy.resources import SYSTEM_RESOURCES
from bastion.policy.rules import WILDCARD, EntityRule, FieldAction, FieldRule

_MEMO_LIMIT = 100_000
_MemoKey = tuple[frozenset[str], str, str, str]
_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class RowScope:
    """Which rows an action may touch: the scopes granted, minus the scopes denied.

    `all` and `region` cover every row of the region; `own` rows whose owner is the
    principal; `team` rows whose team is one of the principal's teams. Scopes are
    ORed (a principal with `own` and `team` sees both; neither contains the other).
    """

    allow: frozenset[str] = frozenset()
    deny: frozenset[str] = frozenset()

    @property
    def permits_any(self) -> bool:
        """Whether the action is allowed on some rows (else it is forbidden outright)."""
        return bool(self.allow) and not (self.deny & WHOLE_REGION)

    @property
    def unrestricted(self) -> bool:
        """Whether every row of the region is covered (no WHERE clause needed)."""
        return bool(self.allow & WHOLE_REGION) and not self.deny

    def covers(self, classes: frozenset[str]) -> bool:
        """Whether a row that falls into `classes` (`own`, `team`) is covered."""
        allowed = bool(self.allow & WHOLE_REGION) or bool(self.allow & classes)
        denied = bool(self.deny & WHOLE_REGION) or bool(self.deny & classes)
        return allowed and not denied

    def describe(self) -> str:
        """`all`, `region`, `own`, `own+team`, `none`, or e.g. `team-own` with denies."""
        if not self.permits_any:
            return "none"
        order = ("all", "region", "team", "own")
        granted = "all" if "all" in self.allow else "+".join(s for s in order if s in self.allow)
        if "all" not in self.allow and "region" in self.allow:
            granted = "region"
        denied = "".join(f"-{s}" for s in order if s in self.deny)
        return granted + denied

    def __or__(self, other: RowScope) -> RowScope:
        return RowScope(self.allow | other.allow, self.deny | other.deny)


NO_ROWS = RowScope()


@dataclass(frozen=True, slots=True)
class FieldAccess:
    """The rules about one field for one principal: allowed when some allow rule's
    condition holds and no deny rule's does (no condition always holds)."""

    allows: tuple[Condition | None, ...] = ()
    denies: tuple[Condition | None, ...] = ()

    @property
    def always(self) -> bool:
        return None in self.allows and not self.denies

    @property
    def never(self) -> bool:
        return not self.allows or None in self.denies

    def permits(self, facts: RecordFacts) -> bool:
        return any(c is None or c.holds(facts) for c in self.allows) and not any(
            c is None or c.holds(facts) for c in self.denies
        )

    def __add__(self, other: FieldAccess) -> FieldAccess:
        return FieldAccess(self.allows + other.allows, self.denies + other.denies)


@dataclass(frozen=True, slots=True)
class FieldMask:
    """The fields of one entity a principal may read (or write).

    `always` holds unconditionally; `conditional` maps each remaining field that some
    rule may grant to its access, decided per record by `permitted`.
    """

    always: frozenset[str] = frozenset()
    conditional: Mapping[str, FieldAccess] = field(default_factory=dict)

    @property
    def possible(self) -> frozenset[str]:
        """Every field some record could make permitted."""
        return self.always | frozenset(self.conditional)

    def permitted(self, facts: RecordFacts) -> frozenset[str]:
        """The fields permitted for this record."""
        if not self.conditional:
            return self.always
        return self.always | frozenset(
            name for name, access in self.conditional.items() if access.permits(facts)
        )

    def conditions(self) -> dict[str, str]:
        """Conditional fields and the conditions that grant them, for display."""
        return {
            name: " or ".join(c.text for c in access.allows if c is not None) or "never"
            for name, access in sorted(self.conditional.items())
        }


def build_mask(accesses: Mapping[str, FieldAccess]) -> FieldMask:
    always = frozenset(name for name, access in accesses.items() if access.always)
    conditional = {
        name: access for name, access in accesses.items() if not access.always and not access.never
    }
    return FieldMask(always, conditional)


@dataclass(slots=True)
class _RoleEntries:
    scopes: dict[tuple[str, str, str], RowScope] = field(default_factory=dict)
    fields: dict[tuple[str, str, str], dict[str, FieldAccess]] = field(default_factory=dict)


class CompiledPolicy:
    """Per-role tables built once at load; role-set decisions memoized on demand."""

    def __init__(
        self,
        *,
        entity_rules: Iterable[EntityRule],
        field_rules: Iterable[FieldRule],
        implied_roles: Mapping[str, frozenset[str]],
        regions: tuple[str, ...],
        resources: Mapping[str, tuple[str, ...]],
    ) -> None:
        self._regions = regions
        self._resources = resources
        by_role_entity: dict[str, list[EntityRule]] = defaultdict(list)
        for rule in entity_rules:
            by_role_entity[rule.role].append(rule)
        by_role_field: dict[str, list[FieldRule]] = defaultdict(list)
        for field_rule in field_rules:
            by_role_field[field_rule.role].append(field_rule)
        self._roles: dict[str, _RoleEntries] = {}
        for role, granted in implied_roles.items():
            entries = _RoleEntries()
            for source in granted:
                for rule in by_role_entity.get(source, ()):
                    self._add_entity_rule(entries, rule)
                for f_rule in by_role_field.get(source, ()):
                    self._add_field_rule(entries, f_rule)
            self._roles[role] = entries
        self._scope_memo: dict[_MemoKey, RowScope] = {}
        self._mask_memo: dict[_MemoKey, FieldMask] = {}

    def _add_entity_rule(self, entries: _RoleEntries, rule: EntityRule) -> None:
        regions = self._regions if rule.region == WILDCARD else (rule.region,)
        resources = self._resources if rule.resource == WILDCARD else (rule.resource,)
        for region, resource in product(regions, resources):
            actions = self._resources[resource] if rule.action == WILDCARD else (rule.action,)
            if resource in SYSTEM_RESOURCES and rule.scope not in WHOLE_REGION:
                # Bastion's own resources have no owner or team: an own/team rule
                # (e.g. a `*` resource line) can never cover them, as in Casbin.
                continue
            for action in actions:
                if action not in self._resources[resource]:
                    continue
                key = (region, resource, action)
                current = entries.scopes.get(key, NO_ROWS)
                scope = frozenset({rule.scope})
                if rule.effect == "allow":
                    entries.scopes[key] = RowScope(current.allow | scope, current.deny)
                else:
                    entries.scopes[key] = RowScope(current.allow, current.deny | scope)

    def _add_field_rule(self, entries: _RoleEntries, rule: FieldRule) -> None:
        regions = self._regions if rule.region == WILDCARD else (rule.region,)
        actions: tuple[FieldAction, ...] = (
            ("read", "write") if rule.action == WILDCARD else (rule.action,)  # type: ignore[assignment]
        )
        added = FieldAccess(
            allows=(rule.condition,) if rule.effect == "allow" else (),
            denies=(rule.condition,) if rule.effect == "deny" else (),
        )
        for region, action, (entity, name) in product(regions, actions, rule.fields):
            table = entries.fields.setdefault((region, entity, action), {})
            table[name] = table.get(name, FieldAccess()) + added

    def scope(self, roles: frozenset[str], region: str, resource: str, action: str) -> RowScope:
        key = (roles, region, resource, action)
        found = self._scope_memo.get(key)
        if found is None:
            found = NO_ROWS
            for role in roles:
                entries = self._roles.get(role)
                if entries is not None:
                    found = found | entries.scopes.get((region, resource, action), NO_ROWS)
            self._remember(self._scope_memo, key, found)
        return found

    def mask(self, roles: frozenset[str], region: str, entity: str, action: str) -> FieldMask:
        key = (roles, region, entity, action)
        found = self._mask_memo.get(key)
        if found is None:
            merged: dict[str, FieldAccess] = {}
            for role in roles:
                entries = self._roles.get(role)
                if entries is None:
                    continue
                for name, access in entries.fields.get((region, entity, action), {}).items():
                    merged[name] = merged.get(name, FieldAccess()) + access
            found = build_mask(merged)
            self._remember(self._mask_memo, key, found)
        return found

    @staticmethod
    def _remember(memo: dict[_MemoKey, _T], key: _MemoKey, value: _T) -> None:
        if len(memo) >= _MEMO_LIMIT:
            memo.clear()  # role sets are few in practice; this only bounds a pathological caller
        memo[key] = value
