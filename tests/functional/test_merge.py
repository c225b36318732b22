"""Merging duplicate people over HTTP, on SQLite and PostgreSQL (`quality.merge`).

The world: two contacts that are the same person (the survivor and the loser), each
holding its own canaries, and around the loser an activity and a case about them
(sealed under the loser's key), a deal naming them and the lead they were converted
from. A merge must keep every related record, re-sealed under the survivor's key
where it was the loser's; the loser becomes a tombstone that redirects, lists and
lookups skip; an undo puts everything back; finalising shreds the loser's key; a
data subject's request about the survivor covers the loser while it holds data.
"""

from __future__ import annotations

import io
import json
import threading
import zipfile
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import structlog
from click.testing import CliRunner
from sqlalchemy import select, update
from starlette.testclient import TestClient

from bastion.audit.tables import AUDIT
from bastion.cli import main
from bastion.crm.tables import ENTITY_TABLES
from bastion.crypto.envelope import key_id_of
from bastion.crypto.errors import KeyDestroyed
from bastion.crypto.tables import subject_keys
from bastion.errors import BastionError
from bastion.principals.caller import Caller
from bastion.quality.finalize import finalize_due
from bastion.quality.tables import duplicate_pairs, merges
from bastion.residency.ids import RecordId
from bastion.state import State
from tests.conftest import REGIONS, REPO, SECRET, Backend, FrozenClock, ResidencyGuard, Tokens
from tests.factories import account_body, contact_body, create, lead_body
from tests.functional.test_dsr_e2e import open_request, run_request

# Requests are run by the test (state.dsr_jobs), not by the app's in-process runner.
SETTINGS_ENV = {"BASTION_DSR_IN_PROCESS": "false"}
CANARY = "zqmerge"


@dataclass
class World:
    survivor: dict[str, Any]
    loser: dict[str, Any]
    lead: str
    activity: str
    case: str
    deal: str


def _world(client: TestClient, admin: dict[str, str]) -> World:
    account = create(client, "accounts", account_body(region="eu"), admin)
    survivor = create(
        client,
        "contacts",
        contact_body(region="eu", first_name=f"{CANARY}keptfirst", mailing_street="1 Old Road"),
        admin,
    )
    lead = create(
        client, "leads", lead_body(region="eu", last_name=f"{CANARY}lead", company="Acme"), admin
    )
    converted = client.post(
        f"/v1/leads/{lead['id']}/convert", json={"account_id": account["id"]}, headers=admin
    )
    assert converted.status_code == 200, converted.text
    loser_id = converted.json()["contact"]["id"]
    patched = client.patch(
        f"/v1/contacts/{loser_id}",
        json={
            "email": f"{CANARY}.loser@example.com",
            "mailing_street": f"{CANARY}loserstreet",
            "birthdate": "1980-02-03",
            "title": f"{CANARY}title",
        },
        headers={**admin, "If-Match": '"v1"'},
    )
    assert patched.status_code == 200, patched.text
    activity = create(
        client,
        "activities",
        {
            "region": "eu",
            "type": "call",
            "subject": "Call",
            "contact_id": loser_id,
            "body": f"{CANARY}activitybody",
        },
        admin,
    )
    case = create(
        client,
        "cases",
        {
            "region": "eu",
            "subject": "Refund",
            "contact_id": loser_id,
            "description": f"{CANARY}casedesc",
        },
        admin,
    )
    deal = create(
        client,
        "opportunities",
        {
            "region": "eu",
            "name": "Deal",
            "account_id": account["id"],
            "contact_id": loser_id,
            "stage": "proposal",
        },
        admin,
    )
    return World(survivor, patched.json(), lead["id"], activity["id"], case["id"], deal["id"])


def _merge(
    client: TestClient, headers: dict[str, str], survivor: str, losers: list[str], **fields: str
) -> Any:
    body = {"survivor_id": survivor, "loser_ids": losers, "fields": fields}
    return client.post("/v1/contacts/merge", json=body, headers=headers)


def _key_subject(state: State, entity: str, record_id: str, field: str) -> str:
    """Whose data key seals a stored field."""
    table = ENTITY_TABLES[entity]
    with state.regions.get("eu").transaction() as conn:
        blob = conn.execute(select(table.c[field]).where(table.c.id == record_id)).scalar_one()
        return state.keys.dek_by_id(conn, "eu", key_id_of(bytes(blob))).subject_id


