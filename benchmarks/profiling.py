"""`python -m benchmarks.run --profile`: where Bastion's time goes, per operation.

Bastion's Starlette app runs in this process, driven straight through ASGI (no
HTTP server, no client, no sockets) one request at a time, under cProfile. The
sync pipeline normally runs in Starlette's thread pool; cProfile only sees the
thread it was enabled in, so here `run_in_threadpool` is swapped for an inline
call (in Bastion's modules and the baseline's, for this process only). The thread
hop's own cost is therefore not in the profile; it is in the HTTP benchmark.

For each operation the report gives:

- the unprofiled in-process cost per request of Bastion and of the baseline app
  (same driver; each app on its own set of databases, trimmed to the same
  number of contacts before each operation) — the pipeline's overhead without
  HTTP noise;
- self time by layer (each function's own time, summed by what kind of code it
  is: SQL, validation, JSON, ...), so the layers add up to the total;
- inclusive time of the pipeline's steps (auth, policy, validation, persist, ...),
  which overlap (a step's SQL is also in the SQL lines);
- the top functions by cumulative time.

Raw profiles are written to benchmarks/results/profile-<backend>-<operation>.prof
(open them with `python -m pstats` or snakeviz).
"""

from __future__ import annotations

import asyncio
import contextlib
import cProfile
import json
import pstats
import random
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from starlette.types import ASGIApp, Message

from benchmarks import baseline
from benchmarks.environment import (
    APPS,
    Databases,
    bastion_environment,
    migrate_databases,
    prepare,
)
from benchmarks.load import Call, CallFactory
from benchmarks.workload import OPERATIONS, SEED_ROWS, create_call, level_contacts

RESULTS = Path(__file__).resolve().parent / "results"
WARMUP = 50
T = TypeVar("T")

# pstats keys: (filename, line, function name); values: (primitive calls, calls,
# self time, cumulative time, callers).
FunctionKey = tuple[str, int, str]


@dataclass(frozen=True, slots=True)
class Prepared:
    """A request ready for ASGI: everything encoded before the clock starts."""

    method: str
    path: str
    query: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes


def prepare_calls(calls: list[Call], headers: dict[str, str]) -> list[Prepared]:
    base = [
        (b"host", b"bench.local"),
        *((k.lower().encode(), v.encode()) for k, v in headers.items()),
    ]
    prepared = []
    for call in calls:
        path, _, query = call.path.partition("?")
        body = b"" if call.json is None else json.dumps(call.json).encode()
        extra = (
            [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
            if call.json is not None
            else []
        )
        prepared.append(Prepared(call.method, path, query.encode(), [*base, *extra], body))
    return prepared


async def send_asgi(app: ASGIApp, request: Prepared) -> int:
    """Run one request through `app`; returns the response status."""
    scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": request.method,
        "scheme": "http",
        "path": request.path,
        "raw_path": request.path.encode(),
        "query_string": request.query,
        "root_path": "",
        "headers": request.headers,
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 80),
        "state": {},
    }
    delivered = False
    status = 0

    async def receive() -> Message:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": request.body, "more_body": False}
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app(scope, receive, send)
    return status


async def drive(app: ASGIApp, requests: list[Prepared]) -> int:
    """Send `requests` one after another; returns how many were not 2xx."""
    errors = 0
    for request in requests:
        status = await send_asgi(app, request)
        if not 200 <= status < 300:
            errors += 1
    return errors


