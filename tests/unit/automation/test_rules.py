"""Workflow files: validated when they load, every problem named by file, rule and key;
the shipped rules pass their own cases (`bastion workflows test`)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from bastion.automation.cases import policy_findings, run_cases
from bastion.automation.rules import WorkflowError, load_workflows, parse_workflows
from bastion.automation.scoring import load_scoring
from bastion.policy.engine import PolicySource, build_policy
from tests.factories import REPO_ROOT


def problems(text: str, name: str = "sales.yaml") -> list[str]:
    with pytest.raises(WorkflowError) as refused:
        parse_workflows({name: text})
    return list(refused.value.problems)


def test_every_problem_of_a_file_is_named_with_its_rule_and_key() -> None:
    found = problems(
        """
rules:
  - id: Hot-Leads
    entity: leads
    trigger: {on: changed}
    actions: [{assign: {owner: alice}}]
  - id: escalate
    entity: cases
    trigger: {on: time, after: two days}
    when: "priority > high"
    actions: [{escalate: subject}, {shout: loudly}]
  - id: encrypted
    entity: contacts
    trigger: {on: updated}
    when: "email == x"
    actions: [{set: {email_opt_in: true}}]
"""
    )
    assert found == [
        "sales.yaml: rule 'Hot-Leads': id: must be lower-case letters, digits and dashes "
        "(at most 64)",
        "sales.yaml: rule 'Hot-Leads': trigger.fields: must list the fields whose change "
        "triggers the rule",
        "sales.yaml: rule 'Hot-Leads': actions[0].assign: owner: must be a principal id (prn_…)",
        "sales.yaml: rule 'escalate': trigger.after: must be a duration such as 90m, 48h or 14d",
        "sales.yaml: rule 'escalate': when: 'priority > high': cases.priority is not a number or "
        "date; use == != in",
        "sales.yaml: rule 'escalate': actions[0].escalate: must name an enum field of cases (e.g. "
        "priority)",
        "sales.yaml: rule 'escalate': actions[1]: must be one of set, assign, escalate, "
        "create_task, webhook, with its options",
        "sales.yaml: rule 'encrypted': when: 'email == x': contacts.email is encrypted; conditions "
        "test plain fields",
        "sales.yaml: rule 'encrypted': actions[0].set: email_opt_in: automation sets plain, "
        "non-personal fields only",
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("rules: [", "sales.yaml: not valid YAML at line 1"),
        ("- a list", "sales.yaml: the file must be a mapping with one key, rules"),
        (
            "rules:\n  - {id: a, entity: planets, trigger: {on: created}, actions: [{webhook: x}]}",
            "sales.yaml: rule 'a': entity: must be one of accounts, contacts, leads, "
            "opportunities, activities, cases",
        ),
        (
            "rules:\n  - {id: a, entity: cases, trigger: {on: activity}, actions: [{webhook: x}]}",
            "sales.yaml: rule 'a': trigger: activity events are about leads and contacts only",
        ),
        (
            "rules:\n  - {id: a, entity: leads, trigger: {on: created}, colour: red, actions: "
            "[{webhook: x}]}",
            "sales.yaml: rule 'a': colour: is not a key of a rule",
        ),
        (
            "rules:\n  - {id: a, entity: leads, trigger: {on: time, after: 1h}, entering: true, "
            "actions: [{webhook: x}]}",
            "sales.yaml: rule 'a': entering: goes with created, updated and changed triggers only",
        ),
        (
            "rules:\n  - {id: a, entity: leads, trigger: {on: created}, actions: [{set: {score: "
            "101}}]}",
            "sales.yaml: rule 'a': actions[0].set: score: must be at most 100",
        ),
        (
            "rules:\n  - {id: a, entity: leads, trigger: {on: created}, actions: [{webhook: x}, "
            "{webhook: y}]}",
            "sales.yaml: rule 'a': actions[1]: a rule has at most one webhook action",
        ),
    ],
)
def test_malformed_files_are_refused_saying_where(text: str, expected: str) -> None:
    assert problems(text) == [expected]


def test_a_rule_id_is_unique_across_files() -> None:
    rule = "rules:\n  - {id: a, entity: leads, trigger: {on: created}, actions: [{webhook: x}]}\n"
    with pytest.raises(WorkflowError) as refused:
        parse_workflows({"one.yaml": rule, "two.yaml": rule})
    assert refused.value.problems == ("two.yaml: rule 'a': id: also used in one.yaml",)


def test_the_shipped_rules_load_pass_their_cases_and_need_nothing_the_policy_withholds() -> None:
    workflows = load_workflows(REPO_ROOT / "workflows")
    assert {r.id for r in workflows.rules} == {
        "route-new-leads-by-country",
        "assign-hot-leads",
        "follow-up-form",
        "escalate-stale-cases",
    }
    escalate = workflows.rule("escalate-stale-cases")
    assert escalate is not None
    assert escalate.trigger.after == timedelta(hours=48)
    outcomes = run_cases(REPO_ROOT / "workflows" / "tests", workflows, max_depth=3)
    assert [o.describe() for o in outcomes if not o.passed] == []
    assert len(outcomes) >= 10
    policy = build_policy(PolicySource.from_directory(REPO_ROOT / "policies"), regions=("eu", "us"))
    scoring = load_scoring(REPO_ROOT / "scoring")
    assert policy_findings(workflows, scoring, policy, ("eu", "us")) == []


def test_a_rule_the_policy_does_not_let_automation_carry_out_is_found() -> None:
    workflows = parse_workflows(
        {
            "x.yaml": "rules:\n  - {id: a, entity: activities, trigger: {on: created}, "
            'when: "type == task", actions: [{set: {status: completed}}]}\n'
        }
    )
    policy = build_policy(PolicySource.from_directory(REPO_ROOT / "policies"), regions=("eu",))
    assert policy_findings(workflows, None, policy, ("eu",)) == [
        "x.yaml: rule 'a' in eu: automation may not update activities"
    ]
