"""Why a decision is what it is: the rule lines behind it, Casbin's and the index's say.

`explain` answers one question — may a principal holding these roles take this
action on this entity (or read/write this field), on a record like this, in this
region — with the decision, every policy line that matched (allow and deny, with
file:line), and both engines' answers. The two must agree; if they ever do not,
the explanation says so loudly (`consistent: false`), because the index is only
trusted for being equal to Casbin.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from typing_extensions import TypedDict

from bastion.policy.conditions import RecordFacts, scope_covers
from bastion.policy.engine import Policy
from bastion.policy.rules import FIELD_ACTIONS, Effect, EntityRule, FieldAction, FieldRule
from bastion.wire import closed


class ExplainError(ValueError):
    """The question does not name a known role, region, entity, field or action."""


@closed
class PolicyRuleMatch(TypedDict):
    """A policy line that matched a question."""

    line: str
    """file:line"""
    text: str
    effect: Effect
    role: str
    """The role (one of those asked about, or one they inherit) the line is for."""


@closed
class PolicyExplanation(TypedDict):
    """A decision, the policy lines behind it, and both engines' answers (which must
    agree: `consistent`)."""

    decision: Effect
    roles: list[str]
    region: str
    target: str
    action: str
    reason: str
    scope: str | None
    rules: list[PolicyRuleMatch]
    entity_rules: list[PolicyRuleMatch]
    casbin: Effect
    index: Effect
    consistent: bool
    policy_version: str


@dataclass(frozen=True, slots=True)
class MatchedRule:
    line: str  # file:line
    text: str
    effect: Effect
    role: str  # the role (one of the principal's, or one they inherit) the line is for

    def as_dict(self) -> PolicyRuleMatch:
        return {"line": self.line, "text": self.text, "effect": self.effect, "role": self.role}


@dataclass(frozen=True, slots=True)
class Explanation:
    roles: tuple[str, ...]
    region: str
    target: str  # "contacts" or "contacts.email"
    action: str
    allowed: bool
    casbin: bool
    index: bool
    reason: str
    rules: tuple[MatchedRule, ...] = ()
    entity_rules: tuple[MatchedRule, ...] = ()
    scope: str | None = None
    policy_version: str = ""
    record: Mapping[str, Any] = field(default_factory=dict)

    @property
    def consistent(self) -> bool:
        return self.casbin == self.index

    def as_dict(self) -> PolicyExplanation:
        return {
            "decision": "allow" if self.allowed else "deny",
            "roles": list(self.roles),
            "region": self.region,
            "target": self.target,
            "action": self.action,
            "reason": self.reason,
            "scope": self.scope,
            "rules": [r.as_dict() for r in self.rules],
            "entity_rules": [r.as_dict() for r in self.entity_rules],
            "casbin": "allow" if self.casbin else "deny",
            "index": "allow" if self.index else "deny",
            "consistent": self.consistent,
            "policy_version": self.policy_version,
        }


def explain(
    policy: Policy,
    roles: Iterable[str],
    region: str,
    target: str,
    action: str,
    facts: RecordFacts | None = None,
) -> Explanation:
    """Explain one decision. `target` is `entity` (record actions) or `entity.field`
    (read/write). `facts` describe the record (scopes it falls in, field values);
    without them, the record is one nobody owns, in no team, with no values set."""
    role_set = tuple(sorted(set(roles)))
    unknown = [r for r in role_set if r not in policy.roles]
    if not role_set or unknown:
        raise ExplainError(
            f"unknown role(s) {', '.join(unknown) or '(none given)'}; "
            f"the policy defines {', '.join(sorted(policy.roles))}"
        )
    if region not in policy.regions:
        raise ExplainError(f"unknown region {region!r}")
    entity, dot, field_name = target.partition(".")
    if entity not in policy.resources:
        raise ExplainError(f"unknown entity or resource {entity!r}")
    facts = facts or RecordFacts(entity)
    if dot:
        return _explain_field(policy, role_set, region, entity, field_name, action, facts)
    if action not in policy.resources[entity]:
        raise ExplainError(
            f"{entity} has no action {action!r}; its actions: {', '.join(policy.resources[entity])}"
        )
    return _explain_entity(policy, role_set, region, entity, action, facts)


def _granted(policy: Policy, roles: tuple[str, ...]) -> dict[str, str]:
    """Every role whose lines apply, mapped to the principal's role that brings it in."""
    granted: dict[str, str] = {}
    for role in roles:
        for implied in sorted(policy.implied_roles.get(role, frozenset({role}))):
            granted.setdefault(implied, role)
    return granted


