"""Databases, settings and server processes for one benchmark backend.

Each app (Bastion, the baseline) gets its own set of throwaway databases per run:
SQLite files in a temporary directory, or three fresh PostgreSQL databases
(control, eu, us) dropped again at the end. Every set's schema is built by
Bastion's own migrations, and one admin token is issued in Bastion's set.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import httpx
import psycopg
from psycopg import sql

REPO = Path(__file__).resolve().parent.parent
POLICIES = REPO / "policies"
REGIONS = ("eu", "us")
PG_ADMIN_DSN = os.environ.get(
    "BASTION_BENCH_PG", "host=127.0.0.1 port=5432 user=postgres dbname=postgres"
)
BACKENDS = ("sqlite", "postgresql")
APPS = ("bastion", "baseline")
DATABASES = ("control", *REGIONS)


@dataclass(frozen=True, slots=True)
class Databases:
    """One app's own set of throwaway databases on one backend."""

    backend: str  # "sqlite" or "postgresql"
    app: str  # whose databases these are ("bastion" or "baseline")
    urls: dict[str, str]  # "control", "eu", "us" -> SQLAlchemy URL
    home: Path  # BASTION_HOME and the place for logs and the empty config file


def postgres_available() -> str | None:
    """None when PostgreSQL answers; otherwise why not, in one line."""
    try:
        with psycopg.connect(PG_ADMIN_DSN, connect_timeout=3):
            return None
    except psycopg.Error as exc:
        return f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc) else ''}"


def chosen_backends(choice: str) -> list[str]:
    """The backends a `--backend` choice names ("sqlite", "postgresql" or "all"), without
    PostgreSQL -- and a printed note saying so -- when it does not answer."""
    backends = list(BACKENDS) if choice == "all" else [choice]
    if "postgresql" in backends and (problem := postgres_available()) is not None:
        print(f"note: PostgreSQL not reachable ({problem}); skipping it")
        backends.remove("postgresql")
    return backends


def _pg_url(database: str) -> str:
    info = psycopg.conninfo.conninfo_to_dict(PG_ADMIN_DSN)
    user = info.get("user", "postgres")
    host = info.get("host", "127.0.0.1")
    port = info.get("port", "5432")
    return f"postgresql+psycopg://{user}@{host}:{port}/{database}"


@contextlib.contextmanager
def backend_databases(backend: str, workdir: Path) -> Iterator[dict[str, Databases]]:
    """Each app's own empty databases on `backend` ("sqlite" or "postgresql"), by app.

    The apps never share a database: Bastion cannot decrypt the baseline's
    plaintext rows, and each app's lists and gets must see only its own rows.
    """
    with contextlib.ExitStack() as stack:
        yield {app: stack.enter_context(app_databases(backend, app, workdir)) for app in APPS}


@contextlib.contextmanager
def app_databases(backend: str, app: str, workdir: Path) -> Iterator[Databases]:
    home = workdir / backend / app
    home.mkdir(parents=True, exist_ok=True)
    (home / "bastion.toml").write_text("# empty: the benchmark configures by environment\n")
    if backend == "sqlite":
        urls = {db: f"sqlite:///{home / f'{db}.db'}" for db in DATABASES}
        yield Databases(backend, app, urls, home)
        return
    tag = f"bastion_bench_{os.getpid()}_{uuid.uuid4().hex[:6]}_{app}"
    names = {db: f"{tag}_{db}" for db in DATABASES}
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as admin:
        for database in names.values():
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
    try:
        yield Databases(backend, app, {db: _pg_url(name) for db, name in names.items()}, home)
    finally:
        with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as admin:
            for database in names.values():
                admin.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                        sql.Identifier(database)
                    )
                )


def bastion_environment(databases: Databases) -> dict[str, str]:
    """The BASTION_* variables for one app's databases (the baseline reads only the
    region URLs and the pool size; the rest is what Bastion's migrations need)."""
    env = {
        "BASTION_HOME": str(databases.home),
        "BASTION_CONFIG": str(databases.home / "bastion.toml"),
        "BASTION_POLICIES": str(POLICIES),
        "BASTION_SECRET_KEY": secrets.token_urlsafe(32),  # throwaway, per run
        "BASTION_CONTROL_URL": databases.urls["control"],
        "BASTION_REGIONS": ",".join(REGIONS),
        "BASTION_LOG_LEVEL": "warning",
        # The load generator sends thousands of requests per second on one token:
        # the per-token rate limit would measure itself, not the pipeline.
        "BASTION_LIMITS_REQUESTS_PER_SECOND": "0",
        "BASTION_LIMITS_FAILED_AUTH_PER_MINUTE": "0",
    }
    for region in REGIONS:
        env[f"BASTION_REGION_{region.upper()}_URL"] = databases.urls[region]
    return env


def migrate_databases(env: dict[str, str]) -> None:
    """Build the schema in every database `env` names, with Bastion's migrations."""
    from bastion import migrate  # imported late: a clear error if it is missing
    from bastion.config import load_settings

    migrate.migrate_all(load_settings(env))


def prepare(env: dict[str, str]) -> str:
    """Migrate every database and issue an admin token; returns the bearer token."""
    from bastion.config import load_settings
    from bastion.state import build_state

    migrate_databases(env)
    state = build_state(load_settings(env))
    try:
        return state.tokens.issue(principal_name="benchmark", roles=["admin"]).secret
    finally:
        state.close()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Server:
    """One uvicorn process (one worker unless told) serving an app factory on a free port."""

    def __init__(
        self, label: str, factory: str, env: dict[str, str], logdir: Path, *, workers: int = 1
    ) -> None:
        self.label = label
        self.workers = workers
        self.factory = factory
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log_path = logdir / f"{label}.log"
        self._env = env
        self._log: IO[bytes] | None = None
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        pythonpath = [str(REPO / "platform"), str(REPO)]
        if os.environ.get("PYTHONPATH"):
            pythonpath.append(os.environ["PYTHONPATH"])
        env = {**os.environ, **self._env, "PYTHONPATH": os.pathsep.join(pythonpath)}
        self._log = self.log_path.open("wb")
        self._process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "--factory",
                self.factory,
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--log-level",
                "warning",
                "--no-access-log",
                "--workers",
                str(self.workers),
            ],
            env=env,
            cwd=self._env.get("BASTION_HOME", str(REPO)),
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def wait_ready(self, timeout: float = 30.0) -> None:
        assert self._process is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"{self.label} exited at startup:\n{self.log_tail()}")
            try:
                if httpx.get(f"{self.base_url}/healthz", timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"{self.label} did not answer /healthz in {timeout:.0f}s")

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        if self._log is not None:
            self._log.close()
