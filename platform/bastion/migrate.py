"""Alembic migrations for the control database and every region database.

There are two *kinds* of database, each with its own linear history:
`migrations/versions/control/` and `migrations/versions/region/`. One `env.py`
serves both; it gets the open connection and the kind from `Config.attributes`,
so migrations only ever run through this module (`bastion migrate`, `bastion db
...`), never the bare `alembic` command. Each kind records its revision in its
own version table, so even a database shared by both kinds stays unambiguous.

The migrations directory sits at the repository root (next to `platform/`); set
`BASTION_MIGRATIONS` to use another one.
"""

from __future__ import annotations

import importlib.util
import os
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.autogenerate.api import AutogenContext
from alembic.config import Config
from alembic.operations.ops import MigrationScript
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Column, Connection, Engine, Index, MetaData, Table, Text, text
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.schema import Constraint
from sqlalchemy.types import TypeDecorator, TypeEngine

from bastion.config import Settings
from bastion.errors import BastionError
from bastion.residency.databases import CONTROL, create_db_engine
from bastion.schema import control_metadata, region_metadata

KINDS = ("control", "region")

# Same execution option as `Database.transaction(write=True)`: on SQLite the
# engine then opens the transaction with BEGIN IMMEDIATE, so two migrators queue
# on the write lock and the second one finds the database already at head.
_WRITE_OPTION = "bastion_write"
# PostgreSQL: concurrent migrators of one database serialize on this lock.
_PG_LOCK_KEY = 0x42415354494F4E  # "BASTION"


class MigrationError(BastionError):
    """A database could not be migrated; `detail` names it, never a driver message."""

    slug = "migration-failed"
    title = "Migration failed"


def migrations_dir() -> Path:
    """The Alembic script directory: `$BASTION_MIGRATIONS`, else `<repo>/migrations`."""
    configured = os.environ.get("BASTION_MIGRATIONS")
    path = Path(configured) if configured else Path(__file__).resolve().parents[2] / "migrations"
    if not (path / "env.py").is_file():
        raise MigrationError(
            f"no Alembic migrations at {path}; install Bastion from its repository "
            "(pip install -e .) or set BASTION_MIGRATIONS"
        )
    return path


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"unknown database kind {kind!r}; expected one of {KINDS}")


def metadata_for(kind: str) -> MetaData:
    """The tables a database of this kind must hold."""
    _check_kind(kind)
    return control_metadata if kind == "control" else region_metadata


def version_table(kind: str) -> str:
    _check_kind(kind)
    return f"alembic_version_{kind}"


def _ini_value(value: str) -> str:
    # Config options go through ConfigParser interpolation.
    return value.replace("%", "%%")


def alembic_config(kind: str) -> Config:
    """An Alembic config for one kind; callers add `attributes["connection"]`."""
    _check_kind(kind)
    directory = migrations_dir()
    config = Config()
    config.set_main_option("script_location", _ini_value(str(directory)))
    config.set_main_option("version_locations", _ini_value(str(directory / "versions" / kind)))
    config.set_main_option("path_separator", "newline")  # a path never holds one
    config.set_main_option(
        "file_template",
        "%%(year)d_%%(month).2d_%%(day).2d_%%(hour).2d%%(minute).2d-%%(rev)s_%%(slug)s",
    )
    config.attributes["kind"] = kind
    return config


def context_options(kind: str) -> dict[str, Any]:
    """`EnvironmentContext.configure` options shared by env.py and the drift check."""
    return {
        "target_metadata": metadata_for(kind),
        "version_table": version_table(kind),
        # Batch operations also run unchanged on PostgreSQL (plain ALTERs there),
        # and SQLite needs them for most ALTERs, so every migration renders them.
        "render_as_batch": True,
        "compare_type": True,
        "render_item": render_item,
    }


def render_item(type_: str, obj: Any, autogen_context: AutogenContext) -> str | Literal[False]:
    """Render column types so that migrations never import application code.

    Bastion's TypeDecorators become their plain storage types (`UTCDateTime` is
    `sa.DateTime(timezone=True)`, `ScaledDecimal(n)` is `sa.BigInteger()`); the
    drift check compares storage types too, so this is not drift. PostgreSQL's
    JSON types render without their default `astext_type`, which autogenerate
    against SQLite would otherwise write as an unimported `Text()`.
    """
    if type_ != "type":
        return False
    if isinstance(obj, TypeDecorator):
        impl: TypeEngine[Any] = obj.impl_instance
        if type(impl).__module__ != "sqlalchemy.sql.sqltypes" or isinstance(impl, TypeDecorator):
            raise TypeError(
                f"cannot render {type(obj).__name__} (stored as {impl!r}) in a migration; "
                "extend bastion.migrate.render_item"
            )
        return f"sa.{impl!r}"
    if isinstance(obj, postgresql.JSON):  # JSONB subclasses it
        astext = obj.astext_type
        if type(astext) is not Text or astext.length is not None:
            raise TypeError(f"cannot render {obj!r} in a migration; extend render_item")
        autogen_context.imports.add("from sqlalchemy.dialects import postgresql")
        return f"postgresql.{type(obj).__name__}()"
    return False


