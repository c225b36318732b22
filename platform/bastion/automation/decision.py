"""What a rule decides about a triggering event — the one function the engine, the
change feed's pre-check and `bastion workflows test` all use."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bastion.automation.conditions import evaluate
from bastion.automation.rules import Rule


def judge(
    rule: Rule,
    *,
    kind: str,
    record: Mapping[str, Any] | None,
    previous: Mapping[str, Any] | None,
    cause: str | None,
    depth: int,
    max_depth: int,
) -> tuple[str, list[dict[str, Any]]]:
    """What a rule decides about a triggering event: its outcome and why.

    `fired` when every condition holds (and, for an `entering` rule, did not all
    hold with the changed fields' old values); `not_matched` otherwise; `suppressed`
    for the rule's own change or past the chain bound; `skipped` when the record is
    gone. Pure: `bastion workflows test` runs it on the cases' records."""
    if cause == rule.id:
        return "suppressed", [{"code": "own-change"}]
    if depth > max_depth:
        return "suppressed", [{"code": "chain-limit", "depth": depth}]
    if record is None:
        return "skipped", [{"code": "record-gone"}]
    old = previous if kind == "updated" else None
    reasons = evaluate(rule.when, rule.spec, record, old, created=kind == "created")
    if not all(r.held for r in reasons):
        return "not_matched", [r.as_json() for r in reasons]
    if rule.entering and kind == "updated":
        before = {**record, **(previous or {})}
        if all(r.held for r in evaluate(rule.when, rule.spec, before, None)):
            return "not_matched", [*(r.as_json() for r in reasons), {"code": "held-before"}]
    return "fired", [r.as_json() for r in reasons]
