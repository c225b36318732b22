"""Valid request bodies for every entity, and helpers that create records over HTTP."""

from __future__ import annotations

from typing import Any

from starlette.testclient import TestClient


def account_body(**overrides: Any) -> dict[str, Any]:
    return {"name": "Nordlicht Energie GmbH", "billing_country": "DE", **overrides}


def contact_body(**overrides: Any) -> dict[str, Any]:
    return {
        "first_name": "Anna",
        "last_name": "Schmidt",
        "email": "anna.schmidt@example.com",
        "phone": "+4930123456",
        **overrides,
    }


def lead_body(**overrides: Any) -> dict[str, Any]:
    return {
        "first_name": "Lukas",
        "last_name": "Weber",
        "email": "lukas@example.com",
        "company": "Weber Consulting",
        "status": "working",
        **overrides,
    }


def create(
    client: TestClient, entity: str, body: dict[str, Any], headers: dict[str, str]
) -> dict[str, Any]:
    response = client.post(f"/v1/{entity}", json=body, headers=headers)
    assert response.status_code == 201, response.text
    record: dict[str, Any] = response.json()
    return record


def body_for(
    client: TestClient, entity: str, headers: dict[str, str], region: str = "eu"
) -> dict[str, Any]:
    """A valid create body for `entity` in `region`, creating the records it links to."""
    if entity == "accounts":
        return account_body(region=region)
    if entity == "contacts":
        return contact_body(region=region)
    if entity == "leads":
        return lead_body(region=region)
    account = create(client, "accounts", account_body(region=region), headers)
    if entity == "opportunities":
        return {
            "region": region,
            "name": "Rollout",
            "account_id": account["id"],
            "stage": "proposal",
            "amount": "25000.00",
            "currency": "EUR",
            "close_date": "2027-01-31",
            "probability": 40,
        }
    if entity == "activities":
        return {"region": region, "type": "call", "subject": "Intro", "account_id": account["id"]}
    if entity == "cases":
        return {
            "region": region,
            "subject": "Invoice",
            "priority": "high",
            "account_id": account["id"],
        }
    raise AssertionError(entity)


ENTITY_NAMES = ("accounts", "contacts", "leads", "opportunities", "activities", "cases")
