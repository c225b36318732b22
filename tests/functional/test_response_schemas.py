"""Real answers of the operations whose bodies `bastion.api.bodies` describes, checked
against the caller's own view of the document (`GET /openapi.json` with its token).

One test per family (the caller, health; policy; audit; data subjects' requests; legal
holds): every body validates against the schema its operation documents for its
status and media type, formats included, in the view of the role that called it, so
the components also survive the tailoring for every role that may call them. The fuzz
(test_fuzz.py) checks the same on generated input; these reach the states it rarely
does: a completed erasure that kept a record, a failed verification, a reload with a
warning.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema_rs
import pytest
from sqlalchemy import text
from starlette.testclient import TestClient

from bastion.api.bodies import components
from bastion.api.openapi import openapi_document
from bastion.config import Settings
from bastion.state import State
from tests.conftest import REPO, Backend, FrozenClock, Tokens, settings_for
from tests.factories import contact_body, create, policy_dir, write_policy
from tests.functional.test_dsr_api import approved, second_officer
from tests.unit.test_openapi import references, resolves


@pytest.fixture
def policies(tmp_path: Path) -> Path:
    """A copy of the default policy files, which a test may change and reload."""
    return policy_dir(tmp_path / "policies", source=REPO / "policies")


@pytest.fixture
def settings(backend: Backend, tmp_path: Path, policies: Path) -> Settings:
    (tmp_path / "absent.toml").write_text("")
    # Requests are run by the test (state.dsr_jobs), not by the app's in-process runner.
    return settings_for(
        backend, tmp_path, BASTION_POLICIES=str(policies), BASTION_DSR_IN_PROCESS="false"
    )


class Contract:
    """The document as each caller sees it, and checks of answers against it."""

    def __init__(self, client: TestClient) -> None:
        self._client = client
        self._views: dict[str, dict[str, Any]] = {}

    def view(self, headers: dict[str, str]) -> dict[str, Any]:
        key = headers.get("Authorization", "")
        if key not in self._views:
            response = self._client.get("/openapi.json", headers=headers)
            assert response.status_code == 200, response.text
            self._views[key] = response.json()
        return self._views[key]

    def check(self, headers: dict[str, str], template: str, response: Any) -> Any:
        """The body of `response` (to `template`, a documented path), after checking
        it against the schema the caller's view documents for its status."""
        view = self.view(headers)
        method = response.request.method.lower()
        operation = view["paths"].get(template, {}).get(method)
        assert operation is not None, f"{method} {template} is not in the caller's view"
        documented = operation["responses"].get(str(response.status_code))
        assert documented is not None, f"{method} {template}: {response.status_code} undocumented"
        media = response.headers["content-type"].split(";")[0]
        assert media in documented.get("content", {}), f"{method} {template}: {media} undocumented"
        schema = documented["content"][media]["schema"]
        if media != "application/json":
            return response.text
        validator = jsonschema_rs.Draft202012Validator(
            {**schema, "components": view["components"]}, validate_formats=True
        )
        body = response.json()
        errors = [
            f"/{'/'.join(map(str, e.instance_path))}: {e.message}"
            for e in validator.iter_errors(body)
        ]
        assert not errors, f"{method} {template} {response.status_code}:\n" + "\n".join(errors)
        return body


@pytest.fixture
def contract(client: TestClient) -> Contract:
    return Contract(client)


def test_every_roles_view_keeps_the_body_components_and_their_operations(
    client: TestClient, tokens: Tokens, state: State
) -> None:
    """The tailoring cuts record schemas and entity routes down to the caller; the
    operations answering a body component, and the components, it leaves as they are."""
    full = openapi_document()
    bodies = {f"#/components/schemas/{name}" for name in components()}
    answering = [
        (path, method)
        for path, item in full["paths"].items()
        for method, operation in item.items()
        if method != "parameters" and bodies & set(references(operation["responses"]))
    ]
    assert len(answering) >= 25
    for role in sorted(state.policy.roles):
        view = Contract(client).view(tokens.headers(role))
        for path, method in answering:
            assert view["paths"][path][method] == full["paths"][path][method], (role, path)
        for reference in set(references(view)):
            assert resolves(view, reference), (role, reference)
        for name in components():
            assert view["components"]["schemas"][name] == full["components"]["schemas"][name]


