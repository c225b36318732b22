"""Console login, sessions, CSRF and the request cycle, on SQLite and PostgreSQL.

The session cookie's attributes and its storage (only a hash), logout, the idle
timeout and the absolute lifetime on a frozen clock, a revoked token, the failed
login limit, CSRF on every form post (refused and nothing changed), form bodies
that are malformed, oversized, of the wrong type, and errors as HTML for browsers
and problem+json for everything else.
"""

from __future__ import annotations

import hashlib
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select
from starlette.testclient import TestClient

from bastion.app import create_app
from bastion.audit.tables import AUDIT
from bastion.console.pages import CSP
from bastion.principals.tables import console_sessions
from bastion.state import State
from tests.conftest import Backend, FrozenClock, settings_for
from tests.console_client import HTML, Person, csrf_of, person
from tests.factories import contact_body

# Sessions end after 30 minutes idle, and after one hour in any case.
SETTINGS_ENV = {
    "BASTION_CONSOLE_IDLE_MINUTES": "30",
    "BASTION_CONSOLE_LIFETIME_HOURS": "1",
    "BASTION_DSR_IN_PROCESS": "false",
}


@pytest.fixture
def app(client: TestClient) -> Any:
    return client.app


def control_events(state: State, action: str) -> list[Any]:
    events = AUDIT.events
    with state.control.transaction() as conn:
        return list(conn.execute(select(events).where(events.c.action == action)).all())


def sessions(state: State) -> list[Any]:
    with state.control.transaction() as conn:
        return list(conn.execute(select(console_sessions)).all())


def test_login_sets_a_hardened_cookie_and_stores_only_its_hash(state: State, app: Any) -> None:
    issued = state.tokens.issue(principal_name="dpo", roles=["compliance_officer"])
    someone = Person(app)
    response = someone.log_in(issued.secret)
    assert response.headers["location"] == "/console/"
    cookie = next(
        c for c in response.headers.get_list("set-cookie") if c.startswith("bastion_console=")
    )
    attributes = {part.strip().split("=")[0].lower() for part in cookie.split(";")}
    assert {"httponly", "secure", "samesite", "path"} <= attributes
    assert "SameSite=strict" in cookie
    assert "Path=/console" in cookie
    secret = cookie.split(";")[0].removeprefix("bastion_console=")
    [row] = sessions(state)
    assert row.secret_hash == hashlib.sha256(secret.encode()).digest()
    assert secret not in repr(tuple(row))
    assert row.token_id == issued.token_id
    [opened] = control_events(state, "session.open")
    assert opened.actor == issued.principal.id
    # The token itself is not kept in the browser: nothing but the session id is set.
    assert issued.secret not in " ".join(response.headers.get_list("set-cookie"))
    home = someone.page("/console/")
    assert "dpo" in home.text
    assert "compliance_officer" in home.text


def test_a_wrong_token_is_401_and_counts_as_a_failed_authentication(
    state: State, backend: Backend, tmp_path: Any
) -> None:
    # An app of its own: two failed authentications per minute from one address.
    strict = settings_for(
        backend, tmp_path, BASTION_LIMITS_FAILED_AUTH_PER_MINUTE="2", **SETTINGS_ENV
    )
    someone = Person(create_app(strict, state=state))
    for _ in range(2):
        refused = someone.log_in("bst_aaaaaaaaaaaaaaaa_" + "A" * 43, expect=401)
        assert "That token is invalid, expired or revoked." in refused.text
        assert refused.headers["content-type"].startswith("text/html")
    assert sessions(state) == []
    # The allowance is used up: the address gets nothing for now, not even the form.
    limited = someone.http.get("/console/login", headers=HTML)
    assert limited.status_code == 429
    assert "retry-after" in limited.headers


def test_logout_ends_the_session(state: State, app: Any) -> None:
    someone = person(state, app, "compliance_officer", name="dpo")
    cookie = someone.http.cookies["bastion_console"]
    out = someone.post("/console/logout")
    assert out.headers["location"] == "/console/login?reason=logout"
    assert sessions(state) == []
    assert len(control_events(state, "session.close")) == 1
    # The old cookie is worth nothing now.
    stale = Person(app)
    stale.http.cookies.set("bastion_console", cookie, domain="testserver", path="/console")
    assert stale.page("/console/dsr", status=303).headers["location"].startswith("/console/login")
    assert stale.http.get("/console/dsr").status_code == 401


