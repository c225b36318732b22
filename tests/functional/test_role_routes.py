"""Every default role on every route of the OpenAPI document.

Two principals per role: one holding both regions, one holding only `us`. Each
calls every operation the contract lists, on real records of the `eu` region that
hold canaries (a contact, its case, a lead, a data subject's request about the
contact, a legal hold on it). Whatever the role may or may not do there:

- no answer is a 5xx, and every error is problem+json;
- the US-only principal never sees an EU canary, nor the id of an EU record it
  was not given -- in any body or header (a record of a region it may not use);
- nobody sees a canary of a field outside their read mask (checked against the
  compiled policy's mask for the role, in bodies and headers).

Writes are shaped not to destroy the world for the next caller: deletes carry a
stale `If-Match`, patches touch a plaintext field.
"""

from __future__ import annotations

from typing import Any

import pytest
from starlette.testclient import TestClient

from bastion.api.openapi import openapi_document
from bastion.crm.catalog import ENTITIES
from bastion.state import State
from tests.conftest import Tokens
from tests.factories import body_for, contact_body, create

ROLES = (
    "admin",
    "sales_rep",
    "sales_manager",
    "support_agent",
    "marketing",
    "compliance_officer",
    "auditor",
    "security_admin",
    "dsr_processor",
    "automation",
)
CANARY = "zqroutecanary"


# Requests are run by the test (state.dsr_jobs), not by the app's in-process runner.
SETTINGS_ENV = {"BASTION_DSR_IN_PROCESS": "false"}


def _world(client: TestClient, admin: dict[str, str], officer: dict[str, str]) -> dict[str, Any]:
    """EU records holding canaries in every text field a role might be denied."""
    person = create(
        client,
        "contacts",
        contact_body(
            region="eu",
            first_name=f"{CANARY}first",
            last_name=f"{CANARY}last",
            email=f"{CANARY}@example.com",
            title=f"{CANARY}title",
            mailing_street=f"{CANARY}street",
        ),
        admin,
    )
    ids = {"contacts": person["id"]}
    for entity in ("accounts", "leads", "opportunities", "activities", "cases"):
        body = body_for(client, entity, admin, "eu")
        if entity == "cases":
            body.update(contact_id=person["id"], description=f"{CANARY}description")
        if entity == "activities":
            body.update(contact_id=person["id"], body=f"{CANARY}body")
        if entity == "leads":
            body.update(last_name=f"{CANARY}lead", email=f"{CANARY}.lead@example.com")
        ids[entity] = create(client, entity, body, admin)["id"]
    request = client.post(
        "/v1/dsr", json={"type": "access", "subject_id": person["id"]}, headers=officer
    )
    assert request.status_code == 201, request.text
    hold = client.post(
        "/v1/legal-holds",
        json={"target_id": ids["cases"], "reason": "litigation 2026-17"},
        headers=officer,
    )
    assert hold.status_code == 201, hold.text
    return {"ids": ids, "request_id": request.json()["id"], "hold_id": hold.json()["id"]}


def _operations() -> list[tuple[str, str]]:
    document = openapi_document()
    return [
        (method.upper(), path)
        for path, item in document["paths"].items()
        for method in item
        if method != "parameters"
    ]


def _call(
    client: TestClient, method: str, path: str, world: dict[str, Any], headers: dict[str, str]
) -> Any:
    ids = world["ids"]
    entity = [*path.split("/"), "", ""][2]
    url = (
        path.replace("{request_id}", world["request_id"])
        .replace("{hold_id}", world["hold_id"])
        .replace("{id}", ids.get(entity, ids["contacts"]))
    )
    stale = {**headers, "If-Match": '"v999"'}
    if method == "GET":
        return client.get(url, headers=headers)
    if method == "DELETE":
        return client.delete(url, headers=stale)
    if method == "PATCH":
        return client.patch(url, json={"title": "renamed"}, headers=stale)
    if entity in ENTITIES and url == f"/v1/{entity}":
        body = {"region": "eu", "last_name": "New", "name": "New", "subject": "New"}
        return client.post(url, json=body, headers=headers)
    return client.post(url, json={}, headers=headers)


@pytest.mark.parametrize("role", ROLES)
def test_every_role_on_every_route_leaks_nothing_and_never_fails(
    client: TestClient, state: State, tokens: Tokens, admin: dict[str, str], role: str
) -> None:
    officer = tokens.headers("compliance_officer", name="dpo")
    world = _world(client, admin, officer)
    both = tokens.headers(role, regions=("eu", "us"), name=f"{role}-both")
    us_only = tokens.headers(role, regions=("us",), name=f"{role}-us")
    eu_ids = [*world["ids"].values(), world["request_id"], world["hold_id"]]
    readable = {
        entity: state.policy.mask(frozenset({role}), "eu", entity, "read").possible
        for entity in ENTITIES
    }
    canaried = {
        "contacts": ("first_name", "last_name", "email", "title", "mailing_street"),
        "cases": ("description",),
        "activities": ("body",),
        "leads": ("last_name", "email"),
    }
    hidden = [
        (entity, name)
        for entity, names in canaried.items()
        for name in names
        if name not in readable[entity]
    ]
    for method, path in _operations():
        for label, headers in (("both", both), ("us-only", us_only)):
            response = _call(client, method, path, world, headers)
            where = f"{role} ({label}) {method} {path} -> {response.status_code}"
            assert response.status_code < 500, f"{where}: {response.text[:300]}"
            if response.status_code >= 400:
                assert response.headers["content-type"] == "application/problem+json", where
            seen = (response.text + repr(dict(response.headers))).lower()
            if (role, label, method, path) == ("admin", "both", "GET", "/v1/contacts/{id}"):
                assert CANARY in seen  # the canaries are there to be seen, or not
            if label == "us-only":
                assert CANARY not in seen, where
                leaked = [i for i in eu_ids if i in seen and i not in url_of(path, world)]
                assert not leaked, f"{where}: {leaked}"
            for entity, name in hidden:
                marker = _canary_of(entity, name)
                assert marker not in seen, f"{where}: {entity}.{name}"


def url_of(path: str, world: dict[str, Any]) -> str:
    """The ids a route's own URL names (an answer may echo what the caller sent)."""
    return " ".join(
        value
        for key, value in (
            ("{request_id}", world["request_id"]),
            ("{hold_id}", world["hold_id"]),
            ("{id}", " ".join(world["ids"].values())),
        )
        if key in path
    )


def _canary_of(entity: str, name: str) -> str:
    return {
        ("contacts", "first_name"): f"{CANARY}first",
        ("contacts", "last_name"): f"{CANARY}last",
        ("contacts", "email"): f"{CANARY}@example.com",
        ("contacts", "title"): f"{CANARY}title",
        ("contacts", "mailing_street"): f"{CANARY}street",
        ("cases", "description"): f"{CANARY}description",
        ("activities", "body"): f"{CANARY}body",
        ("leads", "last_name"): f"{CANARY}lead",
        ("leads", "email"): f"{CANARY}.lead@example.com",
    }[(entity, name)]
