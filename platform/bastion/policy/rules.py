"""Reading `policy.csv` into typed rules, each remembering its file and line.

Casbin loads the same file with its own file adapter; this module reads it first,
line by line, splitting exactly as Casbin does (on `\\n` only, commas between
fields), and refuses anything Casbin would read differently from what a reviewer
sees (brackets, quotes, control characters) or anything that names an unknown
region, resource, action, scope, field, category or classification. So the rules
Bastion compiles are the rules Casbin enforces, and every error names file:line.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

from bastion.crm.catalog import ENTITIES, Classification, EntitySpec
from bastion.policy.conditions import SCOPES, Condition, ConditionError, Scope, parse_condition

Effect = Literal["allow", "deny"]
FieldAction = Literal["read", "write"]
FIELD_ACTIONS: tuple[FieldAction, ...] = ("read", "write")
WILDCARD = "*"
CLASSIFICATIONS: tuple[Classification, ...] = ("public", "internal", "personal", "sensitive")

# What a line may contain: no brackets, quotes or control characters, which Casbin's
# CSV reader treats specially.
_LINE_RE = re.compile(r"[A-Za-z0-9_.*\- ,:<>=!|+]+")
_ROLE_RE = re.compile(r"[a-z][a-z0-9_]{0,63}")
_GROUP_RE = re.compile(r"group:[a-z][a-z0-9_.-]{0,63}")

FieldRef = tuple[str, str]  # (entity, field)


class PolicyError(Exception):
    """The policy files are missing or invalid; the message names file and line."""


@dataclass(frozen=True, slots=True)
class Line:
    """Where a rule was written: for errors, explain and lint."""

    path: str
    number: int
    text: str

    def __str__(self) -> str:
        return f"{self.path}:{self.number}"


@dataclass(frozen=True, slots=True)
class EntityRule:
    """A `p` line: may `role` take `action` on `resource` in `region`, on which rows."""

    role: str
    region: str
    resource: str
    action: str
    scope: Scope
    effect: Effect
    line: Line

    def matches(self, region: str, resource: str, action: str) -> bool:
        return (
            self.region in (WILDCARD, region)
            and self.resource in (WILDCARD, resource)
            and self.action in (WILDCARD, action)
        )


@dataclass(frozen=True, slots=True)
class FieldRule:
    """A `p2` line: may `role` read or write the fields `pattern` covers."""

    role: str
    region: str
    pattern: str
    action: str  # read | write | *
    condition: Condition | None
    effect: Effect
    line: Line
    fields: frozenset[FieldRef]

    def matches(self, region: str, ref: FieldRef, action: str) -> bool:
        return (
            self.region in (WILDCARD, region)
            and self.action in (WILDCARD, action)
            and ref in self.fields
        )


@dataclass(frozen=True, slots=True)
class RoleLink:
    role: str
    inherits: str
    line: Line


@dataclass(frozen=True, slots=True)
class GroupLink:
    field: FieldRef
    group: str
    line: Line


@dataclass(frozen=True, slots=True)
class ParsedPolicy:
    entity_rules: tuple[EntityRule, ...]
    field_rules: tuple[FieldRule, ...]
    role_links: tuple[RoleLink, ...]
    group_links: tuple[GroupLink, ...]

    @property
    def roles(self) -> frozenset[str]:
        named = {r.role for r in self.entity_rules} | {r.role for r in self.field_rules}
        for link in self.role_links:
            named |= {link.role, link.inherits}
        return frozenset(named)


def catalog_groups(catalog: Mapping[str, EntitySpec]) -> dict[FieldRef, tuple[str, ...]]:
    """The groups every field belongs to, from the catalog: its classification and its
    category with every prefix (`contact.email` is also in `category:contact`)."""
    groups: dict[FieldRef, tuple[str, ...]] = {}
    for spec in catalog.values():
        for field in spec.fields:
            parts = field.category.split(".")
            categories = [f"category:{'.'.join(parts[:n])}" for n in range(len(parts), 0, -1)]
            groups[(spec.name, field.name)] = (f"class:{field.classification}", *categories)
    return groups


def parse_policy(
    path: str,
    text: str,
    *,
    regions: Iterable[str],
    resources: Mapping[str, tuple[str, ...]],
    catalog: Mapping[str, EntitySpec] = ENTITIES,
) -> ParsedPolicy:
    """Every rule of a `policy.csv`; `PolicyError` at the first line that is wrong."""
    known_regions = {*regions, WILDCARD}
    all_fields = {(s.name, f.name) for s in catalog.values() for f in s.fields}
    groups = catalog_groups(catalog)
    entity_rules: list[EntityRule] = []
    pending_fields: list[tuple[list[str], Line]] = []
    role_links: list[RoleLink] = []
    group_links: list[GroupLink] = []
    for number, raw in enumerate(text.split("\n"), start=1):
        stripped = raw.strip(" \t")
        if not stripped or stripped.startswith("#"):
            continue
        line = Line(path, number, stripped)
        if _LINE_RE.fullmatch(stripped) is None:
            raise PolicyError(
                f"{line}: only letters, digits, spaces and _ . - * : < > = ! | + are allowed "
                "in a rule (Casbin reads brackets, quotes and control characters specially)"
            )
        parts = [p.strip() for p in stripped.split(",")]
        kind = parts[0]
        if kind == "p":
            entity_rules.append(_entity_rule(parts, line, known_regions, resources))
        elif kind == "p2":
            pending_fields.append((parts, line))
        elif kind == "g":
            if len(parts) != 3 or not all(_ROLE_RE.fullmatch(p) for p in parts[1:]):
                raise PolicyError(f"{line}: a role link is `g, role, inherited_role`")
            role_links.append(RoleLink(parts[1], parts[2], line))
        elif kind == "g2":
            group_links.append(_group_link(parts, line, all_fields))
        else:
            raise PolicyError(
                f"{line}: a rule is `p, role, region, resource, action, scope, allow|deny`, "
                "`p2, role, region, fields, read|write|*, condition, allow|deny`, "
                "`g, role, inherited_role` or `g2, entity.field, group:name`"
            )
    own_groups: dict[str, set[FieldRef]] = {}
    for link in group_links:
        own_groups.setdefault(link.group, set()).add(link.field)
    field_rules = [
        _field_rule(parts, line, known_regions, catalog, groups, own_groups)
        for parts, line in pending_fields
    ]
    return ParsedPolicy(
        tuple(entity_rules), tuple(field_rules), tuple(role_links), tuple(group_links)
    )


def _entity_rule(
    parts: list[str],
    line: Line,
    known_regions: set[str],
    resources: Mapping[str, tuple[str, ...]],
) -> EntityRule:
    if len(parts) != 7:
        raise PolicyError(
            f"{line}: a rule is `p, role, region, resource, action, scope, allow|deny`"
        )
    _, role, region, resource, action, scope, effect = parts
    _check_role(role, line)
    if region not in known_regions:
        raise PolicyError(f"{line}: unknown region {region!r}")
    if resource != WILDCARD and resource not in resources:
        raise PolicyError(f"{line}: unknown resource {resource!r}")
    all_actions = {a for actions in resources.values() for a in actions}
    allowed_actions = resources.get(resource, tuple(all_actions))
    if action != WILDCARD and action not in allowed_actions:
        raise PolicyError(f"{line}: unknown action {action!r} for {resource}")
    if scope not in SCOPES:
        raise PolicyError(f"{line}: the scope must be one of {', '.join(SCOPES)}")
    return EntityRule(role, region, resource, action, scope, _effect(effect, line), line)


def _field_rule(
    parts: list[str],
    line: Line,
    known_regions: set[str],
    catalog: Mapping[str, EntitySpec],
    groups: Mapping[FieldRef, tuple[str, ...]],
    own_groups: Mapping[str, set[FieldRef]],
) -> FieldRule:
    if len(parts) != 7:
        raise PolicyError(
            f"{line}: a field rule is `p2, role, region, fields, read|write|*, condition, "
            "allow|deny` (leave the condition empty for none)"
        )
    _, role, region, pattern, action, condition_text, effect = parts
    _check_role(role, line)
    if region not in known_regions:
        raise PolicyError(f"{line}: unknown region {region!r}")
    if action not in (*FIELD_ACTIONS, WILDCARD):
        raise PolicyError(f"{line}: a field action is read, write or *")
    fields, entity = _expand(pattern, line, catalog, groups, own_groups)
    condition: Condition | None = None
    if condition_text:
        if entity is None:
            raise PolicyError(
                f"{line}: a condition needs fields of one entity (entity.field or entity.*), "
                f"not {pattern!r}"
            )
        try:
            condition = parse_condition(condition_text, entity)
        except ConditionError as exc:
            raise PolicyError(f"{line}: {exc}") from None
    return FieldRule(
        role, region, pattern, action, condition, _effect(effect, line), line, frozenset(fields)
    )


def _expand(
    pattern: str,
    line: Line,
    catalog: Mapping[str, EntitySpec],
    groups: Mapping[FieldRef, tuple[str, ...]],
    own_groups: Mapping[str, set[FieldRef]],
) -> tuple[set[FieldRef], str | None]:
    """The fields a pattern covers, and its entity when it names exactly one."""
    if pattern == WILDCARD:
        return {(s.name, f.name) for s in catalog.values() for f in s.fields}, None
    if pattern.startswith(("class:", "category:")):
        covered = {ref for ref, names in groups.items() if pattern in names}
        if not covered:
            kind = pattern.split(":")[0]
            raise PolicyError(f"{line}: no field of the catalog is in {kind} {pattern!r}")
        return covered, None
    if pattern.startswith("group:"):
        if pattern not in own_groups:
            raise PolicyError(f"{line}: no g2 line puts a field in {pattern!r}")
        return set(own_groups[pattern]), None
    entity, dot, name = pattern.partition(".")
    spec = catalog.get(entity)
    if not dot or spec is None:
        raise PolicyError(
            f"{line}: fields are entity.field, entity.*, *, class:…, category:… or group:…; "
            f"{pattern!r} is none of these"
        )
    if name == WILDCARD:
        return {(entity, f.name) for f in spec.fields}, entity
    if spec.field(name) is None:
        raise PolicyError(f"{line}: {entity} has no field {name!r}")
    return {(entity, name)}, entity


def _group_link(parts: list[str], line: Line, all_fields: set[FieldRef]) -> GroupLink:
    if len(parts) != 3:
        raise PolicyError(f"{line}: a field group line is `g2, entity.field, group:name`")
    _, target, group = parts
    entity, _, name = target.partition(".")
    if (entity, name) not in all_fields:
        raise PolicyError(f"{line}: {target!r} is not a field of the catalog")
    if _GROUP_RE.fullmatch(group) is None:
        raise PolicyError(f"{line}: a field group is named group:<lower-case name>")
    return GroupLink((entity, name), group, line)


def _check_role(role: str, line: Line) -> None:
    if not role:
        raise PolicyError(f"{line}: the role is empty")
    if _ROLE_RE.fullmatch(role) is None:
        raise PolicyError(f"{line}: a role is lower-case letters, digits and _")


def _effect(effect: str, line: Line) -> Effect:
    if effect not in ("allow", "deny"):
        raise PolicyError(f"{line}: the effect must be allow or deny")
    return effect  # type: ignore[return-value]
