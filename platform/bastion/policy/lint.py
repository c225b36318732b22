"""`bastion policy lint`: what a reviewer of a policy change should be told.

Loading already refuses lines that do not parse or name unknown regions, resources,
actions, scopes, fields, categories or classifications. Lint looks at the policy as
a whole:

errors (a reload is refused):
  scope-on-system-resource  own/team on audit, keys, policy, tokens or dsr (no owner)
  inheritance-cycle         g lines that loop

warnings:
  unknown-role              a g line inherits a role no line gives any rule
  unreachable-field-rule    a field rule for a role that may not read (or write) the entity
                            (analytics reads opportunity fields for `analytics read`)
  shadowed-by-deny          an allow that an unconditional deny of the same role always beats
  wildcard-sensitive        a wildcard, class or category grant that reaches sensitive fields
  write-without-read        create/update on an entity, or write on a field, without read
  self-unlocking-read       a read condition on a field the same role may change without
                            an `old.` guard (it could rewrite the field to unlock the read)
  duplicate                 the same rule twice

A warning can be acknowledged where it is intended, with a comment on the line
just above the rule: `# lint-ok: wildcard-sensitive <why>`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal
from typing import Any, Literal

from typing_extensions import TypedDict

from bastion.policy.conditions import WHOLE_REGION, Clause
from bastion.policy.engine import Policy, PolicySource, build_policy
from bastion.policy.resources import ANALYTICS_ENTITY, SYSTEM_RESOURCES
from bastion.policy.rules import (
    FIELD_ACTIONS,
    WILDCARD,
    EntityRule,
    FieldAction,
    FieldRule,
    Line,
    PolicyError,
)
from bastion.wire import closed

Severity = Literal["error", "warning"]


@closed
class PolicyFinding(TypedDict):
    """Something `bastion policy lint` says about the policy."""

    severity: Severity
    code: str
    message: str
    line: str | None
    """file:line, if the finding is about one line."""


@dataclass(frozen=True, slots=True)
class Finding:
    severity: Severity
    code: str
    message: str
    line: Line | None = None

    def __str__(self) -> str:
        where = f"{self.line}: " if self.line is not None else ""
        return f"{where}{self.severity}: [{self.code}] {self.message}"

    def as_dict(self) -> PolicyFinding:
        return {
            "severity": self.severity,
            "code": self.code,
            "message": self.message,
            "line": str(self.line) if self.line else None,
        }


def lint(policy: Policy) -> list[Finding]:
    """Every finding, errors first, then in file order."""
    acknowledged = _acknowledged(policy.source.policy_text)
    findings = [
        *_system_scopes(policy),
        *_cycles(policy),
        *_unknown_roles(policy),
        *_unreachable_field_rules(policy),
        *_shadowed(policy),
        *_wildcard_sensitive(policy),
        *_write_without_read(policy),
        *_self_unlocking_reads(policy),
        *_duplicates(policy),
    ]
    kept = [
        f
        for f in findings
        if f.severity == "error"
        or f.line is None
        or f.code not in acknowledged.get(f.line.number, set())
    ]
    return sorted(kept, key=lambda f: (f.severity != "error", f.line.number if f.line else 0))


def errors(findings: list[Finding]) -> list[Finding]:
    return [f for f in findings if f.severity == "error"]


def _acknowledged(text: str) -> dict[int, set[str]]:
    """Rule line number -> codes a `# lint-ok:` comment right above it acknowledges."""
    acknowledged: dict[int, set[str]] = {}
    lines = text.split("\n")
    for index, raw in enumerate(lines):
        stripped = raw.strip()
        if stripped.startswith("# lint-ok:") and index + 1 < len(lines):
            codes = stripped.removeprefix("# lint-ok:").split()
            if codes:
                acknowledged.setdefault(index + 2, set()).add(codes[0].rstrip(","))
    return acknowledged


def _system_scopes(policy: Policy) -> list[Finding]:
    return [
        Finding(
            "error",
            "scope-on-system-resource",
            f"{rule.resource} has no owner or team; use scope all",
            rule.line,
        )
        for rule in policy.parsed.entity_rules
        if rule.resource in SYSTEM_RESOURCES and rule.scope not in WHOLE_REGION
    ]


def _cycles(policy: Policy) -> list[Finding]:
    links: dict[str, set[str]] = {}
    for link in policy.parsed.role_links:
        links.setdefault(link.role, set()).add(link.inherits)
    findings = []
    for link in policy.parsed.role_links:
        seen, stack = set(), [link.inherits]
        while stack:
            role = stack.pop()
            if role == link.role:
                findings.append(
                    Finding(
                        "error",
                        "inheritance-cycle",
                        f"{link.role} inherits itself through {link.inherits}",
                        link.line,
                    )
                )
                break
            if role not in seen:
                seen.add(role)
                stack.extend(links.get(role, ()))
    return findings


def _roles_with_rules(policy: Policy) -> set[str]:
    return {r.role for r in policy.parsed.entity_rules} | {
        r.role for r in policy.parsed.field_rules
    }


def _unknown_roles(policy: Policy) -> list[Finding]:
    with_rules = _roles_with_rules(policy)
    findings = []
    for link in policy.parsed.role_links:
        reachable = policy.implied_roles.get(link.inherits, frozenset({link.inherits}))
        if not reachable & with_rules:
            findings.append(
                Finding(
                    "warning",
                    "unknown-role",
                    f"{link.role} inherits {link.inherits}, which no rule mentions",
                    link.line,
                )
            )
    return findings


def _roles_granted(policy: Policy, role: str) -> list[str]:
    """The policy's roles that receive `role`'s lines (itself and those inheriting it)."""
    return [r for r, implied in policy.implied_roles.items() if role in implied]


def _unreachable_field_rules(policy: Policy) -> list[Finding]:
    findings = []
    for rule in policy.parsed.field_rules:
        if rule.effect != "allow":
            continue
        entities = sorted({entity for entity, _ in rule.fields})
        regions = policy.regions if rule.region == WILDCARD else (rule.region,)
        needs: tuple[str, ...] = {
            "read": ("read",),
            "write": ("create", "update"),
        }.get(rule.action, ("read", "create", "update"))
        holders = _roles_granted(policy, rule.role)
        reachable = any(
            policy.allows(frozenset({holder}), region, entity, action)
            for holder in holders
            for region in regions
            for entity in entities
            for action in needs
        ) or (
            # Pipeline analytics aggregates the opportunity fields its reader may read.
            rule.action != "write"
            and entities == [ANALYTICS_ENTITY]
            and any(
                policy.allows(frozenset({holder}), region, "analytics", "read")
                for holder in holders
                for region in regions
            )
        )
        if not reachable:
            findings.append(
                Finding(
                    "warning",
                    "unreachable-field-rule",
                    f"{rule.role} may not {' or '.join(needs)} {', '.join(entities)}, "
                    "so this field rule never applies",
                    rule.line,
                )
            )
    return findings


def _shadowed(policy: Policy) -> list[Finding]:
    findings = []
    entity_denies = [r for r in policy.parsed.entity_rules if r.effect == "deny"]
    for rule in policy.parsed.entity_rules:
        if rule.effect == "allow" and any(_beats(d, rule, policy) for d in entity_denies):
            findings.append(
                Finding(
                    "warning",
                    "shadowed-by-deny",
                    f"a deny for {rule.role} always overrides this allow",
                    rule.line,
                )
            )
    field_denies = [
        r for r in policy.parsed.field_rules if r.effect == "deny" and r.condition is None
    ]
    for f_rule in policy.parsed.field_rules:
        if f_rule.effect != "allow":
            continue
        for deny in field_denies:
            if (
                deny.role in policy.implied_roles.get(f_rule.role, frozenset({f_rule.role}))
                and deny.region in (WILDCARD, f_rule.region)
                and deny.action in (WILDCARD, f_rule.action)
                and f_rule.fields <= deny.fields
            ):
                findings.append(
                    Finding(
                        "warning",
                        "shadowed-by-deny",
                        f"{deny.line} denies every field this line allows to {f_rule.role}",
                        f_rule.line,
                    )
                )
                break
    return findings


def _beats(deny: EntityRule, allow: EntityRule, policy: Policy) -> bool:
    return (
        deny.role in policy.implied_roles.get(allow.role, frozenset({allow.role}))
        and deny.region in (WILDCARD, allow.region)
        and deny.resource in (WILDCARD, allow.resource)
        and deny.action in (WILDCARD, allow.action)
        and (deny.scope in WHOLE_REGION or deny.scope == allow.scope)
    )


def _wildcard_sensitive(policy: Policy) -> list[Finding]:
    findings = []
    for rule in policy.parsed.field_rules:
        if rule.effect != "allow" or not _is_broad(rule):
            continue
        sensitive = sorted(
            f"{entity}.{name}"
            for entity, name in rule.fields
            if (spec := policy.catalog.get(entity)) is not None
            and (field := spec.field(name)) is not None
            and field.classification == "sensitive"
        )
        regions = policy.regions if rule.region == WILDCARD else (rule.region,)
        actions: tuple[FieldAction, ...] = (
            FIELD_ACTIONS if rule.action == WILDCARD else (_field_action(rule.action),)
        )
        reached = [
            ref
            for ref in sensitive
            if any(
                ref.partition(".")[2]
                in policy.mask(
                    frozenset({rule.role}), region, ref.partition(".")[0], action
                ).possible
                for region in regions
                for action in actions
            )
        ]
        if reached:
            findings.append(
                Finding(
                    "warning",
                    "wildcard-sensitive",
                    f"{rule.pattern!r} grants {rule.role} sensitive fields "
                    f"{', '.join(reached)}; name them explicitly or deny class:sensitive",
                    rule.line,
                )
            )
    return findings


def _field_action(action: str) -> FieldAction:
    return "read" if action == "read" else "write"


def _is_broad(rule: FieldRule) -> bool:
    return rule.pattern == WILDCARD or rule.pattern.endswith(".*") or ":" in rule.pattern


def _write_without_read(policy: Policy) -> list[Finding]:
    findings = []
    for role in sorted(policy.roles):
        roles = frozenset({role})
        for region in policy.regions:
            for entity in policy.entities:
                writes = [
                    a for a in ("create", "update") if policy.allows(roles, region, entity, a)
                ]
                if writes and not policy.allows(roles, region, entity, "read"):
                    findings.append(
                        Finding(
                            "warning",
                            "write-without-read",
                            f"{role} may {' and '.join(writes)} {entity} in {region} "
                            "but not read it",
                        )
                    )
                    continue
                write_mask = policy.mask(roles, region, entity, "write").possible
                read_mask = policy.mask(roles, region, entity, "read").possible
                blind = sorted(write_mask - read_mask)
                if writes and blind:
                    findings.append(
                        Finding(
                            "warning",
                            "write-without-read",
                            f"{role} may write but not read {entity}.{{{', '.join(blind)}}} "
                            f"in {region}",
                        )
                    )
    # One finding per (role, entity, message) is enough when regions agree.
    unique: dict[str, Finding] = {}
    for finding in findings:
        unique.setdefault(finding.message.rsplit(" in ", 1)[0], finding)
    return list(unique.values())


def _self_unlocking_reads(policy: Policy) -> list[Finding]:
    """A read allowed only while `status not in closed` (or denied while `status in
    closed`) is no limit on a role that may set status back to open: its write of
    `status` must be possible only while the read is already allowed — an `old.status`
    condition that says so."""
    findings: list[Finding] = []
    for rule in policy.parsed.field_rules:
        if rule.action == "write" or rule.condition is None:
            continue
        entity = next(iter(rule.fields))[0]
        tested = sorted({c.field for c in rule.condition.clauses if not c.old})
        regions = policy.regions if rule.region == WILDCARD else (rule.region,)
        unguarded = sorted(
            {
                (holder, name)
                for holder in _roles_granted(policy, rule.role)
                for region in regions
                for name in tested
                if _can_unlock(policy, rule, holder, region, entity, name)
            }
        )
        findings.extend(
            Finding(
                "warning",
                "self-unlocking-read",
                f"{holder} may change {entity}.{name}, which this read depends on, from a "
                f"value that withholds the field: guard its write with an `old.{name}` "
                "condition under which the read is already allowed",
                rule.line,
            )
            for holder, name in unguarded
        )
    return findings


def _can_unlock(
    policy: Policy, read: FieldRule, role: str, region: str, entity: str, name: str
) -> bool:
    """Whether `role` may write `entity.name` while it holds a value under which `read`
    withholds the field — judged on the values the conditions mention (and null, and
    their neighbours), counting a write rule's other clauses as satisfiable."""
    if name not in policy.mask(frozenset({role}), region, entity, "write").possible:
        return False
    assert read.condition is not None
    on_field = [c for c in read.condition.clauses if c.field == name and not c.old]
    implied = policy.implied_roles.get(role, frozenset({role}))
    writes = [
        r
        for r in policy.parsed.field_rules
        if r.role in implied and r.matches(region, (entity, name), "write")
    ]
    guards = [_old_clauses(r, name) for r in writes]
    candidates = _candidates([*on_field, *(c for g in guards for c in g)])
    for value in candidates:
        facts = {name: value}
        withheld = all(c.holds(facts) for c in on_field)
        if read.effect == "allow":
            withheld = not withheld
        allowed = any(
            r.effect == "allow" and all(c.holds(facts) for c in g)
            for r, g in zip(writes, guards, strict=True)
        )
        denied = any(
            r.effect == "deny" and _only_old(r, name) and all(c.holds(facts) for c in g)
            for r, g in zip(writes, guards, strict=True)
        )
        if withheld and allowed and not denied:
            return True
    return False


