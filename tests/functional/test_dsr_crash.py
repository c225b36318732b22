"""Data subjects' requests survive a worker killed at any step, and never run twice.

Each crash test builds two identical worlds in the same databases. The reference
world's request runs uninterrupted; the other's is run by `bastion worker --once`
in a subprocess with `BASTION_FAILPOINT=dsr:<step>` (it exits 86 right after that
point commits), then by a second `bastion worker --once` without. Both end states,
with ids, generated values and times taken out, must be equal: status, result,
records left and what they still decrypt to, data keys left, certificate, package;
and each step's audit event exists exactly once, no record id is deleted twice.

A killed worker leaves its lease; the next worker takes the request only once the
lease has run out. Waiting real minutes is no test, so after the crash the test
moves the lease's end into the past — exactly what elapsed time would do — and, in
the PostgreSQL scenario, first checks that a worker does leave the leased request
alone.

The worker subprocesses use the system clock, so the tests' frozen clock is set to
the real time first: packages made in either process expire at consistent times.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import os
import subprocess
import sys
import threading
import uuid
import zipfile
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import insert, select, update
from starlette.testclient import TestClient

from bastion.audit.tables import AUDIT
from bastion.crm.catalog import ENTITIES_BY_PREFIX
from bastion.crm.tables import ENTITY_TABLES
from bastion.crypto.tables import subject_keys
from bastion.dsr import repository as repo
from bastion.dsr.erasure import kept_key
from bastion.dsr.jobs import DsrRunner
from bastion.dsr.model import STEPS
from bastion.dsr.tables import dsr_requests
from bastion.errors import Conflict
from bastion.principals.caller import Caller
from bastion.residency.ids import RecordId
from bastion.state import State
from tests.conftest import REGIONS, REPO, SECRET, Backend, FrozenClock, Tokens
from tests.factories import create

BULK = 620  # activities to delete beyond one batch of 500


# Requests are run by the test (state.dsr_jobs), not by the app's in-process runner.
SETTINGS_ENV = {"BASTION_DSR_IN_PROCESS": "false"}


@pytest.fixture(autouse=True)
def real_time(clock: FrozenClock) -> None:
    clock.current = datetime.now(UTC)


@pytest.fixture
def officer(tokens: Tokens) -> dict[str, str]:
    return tokens.headers("compliance_officer", name="dpo")


@pytest.fixture
def env(backend: Backend, tmp_path: Path) -> dict[str, str]:
    """The environment the test's settings were built from, for `bastion` processes."""
    return {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(tmp_path),
        "BASTION_HOME": str(tmp_path),
        "BASTION_CONFIG": str(tmp_path / "absent.toml"),
        "BASTION_POLICIES": str(REPO / "policies"),
        "BASTION_SECRET_KEY": SECRET,
        "BASTION_CONTROL_URL": backend.urls["control"],
        "BASTION_REGIONS": ",".join(REGIONS),
        "BASTION_LOG_LEVEL": "DEBUG",
        **{f"BASTION_REGION_{r.upper()}_URL": backend.urls[r] for r in REGIONS},
    }


