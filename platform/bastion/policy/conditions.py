"""Record conditions on field rules, and the row-scope vocabulary.

A `p2` line may carry a condition on the record it is about, e.g.

    p2, sales_rep, *, opportunities.amount, write, amount < 100000, allow
    p2, support_agent, *, cases.description, read, status not in resolved|closed, allow

The language is deliberately tiny and parsed here, never evaluated as code: one or
more clauses `field op value` joined by ` and `, where `field` may be prefixed with
`old.` to test the record as it was before the write, and `op` is one of
`== != < <= > >= in` or `not in`, and `value` is a number, a bare word, `null`, or
for `in`/`not in` a `|`-separated list. Values are typed by the field's catalog type
(numbers compare as exact decimals, dates as dates), so `amount < 100000` compares
money exactly. A clause about a field the record does not set (null) is false,
except `!=` and `not in`, which are true; `== null` and `!= null` test for absence.

Read rules are evaluated against the stored record; write rules against the record
as it would be after the write (so `amount < 100000` limits the new amount), and
`old.field` against the record before it (so `old.status not in closed` lets a
role change a status while the case is open, but not reopen a closed case — which
would otherwise unlock what a read condition on `status` keeps from it). For reads,
`old.` fields are those of the stored record; for a new record they are absent (null).

Both Bastion's compiled index and Casbin's own matcher (through `condition_holds`,
registered as `conditionHolds`) evaluate conditions with this one implementation,
so the index and `enforce` cannot disagree about them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from typing import Any, Literal

from bastion.crm.catalog import ENTITIES, SYSTEM_FIELDS, FieldSpec

Scope = Literal["all", "region", "team", "own"]
SCOPES: tuple[Scope, ...] = ("all", "region", "team", "own")
# Scopes that cover every row of the region the decision is about.
WHOLE_REGION = frozenset({"all", "region"})

Operator = Literal["==", "!=", "<", "<=", ">", ">=", "in", "not in"]
_CLAUSE_RE = re.compile(
    r"\s*((?:old\.)?[a-z][a-z0-9_]{0,62})"
    r"\s*(==|!=|<=|>=|<|>|\bnot in\b|\bin\b)"
    r"\s*([A-Za-z0-9_.:|+-]+)\s*"
)
_NUMBER_RE = re.compile(r"-?[0-9]{1,18}(\.[0-9]{1,6})?")
_WORD_RE = re.compile(r"[A-Za-z0-9_.:+-]{1,100}")
_ORDERED_TYPES = frozenset({"integer", "decimal", "date", "datetime"})
_COMPARABLE_TYPES = frozenset(
    {"string", "email", "phone", "country", "currency", "enum", "principal", "team", "ref"}
    | _ORDERED_TYPES
    | {"boolean"}
)


class ConditionError(ValueError):
    """A condition does not parse or does not fit the entity; the message says why."""


@dataclass(frozen=True, slots=True)
class RecordFacts:
    """What conditions and scopes may look at: one record, as seen by one principal.

    `scopes` holds the scope names the record falls into for that principal (`own`
    when it owns the record, `team` when the record's team is one of its teams).
    `values` are the record's stored (or, for writes, proposed) typed values.
    """

    entity: str
    values: Mapping[str, Any] = field(default_factory=dict)
    scopes: frozenset[str] = frozenset()
    # For writes: the record before the write (`old.` clauses); None means `values`.
    previous: Mapping[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Clause:
    field: str
    op: Operator
    value: Any  # typed; a frozenset for in / not in; None for null
    old: bool = False  # `old.field`: the record before the write

    def holds(self, values: Mapping[str, Any]) -> bool:
        actual = values.get(self.field)
        if self.op == "==":
            return actual == self.value if actual is not None else self.value is None
        if self.op == "!=":
            return actual != self.value if actual is not None else self.value is not None
        if self.op == "in":
            return actual is not None and actual in self.value
        if self.op == "not in":
            return actual is None or actual not in self.value
        if actual is None or self.value is None:
            return False
        try:
            if self.op == "<":
                return bool(actual < self.value)
            if self.op == "<=":
                return bool(actual <= self.value)
            if self.op == ">":
                return bool(actual > self.value)
            return bool(actual >= self.value)
        except TypeError:  # a stored value of another type: the condition does not hold
            return False


@dataclass(frozen=True, slots=True)
class Condition:
    """A parsed condition: all clauses must hold. `text` is the policy's own spelling."""

    text: str
    clauses: tuple[Clause, ...]

    def holds(self, facts: RecordFacts) -> bool:
        before = facts.values if facts.previous is None else facts.previous
        return all(clause.holds(before if clause.old else facts.values) for clause in self.clauses)

    @property
    def fields(self) -> frozenset[str]:
        return frozenset(c.field for c in self.clauses)


def parse_condition(text: str, entity: str) -> Condition | None:
    """Parse `text` (empty means no condition) for fields of `entity`.

    Raises `ConditionError` naming the problem: a clause that does not parse, an
    unknown field, an operator the field's type does not support, a bad value.
    """
    text = text.strip()
    if not text:
        return None
    return _parse(text, entity)


@lru_cache(maxsize=4096)
def _parse(text: str, entity: str) -> Condition:
    spec = ENTITIES.get(entity)
    if spec is None:
        raise ConditionError(f"conditions need a single entity, not {entity!r}")
    clauses = []
    for part in re.split(r"\s+and\s+", text):
        match = _CLAUSE_RE.fullmatch(part)
        if match is None:
            raise ConditionError(f"cannot read the clause {part!r}; write `field op value`")
        name, op, raw = match.groups()
        old = name.startswith("old.")
        name = name.removeprefix("old.")
        field_spec = spec.field(name)
        if field_spec is None or name in SYSTEM_FIELDS:
            raise ConditionError(f"{entity} has no field {name!r} to test")
        if field_spec.encrypted:
            # Deciding would mean decrypting a field the caller may not be allowed to
            # read, on every read; conditions test plain fields only.
            raise ConditionError(f"{entity}.{name} is encrypted; conditions test plain fields")
        if field_spec.type not in _COMPARABLE_TYPES:
            raise ConditionError(f"{entity}.{name} ({field_spec.type}) cannot be tested")
        if op in ("<", "<=", ">", ">=") and field_spec.type not in _ORDERED_TYPES:
            raise ConditionError(f"{entity}.{name} is not a number or date; use == != in")
        value: Any
        if op in ("in", "not in"):
            value = frozenset(_typed(field_spec, item) for item in raw.split("|"))
            if None in value:
                raise ConditionError("null cannot be listed; test `== null` instead")
        else:
            value = _typed(field_spec, raw)
            if value is None and op not in ("==", "!="):
                raise ConditionError("null can only be tested with == or !=")
        clauses.append(Clause(name, op, value, old))  # type: ignore[arg-type]
    return Condition(text, tuple(clauses))


def _typed(spec: FieldSpec, raw: str) -> Any:
    if raw == "null":
        return None
    if _WORD_RE.fullmatch(raw) is None:
        raise ConditionError(f"{raw!r} is not a value")
    try:
        match spec.type:
            case "integer" | "decimal":
                if _NUMBER_RE.fullmatch(raw) is None:
                    raise ConditionError(f"{spec.name} compares with numbers, not {raw!r}")
                return Decimal(raw)
            case "date":
                return date.fromisoformat(raw)
            case "datetime":
                parsed = datetime.fromisoformat(raw)
                if parsed.tzinfo is None:
                    raise ConditionError(f"{raw!r} needs a time zone")
                return parsed
            case "boolean":
                if raw not in ("true", "false"):
                    raise ConditionError(f"{spec.name} compares with true or false")
                return raw == "true"
            case "enum":
                if raw not in spec.choices:
                    raise ConditionError(f"{raw!r} is not one of {spec.name}'s values")
                return raw
            case _:
                return raw
    except (ValueError, InvalidOperation) as exc:
        if isinstance(exc, ConditionError):
            raise
        raise ConditionError(f"{raw!r} is not a valid {spec.type}") from None


def record_facts(
    entity: str,
    attributes: Mapping[str, object],
    *,
    owner: str = "other",
    team: str = "other",
) -> RecordFacts:
    """Facts about a hypothetical record, for explain, checks and policy tests.

    `owner` is `self` (the principal owns it) or `other`; `team` is `mine` or
    `other`; `attributes` are field values, typed as conditions type them (numbers,
    dates, booleans may be given as text). Raises `ConditionError` for an unknown
    field or a value of the wrong type.
    """
    spec = ENTITIES.get(entity)
    if owner not in ("self", "other") or team not in ("mine", "other"):
        raise ConditionError("owner is self or other; team is mine or other")
    values: dict[str, Any] = {}
    previous: dict[str, Any] = {}
    for key, raw in attributes.items():
        name = key.removeprefix("old.")
        target = previous if key.startswith("old.") else values
        field_spec = spec.field(name) if spec is not None else None
        if field_spec is None or name in SYSTEM_FIELDS:
            raise ConditionError(f"{entity} has no field {name!r}")
        if raw is None:
            target[name] = None
        elif isinstance(raw, bool):
            target[name] = raw
        elif isinstance(raw, int | float | Decimal | str):
            target[name] = _typed(field_spec, str(raw))
        else:
            raise ConditionError(f"{name} must be a number, text, true/false or null")
    scopes = {s for s, on in (("own", owner == "self"), ("team", team == "mine")) if on}
    return RecordFacts(
        entity, values, frozenset(scopes), {**values, **previous} if previous else None
    )


def scope_covers(scope: str, facts: RecordFacts) -> bool:
    """Whether a rule's scope covers a record (registered in Casbin as `scopeCovers`)."""
    return scope in WHOLE_REGION or scope in facts.scopes


def condition_holds(text: str, facts: RecordFacts) -> bool:
    """Casbin's `conditionHolds(p2.cond, r2.rec)`: the same evaluation the index uses."""
    if not text.strip():
        return True
    try:
        return _parse(text.strip(), facts.entity).holds(facts)
    except ConditionError:
        # Only reachable for a condition on a class:/category: pattern, which the
        # loader refuses; a condition that cannot apply never grants or denies.
        return False


def typed_values(values: Mapping[str, Any]) -> dict[str, Any]:
    """Record values as conditions compare them: numbers as exact decimals."""
    return {
        k: (Decimal(v) if isinstance(v, int) and not isinstance(v, bool) else v)
        for k, v in values.items()
    }