def _stored(state: State, record_id: str) -> dict[str, Any]:
    """A contact's row as stored (ciphertexts, indexes)."""
    table = ENTITY_TABLES["contacts"]
    with state.regions.get("eu").transaction() as conn:
        row = conn.execute(select(table).where(table.c.id == record_id)).one()
        return {k: bytes(v) if isinstance(v, memoryview) else v for k, v in row._mapping.items()}


def _audit(state: State, action: str) -> list[dict[str, Any]]:
    events = AUDIT.events
    with state.regions.get("eu").transaction() as conn:
        rows = conn.execute(select(events.c.payload).where(events.c.action == action)).scalars()
        return [json.loads(p) for p in rows]


def test_merge_keeps_every_related_record_under_the_survivors_key(
    client: TestClient,
    state: State,
    tokens: Tokens,
    admin: dict[str, str],
    residency_guard: ResidencyGuard,
) -> None:
    world = _world(client, admin)
    s, loser = world.survivor["id"], world.loser["id"]
    response = _merge(client, admin, s, [loser], email=loser, mailing_street=loser, birthdate=loser)
    assert response.status_code == 201, response.text
    merge = response.json()["merge"]
    assert response.headers["location"] == f"/v1/merges/{merge['id']}"
    moved = {(m["entity"], m["id"], m["field"]) for m in merge["moved"]}
    assert moved == {
        ("activities", world.activity, "contact_id"),
        ("cases", world.case, "contact_id"),
        ("opportunities", world.deal, "contact_id"),
        ("leads", world.lead, "converted_contact_id"),
    }

    shown = client.get(f"/v1/contacts/{s}", headers=admin).json()
    assert shown["email"] == f"{CANARY}.loser@example.com"
    assert shown["mailing_street"] == f"{CANARY}loserstreet"
    assert shown["birthdate"] == "1980-02-03"
    assert shown["first_name"] == f"{CANARY}keptfirst"
    assert shown["version"] == world.survivor["version"] + 1
    assert "_erased" not in shown
    assert response.json()["survivor"] == shown

    activity = client.get(f"/v1/activities/{world.activity}", headers=admin).json()
    assert activity["contact_id"] == s
    assert activity["body"] == f"{CANARY}activitybody"
    case = client.get(f"/v1/cases/{world.case}", headers=admin).json()
    assert case["contact_id"] == s
    assert case["description"] == f"{CANARY}casedesc"
    assert "_erased" not in activity
    assert "_erased" not in case
    assert client.get(f"/v1/opportunities/{world.deal}", headers=admin).json()["contact_id"] == s
    assert client.get(f"/v1/leads/{world.lead}", headers=admin).json()["converted_contact_id"] == s
    assert _key_subject(state, "activities", world.activity, "body") == s
    assert _key_subject(state, "cases", world.case, "description") == s
    # Whoever could read the activity before still can: it fails closed for nobody.
    manager = tokens.headers("sales_manager")
    seen = client.get(f"/v1/activities/{world.activity}", headers=manager).json()
    assert seen["body"] == f"{CANARY}activitybody"
    # The loser's tombstone keeps its sealed fields under its own key, for an undo.
    assert _key_subject(state, "contacts", loser, "email") == loser
    residency_guard.assert_clean()


