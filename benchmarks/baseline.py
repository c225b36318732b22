"""The baseline: the least a Starlette + SQLAlchemy app does to serve the same API.

Same routes (`POST /v1/contacts`, `GET /v1/contacts/{id}`, `GET /v1/contacts`),
same tables (`bastion.crm.tables`, built by Bastion's migrations, but in a set of
databases of its own: the apps never share one), same engine settings — and
nothing else: no authentication, no policy, no validation beyond "is it a JSON
object with a last_name", no encryption, no audit, no request-id middleware.
Bastion's throughput divided by this app's is the cost of Bastion's pipeline.

Encrypted fields: the columns the catalog marks `encrypted` (first_name,
last_name, email, phone, ...) are binary, because Bastion stores AES-GCM
envelopes there. The baseline stores the value's UTF-8 bytes instead (a JSON
string as is, any other JSON value as its JSON text) — no encryption, which is
the point — and returns them decoded as text. It never fills the blind-index
columns (`<field>_bidx`), never writes them from a request body and leaves them
out of its responses.

The engine settings deliberately match `bastion.residency.databases` (SQLite: WAL,
`synchronous=NORMAL`, checkpoints every ~40 MB, a busy timeout and `BEGIN IMMEDIATE`
for writes; PostgreSQL: a ping of connections idle for over a second; the same pool
size), so the ratio measures the pipeline and not a
different database configuration.

Ids have Bastion's format (`con_<region>_<26 base32 chars of a UUIDv7>`): like
Bastion, a GET finds the region's database from the id alone.

Run with `uvicorn --factory benchmarks.baseline:app_from_environment`; it reads
BASTION_REGIONS, BASTION_REGION_<NAME>_URL and BASTION_DB_POOL_SIZE.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, insert, select
from sqlalchemy.engine import make_url
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from bastion.crm.catalog import ENTITIES
from bastion.crm.tables import ENTITY_TABLES
from bastion.residency.databases import ping_idle_connections

CONTACTS = ENTITY_TABLES["contacts"]
_ENCRYPTED = frozenset(f.name for f in ENTITIES["contacts"].encrypted_fields)
_BLIND_INDEXES = frozenset(
    f.index_column for f in ENTITIES["contacts"].fields if f.index_column is not None
)
# What a response shows: every column but the blind indexes (never filled here).
_COLUMNS = tuple(column.key for column in CONTACTS.c if column.key not in _BLIND_INDEXES)
_WRITABLE = frozenset(_COLUMNS) - {"id", "region", "version", "created_at", "updated_at"}
_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"
_WRITE = "baseline_write"


def new_id(prefix: str, region: str) -> str:
    """`<prefix>_<region>_<UUIDv7 in Crockford base32>`, Bastion's id format."""
    millis = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")
    value = (
        (millis << 80)
        | (0x7 << 76)
        | (((rand >> 62) & 0xFFF) << 64)
        | (0b10 << 62)
        | (rand & ((1 << 62) - 1))
    )
    chars = []
    for _ in range(26):
        chars.append(_ALPHABET[value & 31])
        value >>= 5
    return f"{prefix}_{region}_{''.join(reversed(chars))}"


def create_engine_like_bastion(url: str, pool_size: int, timeout: int = 3) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        engine = create_engine(
            parsed,
            pool_size=pool_size,
            max_overflow=pool_size,
            pool_timeout=timeout,
            connect_args={"connect_timeout": timeout},
        )
        ping_idle_connections(engine)  # Bastion's disconnect handling, the same
        return engine
    engine = create_engine(
        parsed,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_timeout=timeout,
        connect_args={"timeout": timeout, "check_same_thread": False},
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA wal_autocheckpoint=10000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={timeout * 1000}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        write = conn.get_execution_options().get(_WRITE, False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

    return engine


def _stored(value: Any) -> bytes | None:
    """What goes into an encrypted column: the value's UTF-8 bytes, not encrypted."""
    if value is None:
        return None
    return (value if isinstance(value, str) else json.dumps(value)).encode("utf-8")


def _json_value(value: Any) -> Any:
    if isinstance(value, bytes | memoryview):  # an encrypted column: UTF-8 text
        return bytes(value).decode("utf-8")
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, date | Decimal):
        return str(value)
    return value


def _row_dict(mapping: Mapping[Any, Any]) -> dict[str, Any]:
    return {name: _json_value(mapping[name]) for name in _COLUMNS}


def _error(status: int, detail: str) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status)


