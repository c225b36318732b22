"""Webhooks: signed deliveries a real receiver verifies, retries on the backoff then
the dead letter and replay, payloads through the owner's field mask (canaries), and
regions: data of one region never goes to an endpoint declared in another.

The receiver is a real HTTP server on 127.0.0.1 (a thread running `http.server`) that
checks every delivery's Standard Webhooks signature itself — computed here from the
specification, not with Bastion's own `signing` module.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from sqlalchemy import select
from starlette.testclient import TestClient

from bastion.automation.tables import webhook_subscriptions
from bastion.state import State
from tests.conftest import FrozenClock, Tokens
from tests.factories import AUTOMATION_ENV, contact_body, create, drain

SETTINGS_ENV = {**AUTOMATION_ENV, "BASTION_WEBHOOKS_MAX_ATTEMPTS": "4"}
CANARY = "zqhookcanary"


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """What the endpoint got, and what it answers next (204 once the list is empty)."""

    url: str
    answers: list[int] = field(default_factory=list)
    got: list[Received] = field(default_factory=list)

    def verified(self, secret: str, now: datetime) -> list[dict[str, Any]]:
        """Every body received, after checking its signature as the spec says."""
        key = base64.b64decode(secret.removeprefix("whsec_"))
        bodies = []
        for request in self.got:
            message_id = request.headers["webhook-id"]
            timestamp = request.headers["webhook-timestamp"]
            signed = f"{message_id}.{timestamp}.".encode() + request.body
            expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
            assert request.headers["webhook-signature"] == f"v1,{expected}"
            assert abs(now.timestamp() - int(timestamp)) < 300
            bodies.append(json.loads(request.body))
        return bodies


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    box: list[Receiver] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("content-length", "0"))
            box[0].got.append(
                Received({k.lower(): v for k, v in self.headers.items()}, self.rfile.read(length))
            )
            status = box[0].answers.pop(0) if box[0].answers else 204
            self.send_response(status)
            if status in (301, 302, 307):
                self.send_header("Location", "http://127.0.0.1:9/elsewhere")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    box.append(Receiver(f"http://127.0.0.1:{server.server_address[1]}/hooks"))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield box[0]
    server.shutdown()
    server.server_close()


def subscribe(client: TestClient, headers: dict[str, str], **body: Any) -> dict[str, Any]:
    response = client.post("/v1/webhooks", json=body, headers=headers)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


def canary_contact(client: TestClient, admin: dict[str, str], region: str = "eu") -> dict[str, Any]:
    return create(
        client,
        "contacts",
        contact_body(
            region=region,
            title="Buyer",
            mobile="+491701234567",
            mailing_street=f"{CANARY}street",
            birthdate="1980-02-03",
        ),
        admin,
    )


def test_deliveries_are_signed_and_carry_only_what_the_owner_may_read(
    client: TestClient,
    state: State,
    clock: FrozenClock,
    tokens: Tokens,
    admin: dict[str, str],
    receiver: Receiver,
    logged: Callable[[], str],
) -> None:
    logged()  # from here on, every log line is captured
    marketing = tokens.headers("marketing", name="mk", regions=("eu",))
    subscription = subscribe(
        client,
        marketing,
        url=receiver.url,
        topics=["contacts.created", "contacts.updated"],
        endpoint_region="eu",
    )
    secret = subscription.pop("secret")
    assert secret.startswith("whsec_")
    shown = client.get(f"/v1/webhooks/{subscription['id']}", headers=marketing)
    assert shown.status_code == 200
    assert shown.json() == subscription  # the secret was shown once, never again
    with state.regions.get("eu").transaction() as conn:
        stored = conn.execute(select(webhook_subscriptions.c.secret)).scalar_one()
    assert secret.encode() not in bytes(stored)
    assert base64.b64decode(secret.removeprefix("whsec_")) not in bytes(stored)

    person = canary_contact(client, admin)
    patched = client.patch(
        f"/v1/contacts/{person['id']}",
        json={"title": "Head of IT"},
        headers={**admin, "If-Match": '"v1"'},
    )
    assert patched.status_code == 200
    drain(state)

    created, updated = receiver.verified(secret, clock.now())
    assert [created["type"], updated["type"]] == ["contacts.created", "contacts.updated"]
    assert updated["data"]["changed"] == ["title"]
    record = updated["data"]["record"]
    assert record["id"] == person["id"]
    assert record["title"] == "Head of IT"
    assert {"mobile", "mailing_street", "birthdate"} <= set(record["_withheld"])
    for body in receiver.got:  # the canaries of fields marketing may not read: never sent
        assert CANARY.encode() not in body.body
        assert b"+491701234567" not in body.body
        assert b"1980-02-03" not in body.body
    assert receiver.got[0].headers["webhook-id"] != receiver.got[1].headers["webhook-id"]

    log = client.get(f"/v1/webhooks/{subscription['id']}/deliveries", headers=marketing).json()
    assert [d["status"] for d in log["data"]] == ["delivered", "delivered"]
    assert [d["log"][0]["status_code"] for d in log["data"]] == [204, 204]
    audit = client.get(
        f"/v1/audit/events?record_id={person['id']}&action=webhook.deliver",
        headers=tokens.headers("auditor", name="auditor"),
    ).json()["data"]
    assert len(audit) == 2
    assert all(e["actor"] == "system:webhooks" for e in audit)
    assert all("mobile" not in e["fields"] and "email" in e["fields"] for e in audit)
    logs = logged()
    assert "webhook_attempt" in logs
    for value in (CANARY, person["email"], secret, "+491701234567", receiver.url):
        assert value not in logs  # ids and codes only: no value, secret or URL


def test_a_failing_receiver_gets_retries_on_the_backoff_then_a_dead_letter_and_a_replay(
    client: TestClient,
    state: State,
    clock: FrozenClock,
    tokens: Tokens,
    admin: dict[str, str],
    receiver: Receiver,
) -> None:
    subscription = subscribe(
        client, admin, url=receiver.url, topics=["accounts.*"], endpoint_region="eu"
    )
    receiver.answers = [500, 302, 503, 500]
    create(client, "accounts", {"name": "Nordlicht", "region": "eu"}, admin)
    waits = []
    for _ in range(4):
        drain(state)
        (delivery,) = client.get(
            f"/v1/webhooks/{subscription['id']}/deliveries", headers=admin
        ).json()["data"]
        last = delivery["log"][-1]
        if last["next_attempt_at"] is not None:
            due = datetime.fromisoformat(last["next_attempt_at"].replace("Z", "+00:00"))
            at = datetime.fromisoformat(last["attempted_at"].replace("Z", "+00:00"))
            waits.append(round((due - at).total_seconds()))
            clock.advance(due - clock.now() + timedelta(seconds=1))
    assert waits == [30, 60, 120]  # retry_base_seconds, doubling
    assert delivery["status"] == "dead"
    assert delivery["attempts"] == 4
    assert [a["status_code"] for a in delivery["log"]] == [
        500,
        302,
        503,
        500,
    ]  # no redirect followed
    assert len(receiver.got) == 4

    replayed = client.post(
        f"/v1/webhooks/{subscription['id']}/deliveries/{delivery['id']}/replay", headers=admin
    )
    assert replayed.status_code == 200, replayed.text
    assert replayed.json()["status"] == "pending"
    again = client.post(
        f"/v1/webhooks/{subscription['id']}/deliveries/{delivery['id']}/replay", headers=admin
    )
    assert again.status_code == 409
    drain(state)
    (delivery,) = client.get(
        f"/v1/webhooks/{subscription['id']}/deliveries?status=delivered", headers=admin
    ).json()["data"]
    assert [a["number"] for a in delivery["log"]] == [1, 2, 3, 4, 5]
    assert delivery["replays"] == 1
    assert len({r.headers["webhook-id"] for r in receiver.got}) == 1  # one message, five tries


def test_data_of_a_region_never_goes_to_an_endpoint_declared_in_another(
    client: TestClient,
    state: State,
    clock: FrozenClock,
    tokens: Tokens,
    admin: dict[str, str],
    receiver: Receiver,
) -> None:
    refused = client.post(
        "/v1/webhooks",
        json={
            "url": receiver.url,
            "topics": ["contacts.*"],
            "region": "eu",
            "endpoint_region": "us",
        },
        headers=admin,
    )
    assert refused.status_code == 422
    assert [e["field"] for e in refused.json()["errors"]] == ["endpoint_region"]
    ids_only = subscribe(
        client,
        admin,
        url=receiver.url,
        topics=["contacts.*"],
        region="eu",
        endpoint_region="us",
        payload="ids",
    )
    us_side = subscribe(
        client,
        admin,
        url=receiver.url + "/us",
        topics=["contacts.*"],
        region="us",
        endpoint_region="us",
    )
    person = canary_contact(client, admin, region="eu")
    drain(state)

    (body,) = receiver.verified(ids_only["secret"], clock.now())
    assert body["data"] == {"id": person["id"], "entity": "contacts", "region": "eu"}
    assert CANARY.encode() not in receiver.got[0].body
    assert person["email"].encode() not in receiver.got[0].body
    deliveries = client.get(f"/v1/webhooks/{us_side['id']}/deliveries", headers=admin).json()
    assert deliveries["data"] == []  # a US subscription hears nothing of the EU


BAD_SUBSCRIPTIONS = [
    ({"topics": ["contacts.*"], "endpoint_region": "eu"}, "url"),
    ({"url": "ftp://example.com/x", "topics": ["contacts.*"], "endpoint_region": "eu"}, "url"),
    (
        {"url": "https://u:p@example.com/", "topics": ["leads.*"], "endpoint_region": "eu"},
        "url",
    ),
    ({"url": "http://10.1.2.3/hook", "topics": ["leads.*"], "endpoint_region": "eu"}, "url"),
    ({"url": "http://[::1]:8080/hook", "topics": ["leads.*"], "endpoint_region": "eu"}, "url"),
    (
        {
            "url": "https://example.com/" + "x" * 2100,
            "topics": ["leads.*"],
            "endpoint_region": "eu",
        },
        "url",
    ),
    (
        {"url": "https://example.com/", "topics": ["leads.eaten"], "endpoint_region": "eu"},
        "topics[0]",
    ),
    ({"url": "https://example.com/", "topics": "leads.*", "endpoint_region": "eu"}, "topics"),
    (
        {"url": "https://example.com/", "topics": ["leads.*"], "endpoint_region": 7},
        "endpoint_region",
    ),
    (
        {
            "url": "https://example.com/",
            "topics": ["leads.*"],
            "endpoint_region": "eu",
            "payload": "all",
        },
        "payload",
    ),
    (
        {
            "url": "https://example.com/",
            "topics": ["leads.*"],
            "endpoint_region": "eu",
            "secret": "x",
        },
        "secret",
    ),
]


def test_a_subscription_that_is_not_right_is_422_naming_the_field(
    client: TestClient, state: State, admin: dict[str, str]
) -> None:
    for body, field_name in BAD_SUBSCRIPTIONS:
        response = client.post("/v1/webhooks", json=body, headers=admin)
        assert response.status_code == 422, (field_name, response.text)
        assert response.headers["content-type"] == "application/problem+json"
        assert field_name in [e["field"] for e in response.json()["errors"]]
    assert client.get("/v1/webhooks", headers=admin).json()["data"] == []


def test_webhooks_answer_403_to_roles_without_them_and_404_across_regions(
    client: TestClient, state: State, tokens: Tokens, admin: dict[str, str]
) -> None:
    subscription = subscribe(
        client, admin, url="https://hooks.example.com/in", topics=["leads.*"], endpoint_region="eu"
    )
    agent = tokens.headers("support_agent", name="agent")
    assert (
        client.post(
            "/v1/webhooks",
            json={
                "url": "https://hooks.example.com/",
                "topics": ["leads.*"],
                "endpoint_region": "eu",
            },
            headers=agent,
        ).status_code
        == 403
    )
    assert client.get("/v1/webhooks", headers=agent).status_code == 403
    assert client.get(f"/v1/webhooks/{subscription['id']}", headers=agent).status_code == 403
    us_admin = tokens.headers("admin", regions=("us",), name="us-admin")
    assert client.get(f"/v1/webhooks/{subscription['id']}", headers=us_admin).status_code == 404
    assert client.delete(f"/v1/webhooks/{subscription['id']}", headers=us_admin).status_code == 404
    assert client.get("/v1/webhooks", headers={}).status_code == 401
    bad_status = client.get(
        f"/v1/webhooks/{subscription['id']}/deliveries?status=lost", headers=admin
    )
    assert bad_status.status_code == 422
    assert [e["field"] for e in bad_status.json()["errors"]] == ["status"]
    missing = client.post(
        f"/v1/webhooks/{subscription['id']}/deliveries/whd_eu_01m86ch3m0fpt9ashsm8c0e4p0/replay",
        headers=admin,
    )
    assert missing.status_code == 404
    deleted = client.delete(f"/v1/webhooks/{subscription['id']}", headers=admin)
    assert deleted.status_code == 204
    assert client.get(f"/v1/webhooks/{subscription['id']}", headers=admin).status_code == 404
