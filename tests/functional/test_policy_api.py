"""`/v1/policy`: the running policy, its history, explain, batch checks and reload.
(What `/v1/me` and the caller's OpenAPI document show is test_policy_permissions.py.)"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from bastion.app import create_app
from bastion.state import State, build_state
from tests.conftest import Backend, FrozenClock, settings_for
from tests.factories import caller, policy_dir, write_policy

REPO = Path(__file__).resolve().parents[2]
POLICY_TEXT = (REPO / "policies" / "policy.csv").read_text()
ROUTES = (
    ("GET", "/v1/policy"),
    ("GET", "/v1/policy/history"),
    ("POST", "/v1/policy/explain"),
    ("POST", "/v1/policy/check"),
    ("POST", "/v1/policy/reload"),
)


def _line(rule: str) -> str:
    """`policies/policy.csv:N` for the (unique) line `rule` of the default policy."""
    lines = POLICY_TEXT.split("\n")
    assert lines.count(rule) == 1, rule
    return f"policies/policy.csv:{lines.index(rule) + 1}"


@dataclass
class Api:
    client: TestClient
    state: State
    directory: Path

    def headers(self, *roles: str) -> dict[str, str]:
        """A token for a principal holding exactly `roles` (one principal per role set)."""
        name = "-".join(r.replace("_", "-") for r in roles)
        return caller(self.state, *roles, name=name).headers


@pytest.fixture
def api(backend: Backend, tmp_path: Path) -> Iterator[Api]:
    """A deployment whose policy files (a copy of the default) the test may edit."""
    directory = policy_dir(tmp_path / "policies", source=REPO / "policies")
    (tmp_path / "absent.toml").write_text("")
    configured = settings_for(backend, tmp_path, BASTION_POLICIES=str(directory))
    state = build_state(configured, clock=FrozenClock())
    try:
        yield Api(TestClient(create_app(configured, state=state)), state, directory)
    finally:
        state.close()


def _problem(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    return body


def _error_fields(response: Any) -> set[str]:
    return {e["field"] for e in _problem(response, 422).get("errors", [])}


# -- authentication and permission -------------------------------------------------------


def test_policy_routes_need_a_token_and_permission_and_show_the_running_version(
    api: Api,
) -> None:
    for method, path in ROUTES:
        for headers in ({}, {"Authorization": "Bearer bst_0000000000000000_" + "A" * 43}):
            response = api.client.request(method, path, json={}, headers=headers)
            _problem(response, 401)
            assert response.headers["www-authenticate"].startswith("Bearer")
    rep = api.headers("sales_rep")
    support = api.headers("support_agent")
    auditor = api.headers("auditor")
    for headers, method, path in (
        (rep, "GET", "/v1/policy"),
        (rep, "GET", "/v1/policy/history"),
        (rep, "POST", "/v1/policy/reload"),
        (support, "POST", "/v1/policy/reload"),
        (auditor, "POST", "/v1/policy/reload"),  # reads the policy, does not reload it
    ):
        _problem(api.client.request(method, path, json={}, headers=headers), 403)
    question = {"roles": ["sales_manager"], "target": "contacts", "action": "delete"}
    _problem(api.client.post("/v1/policy/explain", json=question, headers=rep), 403)
    checks = {"roles": ["admin"], "checks": [{"target": "contacts", "action": "read"}]}
    _problem(api.client.post("/v1/policy/check", json=checks, headers=rep), 403)
    assert api.state.policy_store.history()[0].old_version is None  # no reload happened

    # Who may read the policy sees the running version, its vocabulary and its history.
    current = api.client.get("/v1/policy", headers=auditor)
    assert current.status_code == 200, current.text
    body = current.json()
    version = api.state.policy.version
    assert body["version"] == body["active_version"] == version
    assert set(body["roles"]) >= {"admin", "sales_rep", "auditor", "security_admin"}
    assert body["regions"] == ["eu", "us"]
    assert body["resources"]["policy"] == ["read", "reload"]
    assert body["resources"]["contacts"] == [
        "read",
        "list",
        "create",
        "update",
        "delete",
        "import",
        "export",
        "merge",
    ]
    assert body["resources"]["analytics"] == ["read"]
    history = api.client.get("/v1/policy/history", headers=auditor).json()["data"]
    assert len(history) == 1
    assert history[0]["old_version"] is None
    assert history[0]["new_version"] == version
    assert history[0]["actor"] == "system:start"
    assert "+p, admin, *, *, *, all, allow" in history[0]["diff"]


# -- reload ----------------------------------------------------------------------------


def test_reload_activates_the_files_and_refuses_bad_requests(api: Api) -> None:
    security = api.headers("security_admin")
    principal = api.client.get("/v1/me", headers=security).json()["id"]
    old = api.state.policy.version
    unchanged = api.client.post("/v1/policy/reload", headers=security)
    assert unchanged.status_code == 200, unchanged.text
    assert unchanged.json() == {
        "old_version": old,
        "version": old,
        "changed": False,
        "warnings": [],
    }

    rule = "p, sales_rep, *, cases, list, region, allow"
    write_policy(api.directory, POLICY_TEXT, append=[rule, rule])  # a duplicate: a warning
    reloaded = api.client.post("/v1/policy/reload", json={"reason": "wider"}, headers=security)
    assert reloaded.status_code == 200, reloaded.text
    body = reloaded.json()
    new = body["version"]
    assert (body["old_version"], body["changed"]) == (old, True)
    assert new == api.state.policy.version == api.state.policy_store.active_version() != old
    assert {w["code"] for w in body["warnings"]} == {"duplicate"}
    assert all(w["severity"] == "warning" for w in body["warnings"])
    latest = api.client.get("/v1/policy/history", headers=security).json()["data"][0]
    assert (latest["actor"], latest["reason"]) == (principal, "wider")
    assert (latest["old_version"], latest["new_version"]) == (old, new)
    assert f"+{rule}" in latest["diff"]

    for kwargs, status in (
        ({"json": {"reason": "x", "force": True}}, 422),
        ({"json": {"reason": 5}}, 422),
        ({"json": {"reason": "x" * 501}}, 422),
        ({"content": b'{"reason": ', "headers": {"Content-Type": "application/json"}}, 400),
        ({"content": b"reason=x", "headers": {"Content-Type": "text/plain"}}, 415),
    ):
        headers = {**security, **kwargs.pop("headers", {})}  # type: ignore[dict-item]
        response = api.client.post("/v1/policy/reload", headers=headers, **kwargs)  # type: ignore[arg-type]
        _problem(response, status)
    assert api.state.policy_store.active_version() == new


# -- explain and check ------------------------------------------------------------------


def _explain(api: Api, headers: dict[str, str], **question: Any) -> dict[str, Any]:
    response = api.client.post("/v1/policy/explain", json=question, headers=headers)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    assert body["consistent"] is True
    assert body["casbin"] == body["index"] == body["decision"]
    assert body["policy_version"] == api.state.policy.version
    return body


def _deciding(body: dict[str, Any], effect: str) -> list[str]:
    return [r["line"] for r in body["rules"] if r["effect"] == effect]


def test_explain_names_the_deciding_line_for_anyone_asking_about_their_own_roles(
    api: Api,
) -> None:
    rep = api.headers("sales_rep")
    denied = _explain(
        api, rep, target="contacts.birthdate", action="read", record={"owner": "self"}
    )
    assert denied["decision"] == "deny"
    assert denied["roles"] == ["sales_rep"]
    assert denied["region"] == "eu"
    sensitive = _line("p2, sales_rep, *, class:sensitive, *, , deny")
    assert [line for line in _deciding(denied, "deny") if line.endswith(sensitive)]
    assert sensitive in denied["reason"]

    amount = _line("p2, sales_rep, *, opportunities.amount, write, amount < 100000, allow")
    small = _explain(
        api, rep, target="opportunities.amount", action="write",
        record={"owner": "self", "amount": 50000},
    )  # fmt: skip
    assert small["decision"] == "allow"
    assert amount in small["reason"]
    big = _explain(
        api, rep, target="opportunities.amount", action="write",
        record={"owner": "self", "amount": 150000},
    )  # fmt: skip
    assert big["decision"] == "deny"

    teammate = _explain(
        api, rep, target="contacts", action="update", record={"owner": "other", "team": "mine"}
    )
    assert (teammate["decision"], teammate["scope"]) == ("deny", "own")
    own = _explain(api, rep, target="contacts", action="update", record={"owner": "self"})
    assert own["decision"] == "allow"
    assert own["reason"].endswith("allows update on contacts")
    assert _line("p, sales_rep, *, contacts, update, own, allow") in own["reason"]

    support = api.headers("support_agent")
    for status, decision in (("open", "allow"), ("closed", "deny")):
        body = _explain(
            api, support, target="cases.description", action="read", record={"status": status}
        )
        assert body["decision"] == decision, status
    # Naming one's own roles explicitly is still asking about oneself.
    _explain(api, rep, roles=["sales_rep"], target="contacts", action="read")

    # Asking about other roles needs policy read.
    auditor = api.headers("auditor")
    body = _explain(api, auditor, roles=["sales_manager"], target="opportunities", action="delete")
    assert body["decision"] == "allow"
    assert body["roles"] == ["sales_manager"]
    both = _explain(api, auditor, roles=["support_agent", "auditor"], target="cases", action="read")
    assert both["decision"] == "deny"
    assert _line("p, auditor, *, cases, *, all, deny") in both["reason"]
    _problem(
        api.client.post(
            "/v1/policy/explain",
            json={"roles": ["auditor"], "target": "audit", "action": "read"},
            headers=api.headers("marketing"),
        ),
        403,
    )


BAD_QUESTIONS: list[tuple[dict[str, Any], str]] = [
    ({"target": "contacts", "action": "read", "colour": "red"}, "colour"),
    ({"roles": ["wizard"], "target": "contacts", "action": "read"}, "question"),
    ({"region": "mars", "target": "contacts", "action": "read"}, "question"),
    ({"target": "spaceships", "action": "read"}, "question"),
    ({"target": "contacts.shoe_size", "action": "read"}, "question"),
    ({"target": "contacts", "action": "admire"}, "question"),
    ({"target": "contacts.email", "action": "delete"}, "question"),
    ({"target": 5, "action": "read"}, "target"),
    ({"action": "read"}, "target"),
    ({"roles": "auditor", "target": "contacts", "action": "read"}, "roles"),
    ({"target": "contacts", "action": "read", "record": []}, "record"),
    ({"target": "contacts", "action": "read", "record": {"owner": "mine"}}, "question"),
    ({"target": "opportunities", "action": "read", "record": {"amount": "lots"}}, "question"),
    ({"target": "contacts", "action": "read", "record": {"shoe_size": 44}}, "question"),
]


def test_check_answers_up_to_100_questions_as_explain_does_and_refuses_bad_ones(
    api: Api,
) -> None:
    rep = api.headers("sales_rep")
    questions = [
        {"target": "contacts", "action": "delete"},
        {"target": "contacts.email", "action": "read", "record": {"owner": "self"}},
        {"target": "opportunities.amount", "action": "write", "record": {"amount": 150000}},
        {"target": "audit", "action": "read"},
        {"target": "accounts", "action": "read", "region": "us"},
    ]
    response = api.client.post("/v1/policy/check", json={"checks": questions}, headers=rep)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["policy_version"] == api.state.policy.version
    assert [r["decision"] for r in body["results"]] == ["deny", "allow", "deny", "deny", "allow"]
    for question, result in zip(questions, body["results"], strict=True):
        explained = _explain(api, rep, **question)
        assert (result["decision"], result["reason"]) == (
            explained["decision"],
            explained["reason"],
        )
        assert result["region"] == question.get("region", "eu")

    # Roles for all questions at once; others' roles need policy read.
    everyone = {"roles": ["marketing"], "checks": [{"target": "leads", "action": "delete"}]}
    _problem(api.client.post("/v1/policy/check", json=everyone, headers=rep), 403)
    compliance = api.headers("compliance_officer")
    answered = api.client.post("/v1/policy/check", json=everyone, headers=compliance)
    assert answered.json()["results"][0]["decision"] == "allow"

    one = {"target": "contacts", "action": "read"}
    assert api.client.post("/v1/policy/check", json={"checks": [one] * 100}, headers=rep).is_success
    for body, fields in (
        ({"checks": [one] * 101}, {"checks"}),
        ({"checks": []}, {"checks"}),
        ({"checks": one}, {"checks"}),
        ({}, {"checks"}),
        ({"checks": [one], "verbose": True}, {"verbose"}),
        ({"checks": [one, "contacts"]}, {"checks.1"}),
    ):
        response = api.client.post("/v1/policy/check", json=body, headers=rep)
        assert _error_fields(response) == fields, body
    for path in ("/v1/policy/check", "/v1/policy/explain"):
        malformed = api.client.post(
            path, content=b"{", headers={**rep, "Content-Type": "application/json"}
        )
        _problem(malformed, 400)
        wrong_type = api.client.post(
            path, content=b"{}", headers={**rep, "Content-Type": "text/plain"}
        )
        _problem(wrong_type, 415)

    # A bad question is a 422 naming what is wrong, alone or in a batch.
    auditor = api.headers("auditor")
    for question, field in BAD_QUESTIONS:
        explained = api.client.post("/v1/policy/explain", json=question, headers=auditor)
        assert field in _error_fields(explained), question
        checked = api.client.post(
            "/v1/policy/check",
            json={"checks": [{"target": "contacts", "action": "read"}, question]},
            headers=auditor,
        )
        assert f"checks.1.{field}" in _error_fields(checked), question
