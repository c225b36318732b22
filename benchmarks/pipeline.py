"""`python -m benchmarks.pipeline`: what encryption and audit cost inside a request.

In process, through the record service (no HTTP), on SQLite and (when reachable)
PostgreSQL, each against a baseline measured in the same run:

- GET of a contact with its encrypted fields vs the same pipeline with a codec
  that stores the same bytes unsealed ("encryption disabled"; goal >= 0.8x);
- GET with its audit event vs the same pipeline with the event dropped (the audit
  step's share of a GET);
- an exact-match lookup through the email blind index in a table of 10k, 100k and
  1M contacts (goal: 1M no slower than 1.5x 10k). The 16-bit index lets about
  R / 65,536 false positives through (15 at 1M), each decrypted and dropped.

Never a timed assertion anywhere; the ratios are the result. The figures are also
written to `benchmarks/results/pipeline.json` (for `benchmarks.report`'s plots).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import insert

from bastion.config import Settings, load_settings
from bastion.crm.codec import RecordCodec, Revealed, from_plaintext, to_plaintext
from bastion.crm.listing import ListQuery
from bastion.crm.tables import ENTITY_TABLES
from bastion.crypto.envelope import FieldContext, seal
from bastion.logs import configure_logging
from bastion.migrate import migrate_all
from bastion.principals.caller import Caller
from bastion.residency.ids import RecordId
from bastion.state import State, build_state
from benchmarks.environment import PG_ADMIN_DSN, POLICIES, chosen_backends, postgres_available

RESULTS = Path(__file__).resolve().parent / "results"


class PlaintextCodec(RecordCodec):
    """The same pipeline with sealing switched off: values stored as their bytes.
    Benchmark only — it exists to measure what encryption costs."""

    def seal_fields(  # type: ignore[override]
        self,
        conn: Any,
        spec: Any,
        region: str,
        record_id: str,
        values: Mapping[str, Any],
        subject_id: str,
        fields: Any = None,
    ) -> dict[str, Any]:
        stored = dict(values)
        for field in spec.encrypted_fields:
            if field.name in values:
                value = values[field.name]
                stored[field.name] = None if value is None else to_plaintext(field, value)
                if field.index_column is not None and value is not None:
                    stored[field.index_column] = self.index(conn, spec, region, field, value)
        return stored

    def reveal(  # type: ignore[override]
        self,
        conn: Any,
        spec: Any,
        region: str,
        stored: Mapping[str, Any],
        fields: Any,
        *,
        restricted_too: bool = True,
    ) -> Revealed:
        values = dict(stored)
        for field in spec.encrypted_fields:
            blob = values.pop(field.name, None)
            if field.index_column is not None:
                values.pop(field.index_column, None)
            values[field.name] = (
                from_plaintext(field, bytes(blob))
                if blob is not None and field.name in fields
                else None
            )
        return Revealed(values, ())


def per_call(function: Callable[[], object], *, seconds: float) -> float:
    samples: list[float] = []
    deadline = time.perf_counter() + seconds
    while len(samples) < 30 or time.perf_counter() < deadline:
        started = time.perf_counter()
        function()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


@contextmanager
def deployment(
    backend: str, workdir: Path, extra: Mapping[str, str] | None = None
) -> Iterator[State]:
    """A fresh deployment on `backend`: its own databases (SQLite files under `workdir`,
    or three new PostgreSQL databases, dropped after), no workflow rules or scoring
    model unless `extra` names them."""
    environ = {
        "BASTION_HOME": str(workdir),
        "BASTION_CONFIG": str(workdir / "empty.toml"),
        "BASTION_POLICIES": str(POLICIES),
        "BASTION_LOG_LEVEL": "error",
        "BASTION_SECRET_KEY": "benchmark-secret-0123456789abcdef0123456789",
        "BASTION_AUTOMATION_WORKFLOWS": str(workdir / "no-workflows"),
        "BASTION_AUTOMATION_SCORING": str(workdir / "no-scoring"),
        **(extra or {}),
    }
    (workdir / "empty.toml").write_text("")
    dropped: list[str] = []
    if backend == "postgresql":
        import psycopg

        problem = postgres_available()
        assert problem is None, problem
        dsn = PG_ADMIN_DSN
        suffix = os.urandom(4).hex()
        with psycopg.connect(dsn, autocommit=True) as conn:
            for name in ("control", "eu", "us"):
                conn.execute(f'CREATE DATABASE "bench_pipe_{suffix}_{name}"')  # type: ignore[arg-type]
                dropped.append(f"bench_pipe_{suffix}_{name}")
        base = "postgresql+psycopg://postgres@127.0.0.1:5432/bench_pipe_" + suffix
        environ |= {
            "BASTION_CONTROL_URL": f"{base}_control",
            "BASTION_REGION_EU_URL": f"{base}_eu",
            "BASTION_REGION_US_URL": f"{base}_us",
        }
    settings: Settings = load_settings(environ)
    migrate_all(settings)
    state = build_state(settings)
    try:
        yield state
    finally:
        state.close()
        if dropped:
            import psycopg

            with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
                for name in dropped:
                    conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')  # type: ignore[arg-type]


def get_costs(state: State, seconds: float) -> dict[str, float]:
    caller = Caller(state.tokens.issue(principal_name="bench", roles=["admin"]).principal)
    body = {
        "first_name": "Anna",
        "last_name": "Schmidt",
        "email": "anna@example.com",
        "phone": "+4930123456",
        "mobile": "+4915112345678",
        "mailing_street": "Hauptstr. 1",
        "mailing_postal_code": "10115",
        "birthdate": "1980-01-01",
        "region": "eu",
    }
    sealed = state.records.create(caller, "contacts", body).record["id"]
    encrypted = per_call(lambda: state.records.get(caller, "contacts", sealed), seconds=seconds)
    real_codec = state.records.codec
    state.records.codec = PlaintextCodec(state.keys)
    try:
        plain = state.records.create(
            caller,
            "contacts",
            {**body, "email": "p@example.com", "phone": "+4930123457", "mobile": "+4915112345679"},
        ).record["id"]
        unencrypted = per_call(
            lambda: state.records.get(caller, "contacts", plain), seconds=seconds
        )
    finally:
        state.records.codec = real_codec
    real_append = state.records.recorder.append
    state.records.recorder.append = lambda conn, region, event: None  # type: ignore[method-assign]
    try:
        unaudited = per_call(lambda: state.records.get(caller, "contacts", sealed), seconds=seconds)
    finally:
        state.records.recorder.append = real_append  # type: ignore[method-assign]
    return {"encrypted": encrypted, "unencrypted": unencrypted, "unaudited": unaudited}


def fill_contacts(state: State, rows: int, *, batch: int = 20_000) -> None:
    """`rows` contacts with real ciphertexts and blind indexes (one shared filler key)."""
    database = state.regions.get("eu")
    table = ENTITY_TABLES["contacts"]
    now = state.clock.now()
    with database.transaction(write=True) as conn:
        holder = str(RecordId.new("con", "eu", now))
        key = state.keys.dek_for_subject(conn, "eu", holder)
        indexer = state.keys.blind_indexer("eu", conn=conn)
    done = 0
    while done < rows:
        chunk = []
        for n in range(done, min(rows, done + batch)):
            record_id = str(RecordId.new("con", "eu", now))
            email = f"filler{n}@example.com"
            chunk.append(
                {
                    "id": record_id,
                    "region": "eu",
                    "version": 1,
                    "created_at": now,
                    "updated_at": now,
                    "last_name": seal(
                        key, b"Filler", FieldContext("eu", "contacts", record_id, "last_name")
                    ),
                    "email": seal(
                        key, email.encode(), FieldContext("eu", "contacts", record_id, "email")
                    ),
                    "email_bidx": indexer.index("contacts", "email", email),
                    "owner_id": None,
                    "team_id": None,
                    "custom": None,
                }
            )
        with database.transaction(write=True) as conn:
            conn.execute(insert(table), chunk)
        done += len(chunk)


def lookup_cost(state: State, caller: Caller, seconds: float) -> float:
    query = ListQuery(filters={"email": "target@example.com"}, region="eu", limit="10")

    def lookup() -> object:
        page = state.records.list_records(caller, "contacts", query)
        assert len(page.data) == 1
        return page

    return per_call(lookup, seconds=seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--backend", choices=("sqlite", "postgresql", "all"), default="all")
    parser.add_argument("--large", type=int, default=1_000_000, help="rows of the large table")
    args = parser.parse_args()
    backends = chosen_backends(args.backend)
    configure_logging("console", "error")
    results = []
    for backend in backends:
        with (
            tempfile.TemporaryDirectory(prefix="bastion-bench-pipe-") as work,
            deployment(backend, Path(work)) as state,
        ):
            results.append(report(backend, state, seconds=args.seconds, large=args.large))
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "pipeline.json").write_text(json.dumps(results, indent=2) + "\n")


def report(backend: str, state: State, *, seconds: float, large: int) -> dict[str, Any]:
    costs = get_costs(state, seconds)
    print(
        f"{backend:<10} GET contact: encrypted {costs['encrypted'] * 1e6:7.0f} µs, "
        f"unencrypted {costs['unencrypted'] * 1e6:7.0f} µs "
        f"-> {costs['unencrypted'] / costs['encrypted']:.2f}x throughput encrypted; "
        f"audit share {1 - costs['unaudited'] / costs['encrypted']:.0%} "
        f"(unaudited {costs['unaudited'] * 1e6:.0f} µs)"
    )
    caller = Caller(state.tokens.issue(principal_name="lookup", roles=["admin"]).principal)
    state.records.create(
        caller, "contacts", {"last_name": "Target", "email": "target@example.com", "region": "eu"}
    )
    sizes = [n for n in (10_000, 100_000) if n < large] + [large]
    costs_by_size: list[float] = []
    filled = 0
    for size in sizes:
        fill_contacts(state, size - filled)
        filled = size
        costs_by_size.append(lookup_cost(state, caller, seconds))
    small, big = costs_by_size[0], costs_by_size[-1]
    measured = list(zip(sizes, costs_by_size, strict=True))
    steps = ", ".join(f"{n // 1000}k rows {c * 1e6:.0f} µs" for n, c in measured)
    ratio = f"{big / small:.2f}x ({large // 1000}k vs 10k; goal <= 1.5x)"
    print(f"{backend:<10} email lookup: {steps} -> {ratio}")
    return {
        "backend": backend,
        "get_us": {name: round(cost * 1e6, 1) for name, cost in costs.items()},
        "encrypted_ratio": round(costs["unencrypted"] / costs["encrypted"], 3),
        "audit_share": round(1 - costs["unaudited"] / costs["encrypted"], 3),
        "lookup": [{"rows": n, "us": round(c * 1e6, 1)} for n, c in measured],
    }


if __name__ == "__main__":
    main()