def test_a_merged_loser_redirects_refuses_writes_and_leaves_lists_and_lookups(
    client: TestClient, tokens: Tokens, admin: dict[str, str]
) -> None:
    world = _world(client, admin)
    s, loser = world.survivor["id"], world.loser["id"]
    assert _merge(client, admin, s, [loser], email=loser).status_code == 201

    moved = client.get(f"/v1/contacts/{loser}", headers=admin, follow_redirects=False)
    assert moved.status_code == 301
    assert moved.headers["location"] == f"/v1/contacts/{s}"
    assert moved.headers["content-type"] == "application/problem+json"
    assert moved.json()["type"].endswith("merged")
    assert moved.json()["merged_into"] == s

    patched = client.patch(
        f"/v1/contacts/{loser}", json={"title": "x"}, headers={**admin, "If-Match": '"v3"'}
    )
    assert patched.status_code == 409
    assert s in patched.json()["detail"]
    deleted = client.delete(f"/v1/contacts/{loser}", headers=admin)
    assert deleted.status_code == 409

    listed = [r["id"] for r in client.get("/v1/contacts?limit=200", headers=admin).json()["data"]]
    assert s in listed
    assert loser not in listed
    found = client.get(f"/v1/contacts?email={CANARY}.loser@example.com", headers=admin).json()
    assert [r["id"] for r in found["data"]] == [s]
    # A new activity cannot link to the tombstone.
    linked = client.post(
        "/v1/activities",
        json={"region": "eu", "type": "call", "subject": "x", "contact_id": loser},
        headers=admin,
    )
    assert linked.status_code == 422

    # Someone who may not read the survivor learns nothing: the old id does not exist.
    us_only = tokens.headers("admin", regions=("us",), name="admin-us")
    assert client.get(f"/v1/contacts/{loser}", headers=us_only).status_code == 404


def test_undo_restores_survivor_relations_and_the_loser_exactly(
    client: TestClient, state: State, admin: dict[str, str]
) -> None:
    world = _world(client, admin)
    s, loser = world.survivor["id"], world.loser["id"]
    survivor_before = client.get(f"/v1/contacts/{s}", headers=admin).json()
    stored_before = {i: _stored(state, i) for i in (s, loser)}
    merge = _merge(client, admin, s, [loser], email=loser, mailing_street=loser).json()["merge"]

    undone = client.post(f"/v1/merges/{merge['id']}/undo", headers=admin)
    assert undone.status_code == 200, undone.text
    assert undone.json()["status"] == "undone"

    after = client.get(f"/v1/contacts/{s}", headers=admin).json()
    skip = {"version", "updated_at"}
    assert {k: v for k, v in after.items() if k not in skip} == {
        k: v for k, v in survivor_before.items() if k not in skip
    }
    assert after["version"] == survivor_before["version"] + 2
    restored = client.get(f"/v1/contacts/{loser}", headers=admin, follow_redirects=False)
    assert restored.status_code == 200
    assert restored.json()["email"] == f"{CANARY}.loser@example.com"
    activity = client.get(f"/v1/activities/{world.activity}", headers=admin).json()
    assert activity["contact_id"] == loser
    assert activity["body"] == f"{CANARY}activitybody"
    assert _key_subject(state, "activities", world.activity, "body") == loser
    assert _key_subject(state, "cases", world.case, "description") == loser
    assert (
        client.get(f"/v1/opportunities/{world.deal}", headers=admin).json()["contact_id"] == loser
    )
    lead = client.get(f"/v1/leads/{world.lead}", headers=admin).json()
    assert lead["converted_contact_id"] == loser
    # The loser's blind indexes were recomputed: lookups find it again.
    found = client.get(f"/v1/contacts?email={CANARY}.loser@example.com", headers=admin).json()
    assert [r["id"] for r in found["data"]] == [loser]
    # Stored exactly as before: the survivor's ciphertexts and indexes, the loser's
    # indexes recomputed to what they were (only versions and times moved on).
    moved_on = {"version", "updated_at"}
    for record_id, before in stored_before.items():
        after_row = _stored(state, record_id)
        assert {k: v for k, v in after_row.items() if k not in moved_on} == {
            k: v for k, v in before.items() if k not in moved_on
        }
    again = client.post(f"/v1/merges/{merge['id']}/undo", headers=admin)
    assert again.status_code == 409
    assert _audit(state, "record.unmerge")


def test_undo_refuses_when_the_survivor_changed_since(
    client: TestClient, admin: dict[str, str]
) -> None:
    world = _world(client, admin)
    s, loser = world.survivor["id"], world.loser["id"]
    response = _merge(client, admin, s, [loser])
    merge, etag = response.json()["merge"], response.headers["etag"]
    changed = client.patch(
        f"/v1/contacts/{s}", json={"title": "Changed"}, headers={**admin, "If-Match": etag}
    )
    assert changed.status_code == 200
    refused = client.post(f"/v1/merges/{merge['id']}/undo", headers=admin)
    assert refused.status_code == 409
    assert "changed since the merge" in refused.json()["detail"]


