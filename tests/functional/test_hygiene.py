"""Security hygiene: response headers, per-token rate limits (429 + Retry-After)."""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from bastion.api.limits import TokenBuckets
from bastion.app import create_app
from bastion.state import State
from tests.conftest import Backend, Tokens, settings_for
from tests.factories import contact_body


def test_every_response_carries_the_security_headers(
    client: TestClient, admin: dict[str, str]
) -> None:
    responses = [
        client.post("/v1/contacts", json=contact_body(), headers=admin),  # 201
        client.get("/v1/contacts?limit=1", headers=admin),  # 200
        client.get("/v1/contacts"),  # 401 problem
        client.get("/v1/nothing-here", headers=admin),  # 404 from the router
        client.get("/openapi.json"),
    ]
    for response in responses:
        headers = response.headers
        assert headers["x-content-type-options"] == "nosniff"
        assert headers["cache-control"] == "no-store"
        assert headers["content-security-policy"] == "default-src 'none'; frame-ancestors 'none'"
        assert headers["x-frame-options"] == "DENY"
        assert headers["referrer-policy"] == "no-referrer"
        assert headers["strict-transport-security"].startswith("max-age=")
        assert len(headers.get_list("cache-control")) == 1


def test_the_docs_page_admits_only_its_own_inline_style(client: TestClient) -> None:
    page = client.get("/docs")
    assert page.status_code == 200
    policy = page.headers["content-security-policy"]
    assert len(page.headers.get_list("content-security-policy")) == 1
    style = re.search(r"<style>(.*?)</style>", page.text, re.DOTALL)
    assert style is not None
    digest = base64.b64encode(hashlib.sha256(style.group(1).encode()).digest()).decode()
    assert policy == f"default-src 'none'; style-src 'sha256-{digest}'; frame-ancestors 'none'"
    assert "<script" not in page.text


@pytest.fixture
def limited(backend: Backend, tmp_path: Path, state: State) -> Iterator[TestClient]:
    """An app allowing each token a burst of 3 requests, then 1 every 100 s."""
    (tmp_path / "absent.toml").write_text("")
    settings = settings_for(
        backend,
        tmp_path,
        BASTION_LIMITS_REQUESTS_PER_SECOND="0.01",
        BASTION_LIMITS_BURST="3",
    )
    with TestClient(create_app(settings, state=state)) as c:
        yield c


def test_a_token_over_its_rate_gets_429_with_retry_after(
    limited: TestClient, tokens: Tokens
) -> None:
    first, second = tokens.headers("admin"), tokens.headers("auditor")
    for _ in range(3):
        assert limited.get("/v1/me", headers=first).status_code == 200
    refused = limited.get("/v1/contacts?limit=1", headers=first)
    assert refused.status_code == 429
    assert refused.headers["content-type"] == "application/problem+json"
    assert 1 <= int(refused.headers["retry-after"]) <= 100
    body = refused.json()
    assert body["status"] == 429
    assert body["type"] == "urn:bastion:problem:too-many-requests"
    assert first["Authorization"].split()[1] not in refused.text
    # Another token has its own bucket; health probes are never limited.
    assert limited.get("/v1/me", headers=second).status_code == 200
    for _ in range(5):
        assert limited.get("/healthz").status_code == 200
        assert limited.get("/readyz").status_code == 200


def test_a_flood_of_wrong_tokens_is_limited_per_token_before_authentication(
    limited: TestClient,
) -> None:
    wrong = {"Authorization": "Bearer not-a-token"}
    statuses = [limited.get("/v1/me", headers=wrong).status_code for _ in range(5)]
    assert statuses == [401, 401, 401, 429, 429]
    anonymous = [limited.get("/v1/me").status_code for _ in range(4)]
    assert anonymous == [401, 401, 401, 429]  # no token: limited by client address


@pytest.fixture
def guarded(backend: Backend, tmp_path: Path, state: State) -> Iterator[TestClient]:
    """An app allowing each client address 3 failed authentications per minute."""
    (tmp_path / "absent.toml").write_text("")
    settings = settings_for(backend, tmp_path, BASTION_LIMITS_FAILED_AUTH_PER_MINUTE="3")
    with TestClient(create_app(settings, state=state)) as c:
        yield c


def test_guessing_tokens_is_limited_per_address_whatever_the_guess(
    guarded: TestClient, tokens: Tokens
) -> None:
    guesses = [{"Authorization": f"Bearer bst_{n:016d}_{'x' * 43}"} for n in range(5)]
    statuses = [guarded.get("/v1/me", headers=guess).status_code for guess in guesses]
    assert statuses == [401, 401, 401, 429, 429]  # a fresh token is no fresh allowance
    # From that address even a valid token waits: a guess looks like one until looked up.
    refused = guarded.get("/v1/me", headers=tokens.headers("admin"))
    assert refused.status_code == 429
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    assert guarded.get("/healthz").status_code == 200


def test_buckets_refill_at_the_configured_rate() -> None:
    now = [0.0]
    buckets = TokenBuckets(2.0, 2, clock=lambda: now[0])
    assert buckets.take(b"k") == 0.0
    assert buckets.take(b"k") == 0.0
    assert buckets.take(b"k") == pytest.approx(0.5)
    now[0] = 0.5
    assert buckets.take(b"k") == 0.0  # one token came back
    assert buckets.take(b"k") == pytest.approx(0.5)
    now[0] = 100.0
    assert buckets.wait(b"k") == 0.0  # looking takes nothing
    assert [buckets.take(b"k") for _ in range(3)] == [0.0, 0.0, pytest.approx(0.5)]  # burst caps
    assert buckets.wait(b"k") == pytest.approx(0.5)
    assert buckets.wait(b"unknown") == 0.0


def test_buckets_forget_the_least_recently_used_key_first() -> None:
    buckets = TokenBuckets(0.001, 1, max_tracked=2, clock=lambda: 0.0)
    assert buckets.take(b"a") == 0.0
    assert buckets.take(b"b") == 0.0
    assert buckets.take(b"a") > 0  # a is tracked and empty
    assert buckets.take(b"c") == 0.0  # b, the least recently used, is dropped
    assert buckets.take(b"a") > 0
    assert buckets.take(b"b") == 0.0  # b starts over with a full bucket
