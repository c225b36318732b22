"""Lists: keyset pagination across regions, filters, sort, and tamper-proof cursors."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from starlette.testclient import TestClient

from tests.conftest import Tokens
from tests.factories import create


def _pages(client: TestClient, headers: dict[str, str], **params: Any) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = []
    cursor = None
    for _ in range(100):
        query = {**params, **({"cursor": cursor} if cursor else {})}
        response = client.get("/v1/accounts", params=query, headers=headers)
        assert response.status_code == 200, response.text
        page = response.json()
        assert len(page["data"]) <= int(params.get("limit", 50))
        records.extend(page["data"])
        cursor = page["next_cursor"]
        if cursor is None:
            return records
    raise AssertionError("pagination did not end")


@pytest.fixture
def accounts(client: TestClient, admin: dict[str, str]) -> list[dict[str, Any]]:
    made = []
    for n in range(23):
        made.append(
            create(
                client,
                "accounts",
                {
                    "name": f"Account {n:02d}",
                    "region": "eu" if n % 3 else "us",
                    "employee_count": None if n % 5 == 0 else (n * 7) % 11,
                    "type": "customer" if n % 2 else "prospect",
                },
                admin,
            )
        )
    return made


@pytest.mark.parametrize(
    "sort", [None, "-created_at", "employee_count", "-employee_count", "name", "id", "-id"]
)
def test_pages_merge_regions_in_order_without_gaps_or_repeats(
    client: TestClient, admin: dict[str, str], accounts: list[dict[str, Any]], sort: str | None
) -> None:
    params: dict[str, Any] = {"limit": 4}
    if sort:
        params["sort"] = sort
    seen = _pages(client, admin, **params)
    assert sorted(r["id"] for r in seen) == sorted(a["id"] for a in accounts)
    assert {r["region"] for r in seen} == {"eu", "us"}
    column = (sort or "created_at").lstrip("-")
    descending = bool(sort and sort.startswith("-"))

    def key(record: dict[str, Any]) -> tuple[Any, ...]:
        value = record[column]
        return (value is None, value if value is not None else 0, record["id"])

    expected = sorted(seen, key=key, reverse=descending)
    if descending:  # NULLs still last
        expected = [r for r in expected if r[column] is not None] + [
            r for r in sorted(seen, key=key, reverse=True) if r[column] is None
        ]
    assert [r["id"] for r in seen] == [r["id"] for r in expected]


def test_filters_and_region(
    client: TestClient, admin: dict[str, str], accounts: list[dict[str, Any]]
) -> None:
    customers = _pages(client, admin, type="customer", limit=5)
    assert sorted(r["id"] for r in customers) == sorted(
        a["id"] for a in accounts if a["type"] == "customer"
    )
    us = _pages(client, admin, region="us", limit=5)
    assert {r["region"] for r in us} == {"us"}
    assert len(us) == len([a for a in accounts if a["region"] == "us"])
    counted = _pages(client, admin, employee_count="3")
    assert all(r["employee_count"] == 3 for r in counted)


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"limit": "0"}, "limit"),
        ({"limit": "201"}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"sort": "description"}, "sort"),
        ({"sort": "tax_id"}, "sort"),
        ({"nonexistent": "1"}, "nonexistent"),
        ({"description": "x"}, "description"),
        ({"employee_count": "many"}, "employee_count"),
        ({"type": "alien"}, "type"),
        ({"region": "mars"}, "region"),
    ],
)
def test_bad_list_parameters_are_422(
    client: TestClient, admin: dict[str, str], params: dict[str, str], field: str
) -> None:
    response = client.get("/v1/accounts", params=params, headers=admin)
    assert response.status_code == 422, response.text
    assert field in [e["field"] for e in response.json()["errors"]]


def test_cursors_are_tamper_proof_and_bound_to_their_query(
    client: TestClient, admin: dict[str, str], accounts: list[dict[str, Any]]
) -> None:
    cursor = client.get("/v1/accounts", params={"limit": 3}, headers=admin).json()["next_cursor"]
    raw = bytearray(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    raw[-1] ^= 1
    flipped = base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()
    for bad in (flipped, "garbage", "", "A" * 5000, cursor[:-2], "é"):
        response = client.get("/v1/accounts", params={"limit": 3, "cursor": bad}, headers=admin)
        assert response.status_code == 400, (bad, response.text)
        assert response.headers["content-type"] == "application/problem+json"
    # Same cursor, different query (filter, sort, entity): rejected, not misapplied.
    for path, params in (
        ("/v1/accounts", {"limit": 3, "type": "customer"}),
        ("/v1/accounts", {"limit": 3, "sort": "name"}),
        ("/v1/accounts", {"limit": 3, "region": "eu"}),
        ("/v1/contacts", {"limit": 3}),
    ):
        response = client.get(path, params={**params, "cursor": cursor}, headers=admin)
        assert response.status_code == 400, response.text


def test_a_principal_lists_only_its_regions(
    client: TestClient, tokens: Tokens, accounts: list[dict[str, Any]]
) -> None:
    eu_only = tokens.headers("sales_rep", regions=("eu",), name="eu-rep")
    seen = _pages(client, eu_only, limit=7)
    assert {r["region"] for r in seen} == {"eu"}
    assert len(seen) == len([a for a in accounts if a["region"] == "eu"])


def test_repeated_query_parameters_are_rejected(client: TestClient, admin: dict[str, str]) -> None:
    response = client.get("/v1/accounts?limit=1&limit=2", headers=admin)
    assert response.status_code == 400
