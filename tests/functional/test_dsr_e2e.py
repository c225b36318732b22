"""Data subjects' requests end to end over HTTP, on SQLite and PostgreSQL.

One person (the subject) and the people around them (a colleague at the same
account, the account itself) each hold a unique canary in every personal field.
An export must hold every canary of the subject and none of anyone else's; an
erasure must leave nothing of the subject readable through the API, the blind
indexes or a backup taken before it (once the KEK was rotated and the old
version retired), while everyone else's data still decrypts, the audit log
still shows the request, and the signed certificate verifies.

Requests are run by `state.dsr_jobs.run_once()`: these tests build their own
settings with `BASTION_DSR_IN_PROCESS=false`, because on SQLite the app would
otherwise start its in-process runner and race the test for the request.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import uuid
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy import select
from starlette.testclient import TestClient

from bastion.app import create_app
from bastion.audit.tables import AUDIT
from bastion.crypto.errors import KeyDestroyed
from bastion.crypto.rotation import KekRotation, retire_kek
from bastion.crypto.tables import subject_keys
from bastion.dsr import certificate as certificates
from bastion.dsr.steps import corrections_context
from bastion.dsr.tables import dsr_requests
from bastion.state import State, build_state
from tests.conftest import PG_DSN, REGIONS, SECRET, Backend, FrozenClock, Tokens, settings_for
from tests.factories import create

# Requests are run by the test (state.dsr_jobs), not by the app's in-process runner.
SETTINGS_ENV = {"BASTION_DSR_IN_PROCESS": "false"}


@pytest.fixture
def officer(tokens: Tokens) -> dict[str, str]:
    return tokens.headers("compliance_officer", name="dpo")


# -- the world: a subject, a colleague, their account, and records about all of them --


@dataclass
class World:
    account: str
    subject: str
    other: str
    subject_canaries: list[str] = field(default_factory=list)
    other_canaries: list[str] = field(default_factory=list)  # anyone else's, incl. the account's
    subject_fields: dict[str, Any] = field(default_factory=dict)
    subject_notes: list[str] = field(default_factory=list)  # activities to delete
    subject_emails: list[str] = field(default_factory=list)  # kept: commercial correspondence
    subject_cases: list[str] = field(default_factory=list)
    subject_deals: list[str] = field(default_factory=list)
    other_activities: list[str] = field(default_factory=list)
    other_cases: list[str] = field(default_factory=list)
    other_deals: list[str] = field(default_factory=list)
    account_activities: list[str] = field(default_factory=list)
    account_cases: list[str] = field(default_factory=list)
    bodies: dict[str, str] = field(default_factory=dict)  # activity/case id -> its canary

    @property
    def everyone_elses(self) -> list[str]:
        return [*self.other_activities, *self.other_cases, *self.account_activities]


def _person(prefix: str, serial: int) -> dict[str, Any]:
    """A contact whose every personal field holds a value unique to `prefix`."""
    return {
        "first_name": f"{prefix}first",
        "last_name": f"{prefix}last",
        "email": f"{prefix.lower()}.mail@example.org",
        "phone": f"+4930555{serial:05d}",
        "mobile": f"+4917666{serial:05d}",
        "title": f"{prefix}title",
        "mailing_street": f"{prefix}street 7",
        "mailing_city": f"{prefix}city",
        "mailing_postal_code": f"{prefix}zip",
        "birthdate": f"19{serial % 90 + 10:02d}-0{serial % 9 + 1}-1{serial % 9}",
    }


_PEOPLE = iter(range(10_000, 99_999, 7))


def build_world(client: TestClient, admin: dict[str, str]) -> World:
    """An account with two people; 50 activities, 5 cases and 3 deals among them."""
    tag = uuid.uuid4().hex[:6]
    account = create(
        client,
        "accounts",
        {"name": "Acme", "region": "eu", "tax_id": f"ZqTax{tag}", "billing_country": "DE"},
        admin,
    )["id"]
    mine, theirs = _person(f"Zs{tag}", next(_PEOPLE)), _person(f"Zo{tag}", next(_PEOPLE))
    subject = create(client, "contacts", {**mine, "region": "eu", "account_id": account}, admin)
    other = create(client, "contacts", {**theirs, "region": "eu", "account_id": account}, admin)
    world = World(account, subject["id"], other["id"])
    world.subject_fields = mine
    world.subject_canaries = [v for k, v in mine.items() if k != "birthdate"] + [mine["birthdate"]]
    world.other_canaries = [*theirs.values(), f"ZqTax{tag}"]

    def activity(kind: str, canary: str, **links: str) -> str:
        made = create(
            client,
            "activities",
            {"region": "eu", "type": kind, "subject": "Follow-up", "body": canary, **links},
            admin,
        )["id"]
        world.bodies[made] = canary
        return made

    def deal(name: str, stage: str, contact: str) -> str:
        return create(
            client,
            "opportunities",
            {
                "region": "eu",
                "name": name,
                "account_id": account,
                "contact_id": contact,
                "stage": stage,
                "amount": "1000.00",
                "currency": "EUR",
            },
            admin,
        )["id"]

    world.subject_deals = [
        deal("Rollout", "proposal", subject["id"]),
        deal("Renewal", "closed_won", subject["id"]),
    ]
    world.other_deals = [deal(f"Zo{tag}deal", "negotiation", other["id"])]
    for n in range(26):
        kind = "call" if n % 2 else "note"
        links = {"contact_id": subject["id"]}
        if n % 5 == 0:
            links["account_id"] = account  # still about the person: sealed under their key
        world.subject_notes.append(activity(kind, f"Zs{tag}note{n:02d}", **links))
        world.subject_canaries.append(f"Zs{tag}note{n:02d}")
    for n in range(2):
        world.subject_emails.append(
            activity("email", f"Zs{tag}mail{n}", contact_id=subject["id"], account_id=account)
        )
        world.subject_canaries.append(f"Zs{tag}mail{n}")
    for n in range(14):
        world.other_activities.append(
            activity("note", f"Zo{tag}note{n:02d}", contact_id=other["id"])
        )
        world.other_canaries.append(f"Zo{tag}note{n:02d}")
    for n in range(6):
        world.account_activities.append(activity("meeting", f"Za{tag}meet{n}", account_id=account))
        world.other_canaries.append(f"Za{tag}meet{n}")
    for n in range(2):  # about the subject's deal, but the account's business: not theirs
        world.account_activities.append(
            activity(
                "task",
                f"Za{tag}task{n}",
                account_id=account,
                opportunity_id=world.subject_deals[0],
            )
        )
        world.other_canaries.append(f"Za{tag}task{n}")
    assert len(world.bodies) == 50

    def case(canary: str, **links: str) -> str:
        made = create(
            client,
            "cases",
            {
                "region": "eu",
                "subject": "Support",
                "description": f"{canary}desc",
                "resolution": f"{canary}res",
                **links,
            },
            admin,
        )["id"]
        world.bodies[made] = f"{canary}desc"
        return made

    for n in range(2):
        world.subject_cases.append(case(f"Zs{tag}case{n}", contact_id=subject["id"]))
        world.subject_canaries += [f"Zs{tag}case{n}desc", f"Zs{tag}case{n}res"]
    world.subject_cases.append(case(f"Zs{tag}case2", contact_id=subject["id"], account_id=account))
    world.subject_canaries += [f"Zs{tag}case2desc", f"Zs{tag}case2res"]
    world.other_cases.append(case(f"Zo{tag}case", contact_id=other["id"]))
    world.account_cases.append(case(f"Za{tag}case", account_id=account))
    world.other_canaries += [f"Zo{tag}casedesc", f"Zo{tag}caseres"]
    world.other_canaries += [f"Za{tag}casedesc", f"Za{tag}caseres"]
    return world


# -- requests --------------------------------------------------------------------------


def open_request(client: TestClient, officer: dict[str, str], body: dict[str, Any]) -> str:
    """Create, verify and approve a request; its id."""
    created = client.post("/v1/dsr", json=body, headers=officer)
    assert created.status_code == 201, created.text
    request_id: str = created.json()["id"]
    verified = client.post(
        f"/v1/dsr/{request_id}/verify", json={"method": "id-document"}, headers=officer
    )
    assert verified.status_code == 200, verified.text
    approved = client.post(f"/v1/dsr/{request_id}/approve", headers=second_officer(client))
    assert approved.status_code == 200, approved.text
    return request_id


def second_officer(client: TestClient) -> dict[str, str]:
    """Another compliance officer: an erasure or a rectification changes data for good,
    so someone other than its creator approves it (four eyes)."""
    state: State = client.app.state.bastion  # type: ignore[attr-defined]
    issued = state.tokens.issue(principal_name="dpo-approver", roles=["compliance_officer"])
    return {"Authorization": f"Bearer {issued.secret}"}


def run_request(state: State, client: TestClient, officer: dict[str, str], request_id: str) -> Any:
    assert state.dsr_jobs.run_once() >= 1
    shown = client.get(f"/v1/dsr/{request_id}", headers=officer).json()
    assert shown["error"] is None, shown["error"]
    return shown


def audit_rows(state: State, region: str = "eu") -> list[tuple[str, str, dict[str, Any]]]:
    """Every audit event of the region: (action, actor, payload)."""
    events = AUDIT.events
    with state.regions.get(region).transaction() as conn:
        rows = conn.execute(
            select(events.c.action, events.c.actor, events.c.payload).order_by(
                events.c.occurred_at, events.c.id
            )
        ).all()
    return [(r.action, r.actor, json.loads(r.payload)) for r in rows]


def about_request(payload: dict[str, Any], request_id: str) -> bool:
    """Whether an audit payload is of this request (naming it, or a step's records)."""
    return request_id in payload["record_ids"] or payload["details"].get("request") == request_id


def keys_of(state: State, subject_id: str) -> int:
    with state.regions.get("eu").transaction() as conn:
        return len(
            conn.execute(
                select(subject_keys.c.id).where(subject_keys.c.subject_id == subject_id)
            ).all()
        )


def unzip(data: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def cli_env(backend: Backend, home: Path) -> dict[str, str]:
    """The environment `settings_for` builds its settings from, for a `bastion` process."""
    return {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(home),
        "BASTION_HOME": str(home),
        "BASTION_CONFIG": str(home / "absent.toml"),
        "BASTION_POLICIES": str(Path(__file__).resolve().parents[2] / "policies"),
        "BASTION_SECRET_KEY": SECRET,
        "BASTION_CONTROL_URL": backend.urls["control"],
        "BASTION_REGIONS": ",".join(REGIONS),
        "BASTION_LOG_LEVEL": "ERROR",
        **{f"BASTION_REGION_{r.upper()}_URL": backend.urls[r] for r in REGIONS},
    }


def bastion(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bastion", *args],
        env=env,
        cwd=env["BASTION_HOME"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


# -- export ------------------------------------------------------------------------------


def test_export_holds_every_field_of_the_subject_and_nothing_of_anyone_else(
    client: TestClient,
    admin: dict[str, str],
    officer: dict[str, str],
    state: State,
    clock: FrozenClock,
    logged: Callable[[], str],
) -> None:
    world = build_world(client, admin)
    logged()

    created = client.post(
        "/v1/dsr",
        json={
            "type": "export",
            "region": "eu",
            "identifier": {"email": world.subject_fields["email"].upper()},
        },
        headers=officer,
    )
    assert created.status_code == 201, created.text
    by_email = created.json()
    assert by_email["subject_ids"] == [world.subject]
    assert by_email["identified_by"] == "email"
    assert world.subject_fields["email"] not in created.text
    package_url = f"/v1/dsr/{by_email['id']}/package"
    assert client.get(package_url, headers=officer).status_code == 409  # not even verified
    client.post(f"/v1/dsr/{by_email['id']}/verify", json={"method": "call"}, headers=officer)
    assert client.get(package_url, headers=officer).status_code == 409
    client.post(f"/v1/dsr/{by_email['id']}/approve", headers=officer)
    refused = client.get(package_url, headers=officer)
    assert refused.status_code == 409  # approved, not run yet
    assert refused.headers["content-type"] == "application/problem+json"

    shown = run_request(state, client, officer, by_email["id"])
    assert shown["status"] == "completed"
    downloaded = client.get(package_url, headers=officer)
    assert downloaded.status_code == 200
    assert downloaded.headers["content-type"] == "application/zip"
    digest = hashlib.sha256(downloaded.content).hexdigest()
    assert downloaded.headers["digest"] == f"sha-256={digest}"
    assert shown["result"]["sha256"] == digest

    files = unzip(downloaded.content)
    manifest = json.loads(files["manifest.json"])
    assert set(files) == {*manifest["files"], "manifest.json"}
    assert {"data.json", "audit.json", "contacts.csv", "activities.csv", "cases.csv"} <= set(files)
    for name, described in manifest["files"].items():
        assert hashlib.sha256(files[name]).hexdigest() == described["sha256"], name
        assert len(files[name]) == described["bytes"], name
    assert manifest["subjects"] == [world.subject]
    assert manifest["request"]["id"] == by_email["id"]

    everything = b"\n".join(files.values()).decode()
    data = json.loads(files["data.json"])
    as_json = json.dumps(data, ensure_ascii=False)
    csvs = "\n".join(files[n].decode() for n in files if n.endswith(".csv"))
    for canary in world.subject_canaries:
        assert canary in as_json, canary
        assert canary in csvs, canary
    leaked = [c for c in world.other_canaries if c.lower() in everything.lower()]
    assert leaked == []
    assert world.other not in as_json  # not even their id: nothing of theirs was found
    found = {r["id"] for rows in data["records"].values() for r in rows}
    assert set(world.subject_notes + world.subject_emails + world.subject_cases) <= found
    assert set(world.subject_deals) <= found
    assert found.isdisjoint(world.everyone_elses + world.other_deals + world.account_cases)
    (contact,) = data["records"]["contacts"]
    assert {k: contact[k] for k in world.subject_fields} == world.subject_fields
    (employer,) = data["records"]["accounts"]
    assert employer["_relation"] == "employer"
    assert "tax_id" not in employer  # the account's sealed data is not the person's

    # The same request by record id yields the same data.
    by_id = open_request(client, officer, {"type": "export", "subject_id": world.subject})
    run_request(state, client, officer, by_id)
    again = unzip(client.get(f"/v1/dsr/{by_id}/package", headers=officer).content)
    assert json.loads(again["data.json"]) == data

    # Expiry: the package goes, and the key it was sealed under is destroyed.
    assert keys_of(state, by_email["id"]) == keys_of(state, by_id) == 1
    clock.advance(timedelta(hours=state.settings.dsr.package_ttl_hours, minutes=1))
    state.dsr_jobs.run_once()
    for request_id in (by_email["id"], by_id):
        gone = client.get(f"/v1/dsr/{request_id}/package", headers=officer)
        assert gone.status_code == 410, gone.text
        assert keys_of(state, request_id) == 0
    output = logged().lower()
    assert '"event": "request"' in output or '"event":"request"' in output
    assert [c for c in world.subject_canaries if c.lower() in output] == []
    # An export changes nothing of the person.
    assert (
        client.get(f"/v1/contacts/{world.subject}", headers=admin).json()["email"]
        == (world.subject_fields["email"])
    )


# -- erasure ------------------------------------------------------------------------------


@pytest.fixture
def backup_copy(backend: Backend, tmp_path: Path) -> Iterator[Any]:
    """`take()` copies the EU database as it is now; returns the copy's URL."""
    made: list[str] = []

    def take() -> str:
        source = backend.urls["eu"]
        if backend.name == "sqlite":
            target = tmp_path / "backup" / "eu.db"
            target.parent.mkdir()
            with (
                sqlite3.connect(source.removeprefix("sqlite:///")) as live,
                sqlite3.connect(target) as kept,
            ):
                live.backup(kept)  # a consistent online copy, WAL included
            return f"sqlite:///{target}"
        name = source.rsplit("/", 1)[1] + "_backup"
        with psycopg.connect(PG_DSN, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        made.append(name)
        plain = source.replace("postgresql+psycopg://", "postgresql://")
        dump = subprocess.run(
            ["pg_dump", "--no-owner", "--no-privileges", plain],
            capture_output=True,
            check=True,
        ).stdout
        subprocess.run(
            ["psql", "-q", "-v", "ON_ERROR_STOP=1", plain.rsplit("/", 1)[0] + "/" + name],
            input=dump,
            capture_output=True,
            check=True,
        )
        return source.rsplit("/", 1)[0] + "/" + name

    if backend.name == "postgresql" and not (shutil.which("pg_dump") and shutil.which("psql")):
        pytest.fail("pg_dump and psql are needed to copy the database")
    yield take
    if made:
        with psycopg.connect(PG_DSN, autocommit=True) as conn:
            for name in made:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _read_backup(
    backend: Backend, tmp_path: Path, clock: FrozenClock, eu_url: str, path: str
) -> dict[str, Any]:
    """GET `path` from a deployment whose EU database is the backup (same keys, fresh cache)."""
    settings = settings_for(
        Backend("backup", {**backend.urls, "eu": eu_url}),
        tmp_path,
        BASTION_DSR_IN_PROCESS="false",
    )
    restored = build_state(settings, clock=clock)
    try:
        issued = restored.tokens.issue(principal_name="restorer", roles=["admin"])
        with TestClient(create_app(settings, state=restored)) as client:
            response = client.get(path, headers={"Authorization": f"Bearer {issued.secret}"})
            assert response.status_code == 200, response.text
            body: dict[str, Any] = response.json()
            return body
    finally:
        restored.close()


def test_erasure_leaves_nothing_of_the_subject_readable_and_everyone_else_intact(
    client: TestClient,
    admin: dict[str, str],
    officer: dict[str, str],
    state: State,
    clock: FrozenClock,
    backend: Backend,
    tmp_path: Path,
    backup_copy: Any,
    logged: Callable[[], str],
) -> None:
    world = build_world(client, admin)
    logged()
    state.audit.flush("eu")
    backup = backup_copy()

    request_id = open_request(client, officer, {"type": "erasure", "subject_id": world.subject})
    preview = client.get(f"/v1/dsr/{request_id}/preview", headers=officer).json()
    assert set(preview["erase"]["activities"]) == set(world.subject_notes)
    assert {k["record_id"] for k in preview["keep"]} == set(world.subject_emails)
    assert [u["record_id"] for u in preview["untouched"]] == [world.account]

    shown = run_request(state, client, officer, request_id)
    # Business e-mails are commercial correspondence the law requires to keep.
    assert shown["status"] == "partially_completed"
    kept = {k["record_id"]: k for k in shown["result"]["kept"]}
    assert set(kept) == set(world.subject_emails)
    assert {k["reason_code"] for k in kept.values()} == {"retention:commercial-correspondence"}
    assert all(k["reason"] for k in kept.values())
    assert shown["result"]["keys_destroyed"] >= 1

    # Every API read of the subject's records: gone, or kept as the rules say.
    gone = client.get(f"/v1/contacts/{world.subject}", headers=admin)
    assert gone.status_code == 410
    assert not any(c.lower() in gone.text.lower() for c in world.subject_canaries)
    for entity, ids in (("activities", world.subject_notes), ("cases", world.subject_cases)):
        for record_id in ids:
            assert client.get(f"/v1/{entity}/{record_id}", headers=admin).status_code == 404
    for deal in world.subject_deals:  # the organisation's deals: kept, pointing at the shell
        got = client.get(f"/v1/opportunities/{deal}", headers=admin)
        assert got.status_code == 200
        assert got.json()["contact_id"] == world.subject
    for mail in world.subject_emails:  # re-sealed under the request's retention key
        got = client.get(f"/v1/activities/{mail}", headers=admin).json()
        assert got["body"] == world.bodies[mail]
    for name in ("email", "phone", "mobile", "last_name"):
        found = client.get("/v1/contacts", params={name: world.subject_fields[name]}, headers=admin)
        assert found.status_code == 200
        assert found.json()["data"] == [], name
    lookup = client.post(
        "/v1/dsr",
        json={
            "type": "access",
            "region": "eu",
            "identifier": {"email": world.subject_fields["email"]},
        },
        headers=officer,
    )
    assert lookup.status_code == 201, lookup.text
    assert lookup.json()["subject_ids"] == []
    listed = client.get("/v1/activities", params={"limit": 200}, headers=admin).json()["data"]
    assert {a["id"] for a in listed} == set(
        world.subject_emails + world.other_activities + world.account_activities
    )

    # Everyone else is intact.
    other = client.get(f"/v1/contacts/{world.other}", headers=admin).json()
    assert "_erased" not in other
    for record_id in [*world.everyone_elses, *world.account_cases]:
        entity = "cases" if record_id.startswith("cas_") else "activities"
        got = client.get(f"/v1/{entity}/{record_id}", headers=admin).json()
        assert (got.get("body") or got.get("description")) == world.bodies[record_id]
    assert (
        client.get(f"/v1/accounts/{world.account}", headers=admin)
        .json()["tax_id"]
        .startswith("ZqTax")
    )

    # The audit log says what happened, and holds no value of anyone.
    state.audit.flush("eu")
    rows = audit_rows(state)
    actions = [a for a, _, p in rows if about_request(p, request_id)]
    for step in ("received", "verify", "approve", "started", "discover", "preserve"):
        assert actions.count(f"dsr.erasure.{step}") == 1, step
    for step in ("shell", "erase", "shred", "certify", "finish"):
        assert actions.count(f"dsr.erasure.{step}") == 1, step
    deleted = [i for a, _, p in rows if a == "dsr.erasure.delete" for i in p["record_ids"]]
    assert sorted(deleted) == sorted(world.subject_notes + world.subject_cases)
    assert all(actor == "system:dsr" for a, actor, _ in rows if a == "dsr.erasure.delete")
    text = json.dumps([r[2] for r in rows], ensure_ascii=False).lower()
    for canary in world.subject_canaries + world.other_canaries:
        assert canary.lower() not in text, canary

    output = logged().lower()
    assert "subject_keys_shredded" in output
    assert [c for c in world.subject_canaries if c.lower() in output] == []

    # The certificate verifies, by the library and by the CLI; a changed one does not.
    document = client.get(f"/v1/dsr/{request_id}/certificate", headers=officer).json()
    body = certificates.verify(document, state.audit.keys.verifiers("eu"))
    assert body["request_id"] == request_id
    assert body["subject_ids"] == [world.subject]
    assert sorted(body["erased"]["activities"]) == sorted(world.subject_notes)
    assert sorted(body["erased"]["cases"]) == sorted(world.subject_cases)
    assert body["erased"]["contacts"] == [world.subject]
    assert sorted(body["pseudonymised"]["opportunities"]) == sorted(world.subject_deals)
    assert {k["record_id"] for k in body["kept"]} == set(world.subject_emails)
    assert body["keys_destroyed"] == shown["result"]["keys_destroyed"]
    assert not any(c.lower() in json.dumps(document).lower() for c in world.subject_canaries)
    env = cli_env(backend, tmp_path)
    (tmp_path / "certificate.json").write_text(json.dumps(document))
    checked = bastion(env, "dsr", "verify-certificate", str(tmp_path / "certificate.json"))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout.startswith("OK")
    other_id = world.other_activities[0]
    altered_id = copy.deepcopy(document)
    altered_id["certificate"]["erased"]["activities"][0] = other_id
    altered_time = copy.deepcopy(document)
    altered_time["certificate"]["completed_at"] = "2026-01-01T00:00:00+00:00"
    for name, altered in (("id", altered_id), ("time", altered_time)):
        with pytest.raises(certificates.CertificateInvalid):
            certificates.verify(altered, state.audit.keys.verifiers("eu"))
        path = tmp_path / f"altered-{name}.json"
        path.write_text(json.dumps(altered))
        refused = bastion(env, "dsr", "verify-certificate", str(path))
        assert refused.returncode != 0, name
        assert "INVALID" in refused.stderr
        assert "altered or forged" in refused.stderr

    # A backup taken before the erasure still opens the person's key under the old KEK...
    restored = _read_backup(backend, tmp_path, clock, backup, f"/v1/contacts/{world.subject}")
    assert restored["email"] == world.subject_fields["email"]
    # ...until the KEK is rotated and the old version destroyed.
    old = state.keys.current_kek_version("eu")
    assert old is not None
    KekRotation(state.keys).run("eu")
    retire_kek(state.keys, "eu", old)
    state.keys.cache.clear()
    restored = _read_backup(backend, tmp_path, clock, backup, f"/v1/contacts/{world.subject}")
    assert set(restored["_erased"]) >= {
        "first_name",
        "last_name",
        "email",
        "phone",
        "mobile",
        "mailing_street",
        "mailing_postal_code",
        "birthdate",
    }
    sealed = ("first_name", "last_name", "email", "phone", "mobile", "birthdate")
    assert not any(name in restored for name in sealed)
    note = world.subject_notes[0]
    restored_note = _read_backup(backend, tmp_path, clock, backup, f"/v1/activities/{note}")
    assert restored_note["_erased"] == ["body"]

    # The live database still decrypts everyone else (their keys were re-wrapped).
    other = client.get(f"/v1/contacts/{world.other}", headers=admin).json()
    assert other["email"] == next(c for c in world.other_canaries if "@" in c)
    for record_id in world.other_activities:
        got = client.get(f"/v1/activities/{record_id}", headers=admin).json()
        assert got["body"] == world.bodies[record_id]
    for mail in world.subject_emails:
        assert (
            client.get(f"/v1/activities/{mail}", headers=admin).json()["body"]
            == (world.bodies[mail])
        )


# -- legal holds ----------------------------------------------------------------------


@dataclass
class Small:
    subject: str
    email: str
    notes: list[str]
    case: str
    deal: str
    other_note: str
    bodies: dict[str, str]


def small_world(client: TestClient, admin: dict[str, str]) -> Small:
    """A person with three notes, a case and a deal; a colleague with a note."""
    tag = uuid.uuid4().hex[:6]
    account = create(client, "accounts", {"name": "Acme", "region": "eu"}, admin)["id"]
    person = _person(f"Zs{tag}", next(_PEOPLE))
    subject = create(client, "contacts", {**person, "region": "eu", "account_id": account}, admin)
    other = create(
        client, "contacts", {**_person(f"Zo{tag}", next(_PEOPLE)), "region": "eu"}, admin
    )
    bodies: dict[str, str] = {}

    def note(contact: str, canary: str) -> str:
        made = create(
            client,
            "activities",
            {"region": "eu", "type": "note", "subject": "n", "body": canary, "contact_id": contact},
            admin,
        )["id"]
        bodies[made] = canary
        return made

    notes = [note(subject["id"], f"Zs{tag}note{n}") for n in range(3)]
    case = create(
        client,
        "cases",
        {
            "region": "eu",
            "subject": "s",
            "description": f"Zs{tag}case",
            "contact_id": subject["id"],
        },
        admin,
    )["id"]
    deal = create(
        client,
        "opportunities",
        {
            "region": "eu",
            "name": "Rollout",
            "account_id": account,
            "contact_id": subject["id"],
            "stage": "proposal",
        },
        admin,
    )["id"]
    return Small(
        subject["id"], person["email"], notes, case, deal, note(other["id"], f"Zo{tag}"), bodies
    )


def hold(client: TestClient, officer: dict[str, str], target: str, reason: str) -> str:
    made = client.post(
        "/v1/legal-holds", json={"target_id": target, "reason": reason}, headers=officer
    )
    assert made.status_code == 201, made.text
    assert made.json()["active"] is True
    hold_id: str = made.json()["id"]
    return hold_id


def release(client: TestClient, officer: dict[str, str], hold_id: str) -> None:
    released = client.delete(f"/v1/legal-holds/{hold_id}", headers=officer)
    assert released.status_code == 200, released.text
    assert released.json()["active"] is False


def erase(state: State, client: TestClient, officer: dict[str, str], subject: str) -> Any:
    request_id = open_request(client, officer, {"type": "erasure", "subject_id": subject})
    shown = run_request(state, client, officer, request_id)
    shown["certificate"] = client.get(f"/v1/dsr/{request_id}/certificate", headers=officer).json()[
        "certificate"
    ]
    return shown


def test_without_a_hold_an_erasure_completes(
    client: TestClient, admin: dict[str, str], officer: dict[str, str], state: State
) -> None:
    world = small_world(client, admin)
    shown = erase(state, client, officer, world.subject)
    assert shown["status"] == "completed"
    assert shown["result"]["kept"] == []
    assert shown["certificate"]["kept"] == []
    for record_id in world.notes:
        assert client.get(f"/v1/activities/{record_id}", headers=admin).status_code == 404


def test_a_hold_on_a_deal_keeps_it_and_the_request_says_why(
    client: TestClient, admin: dict[str, str], officer: dict[str, str], state: State
) -> None:
    world = small_world(client, admin)
    hold_id = hold(client, officer, world.deal, "Case 4 O 12/26, Landgericht Berlin")
    shown = erase(state, client, officer, world.subject)
    assert shown["status"] == "partially_completed"
    (kept,) = shown["result"]["kept"]
    assert kept["record_id"] == world.deal
    assert kept["reason_code"] == "legal-hold"
    assert hold_id in kept["reason"]
    assert "Case 4 O 12/26, Landgericht Berlin" in kept["reason"]
    assert [k["record_id"] for k in shown["certificate"]["kept"]] == [world.deal]
    assert shown["certificate"]["kept"][0]["reason"] == kept["reason"]
    assert client.get(f"/v1/opportunities/{world.deal}", headers=admin).status_code == 200
    for record_id in world.notes:
        assert client.get(f"/v1/activities/{record_id}", headers=admin).status_code == 404
    assert client.get(f"/v1/cases/{world.case}", headers=admin).status_code == 404
    assert client.get(f"/v1/contacts/{world.subject}", headers=admin).status_code == 410


def test_a_held_activity_stays_readable_after_the_persons_key_is_shredded(
    client: TestClient, admin: dict[str, str], officer: dict[str, str], state: State
) -> None:
    world = small_world(client, admin)
    held = world.notes[1]
    hold_id = hold(client, officer, held, "regulator's inquiry")
    shown = erase(state, client, officer, world.subject)
    assert shown["status"] == "partially_completed"
    assert [k["record_id"] for k in shown["result"]["kept"]] == [held]
    assert [k["record_id"] for k in shown["certificate"]["kept"]] == [held]
    assert keys_of(state, world.subject) == 0  # the person's key is gone...
    assert keys_of(state, f"retained:{shown['id']}") == 1  # ...the note is under the request's
    assert keys_of(state, hold_id) == 0
    state.keys.cache.clear()
    got = client.get(f"/v1/activities/{held}", headers=admin)
    assert got.status_code == 200
    assert got.json()["body"] == world.bodies[held]
    for record_id in (world.notes[0], world.notes[2]):
        assert client.get(f"/v1/activities/{record_id}", headers=admin).status_code == 404
    assert client.get(f"/v1/contacts/{world.subject}", headers=admin).status_code == 410


def test_releasing_a_hold_on_an_activity_of_an_erased_person_erases_it(
    client: TestClient, admin: dict[str, str], officer: dict[str, str], state: State
) -> None:
    world = small_world(client, admin)
    held = world.notes[1]
    hold_id = hold(client, officer, held, "regulator's inquiry")
    erase(state, client, officer, world.subject)
    assert client.get(f"/v1/activities/{held}", headers=admin).status_code == 200
    request_id = next(
        r["id"]
        for r in client.get("/v1/dsr", headers=officer).json()["data"]
        if r["type"] == "erasure"
    )
    assert keys_of(state, f"retained:{request_id}") == 1
    release(client, officer, hold_id)
    # What the hold alone kept goes with it: the note, and the key it was sealed under.
    assert client.get(f"/v1/activities/{held}", headers=admin).status_code == 404
    assert keys_of(state, f"retained:{request_id}") == 0
    actions = [a for a, _, p in audit_rows(state) if about_request(p, request_id)]
    assert actions.count("dsr.erasure.kept_deleted") == 1
    assert actions.count("dsr.erasure.kept_released") == 1
    # The person stays erased: there is nothing left to erase again.
    again = client.post(
        "/v1/dsr", json={"type": "erasure", "subject_id": world.subject}, headers=officer
    )
    assert again.status_code == 410, again.text


def test_a_hold_on_the_subject_keeps_everything_and_shreds_nothing(
    client: TestClient, admin: dict[str, str], officer: dict[str, str], state: State
) -> None:
    world = small_world(client, admin)
    hold_id = hold(client, officer, world.subject, "pending litigation")
    shown = erase(state, client, officer, world.subject)
    assert shown["status"] == "partially_completed"
    assert shown["result"]["keys_destroyed"] == 0
    assert shown["certificate"]["keys_destroyed"] == 0
    assert shown["certificate"]["erased"] == {}
    kept = {k["record_id"] for k in shown["result"]["kept"]}
    assert kept == {world.subject, *world.notes, world.case, world.deal}
    assert all(hold_id in k["reason"] for k in shown["result"]["kept"])
    state.keys.cache.clear()
    contact = client.get(f"/v1/contacts/{world.subject}", headers=admin)
    assert contact.status_code == 200
    assert contact.json()["email"] == world.email
    for record_id in world.notes:
        got = client.get(f"/v1/activities/{record_id}", headers=admin).json()
        assert got["body"] == world.bodies[record_id]
    found = client.get("/v1/contacts", params={"email": world.email}, headers=admin).json()
    assert [c["id"] for c in found["data"]] == [world.subject]

    release(client, officer, hold_id)
    shown = erase(state, client, officer, world.subject)
    assert shown["status"] == "completed"
    assert shown["result"]["keys_destroyed"] >= 1
    assert client.get(f"/v1/contacts/{world.subject}", headers=admin).status_code == 410
    for record_id in world.notes:
        assert client.get(f"/v1/activities/{record_id}", headers=admin).status_code == 404
    assert client.get(f"/v1/cases/{world.case}", headers=admin).status_code == 404
    found = client.get("/v1/contacts", params={"email": world.email}, headers=admin).json()
    assert found["data"] == []
    assert (
        client.get(f"/v1/activities/{world.other_note}", headers=admin).json()["body"]
        == (world.bodies[world.other_note])
    )


def test_a_held_person_keeps_their_own_key_until_erased_after_the_release(
    client: TestClient, admin: dict[str, str], officer: dict[str, str], state: State
) -> None:
    world = small_world(client, admin)
    hold_id = hold(client, officer, world.subject, "pending litigation")
    held = erase(state, client, officer, world.subject)
    assert held["result"]["keys_destroyed"] == 0
    # Nothing of theirs outlives their key, so nothing was re-sealed under the hold's.
    assert keys_of(state, hold_id) == 0
    assert keys_of(state, world.subject) >= 1
    release(client, officer, hold_id)
    shown = erase(state, client, officer, world.subject)
    assert shown["status"] == "completed"
    assert keys_of(state, world.subject) == 0
    assert keys_of(state, hold_id) == 0


def test_erasure_leaves_no_rectification_corrections_readable(
    client: TestClient, admin: dict[str, str], officer: dict[str, str], state: State
) -> None:
    world = small_world(client, admin)
    fixed = "Zq.corrected@example.org"
    corrected = open_request(
        client,
        officer,
        {"type": "rectification", "subject_id": world.subject, "corrections": {"email": fixed}},
    )
    run_request(state, client, officer, corrected)
    refused = client.post(
        "/v1/dsr",
        json={
            "type": "rectification",
            "subject_id": world.subject,
            "corrections": {"email": "Zq.refused@example.org"},
        },
        headers=officer,
    ).json()["id"]
    client.post(f"/v1/dsr/{refused}/reject", json={"reason": "not verifiable"}, headers=officer)
    erase(state, client, officer, world.subject)
    state.keys.cache.clear()
    with state.regions.get("eu").transaction() as conn:
        for request_id in (corrected, refused):
            blob = conn.execute(
                select(dsr_requests.c.corrections).where(dsr_requests.c.id == request_id)
            ).scalar_one()
            if blob is None:
                continue  # dropped: as good as shredded
            with pytest.raises(KeyDestroyed):
                state.keys.unseal(conn, bytes(blob), corrections_context("eu", request_id))


def test_releasing_a_hold_on_a_person_leaves_them_readable_or_properly_erased(
    client: TestClient, admin: dict[str, str], officer: dict[str, str], state: State
) -> None:
    world = small_world(client, admin)
    hold_id = hold(client, officer, world.subject, "pending litigation")
    assert erase(state, client, officer, world.subject)["result"]["keys_destroyed"] == 0
    release(client, officer, hold_id)
    state.keys.cache.clear()
    contact = client.get(f"/v1/contacts/{world.subject}", headers=admin)
    if contact.status_code == 410:  # the release finished the erasure
        for record_id in world.notes:
            assert client.get(f"/v1/activities/{record_id}", headers=admin).status_code == 404
        return
    assert contact.status_code == 200
    assert "_erased" not in contact.json()
    assert contact.json()["email"] == world.email
    for record_id in world.notes:
        note = client.get(f"/v1/activities/{record_id}", headers=admin).json()
        assert note["body"] == world.bodies[record_id]


def test_what_a_retention_rule_kept_goes_when_the_retention_period_ends(
    client: TestClient,
    admin: dict[str, str],
    officer: dict[str, str],
    state: State,
    clock: FrozenClock,
) -> None:
    world = small_world(client, admin)
    mail = create(
        client,
        "activities",
        {
            "region": "eu",
            "type": "email",
            "subject": "Offer",
            "body": "Zq offer body",
            "contact_id": world.subject,
        },
        admin,
    )["id"]
    shown = erase(state, client, officer, world.subject)
    request_id = shown["id"]
    assert shown["status"] == "partially_completed"
    (kept,) = shown["result"]["kept"]
    assert (kept["record_id"], kept["reason_code"]) == (
        mail,
        "retention:commercial-correspondence",
    )
    retained = f"retained:{request_id}"
    assert keys_of(state, retained) == 1
    clock.advance(timedelta(days=365 * 6))  # not quite six years (leap days)
    state.dsr_jobs.run_once()
    assert client.get(f"/v1/activities/{mail}", headers=admin).status_code == 200
    clock.advance(timedelta(days=3))
    state.dsr_jobs.run_once()
    assert client.get(f"/v1/activities/{mail}", headers=admin).status_code == 404
    assert keys_of(state, retained) == 0
    actions = [a for a, _, p in audit_rows(state) if about_request(p, request_id)]
    assert actions.count("dsr.erasure.kept_deleted") == 1
    state.dsr_jobs.run_once()  # nothing left to expire: no second event
    clock.advance(timedelta(hours=2))
    state.dsr_jobs.run_once()
    actions = [a for a, _, p in audit_rows(state) if about_request(p, request_id)]
    assert actions.count("dsr.erasure.kept_deleted") == 1
    assert client.get(f"/v1/activities/{world.other_note}", headers=admin).status_code == 200


def test_a_converted_lead_and_its_contact_are_one_person_to_export_and_erase(
    client: TestClient, admin: dict[str, str], officer: dict[str, str], state: State
) -> None:
    tag = uuid.uuid4().hex[:6]
    lead = create(
        client,
        "leads",
        {
            "region": "eu",
            "first_name": f"Zl{tag}first",
            "last_name": f"Zl{tag}last",
            "email": f"zl.{tag}@example.org",
            "phone": f"+4930777{next(_PEOPLE):05d}",
            "company": "Weber Consulting",
        },
        admin,
    )
    note = create(
        client,
        "activities",
        {
            "region": "eu",
            "type": "call",
            "subject": "c",
            "body": f"Zl{tag}call",
            "lead_id": lead["id"],
        },
        admin,
    )
    converted = client.post(
        f"/v1/leads/{lead['id']}/convert",
        json={},
        headers={**admin, "If-Match": f'"v{lead["version"]}"'},
    )
    assert converted.status_code == 200, converted.text
    contact = converted.json()["contact"]["id"]

    export = open_request(
        client, officer, {"type": "export", "region": "eu", "identifier": {"email": lead["email"]}}
    )
    shown = run_request(state, client, officer, export)
    assert sorted(shown["subject_ids"]) == sorted([contact, lead["id"]])
    files = unzip(client.get(f"/v1/dsr/{export}/package", headers=officer).content)
    data = files["data.json"].decode()
    for canary in (f"Zl{tag}first", f"Zl{tag}last", f"Zl{tag}call", lead["email"]):
        assert canary in data, canary

    erased = erase(state, client, officer, contact)  # by the contact alone
    assert erased["status"] == "completed"
    assert erased["result"]["keys_destroyed"] == 2  # the lead's and the contact's
    assert client.get(f"/v1/leads/{lead['id']}", headers=admin).status_code == 410
    assert client.get(f"/v1/contacts/{contact}", headers=admin).status_code == 410
    assert client.get(f"/v1/activities/{note['id']}", headers=admin).status_code == 404
    for params in ({"email": lead["email"]}, {"phone": lead["phone"]}):
        assert client.get("/v1/leads", params=params, headers=admin).json()["data"] == []
