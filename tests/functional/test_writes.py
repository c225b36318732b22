"""Write semantics: idempotent creates, merge patches, ETags, deletes, lead conversion."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from starlette.testclient import TestClient

from tests.conftest import Tokens
from tests.factories import account_body, contact_body, create, lead_body


def test_idempotency_key_replays_the_first_create(
    client: TestClient, admin: dict[str, str]
) -> None:
    headers = {**admin, "Idempotency-Key": "order-7-contact"}
    body = contact_body()
    first = client.post("/v1/contacts", json=body, headers=headers)
    again = client.post("/v1/contacts", json=body, headers=headers)
    assert first.status_code == again.status_code == 201
    assert again.json()["id"] == first.json()["id"]
    assert again.headers["idempotent-replayed"] == "true"
    assert len(client.get("/v1/contacts", headers=admin).json()["data"]) == 1

    reused = client.post("/v1/contacts", json={**body, "title": "CFO"}, headers=headers)
    assert reused.status_code == 422
    assert reused.json()["errors"][0]["field"] == "Idempotency-Key"

    for bad in ("", "a" * 256, "with space", "naïve"):
        response = client.post(
            "/v1/contacts",
            json=contact_body(),
            headers={**admin, "Idempotency-Key": bad.encode()},  # type: ignore[dict-item]
        )
        assert response.status_code == 400, (bad, response.text)
    assert len(client.get("/v1/contacts", headers=admin).json()["data"]) == 1


def test_concurrent_creates_with_one_idempotency_key_create_one_record(
    client: TestClient, admin: dict[str, str]
) -> None:
    headers = {**admin, "Idempotency-Key": "burst"}

    def post(_: int) -> str:
        response = client.post("/v1/accounts", json=account_body(), headers=headers)
        assert response.status_code == 201, response.text
        return str(response.json()["id"])

    with ThreadPoolExecutor(4) as pool:
        ids = set(pool.map(post, range(8)))
    assert len(ids) == 1
    assert len(client.get("/v1/accounts", headers=admin).json()["data"]) == 1


def test_patch_is_a_merge_patch(client: TestClient, admin: dict[str, str]) -> None:
    record = create(client, "contacts", contact_body(custom={"tier": "gold", "seats": 5}), admin)
    url = f"/v1/contacts/{record['id']}"
    response = client.patch(
        url,
        content=b'{"phone": null, "custom": {"seats": null, "region_code": "B"}}',
        headers={**admin, "If-Match": '"v1"', "Content-Type": "application/merge-patch+json"},
    )
    assert response.status_code == 200, response.text
    patched = response.json()
    assert patched["phone"] is None
    assert patched["custom"] == {"tier": "gold", "region_code": "B"}
    assert patched["email"] == record["email"]
    # A required field cannot be cleared; a stale or foreign ETag is 412.
    cleared = client.patch(url, json={"last_name": None}, headers={**admin, "If-Match": '"v2"'})
    assert cleared.status_code == 422
    for etag in ('"v1"', '"v3"', "v2", '"x"', '"v99999999999999999999"'):
        stale = client.patch(url, json={"title": "x"}, headers={**admin, "If-Match": etag})
        assert stale.status_code == 412, etag
    assert client.get(url, headers=admin).json()["version"] == 2


def test_patch_and_post_need_json(client: TestClient, admin: dict[str, str]) -> None:
    record = create(client, "contacts", contact_body(), admin)
    for content_type in ("text/plain", "application/x-www-form-urlencoded", ""):
        response = client.post(
            "/v1/contacts",
            content=b'{"last_name": "x"}',
            headers={**admin, "Content-Type": content_type},
        )
        assert response.status_code == 415, content_type
        response = client.patch(
            f"/v1/contacts/{record['id']}",
            content=b'{"title": "x"}',
            headers={**admin, "Content-Type": content_type, "If-Match": '"v1"'},
        )
        assert response.status_code == 415, content_type


def test_deleting_a_referenced_record_is_409(client: TestClient, admin: dict[str, str]) -> None:
    account = create(client, "accounts", account_body(), admin)
    create(client, "contacts", contact_body(account_id=account["id"]), admin)
    response = client.delete(f"/v1/accounts/{account['id']}", headers=admin)
    assert response.status_code == 409
    assert client.get(f"/v1/accounts/{account['id']}", headers=admin).status_code == 200
    stale = client.delete(f"/v1/accounts/{account['id']}", headers={**admin, "If-Match": '"v9"'})
    assert stale.status_code == 412


def test_links_must_exist(client: TestClient, admin: dict[str, str]) -> None:
    response = client.post(
        "/v1/contacts",
        json=contact_body(account_id="acc_eu_01m86djerffp6965t85qwjy98v"),
        headers=admin,
    )
    assert response.status_code == 422
    assert response.json()["errors"] == [
        {"field": "account_id", "message": "no account has that id"}
    ]
    activity = client.post("/v1/activities", json={"type": "call", "subject": "x"}, headers=admin)
    assert activity.status_code == 422
    assert {e["field"] for e in activity.json()["errors"]} == {
        "contact_id",
        "lead_id",
        "account_id",
        "opportunity_id",
    }


def test_lead_conversion_is_one_transaction(client: TestClient, admin: dict[str, str]) -> None:
    lead = create(client, "leads", lead_body(region="us", title="CTO", country="US"), admin)
    response = client.post(
        f"/v1/leads/{lead['id']}/convert",
        json={"opportunity": {"name": "Pilot", "amount": "1200.50", "currency": "USD"}},
        headers=admin,
    )
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["lead"]["status"] == "converted"
    assert result["lead"]["converted_contact_id"] == result["contact"]["id"]
    assert result["lead"]["converted_account_id"] == result["account"]["id"]
    assert result["lead"]["converted_opportunity_id"] == result["opportunity"]["id"]
    assert result["contact"]["last_name"] == lead["last_name"]
    assert result["contact"]["email"] == lead["email"]
    assert result["contact"]["account_id"] == result["account"]["id"]
    assert result["account"]["name"] == lead["company"]
    assert result["opportunity"]["amount"] == "1200.50"
    assert {r["region"] for r in result.values()} == {"us"}

    again = client.post(f"/v1/leads/{lead['id']}/convert", json={}, headers=admin)
    assert again.status_code == 409


def test_a_failed_conversion_writes_nothing(client: TestClient, admin: dict[str, str]) -> None:
    lead = create(client, "leads", lead_body(), admin)
    response = client.post(
        f"/v1/leads/{lead['id']}/convert",
        json={"opportunity": {"name": "Pilot", "stage": "not-a-stage"}},
        headers=admin,
    )
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "opportunity.stage"
    for entity in ("contacts", "accounts", "opportunities"):
        assert client.get(f"/v1/{entity}", headers=admin).json()["data"] == []
    assert client.get(f"/v1/leads/{lead['id']}", headers=admin).json()["status"] == "working"
    cross = client.post(
        f"/v1/leads/{lead['id']}/convert",
        json={"account_id": create(client, "accounts", account_body(region="us"), admin)["id"]},
        headers=admin,
    )
    assert cross.status_code == 422


def test_conversion_needs_every_permission_it_uses(
    client: TestClient, admin: dict[str, str], tokens: Tokens
) -> None:
    lead = create(client, "leads", lead_body(), admin)
    marketing = tokens.headers("marketing")  # may update leads, may not create contacts
    response = client.post(f"/v1/leads/{lead['id']}/convert", json={}, headers=marketing)
    assert response.status_code == 403
    assert client.get(f"/v1/leads/{lead['id']}", headers=admin).json()["status"] == "working"


def test_status_converted_is_reserved(client: TestClient, admin: dict[str, str]) -> None:
    response = client.post("/v1/leads", json=lead_body(status="converted"), headers=admin)
    assert response.status_code == 422


def test_a_patch_needs_the_records_etag_not_a_wildcard(
    client: TestClient, admin: dict[str, str]
) -> None:
    contact = create(client, "contacts", contact_body(), admin)
    url = f"/v1/contacts/{contact['id']}"
    missing = client.patch(url, json={"title": "CFO"}, headers=admin)
    assert missing.status_code == 428, missing.text
    for method in ("PATCH", "DELETE"):
        wildcard = client.request(
            method, url, json={"title": "CFO"}, headers={**admin, "If-Match": "*"}
        )
        assert wildcard.status_code == 428, wildcard.text
        assert wildcard.headers["content-type"] == "application/problem+json"
        assert "lost updates" in wildcard.json()["detail"]
    assert client.get(url, headers=admin).json()["version"] == 1


def test_a_wildcard_if_match_is_428_where_if_match_is_optional(
    client: TestClient, admin: dict[str, str]
) -> None:
    """Found by the fuzz (documented since): conversion and merges take an optional
    If-Match, and refuse `*` as PATCH and DELETE do, changing nothing."""
    lead = create(client, "leads", lead_body(), admin)
    survivor = create(client, "contacts", contact_body(), admin)
    loser = create(client, "contacts", contact_body(), admin)
    for path, body in (
        (f"/v1/leads/{lead['id']}/convert", None),
        ("/v1/contacts/merge", {"survivor_id": survivor["id"], "loser_ids": [loser["id"]]}),
    ):
        wildcard = client.post(path, json=body, headers={**admin, "If-Match": "*"})
        assert wildcard.status_code == 428, wildcard.text
        assert wildcard.headers["content-type"] == "application/problem+json"
    assert client.get(f"/v1/leads/{lead['id']}", headers=admin).json()["version"] == 1
    assert client.get(f"/v1/contacts/{loser['id']}", headers=admin).status_code == 200
