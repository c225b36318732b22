"""Every record route, for every entity: happy path, 401, 403, 404 and 422."""

from __future__ import annotations

import pytest
from starlette.testclient import TestClient

from tests.conftest import Tokens
from tests.factories import ENTITY_NAMES, body_for, create

PREFIXES = {
    "accounts": "acc",
    "contacts": "con",
    "leads": "led",
    "opportunities": "opp",
    "activities": "act",
    "cases": "cas",
}
# A string no field of any entity accepts.
WRONG_TYPE = {"accounts": "name", "contacts": "last_name", "leads": "company"}


def _problem(response, status: int) -> dict:  # type: ignore[no-untyped-def]
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["status"] == status
    assert {"type", "title", "detail"} <= set(body)
    return body  # type: ignore[no-any-return]


@pytest.mark.parametrize("entity", ENTITY_NAMES)
def test_create_get_patch_delete(client: TestClient, admin: dict[str, str], entity: str) -> None:
    body = body_for(client, entity, admin, region="us")
    response = client.post(f"/v1/{entity}", json=body, headers=admin)
    assert response.status_code == 201, response.text
    record = response.json()
    assert record["id"].startswith(f"{PREFIXES[entity]}_us_")
    assert response.headers["location"] == f"/v1/{entity}/{record['id']}"
    assert response.headers["etag"] == '"v1"'
    for name, value in body.items():
        assert record[name] == value

    got = client.get(f"/v1/{entity}/{record['id']}", headers=admin)
    assert got.status_code == 200
    assert got.json() == record

    patched = client.patch(
        f"/v1/{entity}/{record['id']}",
        json={"custom": {"tier": "gold"}},
        headers={**admin, "If-Match": got.headers["etag"]},
    )
    assert patched.status_code == 200, patched.text
    assert patched.json()["custom"] == {"tier": "gold"}
    assert patched.headers["etag"] == '"v2"'

    listed = client.get(f"/v1/{entity}", params={"region": "us"}, headers=admin)
    assert record["id"] in [r["id"] for r in listed.json()["data"]]

    deleted = client.delete(f"/v1/{entity}/{record['id']}", headers={**admin, "If-Match": '"v2"'})
    assert deleted.status_code == 204
    _problem(client.get(f"/v1/{entity}/{record['id']}", headers=admin), 404)


@pytest.mark.parametrize("entity", ENTITY_NAMES)
def test_every_route_needs_a_valid_token(
    client: TestClient, admin: dict[str, str], entity: str
) -> None:
    record = create(client, entity, body_for(client, entity, admin), admin)
    url = f"/v1/{entity}/{record['id']}"
    bad_tokens: list[dict[str, str]] = [
        {},
        {"Authorization": "Basic dXNlcjpwYXNz"},
        {"Authorization": "Bearer "},
        {"Authorization": "Bearer bst_0000000000000000_" + "A" * 43},
        {"Authorization": admin["Authorization"][:-1] + "x"},
    ]
    for headers in bad_tokens:
        for method, path, kwargs in (
            ("GET", f"/v1/{entity}", {}),
            ("POST", f"/v1/{entity}", {"json": {}}),
            ("GET", url, {}),
            ("PATCH", url, {"json": {}, "headers": {"If-Match": '"v1"'}}),
            ("DELETE", url, {}),
        ):
            merged = {**kwargs.pop("headers", {}), **headers}  # type: ignore[dict-item]
            response = client.request(method, path, headers=merged, **kwargs)  # type: ignore[arg-type]
            body = _problem(response, 401)
            assert response.headers["www-authenticate"].startswith("Bearer")
            assert "bst_" not in body["detail"]
    # Nothing was changed by the rejected calls.
    assert client.get(url, headers=admin).json()["version"] == 1


@pytest.mark.parametrize("entity", ENTITY_NAMES)
def test_roles_without_the_permission_get_403_and_change_nothing(
    client: TestClient, admin: dict[str, str], tokens: Tokens, entity: str
) -> None:
    record = create(client, entity, body_for(client, entity, admin), admin)
    url = f"/v1/{entity}/{record['id']}"
    auditor = tokens.headers("auditor")  # separation of duties: no CRM access at all
    for method, path, kwargs in (
        ("GET", f"/v1/{entity}", {}),
        ("POST", f"/v1/{entity}", {"json": body_for(client, entity, admin)}),
        ("GET", url, {}),
        ("PATCH", url, {"json": {"custom": {"x": "y"}}, "headers": {"If-Match": '"v1"'}}),
        ("DELETE", url, {}),
    ):
        merged = {**kwargs.pop("headers", {}), **auditor}  # type: ignore[dict-item]
        _problem(client.request(method, path, headers=merged, **kwargs), 403)  # type: ignore[arg-type]
    # sales_rep may update but not delete accounts.
    rep = tokens.headers("sales_rep")
    if entity in ("accounts", "contacts", "leads", "opportunities"):
        _problem(client.delete(url, headers=rep), 403)
    assert client.get(url, headers=admin).json()["version"] == 1
    listed = client.get(f"/v1/{entity}", headers=admin).json()["data"]
    assert record["id"] in [r["id"] for r in listed]


