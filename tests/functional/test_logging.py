"""Logs carry request ids, routes and statuses, never field values or tokens."""

from __future__ import annotations

import json
import secrets

import pytest
import structlog
from starlette.testclient import TestClient

from bastion.logs import configure_logging
from tests.factories import contact_body


@pytest.fixture(autouse=True)
def _reset_structlog():  # type: ignore[no-untyped-def]
    yield
    structlog.reset_defaults()


def test_no_value_or_token_reaches_the_log(
    client: TestClient, admin: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging("json", "DEBUG")
    canary = f"canary{secrets.token_hex(6)}"
    created = client.post(
        "/v1/contacts",
        json=contact_body(last_name=canary, email=f"{canary}@example.com"),
        headers={**admin, "X-Request-ID": "req-1"},
    )
    url = f"/v1/contacts/{created.json()['id']}"
    client.patch(url, json={"title": canary}, headers={**admin, "If-Match": '"v1"'})
    client.get(url, headers=admin)
    client.get("/v1/contacts", params={"title": canary}, headers=admin)
    client.post("/v1/contacts", json={"last_name": 7, "email": canary}, headers=admin)
    client.get(f"/v1/contacts/{canary}", headers=admin)
    client.get("/v1/contacts", headers={"Authorization": f"Bearer {canary}"})

    output = capsys.readouterr()
    logged = output.err + output.out
    assert canary not in logged
    assert admin["Authorization"].split()[1] not in logged
    events = [json.loads(line) for line in output.err.splitlines() if line.startswith("{")]
    requests = [e for e in events if e.get("event") == "request"]
    assert len(requests) == 7
    assert requests[0]["request_id"] == "req-1"
    assert requests[0]["route"] == "/v1/{entity}"
    assert {e["status"] for e in requests} >= {201, 200, 422, 404, 401}
