"""`python -m benchmarks.run`: Bastion against the baseline app, per backend and operation.

For each backend (SQLite, PostgreSQL) both apps are started as uvicorn processes,
each on its own freshly migrated set of databases (same engine, same schema), and
each operation (create, get, list) is measured for both under the same
concurrency, the two apps back to back so that machine drift hits both alike.
Before each phase the app with more contacts loses its newest ones, so both apps
run each phase on tables of the same size. `--profile` instead runs Bastion
in-process under cProfile and reports where its time goes (see
benchmarks/profiling.py).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import random
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks.environment import (
    APPS,
    BACKENDS,
    Databases,
    Server,
    backend_databases,
    bastion_environment,
    migrate_databases,
    postgres_available,
    prepare,
)
from benchmarks.load import CallFactory, Connection, LoadResult, Target, run_load
from benchmarks.workload import OPERATIONS, SEED_ROWS, create_call, level_contacts

RESULTS = Path(__file__).resolve().parent / "results"
FACTORIES = {
    "bastion": "bastion.app:app_from_environment",
    "baseline": "benchmarks.baseline:app_from_environment",
}
CLIENT_CPU_WARNING = 0.9


@dataclass(frozen=True, slots=True)
class Options:
    backends: tuple[str, ...]
    duration: float
    warmup: float
    concurrency: tuple[int, ...]  # each level is measured in turn
    seed: int


@dataclass(frozen=True, slots=True)
class Measurement:
    backend: str
    operation: str
    concurrency: int
    rows: int  # contacts in each app's eu database when the phase started
    results: dict[str, LoadResult]  # app -> result

    @property
    def ratio(self) -> float:
        base = self.results["baseline"].throughput
        return self.results["bastion"].throughput / base if base else math.nan

    def as_dict(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "operation": self.operation,
            "concurrency": self.concurrency,
            "table_rows": self.rows,
            "ratio": round(self.ratio, 3),
            **{app: result.as_dict() for app, result in self.results.items()},
        }


async def seed(servers: dict[str, Server], headers: dict[str, str], rows: int) -> None:
    """`rows` contacts through each app (also a first warm-up of each)."""
    for server in servers.values():
        target = Target(server.base_url, headers)
        connections = [Connection(target.host, target.port, 30.0) for _ in range(8)]
        try:
            for start in range(0, rows, len(connections)):
                answers = await asyncio.gather(
                    *(
                        connection.request(target.encode(create_call(start + i)))
                        for i, connection in enumerate(connections)
                        if start + i < rows
                    )
                )
                for status, body in answers:
                    if status != 201:
                        raise RuntimeError(
                            f"{server.label}: seeding failed with HTTP {status}: {body[:300]!r}"
                        )
        finally:
            for connection in connections:
                await connection.close()


def level(backend: str, eu_urls: dict[str, str]) -> int:
    """Trim both apps' contacts to the same count (see `level_contacts`); returns it."""
    rows, deleted = level_contacts(eu_urls)
    for app, count in deleted.items():
        print(f"  {backend:<10} {app}: {count} newest contacts deleted, {rows} left", flush=True)
    return rows


async def measure(
    target: Target, make_call: CallFactory, options: Options, concurrency: int
) -> LoadResult:
    """A warm-up (discarded), then the measured run."""
    if options.warmup > 0:
        await run_load(target, make_call, concurrency=concurrency, duration=options.warmup)
    return await run_load(target, make_call, concurrency=concurrency, duration=options.duration)


def _fmt(value: float, digits: int = 1) -> str:
    return "-" if math.isnan(value) else f"{value:.{digits}f}"


def progress(backend: str, operation: str, concurrency: int, app: str, result: LoadResult) -> None:
    note = f", {result.errors} errors" if result.errors else ""
    print(
        f"  {backend:<10} {operation:<6} c={concurrency:<3} {app:<8} "
        f"{result.throughput:8.1f} req/s  "
        f"p50 {_fmt(result.p50_ms):>6} ms  p99 {_fmt(result.p99_ms):>6} ms  "
        f"client cpu {result.client_cpu:.0%}{note}",
        flush=True,
    )