def test_sessions_end_when_idle_and_after_their_lifetime(
    state: State, app: Any, clock: FrozenClock
) -> None:
    idle = person(state, app, "compliance_officer", name="idle")
    clock.advance(timedelta(minutes=31))
    ended = idle.page("/console/dsr", status=303)
    assert ended.headers["location"] == "/console/login?next=%2Fconsole%2Fdsr&reason=ended"
    [expired] = control_events(state, "session.expire")
    assert "session:idle" in expired.payload
    assert "Your session ended" in idle.page("/console/login?reason=ended").text

    busy = person(state, app, "compliance_officer", name="busy")
    for _ in range(2):  # active every 25 minutes: never idle ...
        clock.advance(timedelta(minutes=25))
        busy.page("/console/dsr")
    clock.advance(timedelta(minutes=11))  # ... but past its hour
    assert busy.page("/console/dsr", status=303).headers["location"].endswith("reason=ended")
    assert "session:lifetime" in control_events(state, "session.expire")[-1].payload


def test_revoking_the_token_or_disabling_roles_takes_effect_at_once(state: State, app: Any) -> None:
    issued = state.tokens.issue(principal_name="dpo", roles=["compliance_officer"])
    someone = Person(app)
    someone.log_in(issued.secret)
    assert "Requests" in someone.page("/console/").text
    # A role change is seen by the next request of the same session.
    state.tokens.issue(principal_name="dpo", roles=["auditor"])
    menu = someone.page("/console/").text
    assert "/console/dsr" not in menu
    assert "/console/audit" in menu
    state.tokens.revoke(issued.token_id)
    assert someone.page("/console/", status=303).headers["location"].endswith("reason=ended")
    assert sessions(state) == []


def test_a_cookie_that_is_no_session_is_sent_to_log_in(state: State, app: Any) -> None:
    for cookie in ("", "x", "A" * 43, "A" * 42 + "!", "A" * 5000):
        someone = Person(app)
        someone.http.cookies.set("bastion_console", cookie, domain="testserver", path="/console")
        browser = someone.page("/console/audit", status=303)
        assert browser.headers["location"].startswith("/console/login?next=")
        other = someone.http.get("/console/audit")
        assert other.status_code == 401, cookie
        assert other.headers["content-type"] == "application/problem+json"


def test_the_login_form_needs_its_own_csrf_token(state: State, app: Any) -> None:
    issued = state.tokens.issue(principal_name="dpo", roles=["compliance_officer"])
    someone = Person(app)
    form = someone.page("/console/login")
    good = csrf_of(form.text)
    for data in (
        {"token": issued.secret},
        {"token": issued.secret, "csrf_token": "forged"},
    ):
        refused = someone.http.post("/console/login", data=data, headers=HTML)
        assert refused.status_code == 403, refused.text
        assert "security token" in refused.text
    # Without the form's cookie (never shown the form, or it expired): refused too.
    cold = Person(app)
    expired = cold.http.post("/console/login", data={"token": issued.secret, "csrf_token": good})
    assert expired.status_code == 403
    assert "expired" in expired.json()["detail"]
    # The right token from another browser's form does not fit this browser's cookie.
    other = Person(app)
    other.page("/console/login")
    stolen = other.http.post(
        "/console/login", data={"token": issued.secret, "csrf_token": good}, headers=HTML
    )
    assert stolen.status_code == 403
    assert sessions(state) == []
    # Missing token field: 422 naming it.
    missing = someone.http.post("/console/login", data={"csrf_token": good}, headers=HTML)
    assert missing.status_code == 422
    assert "<code>token</code>" in missing.text


def test_every_form_post_without_its_csrf_token_is_refused_and_changes_nothing(
    state: State, app: Any, client: TestClient, admin: dict[str, str]
) -> None:
    contact = client.post("/v1/contacts", json=contact_body(region="eu"), headers=admin).json()
    officer = person(state, app, "compliance_officer", "support_agent", name="dpo")
    created = officer.post(
        "/console/dsr", {"type": "access", "regime": "gdpr", "subject_id": contact["id"]}
    )
    request_path = created.headers["location"].split("?")[0]
    posts = {
        "/console/dsr": {"type": "erasure", "regime": "gdpr", "subject_id": contact["id"]},
        f"{request_path}/verify": {"method": "id-document"},
        f"{request_path}/approve": {},
        f"{request_path}/reject": {"reason": "no"},
        f"{request_path}/extend": {"reason": "many records"},
        f"{request_path}/cancel": {},
        "/console/audit/chains/eu/verify": {},
        f"/console/records/contacts/{contact['id']}": {"version": "1", "f.email": "x@example.com"},
        "/console/logout": {},
    }
    other_session = Person(app)
    other_session.log_in(state.tokens.issue(principal_name="o", roles=["auditor"]).secret)
    for path, data in posts.items():
        for token in (None, "forged", other_session.csrf):
            body = dict(data) if token is None else {**data, "csrf_token": token}
            refused = officer.post(path, body, csrf=False, status=403)
            assert "security token" in refused.text, path
            # Not an HTML client: the same refusal as problem+json.
            plain = officer.http.post(path, data=body)
            assert plain.status_code == 403
            assert plain.json()["type"] == "urn:bastion:problem:csrf-refused"
    shown = officer.page(request_path).text
    assert "received" in shown
    assert "not yet" in shown
    fresh = client.get(f"/v1/contacts/{contact['id']}", headers=admin).json()
    assert fresh["version"] == 1
    assert fresh["email"] == contact["email"]
    assert len(sessions(state)) == 2  # nobody was logged out
    with state.regions.get("eu").transaction() as conn:
        verified = conn.execute(
            select(AUDIT.events.c.id).where(AUDIT.events.c.action == "audit.verify")
        ).all()
    assert verified == []


