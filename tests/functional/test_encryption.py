"""Field encryption through the record pipeline, on SQLite and PostgreSQL.

No plaintext at rest (raw SQLite files, `pg_dump`), tampering fails closed, blind
indexes find values without decrypting tables, duplicates are refused, erased
subjects read as erased, and relinking an activity re-keys its fields.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update
from starlette.testclient import TestClient

from bastion.app import create_app
from bastion.crm.tables import ENTITY_TABLES
from bastion.state import State, build_state
from tests.conftest import Backend, FrozenClock, Tokens, settings_for
from tests.factories import account_body, contact_body, create, lead_body

CANARIES = {
    "first_name": "Zqfirstcanary",
    "last_name": "Zqlastcanary",
    "email": "zq.mailcanary@example.org",
    "phone": "+4930999888777",
    "mailing_street": "Zqstreetcanary 1",
    "birthdate": "1977-07-17",
}


def _seed(client: TestClient, admin: dict[str, str]) -> dict[str, Any]:
    account = create(client, "accounts", account_body(tax_id="ZQTAXCANARY42", region="eu"), admin)
    contact = create(client, "contacts", {**CANARIES, "region": "eu"}, admin)
    lead = create(
        client,
        "leads",
        lead_body(first_name="Zqleadcanary", email="zq.leadmail@example.org", region="eu"),
        admin,
    )
    activity = create(
        client,
        "activities",
        {
            "region": "eu",
            "type": "note",
            "subject": "Call notes",
            "body": "Zqbodycanary said something private",
            "contact_id": contact["id"],
        },
        admin,
    )
    case = create(
        client,
        "cases",
        {
            "region": "eu",
            "subject": "Login",
            "description": "Zqcasecanary description",
            "resolution": "Zqresolutioncanary",
            "account_id": account["id"],
        },
        admin,
    )
    return {
        "account": account,
        "contact": contact,
        "lead": lead,
        "activity": activity,
        "case": case,
    }


SECRETS = [
    *(v for k, v in CANARIES.items() if k not in ("phone", "birthdate")),
    "+4930999888777",
    "ZQTAXCANARY42",
    "Zqleadcanary",
    "zq.leadmail@example.org",
    "Zqbodycanary",
    "Zqcasecanary",
    "Zqresolutioncanary",
]


def _dump(backend: Backend, tmp_path: Path) -> bytes:
    """Everything the EU database holds on disk (SQLite files) or in a dump (PostgreSQL)."""
    if backend.name == "sqlite":
        eu = Path(backend.urls["eu"].removeprefix("sqlite:///"))
        return b"".join(p.read_bytes() for p in eu.parent.glob(eu.name + "*"))
    pg_dump = shutil.which("pg_dump")
    assert pg_dump is not None, "pg_dump is needed for the at-rest scan"
    url = backend.urls["eu"].replace("postgresql+psycopg://", "postgresql://")
    return subprocess.run([pg_dump, "--no-owner", url], capture_output=True, check=True).stdout


def test_no_plaintext_at_rest_but_every_value_reads_back(
    client: TestClient, admin: dict[str, str], backend: Backend, tmp_path: Path, state: State
) -> None:
    records = _seed(client, admin)
    got = client.get(f"/v1/contacts/{records['contact']['id']}", headers=admin).json()
    for name, value in CANARIES.items():
        assert got[name] == value
    assert (
        client.get(f"/v1/activities/{records['activity']['id']}", headers=admin)
        .json()["body"]
        .startswith("Zqbodycanary")
    )
    state.audit.flush("eu")
    raw = _dump(backend, tmp_path)
    assert len(raw) > 10_000
    found = [s for s in SECRETS if s.encode() in raw or s.lower().encode() in raw]
    assert found == [], found
    assert b"1977-07-17" not in raw  # the birth date, in ISO form


def test_a_ciphertext_moved_to_another_row_or_field_does_not_decrypt(
    client: TestClient, admin: dict[str, str], state: State
) -> None:
    one = create(client, "contacts", contact_body(region="eu"), admin)
    two = create(client, "contacts", contact_body(region="eu"), admin)
    table = ENTITY_TABLES["contacts"]
    database = state.regions.get("eu")
    with database.transaction(write=True) as conn:
        email_of_one = conn.execute(select(table.c.email).where(table.c.id == one["id"])).scalar()
        conn.execute(update(table).where(table.c.id == two["id"]).values(email=email_of_one))
        conn.execute(update(table).where(table.c.id == one["id"]).values(phone=email_of_one))
    for record in (one, two):
        response = client.get(f"/v1/contacts/{record['id']}", headers=admin)
        assert response.status_code == 500
        problem = response.json()
        assert problem["type"] == "urn:bastion:problem:decryption-failed"
        assert "@" not in response.text
        assert "+4930" not in response.text


def test_a_flipped_byte_fails_closed(
    client: TestClient, admin: dict[str, str], state: State
) -> None:
    record = create(client, "contacts", contact_body(region="eu"), admin)
    table = ENTITY_TABLES["contacts"]
    with state.regions.get("eu").transaction(write=True) as conn:
        blob = bytearray(
            conn.execute(select(table.c.email).where(table.c.id == record["id"])).scalar()
        )
        blob[-5] ^= 0x01
        conn.execute(update(table).where(table.c.id == record["id"]).values(email=bytes(blob)))
    response = client.get(f"/v1/contacts/{record['id']}", headers=admin)
    assert response.status_code == 500
    assert response.json()["type"] == "urn:bastion:problem:decryption-failed"


def test_exact_match_filters_use_the_blind_index(client: TestClient, admin: dict[str, str]) -> None:
    anna = create(
        client, "contacts", contact_body(email="Anna.Schmidt@Example.com", region="eu"), admin
    )
    create(client, "contacts", contact_body(email="someone.else@example.com", region="eu"), admin)
    for spelling in ("anna.schmidt@example.com", "ANNA.SCHMIDT@EXAMPLE.COM"):
        found = client.get("/v1/contacts", params={"email": spelling}, headers=admin).json()
        assert [c["id"] for c in found["data"]] == [anna["id"]], spelling
    by_name = client.get("/v1/contacts", params={"last_name": "schmidt"}, headers=admin).json()
    assert len(by_name["data"]) == 2
    by_phone = client.get("/v1/contacts", params={"phone": anna["phone"]}, headers=admin).json()
    assert [c["id"] for c in by_phone["data"]] == [anna["id"]]
    none = client.get("/v1/contacts", params={"email": "nobody@example.com"}, headers=admin)
    assert none.json()["data"] == []


@pytest.fixture
def small_index(backend: Backend, tmp_path: Path, clock: FrozenClock) -> Iterator[TestClient]:
    """A deployment whose blind indexes are 8 bits: false positives become common."""
    (tmp_path / "absent.toml").write_text("")
    settings = settings_for(backend, tmp_path, BASTION_KEYS_BLIND_INDEX_BITS="8")
    state = build_state(settings, clock=clock)
    try:
        with TestClient(create_app(settings, state=state)) as client:
            yield client
    finally:
        state.close()


def test_pages_of_a_blind_index_filter_skip_false_positives(small_index: TestClient) -> None:
    # Names chosen to collide with "needle" in the 8-bit index: the SQL filter returns
    # them, decryption must drop them, and the pages must still reach every match.
    client = small_index
    state: State = client.app.state.bastion  # type: ignore[attr-defined]
    admin = {
        "Authorization": f"Bearer {state.tokens.issue(principal_name='a', roles=['admin']).secret}"
    }

    def index(name: str) -> bytes:
        return state.keys.blind_index("eu", "contacts", "last_name", name, kind="name")

    target = index("Needle")
    colliding = [f"Filler{n}" for n in range(20_000) if index(f"Filler{n}") == target][:6]
    assert len(colliding) == 6
    for name in colliding:
        create(client, "contacts", contact_body(last_name=name, region="eu"), admin)
    matches = {
        create(client, "contacts", contact_body(last_name="Needle", region="eu"), admin)["id"]
        for _ in range(7)
    }
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"last_name": "needle", "limit": 2}
        if cursor:
            params["cursor"] = cursor
        page = client.get("/v1/contacts", params=params, headers=admin).json()
        assert len(page["data"]) <= 2
        assert all(c["last_name"] == "Needle" for c in page["data"])
        seen += [c["id"] for c in page["data"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert sorted(seen) == sorted(matches)


def test_a_duplicate_email_or_phone_is_refused_unless_asked_for(
    client: TestClient, admin: dict[str, str], tokens: Tokens
) -> None:
    first = create(client, "contacts", contact_body(region="eu"), admin)
    again = client.post(
        "/v1/contacts", json=contact_body(email=first["email"].upper(), region="eu"), headers=admin
    )
    assert again.status_code == 409
    problem = again.json()
    assert problem["existing_id"] == first["id"]
    assert problem["fields"] == ["email"]
    assert first["email"] not in again.text
    by_phone = client.post(
        "/v1/contacts", json=contact_body(phone=first["phone"], region="eu"), headers=admin
    )
    assert by_phone.status_code == 409
    assert by_phone.json()["fields"] == ["phone"]
    forced = client.post(
        "/v1/contacts?allow_duplicate=true",
        json=contact_body(email=first["email"], region="eu"),
        headers=admin,
    )
    assert forced.status_code == 201
    bad = client.post(
        "/v1/contacts?allow_duplicate=maybe", json=contact_body(region="eu"), headers=admin
    )
    assert bad.status_code == 400
    # Another region is another database: no duplicate there.
    elsewhere = client.post(
        "/v1/contacts", json=contact_body(email=first["email"], region="us"), headers=admin
    )
    assert elsewhere.status_code == 201


def test_duplicates_outside_the_callers_scope_are_not_revealed(
    client: TestClient, admin: dict[str, str], tokens: Tokens
) -> None:
    someone_elses = create(client, "contacts", contact_body(region="eu"), admin)
    rep = tokens.headers("sales_rep", regions=("eu",), name="scoped-rep")
    mine = client.post(
        "/v1/contacts", json=contact_body(email=someone_elses["email"], region="eu"), headers=rep
    )
    assert mine.status_code == 201
    assert someone_elses["id"] not in mine.text


def test_leads_are_deduplicated_too(client: TestClient, admin: dict[str, str]) -> None:
    lead = create(client, "leads", lead_body(region="us"), admin)
    again = client.post(
        "/v1/leads", json=lead_body(email=lead["email"], region="us"), headers=admin
    )
    assert again.status_code == 409
    assert again.json()["existing_id"] == lead["id"]


def test_an_erased_subject_reads_as_erased_and_others_are_untouched(
    client: TestClient, admin: dict[str, str], state: State
) -> None:
    records = _seed(client, admin)
    other = create(client, "contacts", contact_body(region="eu"), admin)
    contact_id = records["contact"]["id"]
    database = state.regions.get("eu")
    with database.transaction(write=True) as conn:
        assert state.keys.shred(conn, "eu", contact_id) >= 1
    got = client.get(f"/v1/contacts/{contact_id}", headers=admin)
    assert got.status_code == 200
    record = got.json()
    assert set(record["_erased"]) == set(CANARIES)
    for name in CANARIES:
        assert name not in record
    assert record["mailing_country"] is None or "mailing_country" in record
    activity = client.get(f"/v1/activities/{records['activity']['id']}", headers=admin).json()
    assert activity["_erased"] == ["body"]
    assert activity["subject"] == "Call notes"
    assert (
        client.get(f"/v1/contacts/{other['id']}", headers=admin).json()["email"] == other["email"]
    )
    case = client.get(f"/v1/cases/{records['case']['id']}", headers=admin).json()
    assert case["description"].startswith("Zqcasecanary")  # keyed to the account, not the person


def test_relinking_an_activity_moves_its_fields_to_the_new_persons_key(
    client: TestClient, admin: dict[str, str], state: State
) -> None:
    alice = create(client, "contacts", contact_body(region="eu"), admin)
    bob = create(client, "contacts", contact_body(region="eu"), admin)
    note = create(
        client,
        "activities",
        {
            "region": "eu",
            "type": "note",
            "subject": "x",
            "body": "about someone",
            "contact_id": alice["id"],
        },
        admin,
    )
    moved = client.patch(
        f"/v1/activities/{note['id']}",
        json={"contact_id": bob["id"]},
        headers={**admin, "If-Match": f'"v{note["version"]}"'},
    )
    assert moved.status_code == 200, moved.text
    assert moved.json()["body"] == "about someone"
    with state.regions.get("eu").transaction(write=True) as conn:
        state.keys.shred(conn, "eu", alice["id"])
    assert (
        client.get(f"/v1/activities/{note['id']}", headers=admin).json()["body"] == "about someone"
    )
    with state.regions.get("eu").transaction(write=True) as conn:
        state.keys.shred(conn, "eu", bob["id"])
    assert client.get(f"/v1/activities/{note['id']}", headers=admin).json()["_erased"] == ["body"]


def test_rotating_a_subjects_key_re_encrypts_its_values(
    client: TestClient, admin: dict[str, str], state: State
) -> None:
    from bastion.crm.subjects import rotate_subject_key
    from bastion.crypto.envelope import key_id_of

    records = _seed(client, admin)
    contact_id = records["contact"]["id"]
    table = ENTITY_TABLES["contacts"]
    database = state.regions.get("eu")
    with database.transaction() as conn:
        before = conn.execute(select(table.c.email).where(table.c.id == contact_id)).scalar()
    with database.transaction(write=True) as conn:
        report = rotate_subject_key(state.keys, conn, "eu", contact_id)
    assert report.records == 2  # the contact and the activity about it
    assert report.old_key_ids == {key_id_of(bytes(before))}
    with database.transaction() as conn:
        after = conn.execute(select(table.c.email).where(table.c.id == contact_id)).scalar()
    assert key_id_of(bytes(after)) != key_id_of(bytes(before))
    got = client.get(f"/v1/contacts/{contact_id}", headers=admin).json()
    assert got["email"] == CANARIES["email"]
    assert got["version"] == records["contact"]["version"]
