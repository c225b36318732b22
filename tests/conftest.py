"""Fixtures: Bastion on SQLite always, and on PostgreSQL when it is reachable.

Database-backed tests take the `backend` fixture (directly or through `state`,
`client`, ...), which runs them once per backend. PostgreSQL tests skip when no
server answers, except under BASTION_REQUIRE_POSTGRES=1 (CI), where they fail.

Schemas are always built by the Alembic migrations, never `create_all`: once per
session into template SQLite files (copied per test) and into three PostgreSQL
databases created for the session (emptied between tests, dropped at the end).
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import create_engine, text
from starlette.testclient import TestClient

from bastion import migrate as migrations
from bastion.app import create_app
from bastion.config import Settings, load_settings
from bastion.residency.databases import create_db_engine
from bastion.schema import control_metadata, region_metadata
from bastion.state import State, build_state

REPO = Path(__file__).resolve().parent.parent
PG_DSN = os.environ.get("BASTION_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
REQUIRE_PG = os.environ.get("BASTION_REQUIRE_POSTGRES") == "1"
REGIONS = ("eu", "us")
KINDS = {"control": "control", "eu": "region", "us": "region"}
SECRET = "test-secret-0123456789abcdef0123456789abcdef"


class FrozenClock:
    """A clock tests move by hand; starts at a fixed instant."""

    def __init__(self) -> None:
        self.current = datetime(2026, 11, 24, 9, 0, tzinfo=UTC)

    def now(self) -> datetime:
        self.current += timedelta(microseconds=1)  # distinct, increasing timestamps
        return self.current

    def advance(self, delta: timedelta) -> None:
        self.current += delta


def _pg_available() -> bool:
    try:
        with psycopg.connect(PG_DSN, connect_timeout=3):
            return True
    except psycopg.Error:
        return False


@dataclass(frozen=True)
class Backend:
    name: str
    urls: dict[str, str]  # database name ("control", "eu", "us") -> SQLAlchemy URL


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("sqlite-template")
    for name, kind in KINDS.items():
        engine = create_db_engine(f"sqlite:///{directory / f'{name}.db'}")
        migrations.upgrade(engine, kind)
        engine.dispose()
    return directory


@pytest.fixture(scope="session")
def pg_databases() -> Iterator[dict[str, str]]:
    if not _pg_available():
        if REQUIRE_PG:
            pytest.fail(f"PostgreSQL is required (BASTION_REQUIRE_POSTGRES=1) but {PG_DSN} is down")
        pytest.skip("PostgreSQL is not reachable")
    suffix = uuid.uuid4().hex[:8]
    names = {name: f"bastion_test_{suffix}_{name}" for name in KINDS}
    with psycopg.connect(PG_DSN, autocommit=True) as conn:
        for database in names.values():
            conn.execute(f'CREATE DATABASE "{database}"')
    urls = {
        name: f"postgresql+psycopg://postgres@127.0.0.1:5432/{database}"
        for name, database in names.items()
    }
    try:
        for name, kind in KINDS.items():
            engine = create_db_engine(urls[name])
            migrations.upgrade(engine, kind)
            engine.dispose()
        yield urls
    finally:
        with psycopg.connect(PG_DSN, autocommit=True) as conn:
            for database in names.values():
                conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


def _truncate_pg(urls: dict[str, str]) -> None:
    for name, url in urls.items():
        metadata = control_metadata if KINDS[name] == "control" else region_metadata
        tables = ", ".join(f'"{t.name}"' for t in metadata.sorted_tables)
        engine = create_engine(url)
        with engine.begin() as conn:
            # The audit tables' triggers reject TRUNCATE; as superuser, skip them here.
            conn.execute(text("SET LOCAL session_replication_role = replica"))
            conn.execute(text(f"TRUNCATE {tables} CASCADE"))
        engine.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    if request.param == "sqlite":
        template: Path = request.getfixturevalue("sqlite_template")
        for name in KINDS:
            shutil.copy(template / f"{name}.db", tmp_path / f"{name}.db")
        yield Backend("sqlite", {name: f"sqlite:///{tmp_path / f'{name}.db'}" for name in KINDS})
        return
    urls: dict[str, str] = request.getfixturevalue("pg_databases")
    _truncate_pg(urls)
    yield Backend("postgresql", urls)


def settings_for(backend: Backend, home: Path, **extra: str) -> Settings:
    environ = {
        "BASTION_CONFIG": str(home / "absent.toml"),
        "BASTION_HOME": str(home),
        "BASTION_POLICIES": str(REPO / "policies"),
        "BASTION_SECRET_KEY": SECRET,
        "BASTION_CONTROL_URL": backend.urls["control"],
        "BASTION_REGIONS": ",".join(REGIONS),
        **{f"BASTION_REGION_{r.upper()}_URL": backend.urls[r] for r in REGIONS},
        **extra,
    }
    return load_settings(environ)


@pytest.fixture
def settings(backend: Backend, tmp_path: Path) -> Settings:
    (tmp_path / "absent.toml").write_text("")
    return settings_for(backend, tmp_path)


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock()


@pytest.fixture
def state(settings: Settings, clock: FrozenClock) -> Iterator[State]:
    built = build_state(settings, clock=clock)
    yield built
    built.close()


@pytest.fixture
def client(settings: Settings, state: State) -> Iterator[TestClient]:
    with TestClient(create_app(settings, state=state), raise_server_exceptions=True) as c:
        yield c


class Tokens:
    """Issues bearer tokens for test principals and returns ready-made headers."""

    def __init__(self, state: State) -> None:
        self._state = state
        self._cache: dict[tuple[str, tuple[str, ...], tuple[str, ...]], dict[str, str]] = {}

    def headers(
        self, *roles: str, regions: tuple[str, ...] = (), name: str | None = None
    ) -> dict[str, str]:
        key = (name or "-".join(roles), tuple(roles), regions)
        if key not in self._cache:
            issued = self._state.tokens.issue(
                principal_name=name or f"test-{'-'.join(roles) or 'none'}-{'-'.join(regions)}",
                roles=roles,
                regions=regions,
            )
            self._cache[key] = {"Authorization": f"Bearer {issued.secret}"}
        return self._cache[key]


@pytest.fixture
def tokens(state: State) -> Tokens:
    return Tokens(state)


@pytest.fixture
def admin(tokens: Tokens) -> dict[str, str]:
    return tokens.headers("admin")