@pytest.mark.parametrize("entity", ENTITY_NAMES)
def test_other_region_and_malformed_ids_are_404(
    client: TestClient, admin: dict[str, str], tokens: Tokens, entity: str
) -> None:
    record = create(client, entity, body_for(client, entity, admin, region="eu"), admin)
    prefix, _region, tail = record["id"].split("_")
    elsewhere = f"{prefix}_us_{tail}"  # the same id, claimed for the other region
    unknown_region = f"{prefix}_apac_{tail}"
    wrong_prefix = f"{'acc' if prefix != 'acc' else 'con'}_eu_{tail}"
    malformed = [
        "not-an-id",
        f"{prefix}_eu_{tail[:-1]}",
        f"{prefix}_eu_{tail}0",
        f"{prefix}_EU_{tail}",
        f"{prefix}_eu_{tail.upper()}",
        "x" * 500,
        "%00",
        "con_eu_' OR 1=1 --",
    ]
    for record_id in [elsewhere, unknown_region, wrong_prefix, *malformed]:
        for method, kwargs in (
            ("GET", {}),
            ("PATCH", {"json": {"custom": {}}, "headers": {"If-Match": '"v1"'}}),
            ("DELETE", {}),
        ):
            merged = {**kwargs.pop("headers", {}), **admin}  # type: ignore[dict-item]
            response = client.request(method, f"/v1/{entity}/{record_id}", headers=merged, **kwargs)  # type: ignore[arg-type]
            body = _problem(response, 404)
            assert record_id not in body["detail"]
    # A principal limited to `us` cannot see the EU record either, even by its real id.
    us_only = tokens.headers("admin", regions=("us",), name="us-admin")
    _problem(client.get(f"/v1/{entity}/{record['id']}", headers=us_only), 404)
    assert record["id"] not in [
        r["id"] for r in client.get(f"/v1/{entity}", headers=us_only).json()["data"]
    ]


@pytest.mark.parametrize("entity", ENTITY_NAMES)
def test_bad_input_is_422_with_field_errors_and_writes_nothing(
    client: TestClient, admin: dict[str, str], entity: str
) -> None:
    body = body_for(client, entity, admin)
    before = len(client.get(f"/v1/{entity}", headers=admin).json()["data"])
    cases = [
        ({**body, "no_such_field": 1}, "no_such_field"),
        ({**body, "custom": "not an object"}, "custom"),
        ({**body, "owner_id": 42}, "owner_id"),
        ({**body, "version": 7}, "version"),
        ({**body, "id": "con_eu_01m86djerffp6965t85qwjy98v"}, "id"),
        ({**body, "team_id": "Not A Team!"}, "team_id"),
    ]
    if entity in WRONG_TYPE:
        cases.append(({**body, WRONG_TYPE[entity]: ["a", "list"]}, WRONG_TYPE[entity]))
        cases.append(
            ({k: v for k, v in body.items() if k != WRONG_TYPE[entity]}, WRONG_TYPE[entity])
        )
    for bad, field in cases:
        problem = _problem(client.post(f"/v1/{entity}", json=bad, headers=admin), 422)
        assert field in [e["field"] for e in problem["errors"]], problem
    region = _problem(
        client.post(f"/v1/{entity}", json={**body, "region": "mars"}, headers=admin), 422
    )
    assert region["errors"][0]["field"] == "region"
    assert len(client.get(f"/v1/{entity}", headers=admin).json()["data"]) == before

    record = create(client, entity, body, admin)
    problem = _problem(
        client.patch(
            f"/v1/{entity}/{record['id']}",
            json={"custom": {"Bad Key": 1}, "owner_id": "nobody"},
            headers={**admin, "If-Match": '"v1"'},
        ),
        422,
    )
    assert {e["field"] for e in problem["errors"]} == {"custom", "owner_id"}
    assert client.get(f"/v1/{entity}/{record['id']}", headers=admin).json()["version"] == 1
