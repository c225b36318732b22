"""One end-to-end pass: create, read, update, list and delete a contact."""

from __future__ import annotations

from starlette.testclient import TestClient

from tests.factories import contact_body, create


def test_contact_lifecycle(client: TestClient, admin: dict[str, str]) -> None:
    record = create(client, "contacts", contact_body(region="eu"), admin)
    assert record["id"].startswith("con_eu_")
    assert record["region"] == "eu"
    assert record["version"] == 1

    fetched = client.get(f"/v1/contacts/{record['id']}", headers=admin)
    assert fetched.status_code == 200
    assert fetched.json() == record
    assert fetched.headers["etag"] == '"v1"'

    patched = client.patch(
        f"/v1/contacts/{record['id']}",
        json={"title": "CFO"},
        headers={**admin, "If-Match": '"v1"'},
    )
    assert patched.status_code == 200, patched.text
    assert patched.json()["title"] == "CFO"
    assert patched.json()["version"] == 2

    listed = client.get("/v1/contacts", headers=admin)
    assert listed.status_code == 200
    assert [r["id"] for r in listed.json()["data"]] == [record["id"]]

    deleted = client.delete(f"/v1/contacts/{record['id']}", headers=admin)
    assert deleted.status_code == 204
    assert client.get(f"/v1/contacts/{record['id']}", headers=admin).status_code == 404