def test_after_the_window_undo_is_refused_and_finalising_shreds_the_losers_key(
    client: TestClient, state: State, clock: FrozenClock, admin: dict[str, str]
) -> None:
    world = _world(client, admin)
    s, loser = world.survivor["id"], world.loser["id"]
    merge = _merge(client, admin, s, [loser]).json()["merge"]
    clock.advance(timedelta(days=31))

    late = client.post(f"/v1/merges/{merge['id']}/undo", headers=admin)
    assert late.status_code == 409
    assert "window" in late.json()["detail"]

    # The DSR worker's housekeeping finalises it: the loser's key and plain personal
    # fields go; its ciphertexts stay, as noise.
    state.dsr_jobs.run_once()
    assert client.get(f"/v1/merges/{merge['id']}", headers=admin).json()["status"] == "final"
    database = state.regions.get("eu")
    table = ENTITY_TABLES["contacts"]
    with database.transaction() as conn:
        keys = conn.execute(
            select(subject_keys.c.subject_id).where(subject_keys.c.subject_id == loser)
        )
        assert keys.first() is None
        row = conn.execute(select(table).where(table.c.id == loser)).one()
        assert row.title is None
        with pytest.raises(KeyDestroyed):
            state.keys.dek_by_id(conn, "eu", key_id_of(bytes(row.email)))
    # The old id still leads to the survivor; the survivor and its records still read.
    assert (
        client.get(f"/v1/contacts/{loser}", headers=admin, follow_redirects=False).status_code
        == 301
    )
    activity = client.get(f"/v1/activities/{world.activity}", headers=admin).json()
    assert activity["body"] == f"{CANARY}activitybody"
    assert finalize_due(database, state.keys, state.records.recorder, clock) == 0
    assert [p["details"]["merge_id"] for p in _audit(state, "record.merge_final")] == [merge["id"]]


def test_merges_finalize_command_finalises_due_merges(
    client: TestClient, state: State, backend: Backend, tmp_path: Path, admin: dict[str, str]
) -> None:
    world = _world(client, admin)
    merge = _merge(client, admin, world.survivor["id"], [world.loser["id"]]).json()["merge"]
    database = state.regions.get("eu")
    with database.transaction(write=True) as conn:
        # The command runs on the wall clock: this merge's window passed long ago.
        conn.execute(
            update(merges)
            .where(merges.c.id == merge["id"])
            .values(undo_until=datetime(2000, 1, 1, tzinfo=UTC))
        )
    env = {
        "BASTION_CONFIG": str(tmp_path / "absent.toml"),
        "BASTION_HOME": str(tmp_path),
        "BASTION_POLICIES": str(REPO / "policies"),
        "BASTION_SECRET_KEY": SECRET,
        "BASTION_LOG_LEVEL": "ERROR",
        "BASTION_CONTROL_URL": backend.urls["control"],
        "BASTION_REGIONS": ",".join(REGIONS),
        **{f"BASTION_REGION_{r.upper()}_URL": backend.urls[r] for r in REGIONS},
    }
    try:
        result = CliRunner().invoke(main, ["merges", "finalize", "--region", "eu"], env=env)
        unknown = CliRunner().invoke(main, ["merges", "finalize", "--region", "xx"], env=env)
    finally:
        structlog.reset_defaults()  # the command configured logging for its process
    assert result.exit_code == 0, result.output
    assert "1 merge(s) finalised in eu" in result.output
    assert client.get(f"/v1/merges/{merge['id']}", headers=admin).json()["status"] == "final"
    assert unknown.exit_code != 0


def test_concurrent_merges_of_one_loser_exactly_one_wins(
    client: TestClient, state: State, admin: dict[str, str]
) -> None:
    world = _world(client, admin)
    other = create(client, "contacts", contact_body(region="eu"), admin)["id"]
    loser = world.loser["id"]
    principal = state.tokens.issue(principal_name="merger", roles=["admin"]).principal
    barrier = threading.Barrier(2)
    outcomes: list[int] = []

    def merge(survivor: str) -> None:
        barrier.wait()
        try:
            state.merges.merge(
                Caller(principal), "contacts", {"survivor_id": survivor, "loser_ids": [loser]}
            )
            outcomes.append(201)
        except BastionError as exc:
            outcomes.append(exc.status)

    threads = [threading.Thread(target=merge, args=(s,)) for s in (world.survivor["id"], other)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) in ([201, 409], [201, 412]), outcomes