@contextmanager
def _migration_transaction(engine: Engine) -> Iterator[Connection]:
    """One write transaction for a whole upgrade, on SQLite and PostgreSQL.

    SQLite: foreign keys are switched off for the duration (the documented way
    to rebuild a table that others reference; the pragma is ignored inside a
    transaction, so it is set around it) and `foreign_key_check` must come back
    empty before the commit. PostgreSQL: DDL is transactional, concurrent
    migrators serialize on an advisory lock, and the 30 s statement timeout of
    request traffic does not apply to migrations.
    """
    with engine.connect() as conn:
        sqlite = conn.dialect.name == "sqlite"
        if sqlite:
            _sqlite_foreign_keys(conn, on=False)
        try:
            conn.execution_options(**{_WRITE_OPTION: True})
            with conn.begin():
                if conn.dialect.name == "postgresql":
                    conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOCK_KEY})
                    conn.execute(text("SET LOCAL statement_timeout = 0"))
                yield conn
                if sqlite:
                    violations = conn.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
                    if violations:
                        tables = sorted({str(row[0]) for row in violations})
                        raise MigrationError(
                            f"the migration left foreign key violations in {', '.join(tables)}"
                        )
        finally:
            if sqlite and not conn.invalidated:
                _sqlite_foreign_keys(conn, on=True)


def _sqlite_foreign_keys(conn: Connection, *, on: bool) -> None:
    # On the driver connection: through SQLAlchemy the statement would autobegin a
    # transaction first, and inside one SQLite ignores this pragma.
    driver = conn.connection.driver_connection
    assert driver is not None
    driver.execute(f"PRAGMA foreign_keys={'ON' if on else 'OFF'}")


def upgrade(engine: Engine, kind: str) -> None:
    """Bring one database of the given kind to the latest revision, in one transaction."""
    config = alembic_config(kind)
    with _migration_transaction(engine) as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, "head")


def current_revision(engine: Engine, kind: str) -> str | None:
    """The database's revision, or None when it has never been migrated."""
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"version_table": version_table(kind)})
        return context.get_current_revision()


def head_revision(kind: str) -> str:
    """The latest revision of this kind's migrations."""
    head = ScriptDirectory.from_config(alembic_config(kind)).get_current_head()
    if head is None:
        raise MigrationError(f"there are no {kind} migrations")
    return head


def migrate_all(settings: Settings) -> list[tuple[str, str]]:
    """Upgrade the control database, then every region's; (database, revision) pairs.

    Stops at the first database that fails, with a `MigrationError` naming it;
    the databases before it stay migrated (each upgrade is its own transaction).
    """
    targets = [(CONTROL, "control", settings.control_url.get_secret_value())]
    targets += [(name, "region", r.url.get_secret_value()) for name, r in settings.regions.items()]
    results: list[tuple[str, str]] = []
    for name, kind, url in targets:
        _ensure_sqlite_directory(url)
        engine = create_db_engine(url, connect_timeout=settings.db_connect_timeout, pool_size=1)
        try:
            upgrade(engine, kind)
            revision = current_revision(engine, kind)
        except SQLAlchemyError as exc:
            # Only the class name: a driver message may quote SQL or values.
            cause = type(getattr(exc, "orig", None) or exc).__name__
            raise MigrationError(f"cannot migrate the {name} database ({cause})") from exc
        finally:
            engine.dispose()
        if revision is None:  # pragma: no cover - upgrade to head always stamps
            raise MigrationError(f"the {name} database has no revision after migrating")
        results.append((name, revision))
    return results


def _ensure_sqlite_directory(url: str) -> None:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)


def check_drift(engine: Engine, kind: str) -> list[str]:
    """Upgrade a scratch database to head, then list how it differs from the tables.

    An empty list means the migrations build exactly the metadata. The engine's
    database is migrated, so never point this at a database that matters.
    """
    upgrade(engine, kind)
    options = context_options(kind)
    with engine.connect() as conn, conn.begin():
        if conn.dialect.name == "sqlite":
            # Reflection uses PRAGMAs, which read the connection's cached schema
            # without checking that it is current; a real read refreshes it first.
            conn.exec_driver_sql("SELECT count(*) FROM sqlite_master").scalar()
        context = MigrationContext.configure(
            conn,
            opts={
                "version_table": options["version_table"],
                "compare_type": options["compare_type"],
            },
        )
        differences = compare_metadata(context, options["target_metadata"])
    return [_describe(diff) for diff in differences]