@contextlib.contextmanager
def inline_threadpool() -> Iterator[None]:
    """Make `run_in_threadpool` a plain call in Bastion's and the baseline's modules."""
    import starlette.concurrency

    original = starlette.concurrency.run_in_threadpool

    async def inline(func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return func(*args, **kwargs)

    patched = [
        module
        for name, module in list(sys.modules.items())
        if name.split(".")[0] in ("bastion", "benchmarks")
        and getattr(module, "run_in_threadpool", None) is original
    ]
    for module in patched:
        module.run_in_threadpool = inline  # type: ignore[attr-defined]
    try:
        yield
    finally:
        for module in patched:
            module.run_in_threadpool = original  # type: ignore[attr-defined]


# -- reading a profile ----------------------------------------------------------------

_BUILTINS = "builtins (str, dict, re, datetime, ...)"
_LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("harness (ASGI driver)", ("/benchmarks/",)),
    ("SQL: SQLAlchemy (compile, execute, rows, pool)", ("/sqlalchemy/",)),
    ("SQL: driver (sqlite3 / psycopg, incl. server wait)", ("/psycopg", "/sqlite3/")),
    ("auth: token lookup (Bastion code)", ("/bastion/principals/", "/bastion/api/auth.py")),
    ("validation (schemas, pydantic)", ("/bastion/crm/schemas.py", "/pydantic")),
    (
        "policy (compiled policy, access checks)",
        ("/bastion/policy/", "/casbin/", "/bastion/crm/access.py"),
    ),
    (
        "encryption (codec, keyring, DEKs, blind indexes, AES-GCM)",
        ("/bastion/crypto/", "/bastion/crm/codec.py", "/cryptography/", "/phonenumbers/"),
    ),
    ("audit (events, append)", ("/bastion/audit/", "/bastion/crm/auditing.py")),
    ("JSON (parse, render)", ("/json/", "/bastion/api/problems.py")),
    (
        "middleware + logging",
        ("/bastion/api/middleware.py", "/structlog/", "/logging/", "/uuid.py"),
    ),
    ("Starlette (routing, request, response)", ("/starlette/", "/anyio/")),
    ("Bastion pipeline (service, repository, records, dedup, ids)", ("/bastion/",)),
    ("event loop", ("/asyncio/",)),
)
# Builtins that are a layer by themselves; any other builtin's time goes to the
# layer of the code that called it (AES-GCM to encryption, HMAC to auth or to the
# blind index, dict.get to whoever called it, ...).
_BUILTIN_LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("SQL: driver (sqlite3 / psycopg, incl. server wait)", ("sqlite3", "psycopg")),
    ("JSON (parse, render)", ("_json", "json.")),
    ("I/O wait (select, poll)", ("select.", "poll")),
)


def layer_of(key: FunctionKey) -> str:
    """The layer of a Python function by its file, of a builtin by its name (or
    `_BUILTINS` when its name says nothing; see `layer_times`)."""
    filename, _line, name = key
    if filename == "~":
        for layer, needles in _BUILTIN_LAYERS:
            if any(n in name for n in needles):
                return layer
        return _BUILTINS
    path = filename.replace("\\", "/")
    for layer, needles in _LAYERS:
        if any(n in path for n in needles):
            return layer
    return "stdlib, other Python"


def layer_times(stats: pstats.Stats) -> dict[str, float]:
    """Self seconds by layer; they add up to the profile's total.

    A builtin that is no layer by itself is split over its callers, each share
    counted in the caller's layer (cProfile records the time per caller)."""
    layers: dict[str, float] = {}
    for key, (_cc, _nc, tt, _ct, callers) in _stats_table(stats).items():
        layer = layer_of(key)
        if layer != _BUILTINS or not callers:
            layers[layer] = layers.get(layer, 0.0) + tt
            continue
        shared = 0.0
        for caller, entry in callers.items():
            layers[layer_of(caller)] = layers.get(layer_of(caller), 0.0) + entry[2]
            shared += entry[2]
        # Rounding, or a call whose caller the profile did not see.
        layers[_BUILTINS] = layers.get(_BUILTINS, 0.0) + tt - shared
    return layers


@dataclass(frozen=True, slots=True)
class Step:
    label: str
    path: str  # part of the file's path
    functions: tuple[str, ...]
    # Only time spent when called from this file (part of its path), and from these
    # functions in it (empty: any of its functions).
    caller: tuple[str, tuple[str, ...]] | None = None


_SUBJECT_KEY_SQL = ("current_subject_key", "subject_key", "insert_subject_key")

