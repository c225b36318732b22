"""What an erasure kept, and when it goes: every reason to keep a record (each of
its holds, a retention period) counts, released and expired holds count for nothing,
and a hold cannot be released under an erasure that is running."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select
from starlette.testclient import TestClient

from bastion.audit.tables import AUDIT
from bastion.dsr import repository as repo
from bastion.dsr.jobs import DsrRunner
from bastion.state import State
from tests.conftest import FrozenClock, Tokens
from tests.factories import create
from tests.functional.test_dsr_e2e import (
    about_request,
    audit_rows,
    erase,
    hold,
    keys_of,
    open_request,
    release,
    small_world,
)

# Requests are run by the test (state.dsr_jobs), not by the app's in-process runner.
SETTINGS_ENV = {"BASTION_DSR_IN_PROCESS": "false"}


@pytest.fixture
def officer(tokens: Tokens) -> dict[str, str]:
    return tokens.headers("compliance_officer", name="dpo")


def status(client: TestClient, admin: dict[str, str], entity: str, record_id: str) -> int:
    code: int = client.get(f"/v1/{entity}/{record_id}", headers=admin).status_code
    return code


def email_about(client: TestClient, admin: dict[str, str], contact: str) -> str:
    body = {"region": "eu", "type": "email", "subject": "Offer", "body": "Zq offer"}
    made: str = create(client, "activities", {**body, "contact_id": contact}, admin)["id"]
    return made


def test_releasing_one_of_two_holds_keeps_the_record(
    client: TestClient, admin: dict[str, str], officer: dict[str, str], state: State
) -> None:
    world = small_world(client, admin)
    note = world.notes[0]
    first, second = hold(client, officer, note, "court order"), hold(client, officer, note, "audit")
    request_id = erase(state, client, officer, world.subject)["id"]
    release(client, officer, second)
    assert status(client, admin, "activities", note) == 200  # the court order still holds it
    assert keys_of(state, f"retained:{request_id}") == 1
    release(client, officer, first)
    assert status(client, admin, "activities", note) == 404
    assert keys_of(state, f"retained:{request_id}") == 0


def test_a_released_hold_leaves_what_retention_still_keeps(
    client: TestClient,
    admin: dict[str, str],
    officer: dict[str, str],
    state: State,
    clock: FrozenClock,
) -> None:
    world = small_world(client, admin)
    mail = email_about(client, admin, world.subject)
    hold_id = hold(client, officer, mail, "litigation")
    request_id = erase(state, client, officer, world.subject)["id"]
    release(client, officer, hold_id)
    assert status(client, admin, "activities", mail) == 200  # six years of retention left
    clock.advance(timedelta(days=365 * 6 + 3))
    state.dsr_jobs.run_once()
    assert status(client, admin, "activities", mail) == 404
    assert keys_of(state, f"retained:{request_id}") == 0


def test_a_hold_placed_after_the_erasure_outlasts_the_retention_period(
    client: TestClient,
    admin: dict[str, str],
    officer: dict[str, str],
    state: State,
    clock: FrozenClock,
) -> None:
    world = small_world(client, admin)
    mail = email_about(client, admin, world.subject)
    erase(state, client, officer, world.subject)
    hold_id = hold(client, officer, mail, "new litigation")
    clock.advance(timedelta(days=365 * 6 + 3))
    state.dsr_jobs.run_once()
    assert status(client, admin, "activities", mail) == 200  # retention over, hold not
    release(client, officer, hold_id)
    assert status(client, admin, "activities", mail) == 404


def test_what_an_expired_hold_kept_goes_at_the_next_housekeeping(
    client: TestClient,
    admin: dict[str, str],
    officer: dict[str, str],
    state: State,
    clock: FrozenClock,
) -> None:
    world = small_world(client, admin)
    note = world.notes[0]
    expires = (clock.now() + timedelta(days=30)).isoformat()
    made = client.post(
        "/v1/legal-holds",
        json={"target_id": note, "reason": "inquiry", "expires_at": expires},
        headers=officer,
    )
    assert made.status_code == 201, made.text
    request_id = erase(state, client, officer, world.subject)["id"]
    clock.advance(timedelta(days=29))
    state.dsr_jobs.run_once()
    assert status(client, admin, "activities", note) == 200
    clock.advance(timedelta(days=2))
    state.dsr_jobs.run_once()
    assert status(client, admin, "activities", note) == 404
    assert keys_of(state, f"retained:{request_id}") == 0
    actions = [a for a, actor, p in audit_rows(state) if about_request(p, request_id)]
    assert actions.count("dsr.erasure.kept_deleted") == 1
    assert actions.count("dsr.erasure.kept_released") == 1


def test_a_hold_cannot_be_released_while_an_erasure_of_its_target_runs(
    client: TestClient,
    admin: dict[str, str],
    officer: dict[str, str],
    state: State,
    clock: FrozenClock,
) -> None:
    world = small_world(client, admin)
    note = world.notes[0]
    hold_id = hold(client, officer, note, "court order")
    request_id = open_request(client, officer, {"type": "erasure", "subject_id": world.subject})

    class Paused(Exception):
        pass

    def pause(step: str) -> None:
        raise Paused(step)

    with pytest.raises(Paused):  # a worker has planned it (keeping the held note), and runs
        state.dsr_jobs.run_now("eu", request_id, on_step=pause)
    refused = client.delete(f"/v1/legal-holds/{hold_id}", headers=officer)
    assert refused.status_code == 409, refused.text
    assert request_id in refused.json()["detail"]
    held = client.get("/v1/legal-holds", params={"target_id": note}, headers=officer).json()
    assert [h["active"] for h in held["data"]] == [True]


def test_a_worker_that_lost_its_lease_cannot_fail_or_retry_the_request(
    client: TestClient,
    admin: dict[str, str],
    officer: dict[str, str],
    state: State,
    clock: FrozenClock,
) -> None:
    world = small_world(client, admin)
    request_id = open_request(client, officer, {"type": "erasure", "subject_id": world.subject})

    def runner(name: str) -> DsrRunner:
        return DsrRunner(
            regions=state.regions,
            keys=state.keys,
            records=state.records,
            audit=state.audit,
            clock=state.clock,
            settings=state.settings.dsr,
            policy=lambda: state.policy,
            worker_id=name,
            failpoints=False,
        )

    slow, fast = runner("worker-slow"), runner("worker-fast")
    database = state.regions.get("eu")
    lease = timedelta(seconds=state.settings.dsr.lease_seconds)
    with database.transaction(write=True) as conn:
        assert repo.claim(conn, clock.now(), slow.worker_id, clock.now() + lease) == request_id
    clock.advance(lease + timedelta(seconds=1))
    assert fast.run_now("eu", request_id) == "completed"
    with database.transaction() as conn:
        request: dict[str, Any] | None = repo.fetch_request(conn, request_id)
    assert request is not None
    # The stalled worker wakes up to an error in its step: the outcome is not its to set.
    assert slow._fail(database, request, "erase", "KeyDestroyed") == "running"
    assert slow._retry(database, request, "erase", "unavailable") == "running"
    shown = client.get(f"/v1/dsr/{request_id}", headers=officer).json()
    assert (shown["status"], shown["error"]) == ("completed", None)
    actions = [a for a, _, p in audit_rows(state) if about_request(p, request_id)]
    assert "dsr.erasure.failed" not in actions


def test_a_region_the_officer_does_not_hold_is_refused_and_audited_there(
    client: TestClient, state: State, tokens: Tokens
) -> None:
    european = tokens.headers("compliance_officer", name="eu-dpo", regions=("eu",))
    refused = client.get("/v1/dsr", params={"region": "us"}, headers=european)
    assert refused.status_code == 403, refused.text
    events = AUDIT.events
    with state.regions.get("us").transaction() as conn:
        denied = conn.execute(
            select(events.c.action, events.c.decision).where(events.c.action == "dsr.list")
        ).all()
    assert [tuple(row) for row in denied] == [("dsr.list", "deny")]


def test_what_an_erasure_kept_is_restricted_to_those_handling_requests(
    client: TestClient,
    admin: dict[str, str],
    officer: dict[str, str],
    state: State,
    tokens: Tokens,
) -> None:
    world = small_world(client, admin)
    mail = email_about(client, admin, world.subject)
    erase(state, client, officer, world.subject)
    support = tokens.headers("support_agent", name="agent")
    shown = client.get(f"/v1/activities/{mail}", headers=support)
    assert shown.status_code == 200, shown.text
    assert "body" not in shown.json()
    assert "body" in shown.json()["_restricted"]
    assert "Zq offer" not in shown.text
    listed = client.get("/v1/activities", headers=support).json()["data"]
    (row,) = [r for r in listed if r["id"] == mail]
    assert "body" not in row
    assert "Zq offer" not in str(listed)
    # Those who handle data subjects' requests (here the officer; the admin) see it.
    for headers in (officer, admin):
        kept = client.get(f"/v1/activities/{mail}", headers=headers).json()
        assert kept["body"] == "Zq offer"
        assert "_restricted" not in kept
    # Everyone else's records read as before.
    other = client.get(f"/v1/activities/{world.other_note}", headers=support).json()
    assert "_restricted" not in other
    assert other["body"] == world.bodies[world.other_note]


def test_what_an_erasure_kept_can_neither_change_nor_be_deleted(
    client: TestClient, admin: dict[str, str], officer: dict[str, str], state: State
) -> None:
    world = small_world(client, admin)
    mail = email_about(client, admin, world.subject)
    erase(state, client, officer, world.subject)
    before = client.get(f"/v1/activities/{mail}", headers=admin).json()
    url = f"/v1/activities/{mail}"
    changed = client.patch(
        url, json={"body": "rewritten"}, headers={**admin, "If-Match": f'"v{before["version"]}"'}
    )
    assert changed.status_code == 409, changed.text
    assert changed.headers["content-type"] == "application/problem+json"
    assert "kept after its data subject's erasure" in changed.json()["detail"]
    deleted = client.delete(url, headers=admin)
    assert deleted.status_code == 409, deleted.text
    assert client.get(url, headers=admin).json() == before


def test_a_held_record_may_change_but_not_be_deleted(
    client: TestClient, admin: dict[str, str], officer: dict[str, str]
) -> None:
    world = small_world(client, admin)
    note = world.notes[0]
    hold_id = hold(client, officer, note, "court order")
    url = f"/v1/activities/{note}"
    refused = client.delete(url, headers=admin)
    assert refused.status_code == 409, refused.text
    assert hold_id in refused.json()["detail"]
    changed = client.patch(url, json={"subject": "s2"}, headers={**admin, "If-Match": '"v1"'})
    assert changed.status_code == 200, changed.text
    # A hold on the person covers what is about them, and the person.
    person_hold = hold(client, officer, world.subject, "litigation")
    for entity, record_id in (("activities", world.notes[1]), ("contacts", world.subject)):
        refused = client.delete(f"/v1/{entity}/{record_id}", headers=admin)
        assert refused.status_code == 409, (entity, refused.text)
    release(client, officer, person_hold)
    release(client, officer, hold_id)
    assert client.delete(url, headers=admin).status_code == 204