@contextmanager
def _scratch_sqlite(kind: str) -> Iterator[Engine]:
    with tempfile.TemporaryDirectory(prefix="bastion-migrations-") as directory:
        engine = create_db_engine(f"sqlite:///{Path(directory) / f'{kind}.db'}", pool_size=1)
        try:
            yield engine
        finally:
            engine.dispose()


def check_drift_sqlite() -> dict[str, list[str]]:
    """`check_drift` for every kind, each on a fresh temporary SQLite database."""
    drift: dict[str, list[str]] = {}
    for kind in KINDS:
        with _scratch_sqlite(kind) as engine:
            drift[kind] = check_drift(engine, kind)
    return drift


def new_revision(kind: str, message: str, autogenerate: bool = True) -> Path:
    """Write a new migration of this kind and return its path.

    With `autogenerate`, the migration holds the difference between the tables
    and a scratch SQLite database at head; it is an error when there is none.
    The file is formatted with ruff when ruff is installed. Review it: autogenerate
    does not see renames, and data migrations are always written by hand.
    """
    config = alembic_config(kind)
    _add_ruff_hooks(config)

    def skip_empty(
        _context: MigrationContext, _revision: Any, directives: list[MigrationScript]
    ) -> None:
        if autogenerate and all(
            ops.is_empty() for script in directives for ops in script.upgrade_ops_list
        ):
            directives[:] = []

    with _scratch_sqlite(kind) as engine:
        upgrade(engine, kind)
        with engine.connect() as conn, conn.begin():
            config.attributes["connection"] = conn
            written = command.revision(
                config,
                message=message,
                autogenerate=autogenerate,
                process_revision_directives=skip_empty,
            )
    scripts = [s for s in (written if isinstance(written, list) else [written]) if s is not None]
    if not scripts:
        raise MigrationError(f"the {kind} tables already match the migrations; nothing to write")
    return Path(scripts[0].path)


def _add_ruff_hooks(config: Config) -> None:
    """Format new migration files the way `make lint` checks them (when ruff is installed)."""
    if importlib.util.find_spec("ruff") is None:
        return
    hooks = {
        "ruff_format": "format --quiet REVISION_SCRIPT_FILENAME",
        "ruff_fix": "check --fix --quiet REVISION_SCRIPT_FILENAME",
    }
    config.set_section_option("post_write_hooks", "hooks", ", ".join(hooks))
    for name, options in hooks.items():
        config.set_section_option("post_write_hooks", f"{name}.type", "module")
        config.set_section_option("post_write_hooks", f"{name}.module", "ruff")
        config.set_section_option("post_write_hooks", f"{name}.options", options)


def _describe(diff: Any) -> str:
    """One line for one `compare_metadata` entry (a tuple, or a list of modify tuples)."""
    if isinstance(diff, list):
        return "; ".join(_describe(item) for item in diff)
    if not isinstance(diff, tuple) or not diff:
        return repr(diff)
    operation = str(diff[0])
    if operation.startswith("modify_"):
        # (operation, schema, table, column, existing-info, old, new)
        _, _schema, table, column, _info, old, new = diff
        return f"{operation} {table}.{column}: {_value(old)} -> {_value(new)}"
    if operation in ("add_column", "remove_column"):
        # (operation, schema, table, column)
        column = diff[3]
        return f"{operation} {diff[2]}.{column.name} {_value(column.type)}"
    return " ".join([operation, *(_name(part) for part in diff[1:] if part is not None)])


def _value(value: Any) -> str:
    if isinstance(value, TypeDecorator):
        return f"{type(value).__name__} (stored as {value.impl_instance!r})"
    return repr(value)


def _name(part: Any) -> str:
    if isinstance(part, Table):
        return f"table {part.name}"
    if isinstance(part, Column):
        table = part.table.name if isinstance(part.table, Table) else "?"
        return f"column {table}.{part.name} {_value(part.type)}"
    if isinstance(part, Index):
        columns = ", ".join(str(getattr(c, "name", c)) for c in part.expressions)
        table = part.table.name if part.table is not None else "?"
        return f"index {part.name} on {table} ({columns})"
    if isinstance(part, Constraint):
        table = getattr(getattr(part, "table", None), "name", "?")
        return f"{type(part).__name__} {part.name} on {table}"
    if isinstance(part, Sequence) and not isinstance(part, str):
        return ", ".join(_name(p) for p in part)
    return str(part)
