"""`python -m benchmarks.dsr`: data subjects' requests at size, against goals.

In process, on SQLite and (when reachable) PostgreSQL:

- discovery for one subject in a region of 10k contacts vs 1M (goal: <= 1.5x —
  discovery follows ids and indexed links, so the region's size should not matter);
- export (discover + package) and erasure (the whole job, certificate included) of a
  subject with 10,000 activities about them (goal: <= 2 s each).

Filler contacts and the activities are inserted in bulk with real ciphertexts;
the requests run through the real job runner.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from sqlalchemy import insert

from bastion.crm.tables import ENTITY_TABLES
from bastion.crypto.envelope import FieldContext, seal
from bastion.dsr.discovery import discover
from bastion.logs import configure_logging
from bastion.principals.caller import Caller
from bastion.residency.ids import RecordId
from bastion.state import State
from benchmarks.environment import chosen_backends
from benchmarks.pipeline import deployment, fill_contacts


def _subject(state: State, caller: Caller, activities: int) -> str:
    contact = state.records.create(
        caller, "contacts", {"last_name": "Subject", "email": "subject@example.com", "region": "eu"}
    ).record["id"]
    database = state.regions.get("eu")
    table = ENTITY_TABLES["activities"]
    now = state.clock.now()
    with database.transaction(write=True) as conn:
        key = state.keys.dek_for_subject(conn, "eu", contact)
    for start in range(0, activities, 5000):
        rows = []
        for n in range(start, min(activities, start + 5000)):
            record_id = str(RecordId.new("act", "eu", now))
            rows.append(
                {
                    "id": record_id,
                    "region": "eu",
                    "version": 1,
                    "created_at": now,
                    "updated_at": now,
                    "type": "note",
                    "subject": f"Note {n}",
                    "body": seal(
                        key,
                        f"private note {n}".encode(),
                        FieldContext("eu", "activities", record_id, "body"),
                    ),
                    "contact_id": contact,
                    "owner_id": None,
                    "team_id": None,
                    "custom": None,
                }
            )
        with database.transaction(write=True) as conn:
            conn.execute(insert(table), rows)
    return str(contact)


def _run_request(state: State, officers: tuple[Caller, Caller], body: dict[str, object]) -> float:
    """From creation to the job's end: one officer creates and verifies, a second
    approves (erasure needs four eyes), and the runner claims and runs it."""
    started = time.perf_counter()
    request = state.dsr.create(officers[0], body)
    state.dsr.verify_identity(officers[0], request["id"], "benchmark")
    state.dsr.approve(officers[1], request["id"])
    assert state.dsr_jobs.run_once() == 1
    elapsed = time.perf_counter() - started
    done = state.dsr.get(officers[0], request["id"])
    assert done["status"] in ("completed", "partially_completed"), done
    return elapsed


def _discovery(state: State, subject: str, repeats: int = 20) -> float:
    database = state.regions.get("eu")
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        with database.transaction() as conn:
            discover(conn, [subject])
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def report(backend: str, state: State, *, large: int, activities: int) -> None:
    admin = Caller(state.tokens.issue(principal_name="bench-admin", roles=["admin"]).principal)
    officer, approver = (
        Caller(state.tokens.issue(principal_name=name, roles=["compliance_officer"]).principal)
        for name in ("bench-officer", "bench-approver")
    )
    officers = (officer, approver)
    probe = state.records.create(
        admin, "contacts", {"last_name": "Probe", "email": "probe@example.com", "region": "eu"}
    ).record["id"]
    for n in range(5):
        state.records.create(
            admin,
            "activities",
            {"region": "eu", "type": "call", "subject": f"c{n}", "body": "x", "contact_id": probe},
        )
    fill_contacts(state, 10_000)
    small = _discovery(state, probe)
    fill_contacts(state, large - 10_000)
    big = _discovery(state, probe)
    print(
        f"{backend:<10} discovery of one subject: 10k contacts {small * 1e3:.2f} ms, "
        f"{large // 1000}k {big * 1e3:.2f} ms -> {big / small:.2f}x (goal <= 1.5x)"
    )
    subject = _subject(state, admin, activities)
    export = _run_request(state, officers, {"type": "export", "subject_id": subject})
    erasure = _run_request(state, officers, {"type": "erasure", "subject_id": subject})
    print(
        f"{backend:<10} subject with {activities} activities: export {export:.2f} s, "
        f"erasure {erasure:.2f} s (goal <= 2 s each)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=("sqlite", "postgresql", "all"), default="all")
    parser.add_argument("--large", type=int, default=1_000_000)
    parser.add_argument("--activities", type=int, default=10_000)
    args = parser.parse_args()
    configure_logging("console", "error")
    backends = chosen_backends(args.backend)
    for backend in backends:
        with (
            tempfile.TemporaryDirectory(prefix="bastion-bench-dsr-") as work,
            deployment(backend, Path(work)) as state,
        ):
            report(backend, state, large=args.large, activities=args.activities)


if __name__ == "__main__":
    main()