def worker(env: dict[str, str], failpoint: str | None = None) -> subprocess.Popen[str]:
    extra = {"BASTION_FAILPOINT": failpoint} if failpoint else {}
    return subprocess.Popen(
        [sys.executable, "-m", "bastion", "worker", "--once"],
        env={**env, **extra},
        cwd=env["BASTION_HOME"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


# What worker processes logged (at DEBUG), and the tags that are part of every personal
# value the test wrote: no log may hold one.
LOGS: list[str] = []
TAGS: list[str] = []


def finished(process: subprocess.Popen[str]) -> tuple[int, str]:
    """(exit code, stdout) of a worker; stderr in the message when it failed oddly."""
    out, err = process.communicate(timeout=120)
    assert process.returncode in (0, 86), out + err
    LOGS.append(out + err)
    return process.returncode, out


@pytest.fixture(autouse=True)
def worker_logs_hold_no_values() -> Iterator[None]:
    LOGS.clear()
    TAGS.clear()
    yield
    leaked = [tag for tag in TAGS for log in LOGS if tag in log]
    assert leaked == [], "a worker logged a personal value"


def ran(out: str) -> int:
    line = out.strip().splitlines()[-1]
    assert line.startswith("ran "), out
    return int(line.split()[1])


# -- twin worlds ---------------------------------------------------------------------------


@dataclass
class World:
    """One person's records; `names` turns every id and value of this world into a
    label, so two worlds' end states compare equal when they are alike."""

    tag: str
    subject: str
    records: dict[str, str] = field(default_factory=dict)  # label -> id
    bodies: dict[str, str] = field(default_factory=dict)  # label -> encrypted text
    bulk: list[str] = field(default_factory=list)
    hold: str = ""
    names: dict[str, str] = field(default_factory=dict)

    def label(self, name: str, value: str) -> None:
        self.names[value] = f"<{name}>"


def build_world(
    client: TestClient,
    admin: dict[str, str],
    officer: dict[str, str],
    state: State,
    *,
    bulk: int,
) -> World:
    """A person with notes (one under a legal hold), a business e-mail (retained), a
    case and a deal; a colleague with a note; `bulk` more activities about the person."""
    tag = uuid.uuid4().hex[:8]
    TAGS.append(tag)
    account = create(client, "accounts", {"name": "Acme", "region": "eu"}, admin)["id"]
    serial = int(tag[:6], 16) % 10**7

    def person(prefix: str, n: int) -> dict[str, Any]:
        return {
            "region": "eu",
            "account_id": account,
            "first_name": f"{prefix}{tag}",
            "last_name": f"{prefix}{tag}last",
            "email": f"{prefix}.{tag}@example.org",
            "phone": f"+49{n}{serial:07d}",
            "mailing_street": f"{prefix}{tag}street",
        }

    mine, theirs = person("subject", 301), person("other", 302)
    subject = create(client, "contacts", mine, admin)["id"]
    other = create(client, "contacts", theirs, admin)["id"]
    world = World(tag, subject)
    world.records |= {"account": account, "subject": subject, "other": other}
    world.label("tag", tag)
    world.label("subject-phone", mine["phone"])
    world.label("other-phone", theirs["phone"])

    def activity(name: str, kind: str, contact: str) -> None:
        text = f"{name} {tag}"
        world.records[name] = create(
            client,
            "activities",
            {"region": "eu", "type": kind, "subject": "s", "body": text, "contact_id": contact},
            admin,
        )["id"]
        world.bodies[name] = text

    for n in range(4):
        activity(f"note{n}", "note", subject)
    activity("mail", "email", subject)
    activity("other-note", "note", other)
    world.records["case"] = create(
        client,
        "cases",
        {"region": "eu", "subject": "s", "description": f"case {tag}", "contact_id": subject},
        admin,
    )["id"]
    world.bodies["case"] = f"case {tag}"
    world.records["deal"] = create(
        client,
        "opportunities",
        {
            "region": "eu",
            "name": "Rollout",
            "account_id": account,
            "contact_id": subject,
            "stage": "proposal",
        },
        admin,
    )["id"]
    held = client.post(
        "/v1/legal-holds",
        json={"target_id": world.records["note1"], "reason": "inquiry"},
        headers=officer,
    )
    assert held.status_code == 201, held.text
    world.hold = held.json()["id"]
    world.label("hold", world.hold)
    if bulk:
        world.bulk = insert_activities(state, subject, bulk)
    for name, record_id in world.records.items():
        world.label(name, record_id)
    for record_id in world.bulk:
        world.names[record_id] = "<bulk>"
    return world


def insert_activities(state: State, contact_id: str, count: int) -> list[str]:
    """`count` activities about the person, inserted directly (no encrypted field)."""
    table = ENTITY_TABLES["activities"]
    now = state.clock.now()
    rows = []
    for n in range(count):
        created = now + timedelta(microseconds=n)
        rows.append(
            {
                "id": str(RecordId.new("act", "eu", created)),
                "region": "eu",
                "version": 1,
                "created_at": created,
                "updated_at": created,
                "type": "call",
                "subject": f"call {n}",
                "contact_id": contact_id,
            }
        )
    with state.regions.get("eu").transaction(write=True) as conn:
        conn.execute(insert(table), rows)
    return [r["id"] for r in rows]


def second_officer(client: TestClient) -> dict[str, str]:
    """Another compliance officer: an erasure or a rectification changes data for good,
    so someone other than its creator approves it (four eyes)."""
    state: State = client.app.state.bastion  # type: ignore[attr-defined]
    issued = state.tokens.issue(principal_name="dpo-approver", roles=["compliance_officer"])
    return {"Authorization": f"Bearer {issued.secret}"}


def open_request(
    client: TestClient, officer: dict[str, str], kind: str, subject: str, **extra: Any
) -> str:
    made = client.post(
        "/v1/dsr", json={"type": kind, "subject_id": subject, **extra}, headers=officer
    )
    assert made.status_code == 201, made.text
    request_id: str = made.json()["id"]
    verified = client.post(
        f"/v1/dsr/{request_id}/verify", json={"method": "id-document"}, headers=officer
    )
    assert verified.status_code == 200, verified.text
    approval = client.post(f"/v1/dsr/{request_id}/approve", headers=second_officer(client))
    assert approval.status_code == 200, approval.text
    return request_id


# -- end states ------------------------------------------------------------------------------


def normalised(value: Any, names: dict[str, str]) -> Any:
    """`value` with this world's ids and values replaced by labels, lists sorted."""
    if isinstance(value, dict):
        return {normalised(k, names): normalised(v, names) for k, v in value.items()}
    if isinstance(value, list):
        items = [normalised(v, names) for v in value]
        return sorted(items, key=lambda v: json.dumps(v, sort_keys=True))
    if isinstance(value, str):
        if value in names:
            return names[value]
        for raw, label in names.items():
            if label != "<bulk>" and raw in value:
                value = value.replace(raw, label)
        return value
    return value


_TIMES = {"completed_at", "received_at", "started_at", "approved_at", "verified_at", "due_at"}
_TIMES |= {"created_at", "updated_at", "generated_at", "expires_at", "issued_at", "occurred_at"}


def without_times(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: without_times(v) for k, v in value.items() if k not in _TIMES}
    if isinstance(value, list):
        return [without_times(v) for v in value]
    return value


def audit_of(state: State, request_id: str) -> list[tuple[str, list[str]]]:
    """(action, record ids) of the EU audit events made for a request."""
    state.audit.flush("eu")
    events = AUDIT.events
    with state.regions.get("eu").transaction() as conn:
        rows = conn.execute(select(events.c.action, events.c.payload)).all()
    found = []
    for row in rows:
        payload = json.loads(row.payload)
        if request_id in payload["record_ids"] or payload["details"].get("request") == request_id:
            found.append((row.action, payload["record_ids"]))
    return found


def keys_left(state: State, subject_ids: list[str]) -> dict[str, int]:
    with state.regions.get("eu").transaction() as conn:
        rows = conn.execute(
            select(subject_keys.c.subject_id).where(subject_keys.c.subject_id.in_(subject_ids))
        ).scalars()
        counted = Counter(rows)
    return {s: counted[s] for s in subject_ids}


def end_state(
    client: TestClient,
    admin: dict[str, str],
    officer: dict[str, str],
    state: State,
    world: World,
    request_id: str,
) -> dict[str, Any]:
    """Everything a crash could have changed, in this world's labels, times left out."""
    names = {**world.names, request_id: "<request>", kept_key(request_id): "<retained>"}
    shown = client.get(f"/v1/dsr/{request_id}", headers=officer).json()
    kind = shown["type"]
    snapshot: dict[str, Any] = {
        "request": {k: shown[k] for k in ("status", "step", "result", "error", "subject_ids")},
        "progress": {step: sorted(info) for step, info in shown["progress"].items()},
    }
    records = {}
    for name, record_id in world.records.items():
        entity = ENTITIES_BY_PREFIX[record_id[:3]].name
        got = client.get(f"/v1/{entity}/{record_id}", headers=admin)
        readable = got.json() if got.status_code == 200 else {}
        records[name] = {
            "status": got.status_code,
            "text": readable.get("body") or readable.get("description") or readable.get("email"),
            "erased": readable.get("_erased"),
        }
    with state.regions.get("eu").transaction() as conn:
        table = ENTITY_TABLES["activities"]
        bulk_left = len(conn.execute(select(table.c.id).where(table.c.id.in_(world.bulk))).all())
    snapshot["records"] = records
    snapshot["bulk_left"] = bulk_left
    snapshot["keys"] = keys_left(
        state, [world.subject, world.records["other"], world.hold, kept_key(request_id)]
    )
    if kind == "erasure":
        document = client.get(f"/v1/dsr/{request_id}/certificate", headers=officer)
        assert document.status_code == 200, document.text
        body = document.json()["certificate"]
        body.pop("audit")  # the chain head: where in the log it was issued
        snapshot["certificate"] = body
    else:
        package = client.get(f"/v1/dsr/{request_id}/package", headers=officer)
        assert package.status_code == 200, package.text
        result = snapshot["request"]["result"]
        assert hashlib.sha256(package.content).hexdigest() == result.pop("sha256")
        assert len(package.content) == result.pop("bytes")
        with zipfile.ZipFile(io.BytesIO(package.content)) as archive:
            data = json.loads(archive.read("data.json"))
            manifest = json.loads(archive.read("manifest.json"))
        snapshot["package"] = {"data": data, "counts": manifest["counts"]}
    events = audit_of(state, request_id)
    snapshot["steps"] = sorted(
        a for a, _ in events if a.split(".")[-1] in (*STEPS[kind], "started", "shell")
    )
    deleted = [i for a, ids in events if a == "dsr.erasure.delete" for i in ids]
    snapshot["deleted"] = {"count": len(deleted), "distinct": len(set(deleted))}
    return normalised(without_times(snapshot), names)


def assert_each_step_once(state: State, request_id: str, kind: str) -> None:
    actions = Counter(a for a, _ in audit_of(state, request_id))
    for step in ("started", *STEPS[kind]):
        assert actions[f"dsr.{kind}.{step}"] == 1, (step, actions)
    assert actions[f"dsr.{kind}.failed"] == 0
    deleted = [
        i for a, ids in audit_of(state, request_id) if a == "dsr.erasure.delete" for i in ids
    ]
    assert len(deleted) == len(set(deleted)), "a record was deleted twice"


def expire_lease(state: State, request_id: str) -> None:
    """What waiting out the dead worker's lease would do."""
    with state.regions.get("eu").transaction(write=True) as conn:
        conn.execute(
            update(dsr_requests)
            .where(dsr_requests.c.id == request_id)
            .values(lease_expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )


# -- the crash matrix ----------------------------------------------------------------------

CRASHES = [
    *(pytest.param("erasure", step, id=f"erasure-{step}") for step in STEPS["erasure"]),
    pytest.param("erasure", "erase-batch", id="erasure-erase-batch"),
    pytest.param("export", "discover", id="export-discover"),
    pytest.param("export", "package", id="export-package"),
]


# The crash matrix runs on SQLite; PostgreSQL has its own scenario at the end.
sqlite_only = pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
postgres_only = pytest.mark.parametrize(
    "backend", [pytest.param("postgresql", marks=pytest.mark.postgres)], indirect=True
)


@sqlite_only
@pytest.mark.parametrize(("kind", "failpoint"), CRASHES)
def test_a_worker_killed_after_a_step_resumes_to_the_uninterrupted_result(
    client: TestClient,
    admin: dict[str, str],
    officer: dict[str, str],
    state: State,
    env: dict[str, str],
    kind: str,
    failpoint: str,
) -> None:
    bulk = BULK if kind == "erasure" else 0
    reference = build_world(client, admin, officer, state, bulk=bulk)
    reference_request = open_request(client, officer, kind, reference.subject)
    assert state.dsr_jobs.run_once() == 1
    world = build_world(client, admin, officer, state, bulk=bulk)
    request_id = open_request(client, officer, kind, world.subject)

    code, _ = finished(worker(env, f"dsr:{failpoint}"))
    assert code == 86, "the failpoint did not fire"
    shown = client.get(f"/v1/dsr/{request_id}", headers=officer).json()
    step = failpoint.removeprefix("erase-")  # erase-batch dies inside the erase step
    if step == "batch":
        assert "erase" not in shown["progress"]
        assert shown["step"] == "erase"
    else:
        assert step in shown["progress"], shown["progress"]
    expected_status = "running" if failpoint != "finish" else "partially_completed"
    assert shown["status"] == expected_status

    expire_lease(state, request_id)
    code, out = finished(worker(env))
    assert code == 0
    assert ran(out) == (0 if failpoint == "finish" else 1)

    assert_each_step_once(state, request_id, kind)
    assert end_state(client, admin, officer, state, world, request_id) == end_state(
        client, admin, officer, state, reference, reference_request
    )


@sqlite_only
def test_a_worker_killed_between_deletion_batches_deletes_every_record_once(
    client: TestClient,
    admin: dict[str, str],
    officer: dict[str, str],
    state: State,
    env: dict[str, str],
) -> None:
    world = build_world(client, admin, officer, state, bulk=BULK)
    request_id = open_request(client, officer, "erasure", world.subject)
    assert finished(worker(env, "dsr:erase-batch"))[0] == 86
    first = [i for a, ids in audit_of(state, request_id) if a == "dsr.erasure.delete" for i in ids]
    assert len(first) == 500  # one batch committed, then the worker died
    expire_lease(state, request_id)
    assert ran(finished(worker(env))[1]) == 1
    assert_each_step_once(state, request_id, "erasure")
    deleted = [
        i for a, ids in audit_of(state, request_id) if a == "dsr.erasure.delete" for i in ids
    ]
    doomed = {world.records[n] for n in ("note0", "note2", "note3", "case")} | set(world.bulk)
    assert sorted(deleted) == sorted(doomed)
    shown = client.get(f"/v1/dsr/{request_id}", headers=officer).json()
    assert shown["status"] == "partially_completed"
    assert {k["record_id"] for k in shown["result"]["kept"]} == {
        world.records["note1"],
        world.records["mail"],
    }
    state.keys.cache.clear()
    for name in ("note1", "mail"):
        got = client.get(f"/v1/activities/{world.records[name]}", headers=admin).json()
        assert got["body"] == world.bodies[name]
    assert client.get(f"/v1/contacts/{world.subject}", headers=admin).status_code == 410
    assert keys_left(state, [world.subject]) == {world.subject: 0}
    body = client.get(f"/v1/dsr/{request_id}/certificate", headers=officer).json()["certificate"]
    assert sorted(i for ids in body["erased"].values() for i in ids) == sorted(
        [*doomed, world.subject]
    )


@sqlite_only
def test_a_worker_killed_after_rectify_does_not_correct_twice(
    client: TestClient,
    admin: dict[str, str],
    officer: dict[str, str],
    state: State,
    env: dict[str, str],
) -> None:
    world = build_world(client, admin, officer, state, bulk=0)
    before = client.get(f"/v1/contacts/{world.subject}", headers=admin).json()
    request_id = open_request(
        client,
        officer,
        "rectification",
        world.subject,
        corrections={"title": "CFO", "last_name": "Corrected"},
    )
    assert finished(worker(env, "dsr:rectify"))[0] == 86
    expire_lease(state, request_id)
    assert ran(finished(worker(env))[1]) == 1
    shown = client.get(f"/v1/dsr/{request_id}", headers=officer).json()
    assert shown["status"] == "completed"
    assert shown["result"]["changed"] == ["last_name", "title"]
    after = client.get(f"/v1/contacts/{world.subject}", headers=admin).json()
    assert (after["title"], after["last_name"]) == ("CFO", "Corrected")
    assert after["version"] == before["version"] + 1
    events = AUDIT.events
    with state.regions.get("eu").transaction() as conn:
        rows = conn.execute(
            select(events.c.actor, events.c.payload).where(events.c.action == "record.update")
        ).all()
    updates = [r.actor for r in rows if world.subject in json.loads(r.payload)["record_ids"]]
    assert updates == ["system:dsr"]
    assert_each_step_once(state, request_id, "rectification")


# -- concurrency ---------------------------------------------------------------------------


def small_person(client: TestClient, admin: dict[str, str]) -> str:
    tag = uuid.uuid4().hex[:8]
    TAGS.append(tag)
    person: str = create(
        client,
        "contacts",
        {"region": "eu", "last_name": f"P{tag}", "email": f"{tag}@ex.org"},
        admin,
    )["id"]
    for n in range(2):
        create(
            client,
            "activities",
            {"region": "eu", "type": "note", "subject": "s", "body": f"{n}", "contact_id": person},
            admin,
        )
    return person


def runner(state: State, name: str) -> DsrRunner:
    """Another worker on the same databases, as a second process would be."""
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


def together(*calls: Callable[[], Any]) -> list[Any]:
    """Run the calls in threads released at the same moment; their results (or errors)."""
    barrier = threading.Barrier(len(calls))
    results: list[Any] = [None] * len(calls)

    def run(index: int, function: Callable[[], Any]) -> None:
        barrier.wait()
        try:
            results[index] = function()
        except Exception as exc:  # the test inspects what each call raised
            results[index] = exc

    threads = [threading.Thread(target=run, args=(i, c)) for i, c in enumerate(calls)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return results


def test_two_workers_at_once_never_run_the_same_request_twice(
    client: TestClient, admin: dict[str, str], officer: dict[str, str], state: State
) -> None:
    requests = [
        open_request(client, officer, "erasure", small_person(client, admin)) for _ in range(6)
    ]
    counts = together(runner(state, "worker-a").run_once, runner(state, "worker-b").run_once)
    assert all(isinstance(c, int) for c in counts), counts
    assert sum(counts) == len(requests)
    for request_id in requests:
        shown = client.get(f"/v1/dsr/{request_id}", headers=officer).json()
        assert shown["status"] == "completed", shown
        assert_each_step_once(state, request_id, "erasure")


def test_concurrent_erasure_requests_for_one_person_leave_one_open(
    client: TestClient, admin: dict[str, str], state: State
) -> None:
    issued = state.tokens.issue(principal_name="dpo2", roles=["compliance_officer"])
    caller = Caller(issued.principal)
    created = []
    for _ in range(8):  # a race: several rounds, so that losing it is not luck
        person = create(client, "contacts", {"region": "eu", "last_name": "Race"}, admin)["id"]
        body = {"type": "erasure", "subject_id": person}
        results = together(*[functools.partial(state.dsr.create, caller, body)] * 6)
        assert all(isinstance(r, dict | Conflict) for r in results), results
        created.append(sum(isinstance(r, dict) for r in results))
    assert created == [1] * 8


@postgres_only
def test_postgres_workers_share_the_queue_and_resume_a_killed_ones_request(
    backend: Backend,
    client: TestClient,
    admin: dict[str, str],
    officer: dict[str, str],
    state: State,
    env: dict[str, str],
) -> None:
    world = build_world(client, admin, officer, state, bulk=BULK)
    crashed = open_request(client, officer, "erasure", world.subject)
    assert finished(worker(env, "dsr:erase-batch"))[0] == 86
    others = [
        open_request(client, officer, "erasure", small_person(client, admin)) for _ in range(5)
    ]
    # The dead worker's lease holds: a worker runs the others, not the leased one.
    assert ran(finished(worker(env))[1]) == 5
    assert client.get(f"/v1/dsr/{crashed}", headers=officer).json()["status"] == "running"
    more = [open_request(client, officer, "erasure", small_person(client, admin)) for _ in range(5)]
    expire_lease(state, crashed)
    first, second = worker(env), worker(env)
    total = ran(finished(first)[1]) + ran(finished(second)[1])
    assert total == 1 + len(more)
    for request_id in [crashed, *others, *more]:
        shown = client.get(f"/v1/dsr/{request_id}", headers=officer).json()
        assert shown["status"] in ("completed", "partially_completed"), shown
        assert_each_step_once(state, request_id, "erasure")
    shown = client.get(f"/v1/dsr/{crashed}", headers=officer).json()
    assert shown["status"] == "partially_completed"  # the held note and the e-mail
    deleted = [i for a, ids in audit_of(state, crashed) if a == "dsr.erasure.delete" for i in ids]
    expected = {world.records[n] for n in ("note0", "note2", "note3", "case")} | set(world.bulk)
    assert set(deleted) == expected
    with state.regions.get("eu").transaction() as conn:
        table = ENTITY_TABLES["activities"]
        assert conn.execute(select(table.c.id).where(table.c.id.in_(world.bulk))).all() == []


def test_a_worker_that_lost_its_lease_stops_without_writing(
    client: TestClient,
    admin: dict[str, str],
    officer: dict[str, str],
    state: State,
    clock: FrozenClock,
) -> None:
    request_id = open_request(client, officer, "erasure", small_person(client, admin))
    slow, fast = runner(state, "worker-slow"), runner(state, "worker-fast")
    database = state.regions.get("eu")
    lease = timedelta(seconds=state.settings.dsr.lease_seconds)
    with database.transaction(write=True) as conn:  # the slow worker claims it...
        assert repo.claim(conn, clock.now(), slow.worker_id, clock.now() + lease) == request_id
    clock.advance(lease + timedelta(seconds=1))  # ...and stalls past its lease
    with database.transaction(write=True) as conn:
        assert repo.claim(conn, clock.now(), fast.worker_id, clock.now() + lease) == request_id
    assert slow.run("eu", request_id) == "approved"  # not its lease: it touches nothing
    assert client.get(f"/v1/dsr/{request_id}", headers=officer).json()["progress"] == {}
    assert fast.run("eu", request_id) == "completed"
    assert_each_step_once(state, request_id, "erasure")
    assert slow.run_once() == 0


@sqlite_only
def test_no_hold_can_be_placed_on_what_a_running_erasure_is_erasing(
    client: TestClient,
    admin: dict[str, str],
    officer: dict[str, str],
    state: State,
    env: dict[str, str],
) -> None:
    world = build_world(client, admin, officer, state, bulk=0)
    request_id = open_request(client, officer, "erasure", world.subject)
    assert finished(worker(env, "dsr:discover"))[0] == 86  # planned, then killed
    for name in ("subject", "note0", "deal"):
        late = client.post(
            "/v1/legal-holds",
            json={"target_id": world.records[name], "reason": "too late"},
            headers=officer,
        )
        assert late.status_code == 409, (name, late.text)
        assert request_id in late.json()["detail"]
    unrelated = client.post(
        "/v1/legal-holds",
        json={"target_id": world.records["other-note"], "reason": "another matter"},
        headers=officer,
    )
    assert unrelated.status_code == 201
    expire_lease(state, request_id)
    assert ran(finished(worker(env))[1]) == 1
    assert client.get(f"/v1/activities/{world.records['note0']}", headers=admin).status_code == 404
    after = client.post(
        "/v1/legal-holds",
        json={"target_id": world.records["deal"], "reason": "after the erasure"},
        headers=officer,
    )
    assert after.status_code == 201, after.text


@sqlite_only
def test_approve_wait_runs_the_request_in_the_command(
    client: TestClient, admin: dict[str, str], officer: dict[str, str], env: dict[str, str]
) -> None:
    made = client.post(
        "/v1/dsr",
        json={"type": "erasure", "subject_id": small_person(client, admin)},
        headers=officer,
    ).json()
    client.post(f"/v1/dsr/{made['id']}/verify", json={"method": "call"}, headers=officer)
    second_officer(client)  # the principal the command acts as
    command = ["dsr", "approve", "--as", "dpo-approver", "--wait", made["id"]]
    approved = subprocess.run(
        [sys.executable, "-m", "bastion", *command],
        env=env,
        cwd=env["BASTION_HOME"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert approved.returncode == 0, approved.stderr[-2000:]
    shown = json.loads(approved.stdout)
    assert shown["status"] == "completed", shown
    assert f"erasure {made['id']}" in approved.stderr  # the progress bar
    assert f"finish ({len(STEPS['erasure'])}/{len(STEPS['erasure'])})" in approved.stderr

    def watch(request_id: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "bastion", "dsr", "watch", "--as", "dpo-approver", request_id],
            env=env,
            cwd=env["BASTION_HOME"],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    watched = watch(made["id"])
    assert watched.returncode == 0, watched.stderr[-2000:]
    assert json.loads(watched.stdout)["status"] == "completed"
    refused = client.post(
        "/v1/dsr",
        json={"type": "access", "subject_id": small_person(client, admin)},
        headers=officer,
    ).json()["id"]
    client.post(f"/v1/dsr/{refused}/reject", json={"reason": "no proof"}, headers=officer)
    watched = watch(refused)
    assert watched.returncode == 1
    assert json.loads(watched.stdout)["status"] == "rejected"