def test_rights_are_checked_before_anything_is_merged(
    client: TestClient, state: State, tokens: Tokens, admin: dict[str, str]
) -> None:
    world = _world(client, admin)
    s, loser = world.survivor["id"], world.loser["id"]
    rep = tokens.headers("sales_rep")
    assert _merge(client, rep, s, [loser]).status_code == 403
    manager = tokens.headers("sales_manager")
    denied = _merge(client, manager, s, [loser], birthdate=loser, email=loser)
    assert denied.status_code == 403
    assert denied.json()["fields"] == ["birthdate"]
    assert "1980" not in denied.text
    # Nothing happened: the loser still reads, the survivor is unchanged.
    assert client.get(f"/v1/contacts/{loser}", headers=admin).status_code == 200
    shown = client.get(f"/v1/contacts/{s}", headers=admin).json()
    assert shown["version"] == world.survivor["version"]
    allowed = _merge(client, manager, s, [loser], email=loser)
    assert allowed.status_code == 201, allowed.text
    assert "birthdate" in allowed.json()["survivor"]["_withheld"]


def test_bad_merges_are_422_and_write_nothing(
    client: TestClient, state: State, admin: dict[str, str]
) -> None:
    world = _world(client, admin)
    s, loser = world.survivor["id"], world.loser["id"]
    us = create(client, "contacts", contact_body(region="us"), admin)["id"]
    cross = _merge(client, admin, s, [us])
    assert cross.status_code == 422
    assert "impossible by design" in cross.json()["detail"]
    itself = _merge(client, admin, s, [s, loser])
    assert itself.status_code == 422
    assert {"field": "loser_ids", "message": "must not include the survivor"} in itself.json()[
        "errors"
    ]
    for body in (
        {"survivor_id": s, "loser_ids": []},
        {"survivor_id": s},
        {"survivor_id": s, "loser_ids": [loser], "extra": 1},
        {"survivor_id": s, "loser_ids": [loser, loser]},
        {"survivor_id": s, "loser_ids": [loser], "fields": {"email": world.deal}},
        {"survivor_id": s, "loser_ids": [loser], "fields": {"converted_at": loser}},
        {"survivor_id": s, "loser_ids": [world.lead]},
        {"survivor_id": 7, "loser_ids": [loser]},
        {"survivor_id": s, "loser_ids": [loser], "fields": []},
    ):
        response = client.post("/v1/contacts/merge", json=body, headers=admin)
        assert response.status_code == 422, (body, response.text)
        assert response.headers["content-type"] == "application/problem+json"
    not_json = client.post(
        "/v1/contacts/merge", content=b"{", headers={**admin, "content-type": "application/json"}
    )
    assert not_json.status_code == 400
    stale = client.post(
        "/v1/contacts/merge",
        json={"survivor_id": s, "loser_ids": [loser]},
        headers={**admin, "If-Match": '"v99"'},
    )
    assert stale.status_code == 412
    assert client.post("/v1/accounts/merge", json={}, headers=admin).status_code in (404, 405)
    assert client.get(f"/v1/contacts/{loser}", headers=admin).status_code == 200
    with state.regions.get("eu").transaction() as conn:
        assert not _audit(state, "record.merge")
        assert conn.execute(select(duplicate_pairs)).first() is None


def test_merging_a_held_or_merged_record_is_409(
    client: TestClient, tokens: Tokens, admin: dict[str, str]
) -> None:
    world = _world(client, admin)
    s, loser = world.survivor["id"], world.loser["id"]
    officer = tokens.headers("compliance_officer", name="dpo")
    third = create(client, "contacts", contact_body(region="eu"), admin)["id"]
    hold = client.post(
        "/v1/legal-holds", json={"target_id": third, "reason": "litigation"}, headers=officer
    )
    assert hold.status_code == 201
    held = _merge(client, admin, s, [third])
    assert held.status_code == 409
    assert "legal hold" in held.json()["detail"]
    assert _merge(client, admin, s, [loser]).status_code == 201
    again = _merge(client, admin, third, [loser])
    assert again.status_code == 409


