"""`/v1/dsr` and `/v1/legal-holds` route by route, on SQLite and PostgreSQL.

For every route: the happy path, 401 without a token, 403 for roles without the
permission, 404 for an unknown, malformed or out-of-region id, 422 naming the bad
field, 409 for a transition the request's state does not allow, 415/400 for
bodies that are not JSON objects. Then deadlines (GDPR 30 + 60 days, CCPA 45 +
45) and the overdue / due-soon lists on a frozen clock, the audit trail of every
step, and rectification through the job pipeline.

Requests are run by `state.dsr_jobs.run_once()`; the settings turn the app's
in-process runner off (`BASTION_DSR_IN_PROCESS=false`) so it cannot race the test.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select
from starlette.testclient import TestClient

from bastion.audit.tables import AUDIT
from bastion.residency.ids import RecordId
from bastion.state import State
from tests.conftest import FrozenClock, Tokens
from tests.factories import account_body, contact_body, create

# Requests are run by the test (state.dsr_jobs), not by the app's in-process runner.
SETTINGS_ENV = {"BASTION_DSR_IN_PROCESS": "false"}


@pytest.fixture
def officer(tokens: Tokens) -> dict[str, str]:
    return tokens.headers("compliance_officer", name="dpo")


@pytest.fixture
def subject(client: TestClient, admin: dict[str, str]) -> dict[str, Any]:
    return create(client, "contacts", contact_body(region="eu"), admin)


def new_request(
    client: TestClient, officer: dict[str, str], subject_id: str, kind: str = "access", **extra: Any
) -> dict[str, Any]:
    response = client.post(
        "/v1/dsr", json={"type": kind, "subject_id": subject_id, **extra}, headers=officer
    )
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


def post(
    client: TestClient, headers: dict[str, str], request_id: str, verb: str, **body: Any
) -> Any:
    return client.post(f"/v1/dsr/{request_id}/{verb}", json=body or None, headers=headers)


def approved(client: TestClient, officer: dict[str, str], request_id: str) -> None:
    """Verified by `officer`, approved by a second officer."""
    assert post(client, officer, request_id, "verify", method="id-document").status_code == 200
    assert post(client, second_officer(client), request_id, "approve").status_code == 200


def second_officer(client: TestClient) -> dict[str, str]:
    """Another compliance officer: an erasure or a rectification changes data for good,
    so someone other than its creator approves it (four eyes)."""
    state: State = client.app.state.bastion  # type: ignore[attr-defined]
    issued = state.tokens.issue(principal_name="dpo-approver", roles=["compliance_officer"])
    return {"Authorization": f"Bearer {issued.secret}"}


def problem(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    return body


def error_fields(response: Any) -> list[str]:
    return [e["field"] for e in problem(response, 422)["errors"]]


def audit_actions(state: State, record_id: str) -> list[tuple[str, str]]:
    """(action, actor) of every EU audit event naming `record_id` or made for it."""
    events = AUDIT.events
    with state.regions.get("eu").transaction() as conn:
        rows = conn.execute(
            select(events.c.action, events.c.actor, events.c.payload).order_by(
                events.c.occurred_at, events.c.id
            )
        ).all()
    found = []
    for row in rows:
        payload = json.loads(row.payload)
        if record_id in payload["record_ids"] or payload["details"].get("request") == record_id:
            found.append((row.action, row.actor))
    return found


def when(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


# -- authentication, roles, regions, ids ----------------------------------------------

ROUTES = [
    ("GET", "/v1/dsr"),
    ("POST", "/v1/dsr"),
    ("GET", "/v1/dsr/{id}"),
    ("GET", "/v1/dsr/{id}/preview"),
    ("GET", "/v1/dsr/{id}/package"),
    ("GET", "/v1/dsr/{id}/certificate"),
    ("POST", "/v1/dsr/{id}/verify"),
    ("POST", "/v1/dsr/{id}/approve"),
    ("POST", "/v1/dsr/{id}/reject"),
    ("POST", "/v1/dsr/{id}/extend"),
    ("POST", "/v1/dsr/{id}/cancel"),
    ("GET", "/v1/legal-holds"),
    ("POST", "/v1/legal-holds"),
    ("DELETE", "/v1/legal-holds/{hold}"),
]
BODIES = {
    "/v1/dsr/{id}/verify": {"method": "id-document"},
    "/v1/dsr/{id}/reject": {"reason": "not the person"},
    "/v1/dsr/{id}/extend": {"reason": "many records"},
}


def call(
    client: TestClient,
    method: str,
    template: str,
    headers: dict[str, str],
    *,
    request_id: str,
    hold_id: str,
    subject_id: str,
) -> Any:
    path = template.replace("{id}", request_id).replace("{hold}", hold_id)
    body: dict[str, Any] | None = BODIES.get(template)
    if template == "/v1/dsr":
        body = {"type": "erasure", "subject_id": subject_id}
    elif template == "/v1/legal-holds":
        body = {"target_id": subject_id, "reason": "audit"}
    return client.request(method, path, json=body if method == "POST" else None, headers=headers)


@pytest.fixture
def targets(client: TestClient, officer: dict[str, str], subject: dict[str, Any]) -> dict[str, str]:
    """An EU access request and an EU legal hold, for the routes that take an id."""
    made = new_request(client, officer, subject["id"])
    held = client.post(
        "/v1/legal-holds", json={"target_id": subject["id"], "reason": "x"}, headers=officer
    )
    assert held.status_code == 201
    return {"request_id": made["id"], "hold_id": held.json()["id"], "subject_id": subject["id"]}


def test_every_route_needs_a_bearer_token(client: TestClient, targets: dict[str, str]) -> None:
    for method, template in ROUTES:
        for headers in ({}, {"Authorization": "Bearer bst_nope_nope"}):
            response = call(client, method, template, headers, **targets)
            assert response.status_code == 401, (method, template)
            problem(response, 401)


@pytest.mark.parametrize("role", ["sales_rep", "auditor", "support_agent"])
def test_roles_without_dsr_permissions_are_refused(
    client: TestClient, tokens: Tokens, targets: dict[str, str], role: str
) -> None:
    for method, template in ROUTES:
        response = call(client, method, template, tokens.headers(role), **targets)
        assert response.status_code == 403, (method, template, response.text)
        problem(response, 403)
    # Nothing changed: the request is still as it was created, the hold still active.
    officer = tokens.headers("compliance_officer", name="dpo")
    shown = client.get(f"/v1/dsr/{targets['request_id']}", headers=officer).json()
    assert shown["status"] == "received"
    holds = client.get("/v1/legal-holds", params={"active": "true"}, headers=officer).json()
    assert [h["id"] for h in holds["data"]] == [targets["hold_id"]]


def test_an_officer_of_another_region_cannot_see_eu_requests(
    client: TestClient, tokens: Tokens, targets: dict[str, str]
) -> None:
    us_officer = tokens.headers("compliance_officer", regions=("us",), name="us-dpo")
    for method, template in ROUTES:
        response = call(client, method, template, us_officer, **targets)
        where = (method, template, response.text)
        if template in ("/v1/dsr", "/v1/legal-holds"):
            if method == "GET":  # lists cover the caller's own regions only
                assert response.status_code == 200, where
                assert response.json()["data"] == [], where
            else:  # creating in a region one may not access
                assert response.status_code == 403, where
        else:  # an id of a region one may not access does not exist for them
            assert response.status_code == 404, where
    for path in ("/v1/dsr?region=eu", "/v1/legal-holds?region=eu"):
        assert client.get(path, headers=us_officer).status_code == 403, path


def test_unknown_malformed_and_foreign_ids_are_404(
    client: TestClient, officer: dict[str, str], targets: dict[str, str]
) -> None:
    unknown_request = str(RecordId.new("dsr", "eu", datetime.now().astimezone()))
    unknown_hold = str(RecordId.new("hld", "eu", datetime.now().astimezone()))
    for method, template in ROUTES:
        if "{id}" not in template and "{hold}" not in template:
            continue
        for request_id, hold_id in (
            (unknown_request, unknown_hold),
            ("nonsense", "nonsense"),
            ("dsr_xx_01m86ch3m0ftsrhr7b16tjbnva", "hld_xx_01m86ch3m0ftsrhr7b16tjbnva"),
            (targets["subject_id"], targets["subject_id"]),  # a contact id is no request
            (targets["hold_id"], targets["request_id"]),  # nor are they each other
        ):
            response = call(
                client,
                method,
                template,
                officer,
                request_id=request_id,
                hold_id=hold_id,
                subject_id=targets["subject_id"],
            )
            assert response.status_code == 404, (method, template, request_id, hold_id)
            problem(response, 404)


# -- creating requests ---------------------------------------------------------------


def test_create_answers_201_with_the_request_and_its_legal_deadline(
    client: TestClient, officer: dict[str, str], subject: dict[str, Any]
) -> None:
    response = client.post(
        "/v1/dsr", json={"type": "erasure", "subject_id": subject["id"]}, headers=officer
    )
    assert response.status_code == 201
    created = response.json()
    assert response.headers["location"] == f"/v1/dsr/{created['id']}"
    assert created["id"].startswith("dsr_eu_")
    assert created["status"] == "received"
    assert created["regime"] == "gdpr"
    assert created["subject_ids"] == [subject["id"]]
    assert created["verification"] == "unverified"
    assert when(created["due_at"]) - when(created["received_at"]) == timedelta(days=30)
    assert created["overdue"] is False
    assert created["extended"] is False
    assert subject["email"] not in response.text
    ccpa = new_request(client, officer, subject["id"], "access", regime="ccpa")
    assert when(ccpa["due_at"]) - when(ccpa["received_at"]) == timedelta(days=45)
    shown = client.get(f"/v1/dsr/{created['id']}", headers=officer)
    assert shown.status_code == 200
    assert shown.json()["due_at"] == created["due_at"]


def test_create_finds_the_subject_by_email_or_phone(
    client: TestClient, officer: dict[str, str], subject: dict[str, Any]
) -> None:
    by_email = client.post(
        "/v1/dsr",
        json={"type": "access", "region": "eu", "identifier": {"email": subject["email"].upper()}},
        headers=officer,
    )
    assert by_email.status_code == 201, by_email.text
    assert by_email.json()["subject_ids"] == [subject["id"]]
    assert by_email.json()["identified_by"] == "email"
    by_phone = client.post(
        "/v1/dsr",
        json={"type": "export", "region": "eu", "identifier": {"phone": subject["phone"]}},
        headers=officer,
    )
    assert by_phone.status_code == 201, by_phone.text
    assert by_phone.json()["subject_ids"] == [subject["id"]]
    assert subject["phone"] not in by_phone.text
    # The US database holds nobody with that email.
    elsewhere = client.post(
        "/v1/dsr",
        json={"type": "erasure", "region": "us", "identifier": {"email": subject["email"]}},
        headers=officer,
    )
    assert elsewhere.status_code == 201
    assert elsewhere.json()["subject_ids"] == []


BAD_CREATES = [
    ({"type": "delete", "subject_id": "{subject}"}, "type"),
    ({"type": "access", "subject_id": "{subject}", "regime": "hipaa"}, "regime"),
    (
        {
            "type": "access",
            "subject_id": "{subject}",
            "region": "eu",
            "identifier": {"email": "a@example.com"},
        },
        "subject_id",
    ),
    ({"type": "access"}, "subject_id"),
    ({"type": "access", "identifier": {"email": "a@example.com"}}, "region"),
    ({"type": "access", "region": "mars", "identifier": {"email": "a@example.com"}}, "region"),
    ({"type": "access", "subject_id": "{subject}", "region": "us"}, "region"),
    ({"type": "access", "subject_id": "{account}"}, "subject_id"),
    ({"type": "access", "subject_id": "con_eu_nonsense"}, "subject_id"),
    ({"type": "access", "subject_id": 42}, "subject_id"),
    ({"type": "access", "region": "eu", "identifier": {"fax": "+4930123"}}, "identifier"),
    ({"type": "access", "region": "eu", "identifier": "a@example.com"}, "identifier"),
    (
        {"type": "access", "region": "eu", "identifier": {"email": "a@b.co", "phone": "+4930123"}},
        "identifier",
    ),
    ({"type": "access", "region": "eu", "identifier": {"phone": "call me"}}, "identifier.phone"),
    ({"type": "access", "subject_id": "{subject}", "colour": "red"}, "colour"),
    ({"type": "export", "subject_id": "{subject}", "corrections": {"title": "CTO"}}, "corrections"),
    ({"type": "rectification", "subject_id": "{subject}"}, "corrections"),
    ({"type": "rectification", "subject_id": "{subject}", "corrections": {}}, "corrections"),
    ({"type": "rectification", "subject_id": "{subject}", "corrections": ["x"]}, "corrections"),
    (
        {"type": "rectification", "subject_id": "{subject}", "corrections": {"email": "nope"}},
        "corrections.email",
    ),
    (
        {"type": "rectification", "subject_id": "{subject}", "corrections": {"shoe_size": 44}},
        "corrections.shoe_size",
    ),
    (
        {"type": "rectification", "subject_id": "{subject}", "corrections": {"last_name": None}},
        "corrections.last_name",
    ),
    (
        {"type": "rectification", "subject_id": "{subject}", "corrections": {"title": "x" * 200}},
        "corrections.title",
    ),
]


def test_create_refuses_bad_input_naming_the_field(
    client: TestClient, admin: dict[str, str], officer: dict[str, str], subject: dict[str, Any]
) -> None:
    account = create(client, "accounts", account_body(region="eu"), admin)
    for body, field in BAD_CREATES:
        filled = json.loads(
            json.dumps(body).replace("{subject}", subject["id"]).replace("{account}", account["id"])
        )
        response = client.post("/v1/dsr", json=filled, headers=officer)
        assert response.status_code == 422, (body, response.text)
        assert field in error_fields(response), (body, response.text)
    assert client.get("/v1/dsr", headers=officer).json()["data"] == []  # nothing was written


def test_an_identifier_that_is_not_an_email_address_is_refused(
    client: TestClient, officer: dict[str, str]
) -> None:
    response = client.post(
        "/v1/dsr",
        json={"type": "access", "region": "eu", "identifier": {"email": "not an email"}},
        headers=officer,
    )
    assert error_fields(response) == ["identifier.email"]


def test_create_refuses_bodies_that_are_not_json_objects(
    client: TestClient, officer: dict[str, str], subject: dict[str, Any]
) -> None:
    body = json.dumps({"type": "access", "subject_id": subject["id"]})
    as_text = client.post(
        "/v1/dsr", content=body, headers={**officer, "Content-Type": "text/plain"}
    )
    problem(as_text, 415)
    for raw in ("{", "[1, 2]", '"access"', "\xff"):
        broken = client.post(
            "/v1/dsr",
            content=raw.encode("latin-1"),
            headers={**officer, "Content-Type": "application/json"},
        )
        problem(broken, 400)


def test_create_for_an_unknown_subject_is_404(client: TestClient, officer: dict[str, str]) -> None:
    nobody = str(RecordId.new("con", "eu", datetime.now().astimezone()))
    response = client.post(
        "/v1/dsr", json={"type": "access", "subject_id": nobody}, headers=officer
    )
    problem(response, 404)


def test_a_second_open_request_of_a_type_for_the_same_subject_is_409(
    client: TestClient, officer: dict[str, str], subject: dict[str, Any], state: State
) -> None:
    first = new_request(client, officer, subject["id"], "erasure")
    again = client.post(
        "/v1/dsr", json={"type": "erasure", "subject_id": subject["id"]}, headers=officer
    )
    assert first["id"] in problem(again, 409)["detail"]
    by_email = client.post(
        "/v1/dsr",
        json={"type": "erasure", "region": "eu", "identifier": {"email": subject["email"]}},
        headers=officer,
    )
    problem(by_email, 409)
    new_request(client, officer, subject["id"], "export")  # another type may run meanwhile
    assert post(client, officer, first["id"], "reject", reason="duplicate").status_code == 200
    new_request(client, officer, subject["id"], "erasure")  # closed: a new one may start


# -- state changes -------------------------------------------------------------------


def test_verify_then_approve_runs_the_request(
    client: TestClient, officer: dict[str, str], subject: dict[str, Any], state: State
) -> None:
    made = new_request(client, officer, subject["id"])
    verified = post(client, officer, made["id"], "verify", method="video call")
    assert verified.status_code == 200
    assert verified.json()["status"] == "verified"
    assert verified.json()["verification_method"] == "video call"
    assert verified.json()["verified_by"] == made["created_by"]
    done = post(client, officer, made["id"], "approve")
    assert done.status_code == 200
    assert done.json()["status"] == "approved"
    assert state.dsr_jobs.run_once() == 1
    finished = client.get(f"/v1/dsr/{made['id']}", headers=officer).json()
    assert finished["status"] == "completed"
    assert set(finished["progress"]) == {"discover", "package", "finish"}


def test_erasures_and_rectifications_need_a_second_person_to_approve(
    client: TestClient, officer: dict[str, str], subject: dict[str, Any]
) -> None:
    for kind, extra in (
        ("erasure", {}),
        ("rectification", {"corrections": {"title": "CTO"}}),
    ):
        made = new_request(client, officer, subject["id"], kind, **extra)
        assert post(client, officer, made["id"], "verify", method="call").status_code == 200
        refused = problem(post(client, officer, made["id"], "approve"), 409)
        assert "someone other than" in refused["detail"]
        assert client.get(f"/v1/dsr/{made['id']}", headers=officer).json()["status"] == "verified"
        other = second_officer(client)
        assert post(client, other, made["id"], "approve").json()["status"] == "approved"
    # Reading and exporting change nothing: the creator may approve them.
    made = new_request(client, officer, subject["id"], "export")
    assert post(client, officer, made["id"], "verify", method="call").status_code == 200
    assert post(client, officer, made["id"], "approve").status_code == 200


def test_transitions_the_state_does_not_allow_are_409(
    client: TestClient, officer: dict[str, str], subject: dict[str, Any], state: State
) -> None:
    made = new_request(client, officer, subject["id"])
    request_id = made["id"]
    problem(post(client, officer, request_id, "approve"), 409)  # not verified yet
    assert post(client, officer, request_id, "verify", method="call").status_code == 200
    problem(post(client, officer, request_id, "verify", method="call"), 409)
    assert post(client, officer, request_id, "extend", reason="complex").status_code == 200
    twice = post(client, officer, request_id, "extend", reason="again")
    assert "already extended" in problem(twice, 409)["detail"]
    assert post(client, officer, request_id, "approve").status_code == 200
    problem(post(client, officer, request_id, "reject", reason="too late"), 409)
    state.dsr_jobs.run_once()
    for verb, body in (
        ("cancel", {}),
        ("approve", {}),
        ("verify", {"method": "call"}),
        ("reject", {"reason": "no"}),
        ("extend", {"reason": "more time"}),
    ):
        refused = problem(post(client, officer, request_id, verb, **body), 409)
        assert refused["type"] == "urn:bastion:problem:invalid-transition", verb
    assert client.get(f"/v1/dsr/{request_id}", headers=officer).json()["status"] == "completed"


def test_reject_and_cancel_close_a_request_before_it_runs(
    client: TestClient, officer: dict[str, str], admin: dict[str, str], state: State
) -> None:
    one = create(client, "contacts", contact_body(region="eu"), admin)
    two = create(client, "contacts", contact_body(region="eu"), admin)
    rejected = new_request(client, officer, one["id"], "erasure")
    response = post(client, officer, rejected["id"], "reject", reason="identity not proven")
    assert response.status_code == 200
    assert response.json()["status"] == "rejected"
    assert response.json()["rejection_reason"] == "identity not proven"
    cancelled = new_request(client, officer, two["id"], "erasure")
    approved(client, officer, cancelled["id"])
    response = post(client, officer, cancelled["id"], "cancel")
    assert response.status_code == 200
    assert response.json()["status"] == "cancelled"
    assert state.dsr_jobs.run_once() == 0
    assert client.get(f"/v1/contacts/{one['id']}", headers=admin).status_code == 200
    assert client.get(f"/v1/contacts/{two['id']}", headers=admin).status_code == 200


STATE_CHANGE_ERRORS = [
    ("verify", None, "method"),
    ("verify", {"method": ""}, "method"),
    ("verify", {"method": "m" * 65}, "method"),
    ("verify", {"method": 7}, "method"),
    ("verify", {"method": "call", "by": "me"}, "by"),
    ("reject", None, "reason"),
    ("reject", {"reason": "   "}, "reason"),
    ("reject", {"reason": "r" * 501}, "reason"),
    ("extend", None, "reason"),
    ("extend", {"reason": "r" * 501}, "reason"),
    ("extend", {"reason": "ok", "days": 90}, "days"),
    ("approve", {"note": "x"}, "note"),
    ("cancel", {"reason": "x"}, "reason"),
]


def test_state_changes_refuse_bad_bodies_naming_the_field(
    client: TestClient, officer: dict[str, str], subject: dict[str, Any]
) -> None:
    made = new_request(client, officer, subject["id"])
    for verb, body, field in STATE_CHANGE_ERRORS:
        response = client.post(f"/v1/dsr/{made['id']}/{verb}", json=body, headers=officer)
        assert response.status_code == 422, (verb, body, response.text)
        assert error_fields(response) == [field], (verb, body)
    shown = client.get(f"/v1/dsr/{made['id']}", headers=officer).json()
    assert (shown["status"], shown["extended"]) == ("received", False)


def test_state_changes_refuse_bodies_that_are_not_json_objects(
    client: TestClient, officer: dict[str, str], subject: dict[str, Any]
) -> None:
    made = new_request(client, officer, subject["id"])
    url = f"/v1/dsr/{made['id']}/verify"
    problem(
        client.post(url, content=b"method=call", headers={**officer, "Content-Type": "text/plain"}),
        415,
    )
    problem(
        client.post(url, content=b"{nope", headers={**officer, "Content-Type": "application/json"}),
        400,
    )


# -- deadlines and the lists -----------------------------------------------------------


def test_extending_adds_60_days_under_gdpr_and_45_under_ccpa(
    client: TestClient, officer: dict[str, str], admin: dict[str, str]
) -> None:
    for regime, base, extended in (("gdpr", 30, 90), ("ccpa", 45, 90)):
        person = create(client, "contacts", contact_body(region="eu"), admin)
        made = new_request(client, officer, person["id"], regime=regime)
        received = when(made["received_at"])
        assert when(made["due_at"]) - received == timedelta(days=base)
        response = post(client, officer, made["id"], "extend", reason="numerous requests")
        assert response.status_code == 200
        shown = response.json()
        assert when(shown["due_at"]) - received == timedelta(days=extended), regime
        assert shown["extended"] is True
        assert shown["extension_reason"] == "numerous requests"


def test_overdue_and_due_soon_lists_follow_the_clock(
    client: TestClient, officer: dict[str, str], admin: dict[str, str], clock: FrozenClock
) -> None:
    def person() -> str:
        made: str = create(client, "contacts", contact_body(region="eu"), admin)["id"]
        return made

    def listed(**params: Any) -> list[str]:
        response = client.get("/v1/dsr", params=params, headers=officer)
        assert response.status_code == 200, response.text
        return [r["id"] for r in response.json()["data"]]

    gdpr = new_request(client, officer, person())["id"]  # due on day 30
    closed = new_request(client, officer, person())["id"]
    post(client, officer, closed, "reject", reason="not verifiable")
    clock.advance(timedelta(days=10))
    ccpa = new_request(client, officer, person(), regime="ccpa")["id"]  # due on day 55
    us = create(client, "contacts", contact_body(region="us"), admin)
    american = new_request(client, officer, us["id"], regime="ccpa")["id"]  # due on day 55

    clock.advance(timedelta(days=14))  # day 24
    assert listed(overdue="true") == []
    assert listed(due_within_days=7) == [gdpr]
    assert listed(due_within_days=5) == []
    shown = client.get(f"/v1/dsr/{gdpr}", headers=officer).json()
    assert (shown["overdue"], shown["due_soon"]) == (False, True)

    clock.advance(timedelta(days=7))  # day 31
    assert listed(overdue="true") == [gdpr]
    shown = client.get(f"/v1/dsr/{gdpr}", headers=officer).json()
    assert (shown["overdue"], shown["due_soon"]) == (True, False)
    assert listed(overdue="true", region="us") == []

    clock.advance(timedelta(days=20))  # day 51
    assert set(listed(due_within_days=7)) == {gdpr, ccpa, american}
    assert listed(due_within_days=7, region="eu") == [gdpr, ccpa]
    assert set(listed()) == {gdpr, closed, ccpa, american}

    # An extension must be decided within the deadline (GDPR Art. 12(3)): too late
    # for the overdue request, in time for the one due on day 55.
    late = client.post(f"/v1/dsr/{gdpr}/extend", json={"reason": "complexity"}, headers=officer)
    assert late.status_code == 409, late.text
    assert "deadline has passed" in late.json()["detail"]
    post(client, officer, ccpa, "extend", reason="complexity")  # now due on day 100
    assert listed(overdue="true") == [gdpr]
    assert listed(status="received", due_within_days=7, region="eu") == [gdpr]
    assert listed(status="rejected") == [closed]

    first = client.get("/v1/dsr", params={"limit": 2}, headers=officer).json()
    assert len(first["data"]) == 2
    rest = client.get(
        "/v1/dsr", params={"limit": 2, "cursor": first["next_cursor"]}, headers=officer
    ).json()
    assert rest["next_cursor"] is None
    assert {r["id"] for r in first["data"] + rest["data"]} == {gdpr, closed, ccpa, american}


BAD_LIST_PARAMETERS = [
    ({"colour": "red"}, "colour"),
    ({"status": "pending"}, "status"),
    ({"due_within_days": "0"}, "due_within_days"),
    ({"due_within_days": "366"}, "due_within_days"),
    ({"due_within_days": "soon"}, "due_within_days"),
    ({"due_within_days": "-3"}, "due_within_days"),
    ({"overdue": "yes"}, "overdue"),
    ({"region": "mars"}, "region"),
    ({"limit": "0"}, "limit"),
    ({"limit": "1000"}, "limit"),
]


def test_the_list_refuses_bad_parameters_naming_them(
    client: TestClient, officer: dict[str, str]
) -> None:
    for params, field in BAD_LIST_PARAMETERS:
        response = client.get("/v1/dsr", params=params, headers=officer)
        assert response.status_code == 422, (params, response.text)
        assert error_fields(response) == [field], params


def test_the_list_refuses_repeated_parameters_and_forged_cursors(
    client: TestClient, officer: dict[str, str]
) -> None:
    problem(client.get("/v1/dsr?status=received&status=verified", headers=officer), 400)
    problem(client.get("/v1/dsr", params={"cursor": "forged"}, headers=officer), 400)


# -- preview, package, certificate -------------------------------------------------------


def test_preview_says_what_would_be_erased_kept_and_left_alone(
    client: TestClient, officer: dict[str, str], admin: dict[str, str], state: State
) -> None:
    account = create(client, "accounts", account_body(region="eu"), admin)
    person = create(client, "contacts", contact_body(region="eu", account_id=account["id"]), admin)
    note = create(
        client,
        "activities",
        {"region": "eu", "type": "note", "subject": "n", "body": "b", "contact_id": person["id"]},
        admin,
    )
    mail = create(
        client,
        "activities",
        {"region": "eu", "type": "email", "subject": "m", "body": "b", "contact_id": person["id"]},
        admin,
    )
    made = new_request(client, officer, person["id"], "erasure")
    response = client.get(f"/v1/dsr/{made['id']}/preview", headers=officer)
    assert response.status_code == 200
    preview = response.json()
    assert preview["subjects"] == [person["id"]]
    assert preview["erase"] == {"contacts": [person["id"]], "activities": [note["id"]]}
    assert [k["record_id"] for k in preview["keep"]] == [mail["id"]]
    assert preview["untouched"][0]["record_id"] == account["id"]
    assert "email" in preview["fields"]["contacts"]
    assert person["email"] not in response.text
    # A dry run changes nothing.
    assert client.get(f"/v1/activities/{note['id']}", headers=admin).status_code == 200
    assert client.get(f"/v1/dsr/{made['id']}", headers=officer).json()["status"] == "received"
    export = new_request(client, officer, person["id"], "export")
    shown = client.get(f"/v1/dsr/{export['id']}/preview", headers=officer).json()
    assert shown["records"]["activities"] == {"about": 2}
    assert "erase" not in shown


def test_packages_are_for_exports_and_certificates_for_erasures(
    client: TestClient, officer: dict[str, str], subject: dict[str, Any], state: State
) -> None:
    export = new_request(client, officer, subject["id"], "export")
    erasure = new_request(client, officer, subject["id"], "erasure")
    problem(client.get(f"/v1/dsr/{erasure['id']}/package", headers=officer), 404)
    problem(client.get(f"/v1/dsr/{export['id']}/certificate", headers=officer), 404)
    problem(client.get(f"/v1/dsr/{erasure['id']}/certificate", headers=officer), 409)
    problem(client.get(f"/v1/dsr/{export['id']}/package", headers=officer), 409)
    approved(client, officer, export["id"])
    state.dsr_jobs.run_once()
    package = client.get(f"/v1/dsr/{export['id']}/package", headers=officer)
    assert package.status_code == 200
    assert package.headers["cache-control"] == "no-store"
    assert f'filename="{export["id"]}.zip"' in package.headers["content-disposition"]
    approved(client, officer, erasure["id"])
    state.dsr_jobs.run_once()
    document = client.get(f"/v1/dsr/{erasure['id']}/certificate", headers=officer)
    assert document.status_code == 200
    assert set(document.json()) == {"certificate", "signature"}
    text = client.get(
        f"/v1/dsr/{erasure['id']}/certificate", params={"format": "text"}, headers=officer
    )
    assert text.status_code == 200
    assert text.headers["content-type"].startswith("text/plain")
    assert text.text.startswith("ERASURE CERTIFICATE")
    assert erasure["id"] in text.text
    assert subject["id"] in text.text
    assert subject["email"] not in text.text


# -- legal holds -------------------------------------------------------------------------


def test_legal_holds_are_created_listed_and_released(
    client: TestClient, officer: dict[str, str], admin: dict[str, str], clock: FrozenClock
) -> None:
    person = create(client, "contacts", contact_body(region="eu"), admin)
    other = create(client, "contacts", contact_body(region="eu"), admin)
    made = client.post(
        "/v1/legal-holds",
        json={"target_id": person["id"], "reason": "subpoena 7"},
        headers=officer,
    )
    assert made.status_code == 201, made.text
    held = made.json()
    assert made.headers["location"] == f"/v1/legal-holds/{held['id']}"
    assert held["id"].startswith("hld_eu_")
    assert (held["target_id"], held["reason"], held["active"]) == (person["id"], "subpoena 7", True)
    expiring = client.post(
        "/v1/legal-holds",
        json={
            "target_id": other["id"],
            "reason": "short",
            "expires_at": (clock.current + timedelta(days=1)).isoformat(),
        },
        headers=officer,
    ).json()
    listed = client.get("/v1/legal-holds", headers=officer).json()["data"]
    assert {h["id"] for h in listed} == {held["id"], expiring["id"]}
    mine = client.get(
        "/v1/legal-holds", params={"target_id": person["id"]}, headers=officer
    ).json()["data"]
    assert [h["id"] for h in mine] == [held["id"]]
    clock.advance(timedelta(days=2))
    active = client.get("/v1/legal-holds", params={"active": "true"}, headers=officer).json()
    assert [h["id"] for h in active["data"]] == [held["id"]]
    released = client.delete(f"/v1/legal-holds/{held['id']}", headers=officer)
    assert released.status_code == 200
    assert released.json()["active"] is False
    assert released.json()["released_by"] == held["created_by"]
    problem(client.delete(f"/v1/legal-holds/{held['id']}", headers=officer), 409)
    active = client.get("/v1/legal-holds", params={"active": "true"}, headers=officer).json()
    assert active["data"] == []
    in_us = client.get("/v1/legal-holds", params={"region": "us"}, headers=officer).json()
    assert in_us["data"] == []


def test_an_expired_hold_no_longer_keeps_anything(
    client: TestClient,
    officer: dict[str, str],
    admin: dict[str, str],
    clock: FrozenClock,
    state: State,
) -> None:
    person = create(client, "contacts", contact_body(region="eu"), admin)
    client.post(
        "/v1/legal-holds",
        json={
            "target_id": person["id"],
            "reason": "until tomorrow",
            "expires_at": (clock.current + timedelta(days=1)).isoformat(),
        },
        headers=officer,
    )
    clock.advance(timedelta(days=2))
    made = new_request(client, officer, person["id"], "erasure")
    approved(client, officer, made["id"])
    state.dsr_jobs.run_once()
    assert client.get(f"/v1/dsr/{made['id']}", headers=officer).json()["status"] == "completed"
    assert client.get(f"/v1/contacts/{person['id']}", headers=admin).status_code == 410


BAD_HOLDS = [
    ({"reason": "x"}, "target_id"),
    ({"target_id": "nonsense", "reason": "x"}, "target_id"),
    ({"target_id": "dsr_eu_01m86ch3m0ftsrhr7b16tjbnva", "reason": "x"}, "target_id"),
    ({"target_id": "con_xx_01m86ch3m0ftsrhr7b16tjbnva", "reason": "x"}, "target_id"),
    ({"target_id": "{subject}"}, "reason"),
    ({"target_id": "{subject}", "reason": ""}, "reason"),
    ({"target_id": "{subject}", "reason": "r" * 501}, "reason"),
    ({"target_id": "{subject}", "reason": "x", "until": "never"}, "until"),
    ({"target_id": "{subject}", "reason": "x", "expires_at": "tomorrow"}, "expires_at"),
    ({"target_id": "{subject}", "reason": "x", "expires_at": "2030-01-01T00:00"}, "expires_at"),
    ({"target_id": "{subject}", "reason": "x", "expires_at": 1893456000}, "expires_at"),
    (
        {"target_id": "{subject}", "reason": "x", "expires_at": "2020-01-01T00:00:00Z"},
        "expires_at",
    ),
]


def test_holds_refuse_bad_input_naming_the_field(
    client: TestClient, officer: dict[str, str], subject: dict[str, Any]
) -> None:
    for body, field in BAD_HOLDS:
        filled = json.loads(json.dumps(body).replace("{subject}", subject["id"]))
        response = client.post("/v1/legal-holds", json=filled, headers=officer)
        assert response.status_code == 422, (body, response.text)
        assert error_fields(response) == [field], body
    assert client.get("/v1/legal-holds", headers=officer).json()["data"] == []


def test_holds_on_records_that_do_not_exist_are_404_and_bad_queries_422(
    client: TestClient, officer: dict[str, str]
) -> None:
    nobody = str(RecordId.new("con", "eu", datetime.now().astimezone()))
    problem(
        client.post("/v1/legal-holds", json={"target_id": nobody, "reason": "x"}, headers=officer),
        404,
    )
    assert error_fields(client.get("/v1/legal-holds?active=maybe", headers=officer)) == ["active"]
    assert error_fields(client.get("/v1/legal-holds?colour=red", headers=officer)) == ["colour"]
    as_text = client.post(
        "/v1/legal-holds", content=b"x", headers={**officer, "Content-Type": "text/plain"}
    )
    problem(as_text, 415)


# -- the audit trail -----------------------------------------------------------------------


def test_every_step_of_a_request_is_audited(
    client: TestClient,
    officer: dict[str, str],
    admin: dict[str, str],
    subject: dict[str, Any],
    state: State,
) -> None:
    create(
        client,
        "activities",
        {"region": "eu", "type": "note", "subject": "n", "body": "b", "contact_id": subject["id"]},
        admin,
    )
    export = new_request(client, officer, subject["id"], "export")
    approved(client, officer, export["id"])
    state.dsr_jobs.run_once()
    client.get(f"/v1/dsr/{export['id']}/package", headers=officer)
    extended = new_request(client, officer, subject["id"], "access")
    post(client, officer, extended["id"], "extend", reason="complex")
    post(client, officer, extended["id"], "cancel")
    held = client.post(
        "/v1/legal-holds", json={"target_id": subject["id"], "reason": "x"}, headers=officer
    ).json()
    client.delete(f"/v1/legal-holds/{held['id']}", headers=officer)
    erasure = new_request(client, officer, subject["id"], "erasure")
    client.get(f"/v1/dsr/{erasure['id']}", headers=officer)
    client.get(f"/v1/dsr/{erasure['id']}/preview", headers=officer)
    approved(client, officer, erasure["id"])
    state.dsr_jobs.run_once()
    client.get(f"/v1/dsr/{erasure['id']}/certificate", headers=officer)
    officer_id = export["created_by"]
    approver_id = client.get(f"/v1/dsr/{export['id']}", headers=officer).json()["approved_by"]
    assert approver_id != officer_id

    def by(actor: str, events: list[tuple[str, str]]) -> list[str]:
        return [action for action, who in events if who == actor]

    events = audit_actions(state, export["id"])
    assert by(officer_id, events) == [
        "dsr.export.received",
        "dsr.export.verify",
        "dsr.export.download",
        "dsr.read",  # looking the request up (for approved_by) is itself audited
    ]
    assert by(approver_id, events) == ["dsr.export.approve"]
    assert by("system:dsr", events) == [
        "dsr.export.started",
        "dsr.export.discover",
        "dsr.export.package",
        "dsr.export.finish",
    ]
    events = audit_actions(state, extended["id"])
    assert by(officer_id, events) == [
        "dsr.access.received",
        "dsr.access.extend",
        "dsr.access.cancel",
    ]
    events = audit_actions(state, held["id"])
    assert by(officer_id, events) == ["hold.create", "hold.release"]
    events = audit_actions(state, erasure["id"])
    assert by(officer_id, events) == [
        "dsr.erasure.received",
        "dsr.read",
        "dsr.preview",
        "dsr.erasure.verify",
        "dsr.erasure.certificate",
    ]
    assert by(approver_id, events) == ["dsr.erasure.approve"]
    assert by("system:dsr", events) == [
        "dsr.erasure.started",
        "dsr.erasure.discover",
        "dsr.erasure.preserve",
        "dsr.erasure.shell",
        "dsr.erasure.delete",
        "dsr.erasure.erase",
        "dsr.erasure.shred",
        "dsr.erasure.certify",
        "dsr.erasure.finish",
    ]


def test_a_refused_access_to_a_request_is_audited(
    client: TestClient,
    officer: dict[str, str],
    tokens: Tokens,
    subject: dict[str, Any],
    state: State,
) -> None:
    made = new_request(client, officer, subject["id"], "erasure")
    rep = tokens.headers("sales_rep", name="curious-rep")
    problem(client.get(f"/v1/dsr/{made['id']}", headers=rep), 403)
    problem(post(client, rep, made["id"], "verify", method="trust me"), 403)
    events = AUDIT.events
    with state.regions.get("eu").transaction() as conn:
        rows = conn.execute(
            select(events.c.action, events.c.decision, events.c.payload).where(
                events.c.decision != "allow"
            )
        ).all()
    denied = [r.action for r in rows if made["id"] in json.loads(r.payload)["record_ids"]]
    assert len(denied) == 2, denied


# -- rectification --------------------------------------------------------------------------


def test_rectification_applies_the_corrections_once_through_the_pipeline(
    client: TestClient,
    officer: dict[str, str],
    admin: dict[str, str],
    subject: dict[str, Any],
    state: State,
) -> None:
    corrections = {"last_name": "Korrekt", "email": "anna.korrekt@example.org", "title": "CTO"}
    made = client.post(
        "/v1/dsr",
        json={"type": "rectification", "subject_id": subject["id"], "corrections": corrections},
        headers=officer,
    )
    assert made.status_code == 201, made.text
    request_id = made.json()["id"]
    for value in corrections.values():  # sealed: the request does not show them
        assert value not in made.text
        assert value not in client.get(f"/v1/dsr/{request_id}", headers=officer).text
    approved(client, officer, request_id)
    assert state.dsr_jobs.run_once() == 1
    shown = client.get(f"/v1/dsr/{request_id}", headers=officer).json()
    assert shown["status"] == "completed"
    assert shown["result"]["changed"] == ["email", "last_name", "title"]
    contact = client.get(f"/v1/contacts/{subject['id']}", headers=admin).json()
    assert {k: contact[k] for k in corrections} == corrections
    assert contact["first_name"] == subject["first_name"]
    assert contact["version"] == subject["version"] + 1
    found = client.get("/v1/contacts", params={"email": corrections["email"]}, headers=admin)
    assert [c["id"] for c in found.json()["data"]] == [subject["id"]]
    old = client.get("/v1/contacts", params={"email": subject["email"]}, headers=admin)
    assert old.json()["data"] == []

    def updates() -> list[tuple[str, str]]:
        return [e for e in audit_actions(state, subject["id"]) if e[0] == "record.update"]

    assert updates() == [("record.update", "system:dsr")]
    assert [a for a, _ in audit_actions(state, request_id)].count("dsr.rectification.rectify") == 1
    # Running the request again applies nothing.
    assert state.dsr_jobs.run("eu", request_id) == "completed"
    assert state.dsr_jobs.run_once() == 0
    assert updates() == [("record.update", "system:dsr")]
    again = client.get(f"/v1/contacts/{subject['id']}", headers=admin).json()
    assert again["version"] == contact["version"]
    # The same corrections asked for again: nothing left to change.
    second = client.post(
        "/v1/dsr",
        json={"type": "rectification", "subject_id": subject["id"], "corrections": corrections},
        headers=officer,
    ).json()
    approved(client, officer, second["id"])
    state.dsr_jobs.run_once()
    assert client.get(f"/v1/dsr/{second['id']}", headers=officer).json()["result"]["changed"] == []
    assert updates() == [("record.update", "system:dsr")]
