"""A person at the console, over Starlette's TestClient: logs in through the login
form, keeps the session cookie, reads pages as a browser asks for them (`Accept:
text/html`) and posts forms with the page's CSRF token."""

from __future__ import annotations

import re
from typing import Any

import httpx2
from starlette.testclient import TestClient

from bastion.state import State

HTML = {"accept": "text/html,application/xhtml+xml"}
_CSRF_RE = re.compile(r'name="csrf_token" value="([^"]+)"')


def csrf_of(page: str) -> str:
    found = _CSRF_RE.search(page)
    assert found is not None, "the page has no CSRF token"
    return found.group(1)


class Person:
    """One browser's worth of cookies against the app, logged in or not. The app's
    lifespan is the `client` fixture's: these clients only send requests."""

    def __init__(self, app: Any, *, client: tuple[str, int] = ("testclient", 50000)) -> None:
        # https: the session cookie is `Secure`, so a client sends it over https only.
        self.http = TestClient(app, base_url="https://testserver", client=client)
        self.csrf = ""
        self.token = ""

    def log_in(self, token: str, *, expect: int = 303) -> httpx2.Response:
        form = self.http.get("/console/login", headers=HTML)
        assert form.status_code == 200, form.text
        response = self.http.post(
            "/console/login",
            data={"csrf_token": csrf_of(form.text), "token": token, "next": "/console/"},
            headers=HTML,
            follow_redirects=False,
        )
        assert response.status_code == expect, response.text
        if expect == 303:
            self.token = token
            self.csrf = csrf_of(self.page("/console/").text)
        return response

    def page(self, path: str, *, status: int = 200, **params: Any) -> httpx2.Response:
        response = self.http.get(path, params=params or None, headers=HTML, follow_redirects=False)
        assert response.status_code == status, (path, response.status_code, response.text[:2000])
        return response

    def post(
        self, path: str, data: dict[str, Any] | None = None, *, csrf: bool = True, status: int = 303
    ) -> httpx2.Response:
        body = dict(data or {})
        if csrf:
            body["csrf_token"] = self.csrf
        response = self.http.post(path, data=body, headers=HTML, follow_redirects=False)
        assert response.status_code == status, (path, response.status_code, response.text[:2000])
        return response


def person(state: State, app: Any, *roles: str, name: str, regions: tuple[str, ...] = ()) -> Person:
    """A logged-in person holding `roles` (a new principal called `name`)."""
    issued = state.tokens.issue(principal_name=name, roles=list(roles), regions=list(regions))
    someone = Person(app)
    someone.log_in(issued.secret)
    return someone
