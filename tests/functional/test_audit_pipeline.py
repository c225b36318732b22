"""The record pipeline's audit trail: one event per read, write and denial, names only,
in the same transaction as the write (a failed append fails the request)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Connection, select, text
from starlette.testclient import TestClient

from bastion.audit.queries import EventFilter
from bastion.audit.tables import AUDIT
from bastion.state import State
from tests.conftest import Backend, Tokens
from tests.factories import contact_body, create, lead_body

CANARY = "zq.audit.canary@example.org"


def _events(state: State, region: str = "eu") -> list[dict[str, Any]]:
    """Every event of the region, oldest first, as the auditor API shows them."""
    return state.audit.events([region], EventFilter(), limit=500, descending=False).data


def _etag(record: dict[str, Any]) -> dict[str, str]:
    return {"If-Match": f'"v{record["version"]}"'}


def test_every_read_and_write_is_one_event_naming_records_and_fields(
    client: TestClient, admin: dict[str, str], state: State
) -> None:
    contact = create(client, "contacts", contact_body(email=CANARY, region="eu"), admin)
    client.get(f"/v1/contacts/{contact['id']}", headers={**admin, "X-Request-ID": "req-read-1"})
    client.get("/v1/contacts", params={"region": "eu"}, headers=admin)
    updated = client.patch(
        f"/v1/contacts/{contact['id']}", json={"title": "CFO"}, headers={**admin, **_etag(contact)}
    ).json()
    client.delete(f"/v1/contacts/{contact['id']}", headers={**admin, **_etag(updated)})
    events = [e for e in _events(state) if e["entity"] == "contacts"]
    assert [e["action"] for e in events] == [
        "record.create",
        "record.read",
        "record.list",
        "record.update",
        "record.delete",
    ]
    assert all(e["record_ids"] == [contact["id"]] for e in events)
    assert all(e["decision"] == "allow" for e in events)
    assert all(e["policy_version"] == state.policy.version for e in events)
    create_event, read, listed, update, delete = events
    assert {"email", "first_name", "last_name", "phone", "owner_id"} <= set(create_event["fields"])
    assert read["request_id"] == "req-read-1"
    assert "email" in read["fields"]
    assert listed["details"] == {"count": 1}
    assert update["fields"] == ["title"]
    assert delete["fields"] == []


def test_denials_are_events_with_the_reason(
    client: TestClient, admin: dict[str, str], tokens: Tokens, state: State
) -> None:
    contact = create(client, "contacts", contact_body(region="eu"), admin)
    rep = tokens.headers("sales_rep", regions=("eu",), name="audited-rep")
    mine = create(client, "contacts", contact_body(region="eu"), rep)
    assert client.get(f"/v1/contacts/{contact['id']}", headers=rep).status_code == 404
    assert client.delete(f"/v1/contacts/{mine['id']}", headers=rep).status_code == 403
    denied_field = client.patch(
        f"/v1/contacts/{mine['id']}",
        json={"birthdate": "1990-01-01"},
        headers={**rep, **_etag(mine)},
    )
    assert denied_field.status_code == 403
    denials = [e for e in _events(state) if e["decision"] == "deny"]
    assert [(e["action"], e["reason"], e["record_ids"]) for e in denials] == [
        ("record.read", "policy:not-found-in-scope", [contact["id"]]),
        ("record.delete", "policy:action-denied", [mine["id"]]),
        ("record.update", "policy:field-denied", [mine["id"]]),
    ]
    assert denials[2]["fields"] == ["birthdate"]
    rep_id = client.get("/v1/me", headers=rep).json()["id"]
    assert {e["actor"] for e in denials} == {rep_id}


def test_a_conversion_is_one_event_over_every_record_it_touched(
    client: TestClient, admin: dict[str, str], state: State
) -> None:
    lead = create(client, "leads", lead_body(region="us"), admin)
    converted = client.post(
        f"/v1/leads/{lead['id']}/convert", json={"opportunity": {"name": "Pilot"}}, headers=admin
    ).json()
    (event,) = [e for e in _events(state, "us") if e["action"] == "lead.convert"]
    assert event["record_ids"] == [
        lead["id"],
        converted["contact"]["id"],
        converted["account"]["id"],
        converted["opportunity"]["id"],
    ]
    assert _events(state, "eu") == []  # nothing about a US lead in the EU log


def test_values_never_reach_the_audit_tables(
    client: TestClient, admin: dict[str, str], state: State
) -> None:
    contact = create(
        client, "contacts", contact_body(email=CANARY, first_name="Zqname", region="eu"), admin
    )
    client.get("/v1/contacts", params={"email": CANARY}, headers=admin)
    client.patch(
        f"/v1/contacts/{contact['id']}",
        json={"first_name": "Zqrenamed"},
        headers={**admin, **_etag(contact)},
    )
    state.audit.flush("eu")
    with state.regions.get("eu").transaction() as conn:
        dumped = _dump_audit(conn)
    assert contact["id"] in dumped
    for canary in (CANARY, "Zqname", "Zqrenamed", "zqname"):
        assert canary not in dumped


def _dump_audit(conn: Connection) -> str:
    parts = []
    for table in AUDIT:
        for row in conn.execute(select(table)):
            parts.append(repr(tuple(row)))
    return "\n".join(parts)


@contextmanager
def _audit_insert_fails(state: State, backend: Backend) -> Iterator[None]:
    database = state.regions.get("eu")
    with database.transaction(write=True) as conn:
        if backend.name == "sqlite":
            conn.execute(
                text(
                    "CREATE TRIGGER zz_fail BEFORE INSERT ON audit_events "
                    "BEGIN SELECT RAISE(ABORT, 'disk full'); END"
                )
            )
        else:
            conn.execute(
                text(
                    "CREATE FUNCTION zz_fail() RETURNS trigger LANGUAGE plpgsql AS "
                    "$$ BEGIN RAISE EXCEPTION 'disk full'; END $$"
                )
            )
            conn.execute(
                text(
                    "CREATE TRIGGER zz_fail BEFORE INSERT ON audit_events "
                    "FOR EACH ROW EXECUTE FUNCTION zz_fail()"
                )
            )
    try:
        yield
    finally:
        with database.transaction(write=True) as conn:
            conn.execute(
                text(
                    "DROP TRIGGER zz_fail"
                    + (" ON audit_events" if backend.name != "sqlite" else "")
                )
            )
            if backend.name != "sqlite":
                conn.execute(text("DROP FUNCTION zz_fail()"))


def test_a_request_whose_audit_event_fails_does_nothing_and_says_so(
    client: TestClient, admin: dict[str, str], state: State, backend: Backend
) -> None:
    existing = create(client, "contacts", contact_body(region="eu"), admin)
    before = client.get("/v1/contacts", params={"region": "eu"}, headers=admin).json()["data"]
    with _audit_insert_fails(state, backend):
        created = client.post("/v1/contacts", json=contact_body(region="eu"), headers=admin)
        read = client.get(f"/v1/contacts/{existing['id']}", headers=admin)
        patched = client.patch(
            f"/v1/contacts/{existing['id']}",
            json={"title": "X"},
            headers={**admin, **_etag(existing)},
        )
        elsewhere = client.post("/v1/contacts", json=contact_body(region="us"), headers=admin)
    for response in (created, read, patched):
        assert response.status_code == 503, response.text
        assert response.json()["type"] == "urn:bastion:problem:audit-unavailable"
        assert existing["email"] not in response.text
    assert elsewhere.status_code == 201  # the US log is fine
    after = client.get("/v1/contacts", params={"region": "eu"}, headers=admin).json()["data"]
    assert [c["id"] for c in after] == [c["id"] for c in before]
    assert after[0]["version"] == existing["version"]


def test_the_chain_of_a_busy_region_verifies(
    client: TestClient, admin: dict[str, str], state: State
) -> None:
    for _ in range(5):
        record = create(client, "contacts", contact_body(region="eu"), admin)
        client.get(f"/v1/contacts/{record['id']}", headers=admin)
    state.audit.flush("eu")
    report = state.audit.verify("eu")
    assert report.ok, report
    assert report.entries >= 10