def test_a_post_from_another_origin_is_refused(state: State, app: Any) -> None:
    someone = person(state, app, "compliance_officer", name="dpo")
    refused = someone.http.post(
        "/console/logout",
        data={"csrf_token": someone.csrf},
        headers={**HTML, "origin": "https://evil.example"},
    )
    assert refused.status_code == 403
    assert "another site" in refused.text
    same = someone.http.post(
        "/console/logout",
        data={"csrf_token": someone.csrf},
        headers={**HTML, "origin": "https://testserver"},
        follow_redirects=False,
    )
    assert same.status_code == 303


MALFORMED = [
    ("application/json", b'{"csrf_token": "x"}', 415, "x-www-form-urlencoded"),
    ("multipart/form-data; boundary=x", b"--x--", 415, "x-www-form-urlencoded"),
    ("application/x-www-form-urlencoded", b"reason=\xff\xfe", 400, "UTF-8"),
    ("application/x-www-form-urlencoded", b"reason=%ff%fe", 400, "UTF-8"),
    ("application/x-www-form-urlencoded", b"&".join([b"a=1"] * 300), 413, "200 fields"),
    ("application/x-www-form-urlencoded", b"reason=" + b"a" * 1_100_000, 413, "limit"),
    ("application/x-www-form-urlencoded", b"csrf_token=a&csrf_token=b", 422, "csrf_token"),
]


def test_malformed_form_bodies_are_4xx_naming_the_problem(state: State, app: Any) -> None:
    someone = person(state, app, "compliance_officer", name="dpo")
    for content_type, body, status, says in MALFORMED:
        response = someone.http.post(
            "/console/logout", content=body, headers={"content-type": content_type}
        )
        assert response.status_code == status, (content_type, body[:40], response.text)
        assert response.headers["content-type"] == "application/problem+json"
        assert says in response.text
    assert len(sessions(state)) == 1


def test_console_pages_send_their_own_csp_and_run_no_inline_script(state: State, app: Any) -> None:
    someone = person(state, app, "compliance_officer", "security_admin", name="both")
    for path in ("/console/login", "/console/", "/console/dsr", "/console/audit", "/console/keys"):
        response = someone.http.get(path, headers=HTML)
        assert response.headers["content-security-policy"] == CSP, path
        assert "'unsafe-inline'" not in CSP
        assert "default-src 'self'" in CSP
        assert response.headers["x-frame-options"] == "DENY"
        assert response.headers["cache-control"] == "no-store"
        text = response.text
        # Every script is a file from the console's origin; no inline handlers or styles.
        assert text.count("<script") == text.count('<script src="/console/static/console.js"')
        assert " style=" not in text
        assert " onclick=" not in text
        assert " onload=" not in text
    assert someone.http.get("/console/static/console.js").status_code == 200
    assert someone.http.get("/console/static/../pages.py").status_code == 404


def test_errors_are_pages_for_browsers_and_problems_for_everything_else(
    state: State, app: Any
) -> None:
    someone = person(state, app, "support_agent", name="agent")
    page = someone.page("/console/dsr", status=403)
    assert page.headers["content-type"].startswith("text/html")
    assert "your roles do not allow list on dsr" in page.text
    problem = someone.http.get("/console/dsr")
    assert problem.status_code == 403
    assert problem.json()["detail"] == "your roles do not allow list on dsr in region eu"
    assert "Not found" in someone.page("/console/nowhere", status=404).text
    assert someone.http.get("/console/nowhere").json()["status"] == 404


def test_the_cookie_goes_without_secure_only_when_allowed_and_on_loopback(
    state: State, backend: Backend, tmp_path: Any
) -> None:
    relaxed = create_app(
        settings_for(backend, tmp_path, BASTION_CONSOLE_COOKIE_SECURE="false"), state=state
    )
    issued = state.tokens.issue(principal_name="dev", roles=["compliance_officer"])

    def cookie(client: tuple[str, int]) -> str:
        response = Person(relaxed, client=client).log_in(issued.secret)
        return next(
            c for c in response.headers.get_list("set-cookie") if c.startswith("bastion_console=")
        )

    assert "Secure" not in cookie(("127.0.0.1", 50000))
    assert "Secure" not in cookie(("::1", 50000))
    assert "Secure" in cookie(("192.0.2.10", 50000))
    assert "Secure" in cookie(("testclient", 50000))
