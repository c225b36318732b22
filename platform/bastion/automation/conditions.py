"""Conditions of workflow rules and scoring rules: the policy's condition language.

A rule's `when` is one condition or a list of them, all of which must hold; each is
written exactly as a `p2` line's condition (`bastion.policy.conditions`): clauses
`field op value` joined by ` and `, `op` one of `== != < <= > >= in`, `not in`,
lists as `a|b|c`, and `old.field` for the field as it was before the change that
triggered the rule ("changed from": `old.score < 80`; "changed to": `score >= 80`).
Conditions test plain fields only (an encrypted field is refused when the rule
loads): deciding would otherwise mean decrypting what automation may not read.

Conditions are evaluated on the record as automation reads it through the pipeline
(its field mask applies): a field withheld from automation holds no value, so a
clause on it does not hold, and the run's record says the field was withheld.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from bastion.crm.catalog import EntitySpec
from bastion.crm.records import WITHHELD
from bastion.policy.conditions import Condition, ConditionError, RecordFacts, parse_condition


@dataclass(frozen=True, slots=True)
class Reason:
    """One condition of a rule and whether it held (the rule file's own text: no
    record value is ever written into a reason)."""

    condition: str
    held: bool
    withheld: tuple[str, ...] = ()

    def as_json(self) -> dict[str, Any]:
        reason: dict[str, Any] = {"condition": self.condition, "held": self.held}
        if self.withheld:
            reason["withheld"] = list(self.withheld)
        return reason


def parse_when(raw: object, entity: str) -> tuple[Condition, ...]:
    """A rule's `when` (absent, a string, or a list of strings) as parsed conditions.

    Raises `ValueError` naming the condition that does not parse and why."""
    if raw is None:
        return ()
    texts = [raw] if isinstance(raw, str) else raw
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        raise ValueError("must be a condition or a list of conditions")
    parsed = []
    for text in texts:
        try:
            condition = parse_condition(text, entity)
        except ConditionError as exc:
            raise ValueError(f"{text!r}: {exc}") from None
        if condition is not None:
            parsed.append(condition)
    return tuple(parsed)


def evaluate(
    conditions: Sequence[Condition],
    spec: EntitySpec,
    record: Mapping[str, Any],
    previous: Mapping[str, Any] | None,
    *,
    created: bool = False,
) -> list[Reason]:
    """Each condition against `record` (as the pipeline rendered it to automation) and,
    for `old.` clauses, `previous`: old values of the fields the change wrote (JSON as
    stored; the others as they are now). For a record just `created` every `old.`
    field is null, as in the policy's write conditions."""
    values = typed(spec, record)
    before: dict[str, Any] | None = None
    if created:
        before = {}
    elif previous is not None:
        before = {**values, **typed(spec, previous)}
    facts = RecordFacts(spec.name, values, frozenset(), before)
    hidden = set(record.get(WITHHELD, ()))
    reasons = []
    for condition in conditions:
        withheld = tuple(sorted(condition.fields & hidden))
        held = not withheld and condition.holds(facts)
        reasons.append(Reason(condition.text, held, withheld))
    return reasons


def typed(spec: EntitySpec, values: Mapping[str, Any] | None) -> dict[str, Any]:
    """JSON values of a record (as the API renders them) typed as conditions compare
    them: numbers as exact decimals, dates and times parsed. A value that does not
    parse as its field's type is left out (it then holds no condition)."""
    typed_values: dict[str, Any] = {}
    for name, value in (values or {}).items():
        field = spec.field(name)
        if field is None or value is None:
            continue
        try:
            if field.type in ("integer", "decimal") and not isinstance(value, bool):
                typed_values[name] = Decimal(str(value))
            elif field.type == "date":
                typed_values[name] = date.fromisoformat(str(value))
            elif field.type == "datetime":
                typed_values[name] = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
            else:
                typed_values[name] = value
        except (ValueError, InvalidOperation):
            continue
    return typed_values
