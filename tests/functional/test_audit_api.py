"""`/v1/audit/...` over HTTP on SQLite and PostgreSQL: happy paths, 401, 403, 404 and 422."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import text as sql
from starlette.testclient import TestClient

from bastion.audit import AuditEvent
from bastion.audit.events import FIELD_RE, ID_RE
from bastion.audit.notes import verify_note
from bastion.state import State
from tests.conftest import Tokens
from tests.factories import contact_body, create

CANARY = "canary.9f3e@example.com"
ROUTES = [
    ("GET", "/v1/audit/events"),
    ("GET", "/v1/audit/verify?region=eu"),
    ("POST", "/v1/audit/verify?region=eu"),
    ("GET", "/v1/audit/checkpoints?region=eu"),
    ("POST", "/v1/audit/checkpoints?region=eu"),
    ("GET", "/v1/audit/export"),
]


def _record(state: State, region: str, record_id: str, **overrides: object) -> AuditEvent:
    event = AuditEvent.new(
        state.clock,
        actor=overrides.pop("actor", "prn_01jd0000000000000000000000"),  # type: ignore[arg-type]
        action="record.read",
        entity="contacts",
        record_ids=[record_id],
        fields=["email", "first_name"],
        request_id="req-42",
        **overrides,  # type: ignore[arg-type]
    )
    state.audit.record(region, event)
    return event


@pytest.fixture
def contact(client: TestClient, admin: dict[str, str], state: State) -> str:
    record = create(client, "contacts", contact_body(email=CANARY, region="eu"), admin)
    _record(state, "eu", record["id"])
    return str(record["id"])


@pytest.mark.parametrize(("method", "path"), ROUTES)
def test_every_audit_route_needs_a_token(client: TestClient, method: str, path: str) -> None:
    response = client.request(method, path)
    assert response.status_code == 401
    assert response.headers["content-type"] == "application/problem+json"


@pytest.mark.parametrize(("method", "path"), ROUTES)
def test_a_sales_rep_may_not_touch_the_audit_log(
    client: TestClient, tokens: Tokens, method: str, path: str
) -> None:
    response = client.request(method, path, headers=tokens.headers("sales_rep"))
    assert response.status_code == 403, response.text


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/audit/events?region=mars"),
        ("GET", "/v1/audit/verify?region=mars"),
        ("POST", "/v1/audit/verify?region=mars"),
        ("GET", "/v1/audit/checkpoints?region=mars"),
        ("POST", "/v1/audit/checkpoints?region=mars"),
        ("GET", "/v1/audit/export?region=mars"),
    ],
)
def test_an_unknown_region_is_404(
    client: TestClient, admin: dict[str, str], method: str, path: str
) -> None:
    assert client.request(method, path, headers=admin).status_code == 404


@pytest.mark.parametrize(
    ("path", "field"),
    [
        ("/v1/audit/events?record_id=anna%40example.com", "record_id"),
        ("/v1/audit/events?limit=0", "limit"),
        ("/v1/audit/events?limit=abc", "limit"),
        ("/v1/audit/events?since=yesterday", "since"),
        ("/v1/audit/events?order=sideways", "order"),
        ("/v1/audit/events?colour=red", "colour"),
        ("/v1/audit/events?actor=a&actor=b", "actor"),
        ("/v1/audit/events?region=EU!", "region"),
        ("/v1/audit/verify", "region"),
        ("/v1/audit/verify?region=eu&from=0", "from"),
        ("/v1/audit/checkpoints", "region"),
        ("/v1/audit/export?decision=maybe", "decision"),
    ],
)
def test_bad_parameters_are_422_naming_the_field(
    client: TestClient, admin: dict[str, str], path: str, field: str
) -> None:
    response = client.get(path, headers=admin)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert field in [e["field"] for e in response.json()["errors"]]


def test_a_malformed_or_foreign_cursor_is_refused(
    client: TestClient, admin: dict[str, str], state: State
) -> None:
    for _ in range(3):
        _record(state, "eu", "con_eu_01jd0000000000000000000000")
    page = client.get("/v1/audit/events?limit=1&region=eu", headers=admin).json()
    assert page["next_cursor"]
    for cursor in ("garbage!", page["next_cursor"] + "x", "A" * 40):
        response = client.get(f"/v1/audit/events?limit=1&region=eu&cursor={cursor}", headers=admin)
        assert response.status_code == 400, response.text
    other_query = client.get(
        f"/v1/audit/events?limit=1&region=us&cursor={page['next_cursor']}", headers=admin
    )
    assert other_query.status_code == 400


def test_a_region_the_principal_does_not_hold_is_forbidden(
    client: TestClient, tokens: Tokens
) -> None:
    us_auditor = tokens.headers("auditor", regions=("us",))
    assert client.get("/v1/audit/events?region=eu", headers=us_auditor).status_code == 403
    assert client.get("/v1/audit/events?region=control", headers=us_auditor).status_code == 403
    assert client.get("/v1/audit/events?region=us", headers=us_auditor).status_code == 200


def test_who_accessed_a_contact_and_the_lookup_is_itself_audited(
    client: TestClient, tokens: Tokens, admin: dict[str, str]
) -> None:
    contact = create(client, "contacts", contact_body(email=CANARY, region="eu"), admin)["id"]
    reader = tokens.headers("sales_manager", name="the-reader")
    read = client.get(f"/v1/contacts/{contact}", headers={**reader, "X-Request-ID": "req-42"})
    assert read.status_code == 200
    auditor = tokens.headers("auditor", name="the-auditor")
    response = client.get(f"/v1/audit/events?record_id={contact}", headers=auditor)
    assert response.status_code == 200, response.text
    assert CANARY not in response.text
    body = response.json()
    assert set(body) == {"data", "next_cursor"}
    assert [e["action"] for e in body["data"]] == ["record.read", "record.create"]
    assert [e["record_ids"] for e in body["data"]] == [[contact], [contact]]
    newest = body["data"][0]
    assert newest["actor"] == client.get("/v1/me", headers=reader).json()["id"]
    assert newest["request_id"] == "req-42"
    assert {"email", "first_name", "last_name"} <= set(newest["fields"])
    assert "birthdate" not in newest["fields"]  # withheld from a sales manager, so not read
    assert newest["policy_version"] == client.get("/v1/me", headers=reader).json()["policy_version"]
    me = client.get("/v1/me", headers=auditor).json()["id"]
    reads = client.get(
        f"/v1/audit/events?action=audit.read&actor={me}&region=eu", headers=auditor
    ).json()["data"]
    assert reads
    assert reads[0]["record_ids"] == [contact]
    assert reads[0]["entity"] == "audit"


def test_events_and_exports_hold_names_and_ids_never_values(
    client: TestClient, admin: dict[str, str], contact: str
) -> None:
    events = client.get("/v1/audit/events?region=eu", headers=admin)
    export = client.get("/v1/audit/export?region=eu", headers=admin)
    assert export.status_code == 200
    assert export.headers["content-type"].startswith("application/x-ndjson")
    for text in (events.text, export.text):
        assert CANARY not in text
        assert "Anna" not in text
    for line in export.text.splitlines():
        event = json.loads(line)
        assert all(ID_RE.fullmatch(r) for r in event["record_ids"])
        assert all(FIELD_RE.fullmatch(f) for f in event["fields"])
    assert any(json.loads(line)["record_ids"] == [contact] for line in export.text.splitlines())


def test_verify_checkpoint_and_read_the_signed_note(
    client: TestClient, tokens: Tokens, admin: dict[str, str], contact: str
) -> None:
    created = client.post("/v1/audit/checkpoints?region=eu", headers=admin)
    # 200 when the background sequencer already signed this head.
    assert created.status_code in (200, 201), created.text
    checkpoint = created.json()
    assert checkpoint["tree_size"] >= 1
    auditor = tokens.headers("auditor")
    assert client.post("/v1/audit/checkpoints?region=eu", headers=auditor).status_code == 403

    listed = client.get("/v1/audit/checkpoints?region=eu", headers=auditor)
    assert listed.status_code == 200
    body = listed.json()
    assert body["data"][0]["tree_size"] == checkpoint["tree_size"]
    assert set(body) == {"data", "verifier_key", "next_cursor"}
    verify_note(body["data"][0]["note"], body["verifier_key"])
    note = client.get(
        "/v1/audit/checkpoints?region=eu", headers={**auditor, "Accept": "text/plain"}
    )
    assert note.headers["content-type"].startswith("text/plain")
    verify_note(note.text, body["verifier_key"])

    verified = client.get("/v1/audit/verify?region=eu", headers=auditor)
    assert verified.status_code == 200
    report = verified.json()
    assert report["ok"] is True
    assert report["first_bad_seq"] is None
    assert report["checkpoints"] >= 1
    assert client.get("/v1/audit/verify?region=control", headers=admin).json()["ok"] is True


def test_checkpointing_an_empty_chain_is_a_conflict(
    client: TestClient, admin: dict[str, str]
) -> None:
    response = client.post("/v1/audit/checkpoints?region=us", headers=admin)
    assert response.status_code == 409
    assert response.headers["content-type"] == "application/problem+json"


def test_export_filters_and_covers_permitted_regions(
    client: TestClient, tokens: Tokens, state: State
) -> None:
    _record(state, "eu", "con_eu_01jd0000000000000000000000")
    _record(state, "us", "con_us_01jd0000000000000000000000", decision="deny")
    auditor = tokens.headers("auditor")
    everything = client.get("/v1/audit/export?action=record.read", headers=auditor)
    chains = sorted(json.loads(line)["chain"] for line in everything.text.splitlines())
    assert chains == ["eu", "us"]
    denied = client.get("/v1/audit/export?decision=deny", headers=auditor)
    assert [json.loads(line)["chain"] for line in denied.text.splitlines()] == ["us"]


def test_verify_from_past_the_head_is_422_naming_from(
    client: TestClient, admin: dict[str, str], state: State
) -> None:
    for _ in range(3):
        _record(state, "us", "con_us_01jd0000000000000000000000")
    state.audit.flush("us")
    at_end = client.get("/v1/audit/verify?region=us&from=4", headers=admin)
    assert at_end.status_code == 200, at_end.text
    assert (at_end.json()["ok"], at_end.json()["entries"]) == (True, 0)
    past = client.get("/v1/audit/verify?region=us&from=50", headers=admin)
    assert past.status_code == 422, past.text
    assert [e["field"] for e in past.json()["errors"]] == ["from"]


def test_verify_against_a_witness_checkpoint(
    client: TestClient, admin: dict[str, str], tokens: Tokens, state: State
) -> None:
    for _ in range(3):
        _record(state, "us", "con_us_01jd0000000000000000000000")
    auditor = tokens.headers("auditor")
    client.post("/v1/audit/checkpoints?region=us", headers=admin)
    note = client.get(
        "/v1/audit/checkpoints?region=us", headers={**auditor, "Accept": "text/plain"}
    ).text
    plain = {**auditor, "Content-Type": "text/plain"}
    checked = client.post("/v1/audit/verify?region=us", content=note, headers=plain)
    assert checked.status_code == 200, checked.text
    assert checked.json()["ok"] is True
    assert checked.json()["witness_tree_size"] == int(note.splitlines()[1])
    forged = note.replace(note.splitlines()[2], "A" * 43 + "=")
    refused = client.post("/v1/audit/verify?region=us", content=forged, headers=plain)
    assert refused.status_code == 422
    assert [e["field"] for e in refused.json()["errors"]] == ["body"]
    other_chain = client.post("/v1/audit/verify?region=eu", content=note, headers=plain)
    assert other_chain.status_code == 422
    as_json = client.post("/v1/audit/verify?region=us", json={"note": note}, headers=auditor)
    assert as_json.status_code == 415


def test_a_malformed_checkpoint_row_does_not_break_listing_or_verify(
    client: TestClient, admin: dict[str, str], state: State
) -> None:
    _record(state, "us", "con_us_01jd0000000000000000000000")
    client.post("/v1/audit/checkpoints?region=us", headers=admin)
    with state.audit.database("us").transaction(write=True) as conn:
        conn.execute(
            sql(
                "INSERT INTO audit_checkpoints SELECT 999, 'x', head_hash, created_at, "
                "'zzzzzzzz', signature FROM audit_checkpoints"
            )
        )
    listed = client.get("/v1/audit/checkpoints?region=us", headers=admin)
    assert listed.status_code == 200, listed.text
    assert [c["tree_size"] for c in listed.json()["data"]] == [1]
    verified = client.get("/v1/audit/verify?region=us", headers=admin)
    assert verified.status_code == 200, verified.text
    assert verified.json()["first_bad_seq"] == 999


def test_the_audit_operations_are_described_for_openapi() -> None:
    from bastion.api.audit import openapi_paths, routes

    paths = openapi_paths()
    assert set(paths) == {route.path for route in routes}
    assert paths["/v1/audit/checkpoints"].keys() == {"get", "post"}
    assert paths["/v1/audit/verify"].keys() == {"get", "post"}


def test_a_query_about_one_record_reads_only_its_region(
    client: TestClient, tokens: Tokens, state: State
) -> None:
    eu_contact = "con_eu_01m86ch3m0fm7889axhbnh88n8"
    _record(state, "eu", eu_contact)
    _record(state, "us", "con_us_01m86ch3m0emt8kzargn0sax3c")
    auditor = tokens.headers("auditor")
    found = client.get(f"/v1/audit/events?record_id={eu_contact}", headers=auditor)
    assert found.status_code == 200, found.text
    assert {event["chain"] for event in found.json()["data"]} == {"eu"}
    exported = client.get(f"/v1/audit/export?record_id={eu_contact}", headers=auditor)
    assert {json.loads(line)["chain"] for line in exported.text.splitlines()} == {"eu"}
    # The US database never hears the id (the residency guard on `state` checks
    # that); asking the US log about an EU record is a mistake, said as one.
    mismatch = client.get(f"/v1/audit/events?record_id={eu_contact}&region=us", headers=auditor)
    assert mismatch.status_code == 422
    assert [e["field"] for e in mismatch.json()["errors"]] == ["record_id"]
    assert eu_contact not in mismatch.text