async def bench_backend(databases: dict[str, Databases], options: Options) -> list[Measurement]:
    """Measure every operation for both apps, each app on its own `databases[app]`."""
    backend = databases["bastion"].backend
    envs = {app: bastion_environment(databases[app]) for app in APPS}
    token = prepare(envs["bastion"])
    migrate_databases(envs["baseline"])
    headers = {"Authorization": f"Bearer {token}"}  # sent to both apps: same request bytes
    servers = {
        app: Server(f"{backend}-{app}", FACTORIES[app], envs[app], databases[app].home)
        for app in APPS
    }
    eu_urls = {app: databases[app].urls["eu"] for app in APPS}
    measurements: list[Measurement] = []
    try:
        for server in servers.values():
            server.start()
        for server in servers.values():
            server.wait_ready()
        await seed(servers, headers, SEED_ROWS)
        rng = random.Random(options.seed)
        index = 0
        for operation, workload in OPERATIONS.items():
            for concurrency in options.concurrency:
                rows = level(backend, eu_urls)
                calls = workload(eu_urls, rng)
                # Alternate which app goes first, so neither always runs on the warmer
                # machine.
                order = APPS if index % 2 == 0 else tuple(reversed(APPS))
                index += 1
                results: dict[str, LoadResult] = {}
                for app in order:
                    results[app] = await measure(
                        Target(servers[app].base_url, headers), calls[app], options, concurrency
                    )
                    progress(backend, operation, concurrency, app, results[app])
                measurements.append(
                    Measurement(
                        backend, operation, concurrency, rows, {a: results[a] for a in APPS}
                    )
                )
    except Exception:
        for server in servers.values():
            tail = server.log_tail()
            if tail:
                print(f"--- {server.label} log (last lines) ---\n{tail}", file=sys.stderr)
        raise
    finally:
        for server in servers.values():
            server.stop()
    return measurements


def print_table(measurements: list[Measurement], options: Options) -> None:
    print()
    levels = ", ".join(str(c) for c in options.concurrency)
    print(
        f"Bastion vs baseline: {levels} concurrent clients (c), "
        f"{options.duration:g}s per phase after {options.warmup:g}s warm-up; "
        "ratio = Bastion req/s / baseline req/s (1.00 = no overhead)"
    )
    header = (
        f"{'backend':<10} {'op':<6} {'c':>3} {'bastion r/s':>11} {'baseline r/s':>12} "
        f"{'ratio':>6}  "
        f"{'bastion p50/p99 ms':>18}  {'baseline p50/p99 ms':>19}  {'errors b/base':>13} "
        f"{'rows':>6}"
    )
    print(header)
    print("-" * len(header))
    for m in measurements:
        b, base = m.results["bastion"], m.results["baseline"]
        print(
            f"{m.backend:<10} {m.operation:<6} {m.concurrency:>3} {b.throughput:>11.1f} "
            f"{base.throughput:>12.1f} "
            f"{_fmt(m.ratio, 2):>6}  "
            f"{_fmt(b.p50_ms) + ' / ' + _fmt(b.p99_ms):>18}  "
            f"{_fmt(base.p50_ms) + ' / ' + _fmt(base.p99_ms):>19}  "
            f"{f'{b.errors} / {base.errors}':>13} {m.rows:>6}"
        )
    print(
        "rows: contacts in each app's own table when the phase started (a list sorts them "
        "all; the larger table is trimmed to the smaller's size first)"
    )
    for m in measurements:
        for app, result in m.results.items():
            if result.errors:
                kinds = ", ".join(f"{k} x{v}" for k, v in sorted(result.error_kinds.items()))
                print(f"ERRORS {m.backend} {m.operation} c={m.concurrency} {app}: {kinds}")
            if result.client_cpu >= CLIENT_CPU_WARNING:
                print(
                    f"note: {m.backend} {m.operation} c={m.concurrency} {app}: the load "
                    "generator used "
                    f"{result.client_cpu:.0%} of a core; that rate may be client-bound"
                )