class Baseline:
    """The handlers, over one engine per region."""

    def __init__(self, engines: Mapping[str, Engine]) -> None:
        self.engines = dict(engines)
        self.default_region = next(iter(self.engines))

    def _insert(self, region: str, values: dict[str, Any]) -> dict[str, Any]:
        with self.engines[region].connect() as conn:
            conn.execution_options(**{_WRITE: True})
            with conn.begin():
                conn.execute(insert(CONTACTS).values(**values))
        return _row_dict({name: values.get(name) for name in _COLUMNS})

    def _fetch(self, region: str, record_id: str) -> dict[str, Any] | None:
        with self.engines[region].connect() as conn, conn.begin():
            row = conn.execute(select(CONTACTS).where(CONTACTS.c.id == record_id)).one_or_none()
        return None if row is None else _row_dict(row._mapping)

    def _list(self, region: str, limit: int) -> list[dict[str, Any]]:
        query = select(CONTACTS).order_by(CONTACTS.c.created_at, CONTACTS.c.id).limit(limit)
        with self.engines[region].connect() as conn, conn.begin():
            rows = conn.execute(query).all()
        return [_row_dict(row._mapping) for row in rows]

    async def collection(self, request: Request) -> Response:
        if request.method == "GET":
            region = request.query_params.get("region", self.default_region)
            if region not in self.engines:
                return _error(404, "unknown region")
            limit = min(int(request.query_params.get("limit", "50")), 200)
            rows = await run_in_threadpool(self._list, region, limit)
            return JSONResponse({"data": rows, "next_cursor": None})
        try:
            body = await request.json()
        except ValueError:
            return _error(400, "not JSON")
        if not isinstance(body, dict) or not body.get("last_name"):
            return _error(422, "last_name is required")
        region = body.get("region", self.default_region)
        if region not in self.engines:
            return _error(422, "unknown region")
        now = datetime.now(UTC)
        values = {
            k: _stored(v) if k in _ENCRYPTED else v for k, v in body.items() if k in _WRITABLE
        }
        values.update(
            id=new_id("con", region), region=region, version=1, created_at=now, updated_at=now
        )
        record = await run_in_threadpool(self._insert, region, values)
        return JSONResponse(record, status_code=201)

    async def item(self, request: Request) -> Response:
        record_id: str = request.path_params["record_id"]
        parts = record_id.split("_")
        if len(parts) != 3 or parts[1] not in self.engines:
            return _error(404, "no such contact")
        record = await run_in_threadpool(self._fetch, parts[1], record_id)
        if record is None:
            return _error(404, "no such contact")
        return JSONResponse(record)


async def healthz(_request: Request) -> Response:
    return JSONResponse({"status": "ok"})


def engines_from_environment(environ: Mapping[str, str] | None = None) -> dict[str, Engine]:
    env = os.environ if environ is None else environ
    names = [n.strip() for n in env.get("BASTION_REGIONS", "eu,us").split(",") if n.strip()]
    pool_size = int(env.get("BASTION_DB_POOL_SIZE", "10"))
    return {
        name: create_engine_like_bastion(env[f"BASTION_REGION_{name.upper()}_URL"], pool_size)
        for name in names
    }


def create_app(engines: Mapping[str, Engine]) -> Starlette:
    baseline = Baseline(engines)

    @asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            for engine in baseline.engines.values():
                engine.dispose()

    return Starlette(
        routes=[
            Route("/healthz", healthz, methods=["GET"]),
            Route("/v1/contacts", baseline.collection, methods=["GET", "POST"]),
            Route("/v1/contacts/{record_id}", baseline.item, methods=["GET"]),
        ],
        lifespan=lifespan,
    )


def app_from_environment() -> Starlette:
    """Factory for `uvicorn --factory`."""
    return create_app(engines_from_environment())
