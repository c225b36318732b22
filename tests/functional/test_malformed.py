"""No malformed request is a 500: every one is a 4xx problem, and nothing is written."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from tests.factories import contact_body

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=50),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=20), children, max_size=4)
    ),
    max_leaves=12,
)
FIELDS = st.sampled_from(
    ["last_name", "email", "phone", "birthdate", "account_id", "custom", "owner_id", "x", ""]
)


def _assert_problem(response, allowed: set[int]) -> None:  # type: ignore[no-untyped-def]
    assert response.status_code in allowed, (response.status_code, response.text)
    if response.status_code >= 400:
        assert response.headers["content-type"] == "application/problem+json"
        assert "Traceback" not in response.text


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"{",
        b"[]",
        b'"text"',
        b"null",
        b"1e999999",
        b'{"last_name": NaN}',
        b'{"last_name": Infinity}',
        b"\xff\xfe{}",
        b'{"a":' * 5000 + b"1" + b"}" * 5000,
        b'{"last_name": "\\ud800"}',
        b'{"last_name": "a\\u0000b"}',
        b'{"amount": 1e400}',
    ],
)
def test_malformed_bodies(client: TestClient, admin: dict[str, str], raw: bytes) -> None:
    response = client.post(
        "/v1/contacts", content=raw, headers={**admin, "Content-Type": "application/json"}
    )
    _assert_problem(response, {400, 422})
    assert client.get("/v1/contacts", headers=admin).json()["data"] == []


def test_oversized_bodies_are_413(client: TestClient, admin: dict[str, str]) -> None:
    huge = json.dumps({"last_name": "x", "custom": {"blob": "y" * 2_000_000}}).encode()
    response = client.post(
        "/v1/contacts", content=huge, headers={**admin, "Content-Type": "application/json"}
    )
    _assert_problem(response, {413})

    def chunks():  # type: ignore[no-untyped-def]
        for _ in range(40):
            yield b" " * 65536

    streamed = client.post(
        "/v1/contacts", content=chunks(), headers={**admin, "Content-Type": "application/json"}
    )
    _assert_problem(streamed, {413})
    assert client.get("/v1/contacts", headers=admin).json()["data"] == []


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/nope"),
        ("GET", "/v1"),
        ("GET", "/v1/contacts/a/b"),
        ("PUT", "/v1/contacts"),
        ("DELETE", "/v1/contacts"),
        ("POST", "/v1/contacts/con_eu_01m86djerffp6965t85qwjy98v"),
        ("GET", "/v1/leads/led_eu_01m86djerffp6965t85qwjy98v/convert"),
        ("GET", "/v1/%00"),
        ("GET", "/v1/contacts/%ff%fe"),
    ],
)
def test_unknown_routes_and_methods(
    client: TestClient, admin: dict[str, str], method: str, path: str
) -> None:
    response = client.request(method, path, headers=admin)
    _assert_problem(response, {404, 405})
    if response.status_code == 405:
        assert response.headers["allow"]


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(body=st.dictionaries(FIELDS, JSON_VALUES, max_size=5))
def test_arbitrary_json_never_500s(
    client: TestClient, admin: dict[str, str], body: dict[str, object]
) -> None:
    response = client.post(
        "/v1/contacts",
        content=json.dumps(body),
        headers={**admin, "Content-Type": "application/json"},
    )
    _assert_problem(response, {201, 400, 422})
    if response.status_code == 201:
        assert response.json()["last_name"] == body["last_name"]


def test_bad_headers(client: TestClient, admin: dict[str, str]) -> None:
    created = client.post("/v1/contacts", json=contact_body(), headers=admin)
    url = f"/v1/contacts/{created.json()['id']}"
    for if_match in ("", " ", '"v1", "v2"', "W/", "\x7f"):
        response = client.patch(url, json={"title": "x"}, headers={**admin, "If-Match": if_match})
        _assert_problem(response, {412})
    weird_request_id = client.get(url, headers={**admin, "X-Request-ID": "bad id with spaces"})
    assert weird_request_id.status_code == 200
    assert weird_request_id.headers["x-request-id"] != "bad id with spaces"
    echoed = client.get(url, headers={**admin, "X-Request-ID": "trace-123"})
    assert echoed.headers["x-request-id"] == "trace-123"