def test_the_caller_and_health_answer_as_documented(
    client: TestClient, contract: Contract, tokens: Tokens
) -> None:
    for headers in (
        tokens.headers("sales_rep", regions=("eu",)),
        tokens.headers("support_agent"),
        tokens.headers("admin"),
        tokens.headers("analyst"),
    ):
        me = contract.check(headers, "/v1/me", client.get("/v1/me", headers=headers))
        assert me["permissions"]["contacts"]["regions"]
    assert contract.check({}, "/healthz", client.get("/healthz")) == {"status": "ok"}
    assert contract.check({}, "/readyz", client.get("/readyz"))["status"] == "ready"


def test_policy_answers_as_documented(
    client: TestClient, contract: Contract, tokens: Tokens, policies: Path
) -> None:
    security = tokens.headers("security_admin")
    rep = tokens.headers("sales_rep")
    contract.check(security, "/v1/policy", client.get("/v1/policy", headers=security))
    question = {"target": "contacts.email", "action": "read", "record": {"owner": "self"}}
    for headers, asked in (
        (rep, question),  # anyone may ask about their own roles
        (security, {"roles": ["support_agent"], "target": "contacts", "action": "update"}),
    ):
        explained = client.post("/v1/policy/explain", json=asked, headers=headers)
        assert contract.check(headers, "/v1/policy/explain", explained)["rules"]
    checks = {"checks": [question, {"target": "cases", "action": "delete", "region": "us"}]}
    checked = client.post("/v1/policy/check", json=checks, headers=rep)
    assert len(contract.check(rep, "/v1/policy/check", checked)["results"]) == 2

    rule = "p, sales_rep, *, cases, list, region, allow"
    write_policy(
        policies, (policies / "policy.csv").read_text(), append=[rule, rule]
    )  # a duplicate
    reloaded = client.post("/v1/policy/reload", json={"reason": "wider"}, headers=security)
    assert contract.check(security, "/v1/policy/reload", reloaded)["warnings"]
    history = client.get("/v1/policy/history", headers=security)
    changes = contract.check(security, "/v1/policy/history", history)["data"]
    assert [change["old_version"] is None for change in changes] == [False, True]


def test_audit_answers_as_documented(
    client: TestClient, contract: Contract, tokens: Tokens, admin: dict[str, str], state: State
) -> None:
    create(client, "contacts", contact_body(region="eu"), admin)
    security, auditor = tokens.headers("security_admin"), tokens.headers("auditor")
    for _ in range(2):  # a new checkpoint (or the sequencer's), then the same head's
        made = client.post("/v1/audit/checkpoints?region=eu", headers=security)
        contract.check(security, "/v1/audit/checkpoints", made)
    listed = client.get("/v1/audit/checkpoints?region=eu", headers=auditor)
    assert contract.check(auditor, "/v1/audit/checkpoints", listed)["data"]
    plain = {**auditor, "Accept": "text/plain"}
    note = contract.check(
        auditor,
        "/v1/audit/checkpoints",
        client.get("/v1/audit/checkpoints?region=eu", headers=plain),
    )
    witnessed = client.post(
        "/v1/audit/verify?region=eu",
        content=note,
        headers={**auditor, "Content-Type": "text/plain"},
    )
    assert contract.check(auditor, "/v1/audit/verify", witnessed)["witness_tree_size"]
    # A checkpoint row nobody signed: verification names it (`problem` filled in).
    with state.audit.database("eu").transaction(write=True) as conn:
        conn.execute(
            text(
                "INSERT INTO audit_checkpoints SELECT 999, 'x', head_hash, created_at, "
                "'zzzzzzzz', signature FROM audit_checkpoints WHERE tree_size = "
                "(SELECT MAX(tree_size) FROM audit_checkpoints)"
            )
        )
    failed = client.get("/v1/audit/verify?region=eu", headers=auditor)
    assert contract.check(auditor, "/v1/audit/verify", failed)["problem"]["seq"] == 999