def _old_clauses(rule: FieldRule, name: str) -> list[Clause]:
    if rule.condition is None:
        return []
    return [c for c in rule.condition.clauses if c.old and c.field == name]


def _only_old(rule: FieldRule, name: str) -> bool:
    """A deny that applies whenever its `old.name` clauses hold (no other clause)."""
    return rule.condition is None or all(c.old and c.field == name for c in rule.condition.clauses)


def _candidates(clauses: list[Clause]) -> list[Any]:
    """Values worth trying against clauses on one field: theirs, null, and neighbours."""
    values: list[Any] = [None]
    for clause in clauses:
        literals = clause.value if isinstance(clause.value, frozenset) else {clause.value}
        for literal in literals:
            values.append(literal)
            if isinstance(literal, bool):
                values.append(not literal)
            elif isinstance(literal, int | Decimal):
                values += [literal - 1, literal + 1]
            elif isinstance(literal, date):
                values += [literal - timedelta(days=1), literal + timedelta(days=1)]
            elif isinstance(literal, str):
                values.append(literal + "\x00other")
    return values


def _duplicates(policy: Policy) -> list[Finding]:
    seen: Counter[str] = Counter()
    findings = []
    rules: list[EntityRule | FieldRule] = [*policy.parsed.entity_rules, *policy.parsed.field_rules]
    for rule in sorted(rules, key=lambda r: r.line.number):
        key = " ".join(rule.line.text.replace(",", " ").split())
        seen[key] += 1
        if seen[key] > 1:
            findings.append(Finding("warning", "duplicate", "this rule appears twice", rule.line))
    return findings


def checked_policy(source: PolicySource, *, regions: Sequence[str]) -> tuple[Policy, list[Finding]]:
    """Build a policy and lint it; `PolicyError` when it does not load or lint finds errors.

    This is the gate every policy passes before it may run: at start, on reload and
    when a worker adopts a version another process activated.
    """
    policy = build_policy(source, regions=regions)
    findings = lint(policy)
    refused = errors(findings)
    if refused:
        raise PolicyError("; ".join(str(f) for f in refused))
    return policy, findings
