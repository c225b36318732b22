"""Policy-as-code tools: lint, explain, the YAML test runner, diff."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from bastion.policy.cases import CaseError, load_checks, run_checks
from bastion.policy.conditions import record_facts
from bastion.policy.diff import diff, source_at
from bastion.policy.engine import Policy, PolicySource, build_policy, load_policy
from bastion.policy.explain import ExplainError, explain
from bastion.policy.lint import checked_policy, lint
from bastion.policy.rules import PolicyError

POLICIES = Path(__file__).resolve().parents[3] / "policies"
MODEL = (POLICIES / "model.conf").read_text(encoding="utf-8")
REGIONS = ("eu", "us")


def policy_of(text: str) -> Policy:
    return build_policy(PolicySource(MODEL, text, "test"), regions=REGIONS)


def codes(text: str) -> list[str]:
    return [f.code for f in lint(policy_of(text))]


# --- lint ------------------------------------------------------------------------------


def test_the_shipped_policy_lints_clean() -> None:
    assert lint(load_policy(POLICIES, regions=REGIONS)) == []


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("p, r, *, audit, read, own, allow\n", "scope-on-system-resource"),
        ("g, a, b\ng, b, a\np, a, *, contacts, read, all, allow\n", "inheritance-cycle"),
        ("g, a, ghost\np, a, *, contacts, read, all, allow\n", "unknown-role"),
        ("p2, r, *, contacts.email, read, , allow\n", "unreachable-field-rule"),
        (
            "p, r, *, contacts, read, own, allow\np, r, *, contacts, read, all, deny\n",
            "shadowed-by-deny",
        ),
        (
            "p, r, *, contacts, read, all, allow\np2, r, *, contacts.email, read, , allow\n"
            "p2, r, *, category:contact.email, read, , deny\n",
            "shadowed-by-deny",
        ),
        (
            "p, r, *, contacts, read, all, allow\np2, r, *, contacts.*, read, , allow\n",
            "wildcard-sensitive",
        ),
        ("p, r, *, contacts, update, all, allow\n", "write-without-read"),
        (
            "p, r, *, contacts, read, all, allow\np, r, *, contacts, update, all, allow\n"
            "p2, r, *, contacts.email, write, , allow\n",
            "write-without-read",
        ),
        (
            "p, r, *, contacts, read, all, allow\np, r,  *, contacts, read, all, allow\n",
            "duplicate",
        ),
    ],
)
def test_lint_finds(text: str, code: str) -> None:
    assert code in codes(text)


_CASES = (
    "p, agent, *, cases, read, all, allow\np, agent, *, cases, update, all, allow\n"
    "p2, agent, *, cases.description, read, status != closed, allow\n"
)


@pytest.mark.parametrize(
    ("status_write", "warned"),
    [
        ("p2, agent, *, cases.status, *, , allow\n", True),
        # A condition on the new value alone does not stop a reopening.
        ("p2, agent, *, cases.status, write, status != closed, allow\n", True),
        ("p2, agent, *, cases.status, read, , allow\n", False),
        (
            "p2, agent, *, cases.status, read, , allow\n"
            "p2, agent, *, cases.status, write, old.status != closed, allow\n",
            False,
        ),
        # A guard that only lets a closed case change (reopen it) is no guard.
        (
            "p2, agent, *, cases.status, read, , allow\n"
            "p2, agent, *, cases.status, write, old.status == closed, allow\n",
            True,
        ),
        # A deny on the write while closed guards as well as a conditional allow.
        (
            "p2, agent, *, cases.status, *, , allow\n"
            "p2, agent, *, cases.status, write, old.status == closed, deny\n",
            False,
        ),
    ],
)
def test_lint_warns_of_a_read_condition_the_role_may_rewrite(
    status_write: str, warned: bool
) -> None:
    assert ("self-unlocking-read" in codes(_CASES + status_write)) is warned


@pytest.mark.parametrize(
    ("status_write", "warned"),
    [
        ("p2, agent, *, cases.status, *, , allow\n", True),
        (
            "p2, agent, *, cases.status, read, , allow\n"
            "p2, agent, *, cases.status, write, old.status not in resolved|closed, allow\n",
            False,
        ),
    ],
)
def test_a_conditional_deny_on_a_read_is_as_unlockable(status_write: str, warned: bool) -> None:
    text = (
        "p, agent, *, cases, read, all, allow\np, agent, *, cases, update, all, allow\n"
        "p2, agent, *, cases.description, read, , allow\n"
        "p2, agent, *, cases.description, read, status in resolved|closed, deny\n"
    )
    assert ("self-unlocking-read" in codes(text + status_write)) is warned


def test_self_unlocking_reads_are_found_through_inheritance() -> None:
    text = _CASES + "p2, lead, *, cases.status, write, , allow\ng, lead, agent\n"
    assert any(
        f.code == "self-unlocking-read" and "lead may change cases.status" in f.message
        for f in lint(policy_of(text))
    )


def test_a_lint_ok_comment_acknowledges_a_warning_on_the_next_line() -> None:
    text = (
        "p, r, *, contacts, read, all, allow\n"
        "# lint-ok: wildcard-sensitive r is the data protection officer\n"
        "p2, r, *, contacts.*, read, , allow\n"
    )
    assert "wildcard-sensitive" not in codes(text)
    assert "wildcard-sensitive" in codes(text.replace("# lint-ok", "# note"))


def test_lint_errors_refuse_the_policy_and_warnings_do_not() -> None:
    with pytest.raises(PolicyError, match="scope-on-system-resource"):
        checked_policy(
            PolicySource(MODEL, "p, r, *, audit, read, own, allow\n", "test"), regions=REGIONS
        )
    _policy, findings = checked_policy(
        PolicySource(MODEL, "p, r, *, contacts, update, all, allow\n", "test"), regions=REGIONS
    )
    assert [f.code for f in findings] == ["write-without-read"]


# --- explain -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shipped() -> Policy:
    return load_policy(POLICIES, regions=REGIONS)


def test_explain_names_the_deny_that_wins(shipped: Policy) -> None:
    answer = explain(
        shipped,
        ["sales_rep"],
        "eu",
        "contacts.birthdate",
        "read",
        record_facts("contacts", {}, owner="self"),
    )
    assert not answer.allowed
    assert answer.consistent
    assert "deny overrides allow" in answer.reason
    lines = [r.line for r in answer.rules]
    assert lines
    assert all(line.startswith(f"{POLICIES / 'policy.csv'}:") for line in lines)
    assert {r.effect for r in answer.rules} == {"allow", "deny"}
    assert answer.as_dict()["decision"] == "deny"


def test_explain_shows_conditions_and_the_record_rule(shipped: Policy) -> None:
    small = explain(
        shipped,
        ["sales_rep"],
        "eu",
        "opportunities.amount",
        "write",
        record_facts("opportunities", {"amount": "5000"}, owner="self"),
    )
    big = explain(
        shipped,
        ["sales_rep"],
        "eu",
        "opportunities.amount",
        "write",
        record_facts("opportunities", {"amount": "500000"}, owner="self"),
    )
    assert small.allowed
    assert not big.allowed
    assert small.consistent
    assert big.consistent
    assert any("amount < 100000" in r.text for r in big.rules)
    assert any("opportunities, update, own" in r.text for r in small.entity_rules)


def test_explain_an_entity_action_for_several_roles(shipped: Policy) -> None:
    answer = explain(shipped, ["support_agent", "auditor"], "eu", "cases", "read")
    assert not answer.allowed
    assert answer.consistent
    assert {r.role for r in answer.rules} == {"support_agent", "auditor"}
    assert answer.scope == "none"


def test_explain_a_record_out_of_scope(shipped: Policy) -> None:
    answer = explain(shipped, ["sales_rep"], "eu", "contacts", "update")
    assert not answer.allowed
    assert "no rule allows update on contacts for a record in scope" in answer.reason


@pytest.mark.parametrize(
    ("roles", "region", "target", "action", "complaint"),
    [
        (["emperor"], "eu", "contacts", "read", "unknown role"),
        ([], "eu", "contacts", "read", "unknown role"),
        (["admin"], "mars", "contacts", "read", "unknown region"),
        (["admin"], "eu", "invoices", "read", "unknown entity"),
        (["admin"], "eu", "contacts", "approve", "no action"),
        (["admin"], "eu", "contacts.nickname", "read", "no field"),
        (["admin"], "eu", "contacts.email", "delete", "read or write"),
    ],
)
def test_explain_refuses_questions_it_cannot_answer(
    shipped: Policy, roles: list[str], region: str, target: str, action: str, complaint: str
) -> None:
    with pytest.raises(ExplainError, match=complaint):
        explain(shipped, roles, region, target, action)


# --- the YAML runner -----------------------------------------------------------------------


def test_the_shipped_cases_pass_and_cover_every_role_entity_and_action(shipped: Policy) -> None:
    checks = load_checks(POLICIES / "tests")
    outcomes = run_checks(shipped, checks)
    assert [o.describe() for o in outcomes if not o.passed] == []
    covered = {(c.roles, c.entity, c.name) for c in checks if c.kind == "action"}
    for role in shipped.roles:
        for entity in shipped.entities:
            for action in ("read", "list", "create", "update", "delete"):
                assert ((role,), entity, action) in covered


def test_a_wrong_expectation_fails_against_both_engines(tmp_path: Path, shipped: Policy) -> None:
    (tmp_path / "case.yaml").write_text(
        "cases:\n"
        "  - name: wrong on purpose\n"
        "    roles: [sales_rep]\n"
        "    region: eu\n"
        "    entity: contacts\n"
        "    action: read\n"
        "    record: {owner: self}\n"
        "    expect: {allowed: true, readable: [birthdate]}\n",
        encoding="utf-8",
    )
    outcomes = run_checks(shipped, load_checks(tmp_path))
    failed = [o for o in outcomes if not o.passed]
    assert len(failed) == 1
    assert (
        "read contacts.birthdate: expected allow, casbin deny, index deny" in failed[0].describe()
    )


CASE = (
    "cases:\n  - {{name: x, roles: {roles}, region: eu, entity: {entity}, action: read, "
    "{more}expect: {{}}}}\n"
)


@pytest.mark.parametrize(
    ("content", "complaint"),
    [
        ("cases: [", "cannot read it as YAML"),
        ("- just a list\n", "must be a mapping"),
        (CASE.format(roles="[a]", entity="invoices", more=""), "unknown entity"),
        (CASE.format(roles="admin", entity="cases", more=""), "roles must be"),
        (
            CASE.format(roles="[a]", entity="cases", more="").replace("{}}", "{maybe: 1}}"),
            "unknown key",
        ),
        (CASE.format(roles="[a]", entity="cases", more="record: {mood: 1}, "), "no field"),
        ("matrix:\n  - {roles: [a], region: eu, entities: {cases: {}}}\n", "list every entity"),
    ],
)
def test_malformed_case_files_are_refused_clearly(
    tmp_path: Path, content: str, complaint: str
) -> None:
    (tmp_path / "bad.yaml").write_text(content, encoding="utf-8")
    with pytest.raises(CaseError, match=complaint):
        load_checks(tmp_path)


def test_a_directory_without_case_files_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(CaseError, match="no policy test files"):
        load_checks(tmp_path)


# --- diff ------------------------------------------------------------------------------------


def test_diff_lists_the_decisions_that_change() -> None:
    before = policy_of(
        "p, r, *, contacts, read, own, allow\np2, r, *, contacts.email, read, , allow\n"
    )
    after = policy_of(
        "p, r, *, contacts, read, all, allow\n"
        "p2, r, eu, contacts.email, read, do_not_contact == false, allow\n"
    )
    changes = {(c.region, c.target, c.action, c.before, c.after) for c in diff(before, after)}
    assert ("eu", "contacts", "read", "own", "all") in changes
    assert ("eu", "contacts.email", "read", "always", "if do_not_contact == false") in changes
    assert ("us", "contacts.email", "read", "always", "never") in changes
    assert diff(after, after) == []


def test_diff_reads_git_revisions(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    (repo / "policies").mkdir(parents=True)
    shutil.copy(POLICIES / "model.conf", repo / "policies" / "model.conf")
    policy_file = repo / "policies" / "policy.csv"
    policy_file.write_text("p, r, *, contacts, read, own, allow\n", encoding="utf-8")

    def git(*args: str) -> None:
        subprocess.run(
            ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", *args],
            check=True,
            capture_output=True,
        )

    git("init", "-q")
    git("add", ".")
    git("commit", "-qm", "one")
    policy_file.write_text("p, r, *, contacts, read, team, allow\n", encoding="utf-8")
    old = build_policy(source_at("HEAD", repo / "policies"), regions=REGIONS)
    new = build_policy(source_at(str(repo / "policies"), repo / "policies"), regions=REGIONS)
    assert [(c.before, c.after) for c in diff(old, new)] == [("own", "team"), ("own", "team")]
    for bad in ("no-such-revision", "--output=/tmp/x"):
        with pytest.raises(PolicyError):
            source_at(bad, repo / "policies")
