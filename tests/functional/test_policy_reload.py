"""Hot reload: a policy activated in one worker reaches every other worker through
the control database, without a restart; a policy that does not load is refused and
the running one stays, everywhere.

Two `State`s on the same databases are two worker processes; their clients run
without the app lifespan, so no background watcher polls behind the test's back:
a worker adopts a new version exactly when the test calls its `policy_watcher.sync()`.
The last test runs real processes: uvicorn with two workers and `bastion policy reload`.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.testclient import TestClient

from bastion.app import create_app
from bastion.config import Settings, load_settings
from bastion.policy.rules import PolicyError
from bastion.state import State, build_state
from tests.conftest import KINDS, SECRET, Backend, FrozenClock, settings_for
from tests.factories import Caller, caller, create, policy_dir, write_policy

REPO = Path(__file__).resolve().parents[2]
DENY_EMAIL = "p2, sales_rep, *, contacts.email, read, , deny"


@dataclass
class Workers:
    settings: Settings
    directory: Path
    a: State
    b: State
    client_a: TestClient
    client_b: TestClient


@pytest.fixture
def workers(backend: Backend, tmp_path: Path) -> Iterator[Workers]:
    directory = policy_dir(tmp_path / "policies", source=REPO / "policies")
    (tmp_path / "absent.toml").write_text("")
    configured = settings_for(backend, tmp_path, BASTION_POLICIES=str(directory))
    a = build_state(configured, clock=FrozenClock())
    b = build_state(configured, clock=FrozenClock())
    try:
        yield Workers(
            configured,
            directory,
            a,
            b,
            TestClient(create_app(configured, state=a)),
            TestClient(create_app(configured, state=b)),
        )
    finally:
        a.close()
        b.close()


def _email_shown(client: TestClient, rep: Caller, record_id: str) -> bool:
    shown = client.get(f"/v1/contacts/{record_id}", headers=rep.headers)
    assert shown.status_code == 200, shown.text
    body = shown.json()
    assert ("email" in body) is not ("email" in body["_withheld"])
    return "email" in body


def _contact(workers: Workers) -> tuple[Caller, str]:
    admin = caller(workers.a, "admin", name="adm").headers
    rep = caller(workers.a, "sales_rep", name="rep")
    body = {"last_name": "Weber", "email": "weber@example.com", "owner_id": rep.id}
    return rep, create(workers.client_a, "contacts", body, admin)["id"]


def test_a_reload_applies_at_once_here_and_on_the_next_poll_in_another_worker(
    workers: Workers,
) -> None:
    rep, contact = _contact(workers)
    old = workers.a.policy.version
    assert workers.b.policy.version == old
    assert _email_shown(workers.client_a, rep, contact)
    assert _email_shown(workers.client_b, rep, contact)

    original = (REPO / "policies" / "policy.csv").read_text()
    write_policy(workers.directory, original, append=[DENY_EMAIL])
    policy, change, _findings = workers.a.reload_policy(actor="cli:tester", reason="no emails")
    new = policy.version
    assert new != old
    assert workers.a.policy.version == new
    assert change is not None
    assert (change.actor, change.old_version, change.new_version) == ("cli:tester", old, new)
    assert workers.a.policy_store.active_version() == new
    rep_roles = frozenset({"sales_rep"})
    assert "email" not in workers.a.policy.mask(rep_roles, "eu", "contacts", "read").always
    assert not _email_shown(workers.client_a, rep, contact)

    # Worker b still runs what it loaded until it polls; then it follows, no restart.
    assert workers.b.policy.version == old
    assert _email_shown(workers.client_b, rep, contact)
    assert workers.b.policy_watcher.sync() is True
    assert workers.b.policy.version == new
    assert not _email_shown(workers.client_b, rep, contact)
    assert workers.b.policy_watcher.sync() is False

    # The change is on record: who, old -> new, why, and the diff of the files.
    auditor = caller(workers.a, "auditor", name="aud").headers
    history = workers.client_b.get("/v1/policy/history", headers=auditor)
    assert history.status_code == 200, history.text
    latest = history.json()["data"][0]
    assert latest["actor"] == "cli:tester"
    assert (latest["old_version"], latest["new_version"]) == (old, new)
    assert latest["reason"] == "no emails"
    assert f"\n+{DENY_EMAIL}\n" in latest["diff"]
    assert "a/policy.csv" in latest["diff"]

    # Reloading the same files again changes nothing and records nothing.
    _policy, again, _ = workers.a.reload_policy(actor="cli:tester", reason="again")
    assert again is None
    assert workers.client_b.get("/v1/policy/history", headers=auditor).json()["data"][0] == latest


BROKEN = {
    "too few fields": "p, sales_rep, *, contacts, read",
    "quotes": 'p, sales_rep, *, contacts, read, own, "allow"',
    "unknown field": "p2, sales_rep, *, contacts.shoe_size, read, , allow",
    "lint error": "p, x, *, audit, read, own, allow",
}


def test_a_policy_that_does_not_load_is_refused_and_every_worker_keeps_its_own(
    workers: Workers,
) -> None:
    rep, contact = _contact(workers)
    old = workers.a.policy.version
    original = (REPO / "policies" / "policy.csv").read_text()
    security = caller(workers.a, "security_admin", name="sec").headers
    for problem, line in BROKEN.items():
        path = write_policy(workers.directory, original, append=[DENY_EMAIL, line])
        where = f"{path}:{len(path.read_text().splitlines())}"

        with pytest.raises(PolicyError) as refused:
            workers.a.reload_policy(actor="cli:tester", reason="broken")
        assert where in str(refused.value), problem
        assert workers.a.policy.version == old
        assert workers.a.policy_store.active_version() == old
        assert workers.b.policy_watcher.sync() is False
        assert workers.b.policy.version == old
        for client in (workers.client_a, workers.client_b):
            assert _email_shown(client, rep, contact)

        response = workers.client_a.post(
            "/v1/policy/reload", json={"reason": "try it"}, headers=security
        )
        assert response.status_code == 409, response.text
        assert response.headers["content-type"] == "application/problem+json"
        assert where in response.json()["detail"], problem
        assert old in response.json()["detail"]
        assert workers.a.policy_store.active_version() == old
        assert workers.a.policy.version == old
    history = workers.client_a.get("/v1/policy/history", headers=security).json()["data"]
    assert [c["new_version"] for c in history] == [old]


# -- real processes -----------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _wait(what: str, condition: Any, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what} after {seconds} s")
        time.sleep(0.1)


def test_bastion_policy_reload_reaches_every_uvicorn_worker(
    sqlite_template: Path, tmp_path: Path
) -> None:
    for name in KINDS:
        shutil.copy(sqlite_template / f"{name}.db", tmp_path / f"{name}.db")
    directory = policy_dir(tmp_path / "policies", source=REPO / "policies")
    (tmp_path / "config.toml").write_text("")
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(tmp_path),
        "BASTION_HOME": str(tmp_path),
        "BASTION_CONFIG": str(tmp_path / "config.toml"),
        "BASTION_POLICIES": str(directory),
        "BASTION_SECRET_KEY": SECRET,
        "BASTION_POLICY_POLL_SECONDS": "0.2",
        "BASTION_REGIONS": "eu,us",
        "BASTION_CONTROL_URL": f"sqlite:///{tmp_path / 'control.db'}",
        "BASTION_REGION_EU_URL": f"sqlite:///{tmp_path / 'eu.db'}",
        "BASTION_REGION_US_URL": f"sqlite:///{tmp_path / 'us.db'}",
    }
    # Principals and a contact, made in this process on the same databases.
    setup = build_state(load_settings(env))
    try:
        with TestClient(create_app(setup.settings, state=setup)) as local:
            admin = caller(setup, "admin", name="adm").headers
            rep = caller(setup, "sales_rep", name="rep")
            body = {"last_name": "Weber", "email": "weber@example.com", "owner_id": rep.id}
            contact = create(local, "contacts", body, admin)["id"]
    finally:
        setup.close()

    port = _free_port()
    log = tmp_path / "server.log"
    with log.open("wb") as output:
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "--factory",
                "bastion.app:app_from_environment",
                "--workers",
                "2",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
            env=env,
            cwd=tmp_path,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}/v1/contacts/{contact}"

    def shown_on_fresh_connections(count: int = 16) -> list[bool]:
        """Whether `email` is shown, once per request, each on a new connection."""
        answers = []
        for _ in range(count):
            with httpx.Client(timeout=5) as fresh:
                response = fresh.get(url, headers=rep.headers)
            assert response.status_code == 200, response.text
            answers.append("email" in response.json())
        return answers

    try:
        _wait(
            "both workers to start",
            lambda: log.read_text(errors="replace").count("Application startup complete") >= 2,
            30,
        )
        assert all(shown_on_fresh_connections())

        write_policy(directory, (REPO / "policies" / "policy.csv").read_text(), append=[DENY_EMAIL])
        reloaded = subprocess.run(
            [sys.executable, "-m", "bastion", "policy", "reload", "--reason", "no emails"],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert reloaded.returncode == 0, reloaded.stdout + reloaded.stderr
        assert "activated policy" in reloaded.stdout

        # Each worker logs the swap when its watcher adopts the new version.
        _wait(
            "both workers to adopt the new policy",
            lambda: log.read_text(errors="replace").count("policy_reloaded") >= 2,
            10,
        )
        assert not any(shown_on_fresh_connections(32))
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=5)