def test_merges_are_audited_by_id_and_field_name_only(
    client: TestClient, state: State, admin: dict[str, str]
) -> None:
    world = _world(client, admin)
    s, loser = world.survivor["id"], world.loser["id"]
    merge = _merge(client, admin, s, [loser], email=loser, mailing_street=loser).json()["merge"]
    (event,) = _audit(state, "record.merge")
    assert event["fields"] == ["email", "mailing_street"]
    assert {s, loser, world.activity, world.case, world.deal, world.lead} <= set(
        event["record_ids"]
    )
    assert event["details"]["merge_id"] == merge["id"]
    assert CANARY not in repr(event)
    shown = client.get(f"/v1/merges/{merge['id']}", headers=admin)
    assert shown.status_code == 200
    assert CANARY not in shown.text
    assert shown.json()["fields"] == {"email": loser, "mailing_street": loser}
    other_region = str(RecordId.new("mrg", "us", state.clock.now()))
    assert client.get(f"/v1/merges/{other_region}", headers=admin).status_code == 404
    assert client.get("/v1/merges/not-an-id", headers=admin).status_code == 404
    rep = state.tokens.issue(principal_name="rep", roles=["sales_rep"])
    rep_headers = {"Authorization": f"Bearer {rep.secret}"}
    assert client.get(f"/v1/merges/{merge['id']}", headers=rep_headers).status_code == 403
    assert client.post(f"/v1/merges/{merge['id']}/undo", headers=rep_headers).status_code == 403


def test_access_request_for_the_survivor_covers_the_losers_data(
    client: TestClient, state: State, tokens: Tokens, admin: dict[str, str]
) -> None:
    world = _world(client, admin)
    s, loser = world.survivor["id"], world.loser["id"]
    assert _merge(client, admin, s, [loser]).status_code == 201
    officer = tokens.headers("compliance_officer", name="dpo")
    request_id = open_request(client, officer, {"type": "access", "subject_id": s})
    done = run_request(state, client, officer, request_id)
    assert done["status"] == "completed", done
    package = client.get(f"/v1/dsr/{request_id}/package", headers=officer)
    assert package.status_code == 200
    with zipfile.ZipFile(io.BytesIO(package.content)) as archive:
        text = "".join(archive.read(name).decode("utf-8", "replace") for name in archive.namelist())
    assert loser in text
    assert f"{CANARY}.loser@example.com" in text  # the tombstone's own data, still held


def test_erasure_of_the_survivor_erases_the_losers_and_makes_the_merge_final(
    client: TestClient, state: State, tokens: Tokens, admin: dict[str, str]
) -> None:
    world = _world(client, admin)
    s, loser = world.survivor["id"], world.loser["id"]
    merge = _merge(client, admin, s, [loser]).json()["merge"]
    officer = tokens.headers("compliance_officer", name="dpo")
    request_id = open_request(client, officer, {"type": "erasure", "subject_id": s})
    done = run_request(state, client, officer, request_id)
    assert done["status"] in ("completed", "partially_completed"), done
    assert client.get(f"/v1/contacts/{loser}", headers=admin).status_code == 410
    assert client.get(f"/v1/merges/{merge['id']}", headers=admin).json()["status"] == "final"
    assert client.post(f"/v1/merges/{merge['id']}/undo", headers=admin).status_code == 409
    with state.regions.get("eu").transaction() as conn:
        held = conn.execute(
            select(subject_keys.c.subject_id).where(subject_keys.c.subject_id.in_([s, loser]))
        )
        assert held.first() is None


def test_leads_merge_with_the_same_code(client: TestClient, admin: dict[str, str]) -> None:
    entity = "leads"
    first = create(client, entity, lead_body(region="eu"), admin)["id"]
    second = create(client, entity, lead_body(region="eu", company="Other"), admin)["id"]
    note = create(
        client,
        "activities",
        {"region": "eu", "type": "note", "subject": "n", "lead_id": second, "body": "hello"},
        admin,
    )["id"]
    response = client.post(
        f"/v1/{entity}/merge",
        json={"survivor_id": first, "loser_ids": [second], "fields": {"company": second}},
        headers=admin,
    )
    assert response.status_code == 201, response.text
    assert response.json()["survivor"]["company"] == "Other"
    shown = client.get(f"/v1/activities/{note}", headers=admin).json()
    assert shown["lead_id"] == first
    assert shown["body"] == "hello"