STEPS = (
    Step("whole request (Bastion's middleware inward)", "bastion/api/middleware.py", ("__call__",)),
    Step("auth: bearer token -> principal", "bastion/api/auth.py", ("authenticate",)),
    Step(
        "auth:   its SELECT on the control db",
        "sqlalchemy/engine/base.py",
        ("execute",),
        caller=("bastion/principals/tokens.py", ("authenticate",)),
    ),
    Step("body: JSON parse", "bastion/api/records.py", ("json_object",)),
    Step("list: query string -> ListQuery", "bastion/api/records.py", ("_list_query",)),
    Step(
        "service: RecordService method", "bastion/crm/service.py", ("create", "get", "list_records")
    ),
    Step("route: record id -> region", "bastion/crm/pipeline.py", ("route",)),
    Step(
        "policy: rights, row scope, field masks (Access)",
        "bastion/crm/access.py",
        ("require", "require_writable", "require_in_scope", "readable", "where"),
    ),
    Step("validation: validate_create", "bastion/crm/schemas.py", ("validate_create",)),
    Step(
        "validation: list limit/sort/filters",
        "bastion/crm/listing.py",
        ("parse_limit", "parse_sort", "parse_filters"),
    ),
    Step(
        "create: duplicate check (blind index + SELECT)",
        "bastion/crm/dedup.py",
        ("refuse_duplicates",),
    ),
    Step("persist: insert transaction", "bastion/crm/service.py", ("_insert_new",)),
    Step("encrypt: seal fields + blind indexes", "bastion/crm/codec.py", ("seal_fields",)),
    Step("encrypt:   DEK of the subject", "bastion/crypto/keyring.py", ("dek_for_subject",)),
    Step("encrypt:   blind index", "bastion/crypto/keyring.py", ("blind_index",)),
    Step("decrypt: readable fields", "bastion/crm/codec.py", ("reveal",)),
    Step("decrypt:   DEK by id", "bastion/crypto/keyring.py", ("dek_by_id",)),
    Step("crypto: AES-GCM seal / unseal", "bastion/crypto/envelope.py", ("seal", "unseal")),
    Step(
        "crypto: SQL on subject keys",
        "sqlalchemy/engine/base.py",
        ("execute",),
        caller=("bastion/crypto/repository.py", _SUBJECT_KEY_SQL),
    ),
    Step("persist:   INSERT", "bastion/crm/repository.py", ("insert_record",)),
    Step("persist:   SELECT by id", "bastion/crm/repository.py", ("fetch",)),
    Step("persist:   SELECT a page", "bastion/crm/repository.py", ("list_records",)),
    Step("audit: build the event", "bastion/crm/auditing.py", ("event",)),
    Step("audit: append (INSERT + trigger)", "bastion/crm/auditing.py", ("append",)),
    Step("audit: wake the sequencer", "bastion/crm/auditing.py", ("committed",)),
    Step("records: render (to_json_value)", "bastion/crm/records.py", ("render",)),
    Step("list: seal next_cursor", "bastion/crm/cursors.py", ("seal",)),
    Step("response: JSON render", "bastion/api/problems.py", ("render",)),
    Step("SQLAlchemy: Connection.execute (all)", "sqlalchemy/engine/base.py", ("execute",)),
    Step("SQLAlchemy: Engine.connect (checkout)", "sqlalchemy/engine/base.py", ("connect",)),
    Step("SQLAlchemy:   pre-ping", "sqlalchemy/", ("do_ping",)),
    Step("SQLAlchemy: BEGIN", "sqlalchemy/engine/base.py", ("_begin_impl",)),
    Step("SQLAlchemy: COMMIT", "sqlalchemy/engine/base.py", ("_commit_impl",)),
    Step("SQLAlchemy: connection close (return)", "sqlalchemy/engine/base.py", ("close",)),
)


def _stats_table(stats: pstats.Stats) -> dict[FunctionKey, tuple[Any, ...]]:
    table: dict[FunctionKey, tuple[Any, ...]] = stats.stats  # type: ignore[attr-defined]
    return table


def step_time(stats: pstats.Stats, step: Step) -> tuple[float, int]:
    """Inclusive seconds and calls of a step (summed over the functions it names)."""
    seconds, calls = 0.0, 0
    for (filename, _line, name), (_cc, nc, _tt, ct, callers) in _stats_table(stats).items():
        if name not in step.functions or step.path not in filename.replace("\\", "/"):
            continue
        if step.caller is None:
            seconds += ct
            calls += nc
            continue
        path, functions = step.caller
        for (c_file, _c_line, c_name), entry in callers.items():
            if (not functions or c_name in functions) and path in c_file.replace("\\", "/"):
                seconds += entry[3]
                calls += entry[1]
    return seconds, calls