def _entity_matches(
    policy: Policy, roles: tuple[str, ...], region: str, entity: str, action: str
) -> list[tuple[EntityRule, str]]:
    granted = _granted(policy, roles)
    return [
        (rule, rule.role)
        for rule in policy.parsed.entity_rules
        if rule.role in granted and rule.matches(region, entity, action)
    ]


def _explain_entity(
    policy: Policy,
    roles: tuple[str, ...],
    region: str,
    entity: str,
    action: str,
    facts: RecordFacts,
) -> Explanation:
    scope = policy.scope(frozenset(roles), region, entity, action)
    index = scope.covers(facts.scopes)
    casbin = policy.enforce(roles, region, entity, action, facts)
    matched = [
        MatchedRule(str(rule.line), rule.line.text, rule.effect, role)
        for rule, role in _entity_matches(policy, roles, region, entity, action)
        if scope_covers(rule.scope, facts)
    ]
    return Explanation(
        roles=roles,
        region=region,
        target=entity,
        action=action,
        allowed=casbin,
        casbin=casbin,
        index=index,
        reason=_reason(casbin, matched, f"{action} on {entity}", facts),
        rules=tuple(matched),
        scope=scope.describe(),
        policy_version=policy.version,
        record=dict(facts.values),
    )


def _explain_field(
    policy: Policy,
    roles: tuple[str, ...],
    region: str,
    entity: str,
    name: str,
    action: str,
    facts: RecordFacts,
) -> Explanation:
    spec = policy.catalog.get(entity)
    if spec is None or spec.field(name) is None:
        raise ExplainError(f"{entity} has no field {name!r}")
    if action not in FIELD_ACTIONS:
        raise ExplainError("a field action is read or write")
    field_action: FieldAction = "read" if action == "read" else "write"
    granted = _granted(policy, roles)
    matched_rules: list[FieldRule] = [
        rule
        for rule in policy.parsed.field_rules
        if rule.role in granted and rule.matches(region, (entity, name), field_action)
    ]
    applying = [r for r in matched_rules if r.condition is None or r.condition.holds(facts)]
    casbin_field = policy.enforce_field(roles, region, entity, name, field_action, facts)
    mask = policy.mask(frozenset(roles), region, entity, field_action)
    index_field = name in mask.permitted(facts)
    # A field is only reachable through its record: read needs `read` on the entity,
    # write needs `update` (or `create`, for a new record).
    record_action = "read" if field_action == "read" else "update"
    scope = policy.scope(frozenset(roles), region, entity, record_action)
    casbin_record = policy.enforce(roles, region, entity, record_action, facts)
    if field_action == "write" and not casbin_record:
        record_action = "create"
        scope = policy.scope(frozenset(roles), region, entity, record_action)
        casbin_record = policy.enforce(roles, region, entity, record_action, facts)
    entity_matched = [
        MatchedRule(str(rule.line), rule.line.text, rule.effect, role)
        for rule, role in _entity_matches(policy, roles, region, entity, record_action)
        if scope_covers(rule.scope, facts)
    ]
    allowed = casbin_field and casbin_record
    reasons = _reason(
        casbin_field, [_matched(r, granted) for r in applying], f"{action} {entity}.{name}", facts
    )
    if casbin_field and not casbin_record:
        reasons += f"; but no rule allows {record_action} on {entity} for this record"
    return Explanation(
        roles=roles,
        region=region,
        target=f"{entity}.{name}",
        action=action,
        allowed=allowed,
        casbin=allowed,
        index=index_field and scope.covers(facts.scopes),
        reason=reasons,
        rules=tuple(_matched(r, granted) for r in matched_rules),
        entity_rules=tuple(entity_matched),
        scope=scope.describe(),
        policy_version=policy.version,
        record=dict(facts.values),
    )


def _matched(rule: FieldRule, granted: Mapping[str, str]) -> MatchedRule:
    text = rule.line.text
    if rule.condition is not None:
        text = f"{text}  [condition: {rule.condition.text}]"
    return MatchedRule(str(rule.line), text, rule.effect, rule.role)


def _reason(allowed: bool, matched: list[MatchedRule], what: str, facts: RecordFacts) -> str:
    allows = [m for m in matched if m.effect == "allow"]
    denies = [m for m in matched if m.effect == "deny"]
    if allowed:
        return f"allowed: {allows[0].line} allows {what}" if allows else f"allowed: {what}"
    if denies:
        return f"denied: {denies[0].line} denies {what} (deny overrides allow)"
    where = f" for a record in scope {'+'.join(sorted(facts.scopes)) or 'none of own/team'}"
    return f"denied: no rule allows {what}{where} (nothing is allowed unless a rule allows it)"