def test_data_subjects_requests_answer_as_documented(
    client: TestClient, contract: Contract, tokens: Tokens, admin: dict[str, str], state: State
) -> None:
    officer = tokens.headers("compliance_officer", name="dpo")
    person = create(client, "contacts", contact_body(region="eu"), admin)
    other = create(client, "contacts", contact_body(region="eu"), admin)
    kept = {"region": "eu", "type": "email", "subject": "m", "body": "b"}
    create(client, "activities", {**kept, "contact_id": person["id"]}, admin)

    def made(body: dict[str, Any]) -> dict[str, Any]:
        response = client.post("/v1/dsr", json=body, headers=officer)
        created: dict[str, Any] = contract.check(officer, "/v1/dsr", response)
        return created

    def show(template: str, request_id: str) -> Any:
        path = template.replace("{request_id}", request_id)
        return contract.check(officer, template, client.get(path, headers=officer))

    def change(verb: str, request_id: str, **body: Any) -> Any:
        response = client.post(f"/v1/dsr/{request_id}/{verb}", json=body or None, headers=officer)
        return contract.check(officer, f"/v1/dsr/{{request_id}}/{verb}", response)

    erasure = made({"type": "erasure", "subject_id": person["id"]})
    export = made({"type": "export", "region": "eu", "identifier": {"email": other["email"]}})
    rectification = made(
        {"type": "rectification", "subject_id": other["id"], "corrections": {"title": "CTO"}}
    )
    assert show("/v1/dsr/{request_id}/preview", erasure["id"])["keep"]
    assert "erase" not in show("/v1/dsr/{request_id}/preview", export["id"])
    assert change("extend", export["id"], reason="many records")["extended"] is True
    for request in (erasure, export, rectification):
        approved(client, officer, request["id"])
    assert state.dsr_jobs.run_once() == 3
    done = {
        r["id"]: show("/v1/dsr/{request_id}", r["id"]) for r in (erasure, export, rectification)
    }
    assert done[erasure["id"]]["result"]["kept"]
    assert done[export["id"]]["result"]["sha256"]
    assert done[rectification["id"]]["result"]["changed"] == ["title"]
    certificate = show("/v1/dsr/{request_id}/certificate", erasure["id"])
    assert certificate["certificate"]["kept"]
    as_text = client.get(
        f"/v1/dsr/{erasure['id']}/certificate", params={"format": "text"}, headers=officer
    )
    assert contract.check(officer, "/v1/dsr/{request_id}/certificate", as_text)

    cancelled = made({"type": "access", "subject_id": other["id"]})
    assert change("cancel", cancelled["id"])["status"] == "cancelled"
    rejected = made({"type": "access", "subject_id": other["id"]})
    assert change("verify", rejected["id"], method="id-document")["verified_by"]
    assert change("reject", rejected["id"], reason="not the person")["status"] == "rejected"
    approver = second_officer(client)
    page = client.get("/v1/dsr", params={"limit": 3}, headers=approver)
    assert contract.check(approver, "/v1/dsr", page)["next_cursor"]


def test_legal_holds_answer_as_documented(
    client: TestClient,
    contract: Contract,
    tokens: Tokens,
    admin: dict[str, str],
    clock: FrozenClock,
) -> None:
    officer = tokens.headers("compliance_officer")
    person = create(client, "contacts", contact_body(region="eu"), admin)
    until = clock.current.replace(year=clock.current.year + 1).isoformat()
    for body in (
        {"target_id": person["id"], "reason": "subpoena 7"},
        {"target_id": person["id"], "reason": "audit", "expires_at": until},
    ):
        made = client.post("/v1/legal-holds", json=body, headers=officer)
        hold = contract.check(officer, "/v1/legal-holds", made)
    listed = client.get("/v1/legal-holds", headers=officer)
    assert len(contract.check(officer, "/v1/legal-holds", listed)["data"]) == 2
    released = client.delete(f"/v1/legal-holds/{hold['id']}", headers=officer)
    assert contract.check(officer, "/v1/legal-holds/{hold_id}", released)["released_by"]