def write_results(measurements: list[Measurement], options: Options, notes: list[str]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "latest.json"
    document = {
        "finished_at": datetime.now(UTC).isoformat(),
        "machine": {
            "cpus": os.cpu_count(),
            "python": sys.version.split()[0],
            "platform": platform.platform(),
        },
        "options": {
            "duration_s": options.duration,
            "warmup_s": options.warmup,
            "concurrency": list(options.concurrency),
            "backends": list(options.backends),
        },
        "notes": notes,
        "results": [m.as_dict() for m in measurements],
    }
    path.write_text(json.dumps(document, indent=2) + "\n")
    return path


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__)
    parser.add_argument(
        "--backend",
        choices=[*BACKENDS, "all"],
        default="all",
        help="database backend (default all; PostgreSQL is skipped with a note if unreachable)",
    )
    parser.add_argument(
        "--duration", type=float, default=5.0, help="measured seconds per phase (default 5)"
    )
    parser.add_argument(
        "--warmup",
        type=float,
        default=None,
        help="unmeasured seconds before each phase (default: 20%% of --duration, 0.5-2s)",
    )
    parser.add_argument(
        "--concurrency",
        type=_levels,
        default=(16,),
        help="concurrent clients, or a comma-separated list of levels (default 16)",
    )
    parser.add_argument("--seed", type=int, default=1, help="random seed for the get phase")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="instead of the HTTP benchmark, profile Bastion in-process under cProfile",
    )
    parser.add_argument(
        "--requests",
        type=int,
        default=500,
        help="with --profile: requests per operation (default 500)",
    )
    parser.add_argument(
        "--top", type=int, default=25, help="with --profile: functions listed per operation"
    )
    return parser.parse_args(argv)


def _levels(text: str) -> tuple[int, ...]:
    try:
        levels = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError("a number, or numbers separated by commas") from None
    if not levels or min(levels) < 1:
        raise argparse.ArgumentTypeError("concurrency levels must be at least 1")
    return levels


def selected_backends(choice: str, notes: list[str]) -> tuple[str, ...]:
    wanted = BACKENDS if choice == "all" else (choice,)
    if "postgresql" not in wanted:
        return wanted
    problem = postgres_available()
    if problem is None:
        return wanted
    note = f"PostgreSQL skipped: not reachable ({problem})"
    print(note)
    notes.append(note)
    if choice == "postgresql":
        raise SystemExit(1)
    return tuple(b for b in wanted if b != "postgresql")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        import bastion.migrate  # noqa: F401 - the schema comes from Bastion's migrations
    except ImportError as exc:
        print(f"cannot import bastion.migrate ({exc}); is the project installed?", file=sys.stderr)
        return 2
    notes: list[str] = []
    backends = selected_backends(args.backend, notes)
    warmup = args.warmup if args.warmup is not None else min(2.0, max(0.5, args.duration * 0.2))
    options = Options(backends, args.duration, warmup, args.concurrency, args.seed)
    run: Callable[[dict[str, Databases]], Any]
    if args.profile:
        from benchmarks.profiling import profile_backend

        def run(databases: dict[str, Databases]) -> Any:
            return profile_backend(databases, requests=args.requests, top=args.top)

    else:

        def run(databases: dict[str, Databases]) -> Any:
            return asyncio.run(bench_backend(databases, options))

    started = time.perf_counter()
    measurements: list[Measurement] = []
    with tempfile.TemporaryDirectory(prefix="bastion-bench-") as workdir:
        for name in backends:
            print(f"== {name} ==", flush=True)
            with backend_databases(name, Path(workdir)) as databases:
                result = run(databases)
            if not args.profile:
                measurements.extend(result)
    if not args.profile:
        print_table(measurements, options)
        path = write_results(measurements, options, notes)
        print(f"\nresults written to {path}")
    print(f"total time: {time.perf_counter() - started:.0f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
