"""Region pinning: an EU record's values exist in the EU database and nowhere else."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect, text
from starlette.testclient import TestClient

from bastion.residency.ids import RecordId
from bastion.state import State
from tests.conftest import Backend, ResidencyGuard, Tokens
from tests.factories import contact_body, create


def _database_contains(url: str, needle: str) -> bool:
    """Whether any text-ish column of any table in the database holds `needle`."""
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            for table in inspect(conn).get_table_names():
                columns = [c["name"] for c in inspect(conn).get_columns(table)]
                for column in columns:
                    cast = f'CAST("{column}" AS TEXT)'
                    hit = conn.execute(
                        text(f'SELECT 1 FROM "{table}" WHERE {cast} LIKE :n LIMIT 1'),  # noqa: S608 - names from the schema
                        {"n": f"%{needle}%"},
                    ).first()
                    if hit is not None:
                        return True
    finally:
        engine.dispose()
    return False


def test_an_eu_contact_never_reaches_the_us_database(
    backend: Backend, state: State, client: TestClient, admin: dict[str, str]
) -> None:
    canary = f"canary{secrets.token_hex(8)}"
    record = create(
        client,
        "contacts",
        contact_body(region="eu", last_name=canary, email=f"{canary}@example.com"),
        admin,
    )
    client.patch(
        f"/v1/contacts/{record['id']}",
        json={"title": canary, "custom": {"note": canary}},
        headers={**admin, "If-Match": '"v1"'},
    )
    state.close()  # flush and release SQLite files before scanning their bytes

    assert _database_contains(backend.urls["eu"], canary)
    assert not _database_contains(backend.urls["us"], canary)
    assert not _database_contains(backend.urls["control"], canary)
    assert not _database_contains(backend.urls["us"], record["id"])
    if backend.name == "sqlite":
        for name in ("us", "control"):
            path = Path(backend.urls[name].removeprefix("sqlite:///"))
            for file in path.parent.glob(f"{path.name}*"):  # the database, -wal and -shm
                assert canary.encode() not in file.read_bytes(), file


def test_creating_in_a_region_outside_the_principals_is_forbidden(
    client: TestClient, tokens: Tokens
) -> None:
    eu_rep = tokens.headers("sales_rep", regions=("eu",), name="eu-rep")
    response = client.post("/v1/contacts", json=contact_body(region="us"), headers=eu_rep)
    assert response.status_code == 403
    assert client.get("/v1/contacts", headers=eu_rep).json()["data"] == []
    listed_us = client.get("/v1/contacts", params={"region": "us"}, headers=eu_rep)
    assert listed_us.status_code == 403
    # The default region of an EU-only principal is EU.
    created = client.post("/v1/contacts", json=contact_body(), headers=eu_rep)
    assert created.status_code == 201
    assert created.json()["region"] == "eu"


def test_references_never_cross_regions(client: TestClient, admin: dict[str, str]) -> None:
    account = create(client, "accounts", {"name": "Acme", "region": "us"}, admin)
    response = client.post(
        "/v1/contacts",
        json=contact_body(region="eu", account_id=account["id"]),
        headers=admin,
    )
    assert response.status_code == 422
    assert response.json()["errors"] == [
        {"field": "account_id", "message": "must be in the record's region (eu)"}
    ]


def test_a_filter_on_a_link_asks_only_the_linked_records_region(
    client: TestClient, admin: dict[str, str], residency_guard: ResidencyGuard
) -> None:
    """Found by tests/functional/test_fuzz.py: a list filtered on an EU account id
    fanned out to every region, sending the EU id to the US database."""
    account = create(client, "accounts", {"name": "Acme", "region": "eu"}, admin)
    case = create(client, "cases", {"subject": "Outage", "account_id": account["id"]}, admin)
    create(client, "cases", {"subject": "Elsewhere", "region": "us"}, admin)
    listed = client.get("/v1/cases", params={"account_id": account["id"]}, headers=admin)
    assert [r["id"] for r in listed.json()["data"]] == [case["id"]]
    us_contact = str(RecordId.new("con", "us", datetime.now(UTC)))
    for query in ({"region": "us"}, {"contact_id": us_contact}):
        elsewhere = client.get(
            "/v1/cases", params={"account_id": account["id"], **query}, headers=admin
        )
        assert elsewhere.status_code == 200, elsewhere.text
        assert elsewhere.json() == {"data": [], "next_cursor": None}
    assert residency_guard.breaches == []


def test_the_residency_guard_catches_an_id_sent_to_another_region(backend: Backend) -> None:
    """The guard every `state` test ends with (tests/conftest.py) is not vacuous."""
    guard = ResidencyGuard(("eu", "us"))
    us = create_engine(backend.urls["us"])
    guard.watch("us", us)
    eu_id = str(RecordId.new("con", "eu", datetime.now(UTC)))
    us_id = str(RecordId.new("con", "us", datetime.now(UTC)))
    try:
        with us.connect() as conn:
            conn.execute(text("SELECT count(*) FROM contacts WHERE id = :id"), {"id": us_id})
            assert guard.breaches == []
            conn.execute(text("SELECT count(*) FROM contacts WHERE id = :id"), {"id": eu_id})
            conn.execute(text("SELECT :note"), {"note": f"about {eu_id}".encode()})
    finally:
        us.dispose()
    assert len(guard.breaches) == 2
    assert all(eu_id in breach for breach in guard.breaches)
    with pytest.raises(AssertionError, match="records crossed regions"):
        guard.assert_clean()