def short_location(key: FunctionKey) -> str:
    filename, line, name = key
    if filename == "~":
        return name
    path = filename.replace("\\", "/")
    for marker in ("/site-packages/", "/platform/", "/work/main/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    else:
        if "/lib/python" in path:
            path = "stdlib/" + path.split("/lib/python", 1)[1].split("/", 1)[1]
    return f"{path}:{line} {name}"


def report(stats: pstats.Stats, requests: int, top: int) -> None:
    total: float = stats.total_tt  # type: ignore[attr-defined]
    per = 1e6 / requests
    table = _stats_table(stats)

    print(
        f"  self time by layer (sums to {total * per:.0f} us/request profiled; "
        "builtins count towards their caller's layer):"
    )
    for layer, seconds in sorted(layer_times(stats).items(), key=lambda item: -item[1]):
        if seconds * per >= 0.5:  # e.g. no builtin left without a caller
            print(f"    {seconds * per:8.0f} us {seconds / total:6.1%}  {layer}")

    print("  pipeline steps, inclusive (they overlap; the SQLAlchemy lines span all steps):")
    for step in STEPS:
        seconds, calls = step_time(stats, step)
        if calls:
            print(
                f"    {seconds * per:8.0f} us {seconds / total:6.1%}  "
                f"{calls / requests:5.1f}x  {step.label}"
            )

    print(f"  top {top} by cumulative time (us/request: cumulative, self; calls/request):")
    ranked = sorted(table.items(), key=lambda item: -item[1][3])[:top]
    for key, (_cc, nc, tt, ct, _callers) in ranked:
        print(f"    {ct * per:8.0f} {tt * per:7.0f}  {nc / requests:6.1f}x  {short_location(key)}")


# -- the run --------------------------------------------------------------------------


async def timed(app: ASGIApp, requests: list[Prepared]) -> tuple[float, int]:
    started = time.perf_counter()
    errors = await drive(app, requests)
    return (time.perf_counter() - started) / len(requests), errors


async def profile_async(databases: dict[str, Databases], requests: int, top: int) -> None:
    from bastion.app import create_app
    from bastion.config import load_settings
    from bastion.logs import configure_logging
    from bastion.state import build_state

    backend = databases["bastion"].backend
    envs = {app: bastion_environment(databases[app]) for app in APPS}
    token = prepare(envs["bastion"])
    migrate_databases(envs["baseline"])
    headers = {"Authorization": f"Bearer {token}"}
    settings = load_settings(envs["bastion"])
    configure_logging(settings.log_format, settings.log_level)
    state = build_state(settings)
    baseline_engines = baseline.engines_from_environment(envs["baseline"])
    apps: dict[str, ASGIApp] = {
        "bastion": create_app(settings, state=state),
        "baseline": baseline.create_app(baseline_engines),
    }
    eu_urls = {app: databases[app].urls["eu"] for app in APPS}
    rng = random.Random(1)
    RESULTS.mkdir(parents=True, exist_ok=True)
    try:
        with inline_threadpool():
            for app in apps.values():
                seeded = prepare_calls([create_call(n) for n in range(SEED_ROWS)], headers)
                if await drive(app, seeded):
                    raise RuntimeError("seeding failed: a create was not 2xx")
            for operation, workload in OPERATIONS.items():
                level_contacts(eu_urls)  # Bastion also ran the profiled batch
                calls = workload(eu_urls, rng)

                def batch(size: int, offset: int, make: CallFactory) -> list[Prepared]:
                    return prepare_calls([make(offset + n) for n in range(size)], headers)

                per_request: dict[str, float] = {}
                for name, app in apps.items():
                    await drive(app, batch(WARMUP, 10_000_000, calls[name]))
                    per_request[name], errors = await timed(
                        app, batch(requests, 20_000_000, calls[name])
                    )
                    if errors:
                        print(f"  ERRORS: {name} {operation}: {errors} non-2xx responses")
                profiled = batch(requests, 30_000_000, calls["bastion"])
                profiler = cProfile.Profile()
                errors = await _profiled(profiler, drive(apps["bastion"], profiled))
                stats = pstats.Stats(profiler)
                stats.dump_stats(RESULTS / f"profile-{backend}-{operation}.prof")
                b, base = per_request["bastion"], per_request["baseline"]
                print(f"-- {backend} {operation}: {requests} requests, one at a time --")
                print(
                    f"  in-process, unprofiled: bastion {b * 1e6:.0f} us/request, "
                    f"baseline {base * 1e6:.0f} us/request (bastion/baseline rate {base / b:.2f})"
                )
                if errors:
                    print(f"  ERRORS while profiling: {errors} non-2xx responses")
                report(stats, requests, top)
                print()
    finally:
        state.close()
        for engine in baseline_engines.values():  # its lifespan never ran
            engine.dispose()


async def _profiled(profiler: cProfile.Profile, work: Awaitable[T]) -> T:
    profiler.enable()
    try:
        return await work
    finally:
        profiler.disable()


def profile_backend(databases: dict[str, Databases], *, requests: int, top: int) -> None:
    """Profile every operation, Bastion and the baseline each on `databases[app]`."""
    asyncio.run(profile_async(databases, requests, top))
