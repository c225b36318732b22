"""Lead scoring models as code: `scoring/*.yaml`, validated when they load.

```yaml
model:
  id: fit-and-engagement
  entity: leads
  firmographic:                      # points for what the lead is
    - id: target-industry
      when: industry in software|finance       # the policy's condition language
      points: 20
  behavioural:                       # points for what the lead did, decaying
    - id: submitted-form
      event: form_submitted
      points: 30
      half_life: 30d                 # an event counts half after 30 days
      max: 60                        # at most this many points from this rule
```

A lead's score is the sum of the points of the firmographic rules whose condition
holds and, per behavioural rule, `points * 0.5 ** (age / half_life)` over its events
(capped at `max`), rounded and clamped to 0-100 (the catalog's `leads.score`). The
breakdown says which rule gave how many points (rule ids, field names and counts,
never a value). Decay is computed from the injected clock; a scored lead with
behavioural points is scored again as they decay (a timer, not a scan).

Firmographic conditions are evaluated on the lead as automation reads it (its field
mask applies); they may not test `score` itself (a score feeding itself would loop).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import yaml

from bastion.automation.conditions import evaluate, parse_when
from bastion.automation.model import ACTIVITY_TYPES, RULE_ID_RE, parse_duration, yaml_files
from bastion.crm.catalog import ENTITIES
from bastion.policy.conditions import Condition

SCORED_ENTITY = "leads"
# Past ten half-lives an event adds under 0.1% of its points: not worth reading.
_HORIZON_HALF_LIVES = 10
MAX_POINTS = 100


class ScoringError(ValueError):
    """Scoring files that do not load; `problems` name the file, the rule and the key."""

    def __init__(self, problems: Sequence[str]) -> None:
        super().__init__("the scoring model does not load: " + "; ".join(problems[:5]))
        self.problems = tuple(problems)


@dataclass(frozen=True, slots=True)
class FirmographicRule:
    id: str
    when: tuple[Condition, ...]
    points: int

    @property
    def fields(self) -> frozenset[str]:
        return frozenset(name for condition in self.when for name in condition.fields)


@dataclass(frozen=True, slots=True)
class BehaviouralRule:
    id: str
    event: str
    points: Decimal
    half_life: timedelta
    max: Decimal | None

    def weight(self, age: timedelta) -> Decimal:
        halves = max(age, timedelta(0)) / self.half_life
        return Decimal(str(0.5**halves))


@dataclass(frozen=True, slots=True)
class Score:
    """A computed score and how it came about."""

    value: int
    breakdown: tuple[dict[str, Any], ...]
    behavioural_points: Decimal


@dataclass(frozen=True, slots=True)
class ScoringModel:
    id: str
    version: str
    firmographic: tuple[FirmographicRule, ...]
    behavioural: tuple[BehaviouralRule, ...]

    @property
    def fields(self) -> frozenset[str]:
        """Fields whose change changes the score."""
        return frozenset(name for rule in self.firmographic for name in rule.fields)

    @property
    def event_types(self) -> frozenset[str]:
        return frozenset(rule.event for rule in self.behavioural)

    @property
    def horizon(self) -> timedelta:
        longest = max((r.half_life for r in self.behavioural), default=timedelta(0))
        return longest * _HORIZON_HALF_LIVES

    @property
    def rescore_every(self) -> timedelta:
        """How often a lead with behavioural points is scored again as they decay: a
        quarter of the shortest half-life (a point's worth of decay, for most models)."""
        return min(r.half_life for r in self.behavioural) / 4

    def compute(
        self, record: Mapping[str, Any], events: Sequence[tuple[str, datetime]], now: datetime
    ) -> Score:
        """The score of a lead (`record` as automation reads it) with these behaviour
        events (type, when), at `now`."""
        spec = ENTITIES[SCORED_ENTITY]
        items: list[dict[str, Any]] = []
        total = Decimal(0)
        for firm in self.firmographic:
            held = all(reason.held for reason in evaluate(firm.when, spec, record, None))
            total += firm.points if held else 0
            items.append(
                {
                    "rule": firm.id,
                    "kind": "firmographic",
                    "fields": sorted(firm.fields),
                    "matched": held,
                    "points": firm.points if held else 0,
                }
            )
        behavioural = Decimal(0)
        for rule in self.behavioural:
            ages = [now - at for kind, at in events if kind == rule.event]
            raw = sum((rule.points * rule.weight(age) for age in ages), Decimal(0))
            capped = rule.max is not None and raw > rule.max
            points = rule.max if capped and rule.max is not None else raw
            behavioural += points
            total += points
            items.append(
                {
                    "rule": rule.id,
                    "kind": "behavioural",
                    "event": rule.event,
                    "count": len(ages),
                    "points": float(round(points, 2)),
                    "capped": capped,
                }
            )
        value = int(max(Decimal(0), min(Decimal(MAX_POINTS), total.to_integral_value())))
        return Score(value, tuple(items), behavioural)


def load_scoring(directory: Path) -> ScoringModel | None:
    """The model of `directory/*.yaml`; None when there is none. Raises `ScoringError`."""
    try:
        texts = yaml_files(directory)
    except ValueError as exc:
        raise ScoringError([str(exc)]) from None
    return None if texts is None else parse_scoring(texts)


def parse_scoring(texts: Mapping[str, str]) -> ScoringModel | None:
    problems: list[str] = []
    models: list[tuple[str, ScoringModel]] = []
    digest = hashlib.sha256()
    for name, text in sorted(texts.items()):
        digest.update(name.encode() + b"\0" + text.encode() + b"\0")
        try:
            document = yaml.safe_load(text)
        except yaml.YAMLError:
            problems.append(f"{name}: not valid YAML")
            continue
        if document is None:
            continue
        if not isinstance(document, dict) or set(document) != {"model"}:
            problems.append(f"{name}: the file must be a mapping with one key, model")
            continue
        found: list[str] = []
        model = _model(document["model"], found)
        problems.extend(f"{name}: {problem}" for problem in found)
        if model is not None and not found:
            models.append((name, model))
    if len(models) > 1:
        problems.append(f"only one scoring model for leads: {models[0][0]} and {models[1][0]}")
    if problems:
        raise ScoringError(problems)
    if not models:
        return None
    model = models[0][1]
    return ScoringModel(model.id, digest.hexdigest()[:16], model.firmographic, model.behavioural)


def _model(raw: object, problems: list[str]) -> ScoringModel | None:
    keys = {"id", "entity", "firmographic", "behavioural"}
    if not isinstance(raw, dict):
        problems.append("model: must be a mapping")
        return None
    problems.extend(f"model.{k}: is not a key of a model" for k in sorted(set(raw) - keys))
    if not isinstance(raw.get("id"), str) or RULE_ID_RE.fullmatch(raw["id"]) is None:
        problems.append("model.id: must be lower-case letters, digits and dashes")
    if raw.get("entity", SCORED_ENTITY) != SCORED_ENTITY:
        problems.append("model.entity: only leads have a score")
    firmographic = [
        _firmographic(i, r, problems) for i, r in enumerate(raw.get("firmographic") or [])
    ]
    behavioural = [_behavioural(i, r, problems) for i, r in enumerate(raw.get("behavioural") or [])]
    ids = [r.id for r in (*firmographic, *behavioural) if r is not None]
    problems.extend(
        f"rule {i!r}: id: used twice" for i in sorted({i for i in ids if ids.count(i) > 1})
    )
    if not ids:
        problems.append("model: needs at least one firmographic or behavioural rule")
    if problems:
        return None
    return ScoringModel(
        str(raw["id"]),
        "",
        tuple(r for r in firmographic if r is not None),
        tuple(r for r in behavioural if r is not None),
    )


def _rule_id(kind: str, index: int, raw: dict[str, Any], problems: list[str]) -> str:
    rule_id = raw.get("id")
    if not isinstance(rule_id, str) or RULE_ID_RE.fullmatch(rule_id) is None:
        problems.append(f"{kind}[{index}].id: must be lower-case letters, digits and dashes")
        return f"{kind}-{index}"
    return rule_id


def _points(value: object, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _firmographic(index: int, raw: object, problems: list[str]) -> FirmographicRule | None:
    if not isinstance(raw, dict) or set(raw) - {"id", "when", "points"}:
        problems.append(f"firmographic[{index}]: must be {{id, when, points}}")
        return None
    rule_id = _rule_id("firmographic", index, raw, problems)
    where = f"rule {rule_id!r}"
    if not _points(raw.get("points"), -MAX_POINTS, MAX_POINTS):
        problems.append(f"{where}: points: must be a whole number from -100 to 100")
    try:
        when = parse_when(raw.get("when"), SCORED_ENTITY)
    except ValueError as exc:
        problems.append(f"{where}: when: {exc}")
        return None
    if not when:
        problems.append(f"{where}: when: a firmographic rule needs a condition")
    elif any("score" in condition.fields for condition in when):
        problems.append(f"{where}: when: a score cannot depend on the score")
    return FirmographicRule(rule_id, when, int(raw.get("points") or 0))


def _behavioural(index: int, raw: object, problems: list[str]) -> BehaviouralRule | None:
    keys = {"id", "event", "points", "half_life", "max"}
    if not isinstance(raw, dict) or set(raw) - keys:
        problems.append(f"behavioural[{index}]: must be {{id, event, points, half_life, max}}")
        return None
    rule_id = _rule_id("behavioural", index, raw, problems)
    where = f"rule {rule_id!r}"
    if raw.get("event") not in ACTIVITY_TYPES:
        problems.append(f"{where}: event: must be one of {', '.join(ACTIVITY_TYPES)}")
    if not _points(raw.get("points"), 1, MAX_POINTS):
        problems.append(f"{where}: points: must be a whole number from 1 to 100")
    if "max" in raw and not _points(raw["max"], 1, MAX_POINTS):
        problems.append(f"{where}: max: must be a whole number from 1 to 100")
    try:
        half_life = parse_duration(raw.get("half_life"))
    except ValueError as exc:
        problems.append(f"{where}: half_life: {exc}")
        return None
    if half_life < timedelta(hours=1):
        problems.append(f"{where}: half_life: must be at least 1h")
    return BehaviouralRule(
        rule_id,
        str(raw.get("event")),
        Decimal(int(raw.get("points") or 0)),
        half_life,
        Decimal(int(raw["max"])) if _points(raw.get("max"), 1, MAX_POINTS) else None,
    )
