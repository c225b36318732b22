"""Faults: the key service of one region down, a region's table locked.

What a user must see: the affected requests answer 503 problem+json quickly and
name the region, nothing else in the answer; everything that does not need the
missing part keeps working; nothing acknowledged is lost once it is back.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy import event
from starlette.testclient import TestClient

from bastion.app import create_app
from bastion.config import Settings
from bastion.state import State, build_state
from tests.conftest import Backend, FrozenClock, Tokens, settings_for
from tests.factories import body_for, contact_body, create


def _problem(response: object, status: int, slug: str) -> dict[str, object]:
    assert getattr(response, "status_code", None) == status, getattr(response, "text", "")
    headers = getattr(response, "headers", {})
    assert headers["content-type"] == "application/problem+json"
    body: dict[str, object] = response.json()  # type: ignore[attr-defined]
    assert body["type"] == f"urn:bastion:problem:{slug}"
    return body


@pytest.fixture
def key_outage(settings: Settings, state: State) -> Iterator[Callable[[bool], None]]:
    """`outage(True)` takes region eu's key files away as a failed mount would (the
    path is there but is no directory); `outage(False)` brings them back. The
    process's unwrapped keys are dropped as they would be by a restart."""
    directory = settings.home / "keys" / "eu"
    hidden = directory.with_name("eu.offline")

    def outage(down: bool) -> None:
        if down:
            directory.rename(hidden)
            directory.write_bytes(b"")  # ENOTDIR for everything below it
        else:
            directory.unlink()
            hidden.rename(directory)
        state.keys.close()

    yield outage
    if hidden.exists():
        outage(False)


def test_without_its_key_service_a_region_fails_closed_and_plaintext_still_serves(
    client: TestClient, admin: dict[str, str], key_outage: Callable[[bool], None]
) -> None:
    canary = "Kesselring-Canary"
    person = create(client, "contacts", contact_body(last_name=canary), admin)
    deal = create(client, "opportunities", body_for(client, "opportunities", admin), admin)
    us_person = create(client, "contacts", contact_body(region="us"), admin)
    contacts_before = client.get("/v1/contacts?region=eu&limit=200", headers=admin).json()

    key_outage(True)
    # Encrypted data of the region: 503 naming the region, no value in the answer.
    for response in (
        client.get(f"/v1/contacts/{person['id']}", headers=admin),
        client.get("/v1/contacts?region=eu", headers=admin),
        client.post("/v1/contacts", json=contact_body(), headers=admin),
    ):
        body = _problem(response, 503, "key-service-unavailable")
        assert body["region"] == "eu"
        assert response.headers["retry-after"]
        assert canary not in response.text
        assert person["email"] not in response.text
    # What needs no key keeps working: plaintext-only records, and the other region.
    assert client.get(f"/v1/opportunities/{deal['id']}", headers=admin).status_code == 200
    assert client.get("/v1/opportunities?region=eu", headers=admin).status_code == 200
    assert client.get(f"/v1/contacts/{us_person['id']}", headers=admin).status_code == 200
    ready = client.get("/readyz")
    assert ready.status_code == 503
    assert ready.json()["keys"] == {"eu": "unavailable", "us": "ok"}

    key_outage(False)
    # Back: the same data, and the refused create wrote nothing.
    again = client.get(f"/v1/contacts/{person['id']}", headers=admin)
    assert again.status_code == 200
    assert again.json()["last_name"] == canary
    after = client.get("/v1/contacts?region=eu&limit=200", headers=admin).json()
    assert [c["id"] for c in after["data"]] == [c["id"] for c in contacts_before["data"]]
    assert client.get("/readyz").status_code == 200


@pytest.mark.postgres
@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_a_locked_table_is_a_quick_503_and_the_other_region_serves(
    backend: Backend, tmp_path: Path, clock: FrozenClock, tokens: Tokens
) -> None:
    (tmp_path / "absent.toml").write_text("")
    settings = settings_for(backend, tmp_path, BASTION_DB_LOCK_TIMEOUT_MS="500")
    state = build_state(settings, clock=clock)
    locked = threading.Event()
    release = threading.Event()

    def hold_lock() -> None:
        dsn = backend.urls["eu"].replace("postgresql+psycopg://", "postgresql://")
        with psycopg.connect(dsn) as conn:
            conn.execute("LOCK TABLE contacts IN ACCESS EXCLUSIVE MODE")
            locked.set()
            release.wait(30)

    try:
        with TestClient(create_app(settings, state=state)) as client:
            admin = Tokens(state).headers("admin")
            eu = create(client, "contacts", contact_body(), admin)
            us = create(client, "contacts", contact_body(region="us"), admin)
            holder = threading.Thread(target=hold_lock)
            holder.start()
            assert locked.wait(10)
            # The lock is held until `release`: an answer now came from the lock
            # timeout, not from the lock going away.
            blocked = client.get(f"/v1/contacts/{eu['id']}", headers=admin)
            body = _problem(blocked, 503, "region-unavailable")
            assert body["region"] == "eu"
            assert not release.is_set()
            assert holder.is_alive()
            assert client.get(f"/v1/contacts/{us['id']}", headers=admin).status_code == 200
            release.set()
            holder.join(10)
            assert client.get(f"/v1/contacts/{eu['id']}", headers=admin).status_code == 200
    finally:
        release.set()
        state.close()


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)  # its page limit: a full disk
def test_a_full_disk_fails_writes_cleanly_and_loses_nothing(
    client: TestClient, admin: dict[str, str], state: State
) -> None:
    before = create(client, "contacts", contact_body(), admin)
    engine = state.regions.get("eu").engine
    engine.dispose()  # new connections from here on see the limit

    @event.listens_for(engine, "connect")
    def disk_full(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        pages = cursor.execute("PRAGMA page_count").fetchone()[0]
        cursor.execute(f"PRAGMA max_page_count = {pages}")
        cursor.close()

    canary = "Vollplatte-Canary"
    refused = 0
    for _ in range(40):  # until the last free page is used up
        response = client.post("/v1/contacts", json=contact_body(last_name=canary), headers=admin)
        if response.status_code != 201:
            refused += 1
            body = _problem(response, 503, "region-unavailable")
            assert body["region"] == "eu"
            assert canary not in response.text
    assert refused
    event.remove(engine, "connect", disk_full)
    engine.dispose()
    # Space again: everything acknowledged is there, every refused write is not, and
    # the audit chain (whose append failed with each refused write) still verifies.
    listed = client.get("/v1/contacts?region=eu&limit=200", headers=admin).json()["data"]
    assert before["id"] in {c["id"] for c in listed}
    assert len(listed) == 1 + 40 - refused
    state.audit.flush("eu")
    assert state.audit.verify("eu").ok
