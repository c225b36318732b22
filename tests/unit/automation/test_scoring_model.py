"""Scoring models: points, decay by half-life from the given time, caps and clamps,
and what the loader refuses."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from bastion.automation.scoring import ScoringError, load_scoring, parse_scoring
from tests.factories import REPO_ROOT

NOW = datetime(2026, 11, 24, 9, 0, tzinfo=UTC)
MODEL = """
model:
  id: test-model
  firmographic:
    - {id: fit, when: "industry == software", points: 30}
    - {id: bad, when: "status == unqualified", points: -50}
  behavioural:
    - {id: clicks, event: link_clicked, points: 10, half_life: 7d, max: 25}
"""


def test_points_decay_by_half_life_and_are_capped_and_clamped() -> None:
    model = parse_scoring({"m.yaml": MODEL})
    assert model is not None
    lead = {"id": "led_x", "industry": "software", "status": "working"}
    fresh = model.compute(lead, [("link_clicked", NOW)], NOW)
    assert fresh.value == 40
    week = model.compute(lead, [("link_clicked", NOW - timedelta(days=7))], NOW)
    assert week.value == 35  # 30 + 10 * 1/2
    many = model.compute(lead, [("link_clicked", NOW)] * 5, NOW)
    assert many.value == 55  # the clicks capped at 25
    clicks = next(item for item in many.breakdown if item["rule"] == "clicks")
    assert (clicks["count"], clicks["points"], clicks["capped"]) == (5, 25.0, True)
    disqualified = model.compute({"industry": "retail", "status": "unqualified"}, [], NOW)
    assert disqualified.value == 0  # -50, clamped
    assert model.fields == {"industry", "status"}
    assert model.rescore_every == timedelta(days=7) / 4


def test_a_firmographic_rule_on_a_field_automation_may_not_read_gives_nothing() -> None:
    model = parse_scoring({"m.yaml": MODEL})
    assert model is not None
    hidden = model.compute({"_withheld": ["industry"], "industry": "software"}, [], NOW)
    assert hidden.value == 0


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("model: {id: x}", "needs at least one"),
        (
            "model: {id: x, entity: contacts, firmographic: "
            '[{id: a, when: "industry == x", points: 1}]}',
            "only leads",
        ),
        (
            'model: {id: x, firmographic: [{id: a, when: "score > 50", points: 1}]}',
            "cannot depend on the score",
        ),
        ('model: {id: x, firmographic: [{id: a, when: "email == x", points: 1}]}', "encrypted"),
        ('model: {id: x, firmographic: [{id: a, when: "industry == x", points: 500}]}', "points"),
        (
            "model: {id: x, behavioural: [{id: a, event: purchased, points: 1, half_life: 1d}]}",
            "event",
        ),
        (
            "model: {id: x, behavioural: [{id: a, event: link_clicked, points: 1, half_life: 5m}]}",
            "at least 1h",
        ),
        ("model: {id: x, behavioural: [{id: a, event: link_clicked, points: 1}]}", "half_life"),
        ("rules: []", "one key, model"),
    ],
)
def test_malformed_models_are_refused_naming_what(text: str, fragment: str) -> None:
    with pytest.raises(ScoringError) as refused:
        parse_scoring({"m.yaml": text})
    assert any(fragment in p for p in refused.value.problems), refused.value.problems


def test_the_shipped_model_loads() -> None:
    model = load_scoring(REPO_ROOT / "scoring")
    assert model is not None
    assert model.id == "fit-and-engagement"
    assert model.event_types == {"email_opened", "link_clicked", "page_visited", "form_submitted"}
