"""Audit log benchmark: chained appends vs plain inserts, the sequencer, and verify.

    .venv/bin/python -m benchmarks.audit [--backend sqlite|postgresql|all]
        [--writers 1,4,16] [--events 3000] [--repeats 3] [--verify-events 200000]

For each backend and writer count it measures, in the same run and alternating
which goes first:

* **unchained** (baseline): W writer processes, each inserting events into
  `audit_events` only, one event per transaction — what an audit log without a
  chain costs a request;
* **chained**: the same writers calling `bastion.audit.append` (event, record
  index row, pending-queue row) one event per transaction, with this process's
  background `Sequencer` chaining concurrently; the rate counts until the last
  event is *chained*, not merely appended.

and then the sequencer alone on a backlog, and `verify` over the whole chain.
Writers are processes, as request handlers would be across uvicorn workers: in
one process Python's GIL, not the database, would be what is measured.
Each phase gets a fresh database (SQLite file / PostgreSQL database created and
dropped here). Medians of `--repeats` runs are printed, with ratios against the
baseline. Benchmarks never fail on speed; goals are printed beside the results.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from sqlalchemy import insert

from bastion import migrate
from bastion.audit import AuditEvent, AuditLog, append
from bastion.audit.encoding import event_payload
from bastion.audit.keys import KeyRing
from bastion.audit.service import Sequencer
from bastion.audit.settings import AuditSettings
from bastion.audit.tables import AUDIT
from bastion.clock import SystemClock
from bastion.crm.cursors import CursorCodec
from bastion.residency.databases import Database, create_db_engine

PG_ADMIN_DSN = os.environ.get(
    "BASTION_BENCH_PG", "host=127.0.0.1 port=5432 user=postgres dbname=postgres"
)
CHAIN = "eu"
GOAL_RATE, GOAL_RATIO, GOAL_VERIFY = 5_000, 0.7, 100_000
_FORK = mp.get_context("fork")


def _event(clock: SystemClock, n: int) -> AuditEvent:
    """A request-sized event: one record, two field names, request metadata."""
    return AuditEvent.new(
        clock,
        actor="prn_01jd0000000000000000000000",
        action="record.read",
        entity="contacts",
        record_ids=[f"con_eu_01jd{n % 10**22:022d}"],
        fields=["email", "last_name"],
        policy_version="0123456789abcdef",
        request_id=f"req-{n}",
        client_address="192.0.2.10",
    )


def _database(url: str, pool_size: int = 2) -> Database:
    return Database(CHAIN, create_db_engine(url, connect_timeout=30, pool_size=pool_size))


def _writer(url: str, mode: str, count: int, offset: int, start: Any, done: Any) -> None:
    database = _database(url, pool_size=1)
    clock = SystemClock()
    start.wait()
    for n in range(offset, offset + count):
        event = _event(clock, n)
        with database.transaction(write=True) as conn:
            if mode == "chained":
                append(conn, event)
            else:
                conn.execute(
                    insert(AUDIT.events),
                    {
                        "id": event.id,
                        "occurred_at": event.occurred_at,
                        "actor": event.actor,
                        "action": event.action,
                        "entity": event.entity,
                        "decision": event.decision,
                        "policy_version": event.policy_version,
                        "request_id": event.request_id,
                        "payload": event_payload(event).decode(),
                    },
                )
    database.engine.dispose()
    done.put(count)


def _audit_log(url: str, keys: Path) -> AuditLog:
    settings = AuditSettings(sequencer_interval_seconds=0.2, batch_size=5000)
    return AuditLog(
        databases={CHAIN: _database(url)},
        clock=SystemClock(),
        settings=settings,
        keys=KeyRing(keys, origin="bench.local/audit", create_missing=True),
        cursors=CursorCodec(b"benchmark-secret-benchmark-secret"),
    )


def _phase(url: str, keys: Path, mode: str, writers: int, events: int) -> float:
    """Events per second for one phase (chained: until the last one is chained)."""
    start, done = _FORK.Event(), _FORK.Queue()
    share = events // writers
    processes = [
        _FORK.Process(target=_writer, args=(url, mode, share, i * share, start, done))
        for i in range(writers)
    ]
    for process in processes:
        process.start()
    audit = _audit_log(url, keys) if mode == "chained" else None
    sequencer = Sequencer(audit, 0.2) if audit is not None else None
    began = time.perf_counter()
    if sequencer is not None:
        sequencer.start()
    start.set()
    for process in processes:
        process.join()
        if process.exitcode != 0:
            raise RuntimeError(f"a {mode} writer failed (exit code {process.exitcode})")
    if audit is not None and sequencer is not None:
        sequencer.stop()
        audit.flush(CHAIN)
        if audit.head_seq(CHAIN) != share * writers:
            raise RuntimeError("not every event was chained")
    elapsed = time.perf_counter() - began
    if audit is not None:
        audit.database(CHAIN).engine.dispose()
    return share * writers / elapsed


@contextmanager
def _fresh_database(backend: str, workdir: Path) -> Iterator[str]:
    """An empty region database built by the migrations; removed afterwards."""
    if backend == "sqlite":
        path = workdir / f"audit-{uuid.uuid4().hex[:8]}.db"
        url = f"sqlite:///{path}"
        engine = create_db_engine(url)
        migrate.upgrade(engine, "region")
        engine.dispose()
        try:
            yield url
        finally:
            for suffix in ("", "-wal", "-shm"):
                Path(f"{path}{suffix}").unlink(missing_ok=True)
        return
    name = f"bastion_bench_audit_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    info = psycopg.conninfo.conninfo_to_dict(PG_ADMIN_DSN)
    url = (
        f"postgresql+psycopg://{info.get('user', 'postgres')}@{info.get('host', '127.0.0.1')}"
        f":{info.get('port', '5432')}/{name}"
    )
    try:
        engine = create_db_engine(url)
        migrate.upgrade(engine, "region")
        engine.dispose()
        yield url
    finally:
        with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def _backlog(url: str, count: int) -> None:
    """`count` pending events, appended in large transactions (setup, not measured)."""
    database = _database(url)
    clock = SystemClock()
    batch = 5000
    for first in range(0, count, batch):
        with database.transaction(write=True) as conn:
            for n in range(first, min(first + batch, count)):
                append(conn, _event(clock, n))
    database.engine.dispose()


def _verify_phase(backend: str, workdir: Path, count: int) -> tuple[float, float]:
    """(sequencer events/s on a backlog, verify events/s) on a chain of `count` events."""
    with _fresh_database(backend, workdir) as url:
        _backlog(url, count)
        audit = _audit_log(url, workdir / "keys")
        began = time.perf_counter()
        chained = audit.flush(CHAIN)
        sequencing = chained / (time.perf_counter() - began)
        audit.checkpoint(CHAIN)
        began = time.perf_counter()
        report = audit.verify(CHAIN)
        verifying = report.entries / (time.perf_counter() - began)
        if not report.ok or report.entries != count:
            raise RuntimeError(f"the benchmark chain did not verify: {report}")
        audit.database(CHAIN).engine.dispose()
    return sequencing, verifying


def run(backend: str, writer_counts: list[int], events: int, repeats: int, verify: int) -> None:
    with tempfile.TemporaryDirectory(prefix="bastion-bench-audit-") as tmp:
        workdir = Path(tmp)
        print(f"\n{backend}: {events} events per phase, median of {repeats}")
        print(f"{'writers':>7}  {'unchained ev/s':>14}  {'chained ev/s':>12}  {'ratio':>5}")
        for writers in writer_counts:
            rates: dict[str, list[float]] = {"unchained": [], "chained": []}
            for attempt in range(repeats):
                order = ("unchained", "chained") if attempt % 2 == 0 else ("chained", "unchained")
                for mode in order:
                    with _fresh_database(backend, workdir) as url:
                        rates[mode].append(_phase(url, workdir / "keys", mode, writers, events))
            plain = statistics.median(rates["unchained"])
            chained = statistics.median(rates["chained"])
            print(f"{writers:>7}  {plain:>14,.0f}  {chained:>12,.0f}  {chained / plain:>5.2f}")
        print(f"  goals at 16 writers: >= {GOAL_RATE:,} chained events/s, ratio >= {GOAL_RATIO}")
        sequencing, verifying = _verify_phase(backend, workdir, verify)
        print(f"  sequencer on a {verify:,}-event backlog: {sequencing:,.0f} events/s")
        print(
            f"  verify: {verifying:,.0f} events/s "
            f"({verifying / GOAL_VERIFY:.2f}x the goal of {GOAL_VERIFY:,})"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--backend", choices=("sqlite", "postgresql", "all"), default="all")
    parser.add_argument("--writers", default="1,4,16")
    parser.add_argument("--events", type=int, default=3000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--verify-events", type=int, default=200_000)
    args = parser.parse_args()
    writer_counts = [int(w) for w in args.writers.split(",")]
    backends = ["sqlite", "postgresql"] if args.backend == "all" else [args.backend]
    for backend in backends:
        if backend == "postgresql":
            try:
                psycopg.connect(PG_ADMIN_DSN, connect_timeout=3).close()
            except psycopg.Error:
                print("\npostgresql: skipped (nothing answers at BASTION_BENCH_PG)")
                continue
        run(backend, writer_counts, args.events, args.repeats, args.verify_events)


if __name__ == "__main__":
    main()
