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
import re
import shutil
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
import structlog
from sqlalchemy import Engine, create_engine, event, exists, literal, select, text, union_all
from starlette.testclient import TestClient

from bastion import migrate as migrations
from bastion.app import create_app
from bastion.config import Settings, load_settings
from bastion.logs import configure_logging
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
        # One round trip finds the tables a test wrote to; only those are truncated
        # (TRUNCATE makes new files for every table it names: on 40 tables per
        # database that is most of a test's setup, for tables that are empty anyway).
        probe = union_all(
            *(
                select(literal(table.name)).where(exists().select_from(table))
                for table in metadata.sorted_tables
            )
        )
        engine = create_engine(url)
        with engine.begin() as conn:
            used = [str(row[0]) for row in conn.execute(probe)]
            if used:
                # The audit tables' triggers reject TRUNCATE; as superuser, skip them here.
                conn.execute(text("SET LOCAL session_replication_role = replica"))
                tables = ", ".join(f'"{table}"' for table in used)
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
        # Limiting stays on, far above what one test sends (test_hygiene tests limits).
        "BASTION_LIMITS_REQUESTS_PER_SECOND": "1000000",
        "BASTION_LIMITS_FAILED_AUTH_PER_MINUTE": "1000000",
        # No workflow rules or scoring model unless a test brings its own (the repo's
        # own files would otherwise load from the working directory).
        "BASTION_AUTOMATION_WORKFLOWS": str(home / "no-workflows"),
        "BASTION_AUTOMATION_SCORING": str(home / "no-scoring"),
        **extra,
    }
    return load_settings(environ)


@pytest.fixture
def settings(backend: Backend, tmp_path: Path, request: pytest.FixtureRequest) -> Settings:
    """Settings for the test's databases; a module adds its own variables in
    `SETTINGS_ENV` (e.g. DSR tests run requests themselves, not the app's runner)."""
    (tmp_path / "absent.toml").write_text("")
    return settings_for(backend, tmp_path, **getattr(request.module, "SETTINGS_ENV", {}))


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock()


# A record id names its region (`con_eu_…`, see bastion.residency.ids).
_RECORD_ID = re.compile(r"\b[a-z]{3}_([a-z][a-z0-9]{1,15})_[0-9a-hjkmnp-tv-z]{26}\b")


class ResidencyGuard:
    """Watches every statement sent to each region's engine: a record id of another
    region in its parameters or its SQL is a residency breach, recorded with the
    statement. Every test on the `state` fixture ends with `assert_clean()`.
    """

    def __init__(self, regions: tuple[str, ...]) -> None:
        self.regions = regions
        self.breaches: list[str] = []
        self._paused = 0

    @contextmanager
    def tolerated(self) -> Iterator[None]:
        """Statements inside the block are not checked."""
        self._paused += 1
        try:
            yield
        finally:
            self._paused -= 1

    def watch(self, region: str, engine: Engine) -> None:
        def check(
            _conn: object, _cursor: object, statement: str, parameters: object, *_: object
        ) -> None:
            if self._paused:
                return
            for found in self._foreign_ids(region, (statement, parameters)):
                self.breaches.append(f"{found} sent to region {region!r}: {statement[:200]}")

        event.listen(engine, "before_cursor_execute", check)

    def _foreign_ids(self, region: str, value: object) -> Iterator[str]:
        if isinstance(value, bytes | bytearray | memoryview):
            value = bytes(value).decode("latin-1")
        if isinstance(value, str):
            for match in _RECORD_ID.finditer(value):
                if match.group(1) in self.regions and match.group(1) != region:
                    yield match.group(0)
        elif isinstance(value, dict):
            for item in value.values():
                yield from self._foreign_ids(region, item)
        elif isinstance(value, list | tuple | set | frozenset):
            for item in value:
                yield from self._foreign_ids(region, item)

    def assert_clean(self) -> None:
        assert not self.breaches, "records crossed regions:\n" + "\n".join(self.breaches)


@pytest.fixture
def residency_guard() -> ResidencyGuard:
    """The guard on the `state` fixture's region engines; a test that moves data
    across regions on purpose (an attack it defends against) says so with
    `residency_guard.tolerated()`."""
    return ResidencyGuard(REGIONS)


@pytest.fixture
def state(
    settings: Settings, clock: FrozenClock, residency_guard: ResidencyGuard
) -> Iterator[State]:
    built = build_state(settings, clock=clock)
    for region in built.regions.names:
        residency_guard.watch(region, built.regions.get(region).engine)
    yield built
    built.close()
    residency_guard.assert_clean()


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


@pytest.fixture
def logged(capsys: pytest.CaptureFixture[str]) -> Iterator[Callable[[], str]]:
    """Everything logged since the last call; the first call starts JSON logs at DEBUG
    (inside the test: capsys swaps the streams between the setup and call phases)."""
    started = False

    def read() -> str:
        nonlocal started
        if not started:
            configure_logging("json", "DEBUG")
            started = True
        output = capsys.readouterr()
        return output.out + output.err

    yield read
    structlog.reset_defaults()
