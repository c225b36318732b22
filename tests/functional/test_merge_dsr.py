"""Merges and data subjects' rights (`quality.merge`, `quality.finalize`, `dsr`).

A merge makes one person of several records: a request naming any of them (the
survivor, a loser's old id, or filed before the merge) covers all of them; an
erasure still open freezes the person against merges; a legal hold postpones the
shredding of the losers' keys; and once a merge is closed (undone, final, erased)
it keeps nothing of the survivor's former values.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select
from starlette.testclient import TestClient

from bastion.crypto.tables import subject_keys
from bastion.quality.finalize import finalize_due
from bastion.quality.tables import merges
from bastion.state import State
from tests.conftest import FrozenClock, Tokens
from tests.factories import contact_body, create
from tests.functional.test_dsr_e2e import open_request, run_request
from tests.functional.test_merge import CANARY, _merge, _world

# Requests are run by the test (state.dsr_jobs), not by the app's in-process runner.
SETTINGS_ENV = {"BASTION_DSR_IN_PROCESS": "false"}


def _keys_left(state: State, ids: list[str]) -> set[str]:
    with state.regions.get("eu").transaction() as conn:
        query = select(subject_keys.c.subject_id).where(subject_keys.c.subject_id.in_(ids))
        return {str(i) for i in conn.execute(query).scalars()}


def _merge_row(state: State, merge_id: str) -> dict[str, Any]:
    with state.regions.get("eu").transaction() as conn:
        return dict(conn.execute(select(merges).where(merges.c.id == merge_id)).one()._mapping)


def test_erasure_naming_a_merged_loser_erases_the_survivor_and_its_other_losers(
    client: TestClient, state: State, tokens: Tokens, admin: dict[str, str]
) -> None:
    world = _world(client, admin)
    s, loser = world.survivor["id"], world.loser["id"]
    other = create(client, "contacts", contact_body(region="eu"), admin)["id"]
    assert _merge(client, admin, s, [loser, other], email=loser).status_code == 201
    officer = tokens.headers("compliance_officer", name="dpo")

    request_id = open_request(client, officer, {"type": "erasure", "subject_id": loser})
    filed = client.get(f"/v1/dsr/{request_id}", headers=officer).json()
    assert filed["subject_ids"][0] == loser
    assert set(filed["subject_ids"]) == {loser, s, other}
    done = run_request(state, client, officer, request_id)
    assert done["status"] in ("completed", "partially_completed"), done

    for record_id in (s, loser, other):
        assert client.get(f"/v1/contacts/{record_id}", headers=admin).status_code == 410
    assert _keys_left(state, [s, loser, other]) == set()
    # What the survivor took from the loser, and the records moved to it, went too.
    activity = client.get(f"/v1/activities/{world.activity}", headers=admin)
    assert CANARY not in activity.text
    found = client.get(f"/v1/contacts?email={CANARY}.loser@example.com", headers=admin)
    assert found.json()["data"] == []


def test_a_request_filed_before_a_merge_follows_the_person_to_the_survivor(
    client: TestClient, state: State, tokens: Tokens, admin: dict[str, str]
) -> None:
    world = _world(client, admin)
    s, loser = world.survivor["id"], world.loser["id"]
    officer = tokens.headers("compliance_officer", name="dpo")
    request_id = open_request(client, officer, {"type": "access", "subject_id": loser})
    assert _merge(client, admin, s, [loser], email=loser).status_code == 201

    done = run_request(state, client, officer, request_id)
    assert done["status"] == "completed", done
    package = client.get(f"/v1/dsr/{request_id}/package", headers=officer)
    assert package.status_code == 200
    with zipfile.ZipFile(io.BytesIO(package.content)) as archive:
        text = "".join(archive.read(name).decode("utf-8", "replace") for name in archive.namelist())
    assert s in text
    assert f"{CANARY}keptfirst" in text  # the survivor's own value: the same person now
    assert f"{CANARY}activitybody" in text  # moved to the survivor, sealed under its key


def test_a_person_with_an_unfinished_erasure_request_cannot_be_merged(
    client: TestClient, tokens: Tokens, admin: dict[str, str]
) -> None:
    world = _world(client, admin)
    s, loser = world.survivor["id"], world.loser["id"]
    officer = tokens.headers("compliance_officer", name="dpo")
    manager = tokens.headers("sales_manager")
    # Filed for the lead the loser was converted from: the same person.
    filed = client.post(
        "/v1/dsr", json={"type": "erasure", "subject_id": world.lead}, headers=officer
    )
    assert filed.status_code == 201, filed.text
    request_id = filed.json()["id"]

    told = _merge(client, admin, s, [loser])
    assert told.status_code == 409
    assert told.headers["content-type"] == "application/problem+json"
    assert request_id in told.json()["detail"]  # the admin may read requests
    untold = _merge(client, manager, s, [loser])
    assert untold.status_code == 409
    assert request_id not in untold.text
    assert "dsr_" not in untold.text
    assert client.get(f"/v1/contacts/{loser}", headers=admin).status_code == 200

    cancelled = client.post(f"/v1/dsr/{request_id}/cancel", headers=officer)
    assert cancelled.status_code == 200, cancelled.text
    assert _merge(client, admin, s, [loser]).status_code == 201


@pytest.mark.parametrize("held", ["survivor", "loser"])
def test_a_legal_hold_postpones_finalising_a_merge_until_it_is_released(
    client: TestClient,
    state: State,
    clock: FrozenClock,
    tokens: Tokens,
    admin: dict[str, str],
    logged: Callable[[], str],
    held: str,
) -> None:
    world = _world(client, admin)
    s, loser = world.survivor["id"], world.loser["id"]
    merge = _merge(client, admin, s, [loser]).json()["merge"]
    officer = tokens.headers("compliance_officer", name="dpo")
    hold = client.post(
        "/v1/legal-holds",
        json={"target_id": s if held == "survivor" else loser, "reason": "litigation"},
        headers=officer,
    )
    assert hold.status_code == 201, hold.text
    clock.advance(timedelta(days=31))
    database = state.regions.get("eu")

    logged()
    assert finalize_due(database, state.keys, state.records.recorder, clock) == 0
    output = logged()
    assert "merge_final_postponed" in output
    assert hold.json()["id"] in output
    assert merge["id"] in output
    assert client.get(f"/v1/merges/{merge['id']}", headers=admin).json()["status"] == "merged"
    assert _keys_left(state, [loser]) == {loser}
    assert client.post(f"/v1/merges/{merge['id']}/undo", headers=admin).status_code == 409

    released = client.delete(f"/v1/legal-holds/{hold.json()['id']}", headers=officer)
    assert released.status_code in (200, 204), released.text
    assert finalize_due(database, state.keys, state.records.recorder, clock) == 1
    assert client.get(f"/v1/merges/{merge['id']}", headers=admin).json()["status"] == "final"
    assert _keys_left(state, [loser]) == set()


@pytest.mark.parametrize("closing", ["undo", "finalize", "erasure"])
def test_a_closed_merge_keeps_none_of_the_survivors_former_values(
    client: TestClient,
    state: State,
    clock: FrozenClock,
    tokens: Tokens,
    admin: dict[str, str],
    closing: str,
) -> None:
    world = _world(client, admin)
    s, loser = world.survivor["id"], world.loser["id"]
    merge = _merge(client, admin, s, [loser], email=loser).json()["merge"]
    opened = _merge_row(state, merge["id"])
    # While it may be undone, it keeps the survivor's former email: ciphertext and index.
    assert {"email", "email_bidx"} <= set(opened["survivor_before"]["columns"])
    assert all("from" in move for move in opened["moved"])

    if closing == "undo":
        undone = client.post(f"/v1/merges/{merge['id']}/undo", headers=admin)
        assert undone.status_code == 200, undone.text
        assert all(move["from"] is None for move in undone.json()["moved"])
    elif closing == "finalize":
        clock.advance(timedelta(days=31))
        database = state.regions.get("eu")
        assert finalize_due(database, state.keys, state.records.recorder, clock) == 1
    else:
        officer = tokens.headers("compliance_officer", name="dpo")
        request_id = open_request(client, officer, {"type": "erasure", "subject_id": s})
        run_request(state, client, officer, request_id)

    closed = _merge_row(state, merge["id"])
    assert closed["status"] in ("undone", "final")
    assert closed["survivor_before"] == {}
    assert closed["moved"]
    assert not any("from" in move for move in closed["moved"])
    # An erasure deleted some of what moved: what is gone is not shown, but counted.
    shown = client.get(f"/v1/merges/{merge['id']}", headers=admin).json()
    assert {m["id"] for m in shown["moved"]} <= {m["id"] for m in closed["moved"]}
    assert len(shown["moved"]) + shown["moved_withheld"] == len(closed["moved"])


def test_a_rectification_naming_a_merged_loser_is_refused_naming_the_survivor(
    client: TestClient, tokens: Tokens, admin: dict[str, str]
) -> None:
    world = _world(client, admin)
    s, loser = world.survivor["id"], world.loser["id"]
    assert _merge(client, admin, s, [loser]).status_code == 201
    officer = tokens.headers("compliance_officer", name="dpo")
    body = {"type": "rectification", "subject_id": loser, "corrections": {"title": "Dr"}}
    refused = client.post("/v1/dsr", json=body, headers=officer)
    assert refused.status_code == 422, refused.text
    assert refused.json()["errors"][0]["field"] == "subject_id"
    assert s in refused.json()["errors"][0]["message"]
    accepted = client.post("/v1/dsr", json={**body, "subject_id": s}, headers=officer)
    assert accepted.status_code == 201, accepted.text
    assert accepted.json()["subject_ids"] == [s]
