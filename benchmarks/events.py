"""`python -m benchmarks.events`: activity events ingested per second, with workflow
rules and lead scoring on, against ingestion with automation off, in the same run.

In process (the service `POST /v1/events` calls; no HTTP), on SQLite and (when
reachable) PostgreSQL, with a fresh deployment each:

- 1,000 leads in region `eu` (a mix of statuses, industries, countries and sources),
  and two senior reps for the hot-lead rule to assign to;
- 20,000 behaviour events over them (half page visits, a quarter opened emails, a
  fifth clicked links, one in twenty submitted forms, over the last 30 days), in
  batches of 500 — each batch checked whole, stored in one transaction (properties
  sealed under each lead's key, one audit event), idempotent by event id;
- automation off: no rules, no scoring model — the batches are stored and nothing
  follows;
- automation on: the repository's `workflows/` and `scoring/` — the same batches,
  then the job runner drained by one worker: every touched lead rescored through
  the pipeline (read, score written and audited under `system:automation`, history),
  the rules the forms and scores trigger decided and applied (status changes, tasks,
  round-robin assignment of leads passing 80). The rate counts the whole: stored and
  acted upon;
- the same batches sent again: all duplicates, nothing to do.

Prints events/s of each, the ratio, how the automated run splits between storing
and the jobs, what automation did, and the goal line (>= 2,000 events/s with rules
and scoring on, on PostgreSQL).
"""

from __future__ import annotations

import argparse
import random
import tempfile
import threading
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from bastion.automation.tables import automation_runs, lead_scores
from bastion.jobs.runner import JobRunner
from bastion.logs import configure_logging
from bastion.principals.caller import Caller
from bastion.state import State
from benchmarks.environment import REPO, chosen_backends
from benchmarks.pipeline import deployment

GOAL = 2_000  # events/s with rules and scoring on, PostgreSQL
_BATCH = 500
_TYPES: tuple[tuple[str, float], ...] = (
    ("page_visited", 0.5),
    ("email_opened", 0.25),
    ("link_clicked", 0.2),
    ("form_submitted", 0.05),
)
AUTOMATION_ON = {
    "BASTION_AUTOMATION_WORKFLOWS": str(REPO / "workflows"),
    "BASTION_AUTOMATION_SCORING": str(REPO / "scoring"),
}


def seed(state: State, leads: int, rng: random.Random) -> tuple[Caller, list[str]]:
    """The leads, made by a marketing principal; two senior reps; the queues drained."""
    for n in (1, 2):
        state.tokens.issue(
            principal_name=f"senior-{n}",
            roles=["sales_rep"],
            regions=["eu"],
            teams=["senior-sales"],
        )
    caller = Caller(
        state.tokens.issue(
            principal_name="marketing", roles=["marketing"], regions=["eu"]
        ).principal
    )
    ids = []
    for n in range(leads):
        body = {
            "region": "eu",
            "last_name": f"Lead{n}",
            "email": f"lead.{n}@bench.example",
            "company": f"Company {n % 97}",
            "status": rng.choice(("new", "working", "nurturing", "qualified")),
            "industry": rng.choice(("software", "finance", "retail", "manufacturing")),
            "country": rng.choice(("DE", "FR", "US", "IT", "NL")),
            "source": rng.choice(("web", "referral", "event", "advertising")),
        }
        ids.append(str(state.records.create(caller, "leads", body).record["id"]))
    drain(state)
    return caller, ids


def batches(
    state: State, leads: list[str], events: int, rng: random.Random
) -> list[dict[str, Any]]:
    now = state.clock.now()
    kinds = [kind for kind, _ in _TYPES]
    weights = [weight for _, weight in _TYPES]
    made = []
    for start in range(0, events, _BATCH):
        made.append(
            {
                "events": [
                    {
                        "id": f"bench-{n}",
                        "type": rng.choices(kinds, weights)[0],
                        "subject_id": rng.choice(leads),
                        "occurred_at": (now - timedelta(minutes=rng.randrange(30 * 24 * 60)))
                        .isoformat()
                        .replace("+00:00", "Z"),
                        "properties": {"url": f"/page/{n % 50}", "campaign": "winter"},
                    }
                    for n in range(start, min(start + _BATCH, events))
                ]
            }
        )
    return made


def drain(state: State, workers: int = 1) -> dict[str, int]:
    """Run the job queues until none has work left, with `workers` threads side by side
    (each claiming with its own worker id, as `bastion worker` processes do)."""
    runners = [state.jobs] + [
        JobRunner(
            regions=state.regions,
            queues=[state.dsr_jobs, *state.automation.worker_queues(f"bench-worker-{n}")],
            poll_seconds=1,
        )
        for n in range(1, workers)
    ]
    totals: list[dict[str, int]] = [{} for _ in runners]

    def work(index: int) -> None:
        while True:
            ran = runners[index].run_once()
            for name, count in ran.items():
                totals[index][name] = totals[index].get(name, 0) + count
            if not any(ran.values()):
                return

    while True:
        before = {name: sum(t.get(name, 0) for t in totals) for name in ("automation", "scoring")}
        threads = [threading.Thread(target=work, args=(i,)) for i in range(len(runners))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        after = {name: sum(t.get(name, 0) for t in totals) for name in ("automation", "scoring")}
        if after == before:  # a pass of every worker found nothing: all done
            break
    return {name: sum(t.get(name, 0) for t in totals) for name in totals[0]}


def did(state: State, *, since: datetime) -> tuple[list[tuple[str, int]], int]:
    """Rules fired (per rule) and scores written since `since`."""
    with state.regions.get("eu").transaction() as conn:
        fired = conn.execute(
            select(automation_runs.c.rule_id, func.count())
            .where(automation_runs.c.outcome == "fired", automation_runs.c.decided_at >= since)
            .group_by(automation_runs.c.rule_id)
        ).all()
        scores = conn.execute(
            select(func.count()).select_from(lead_scores).where(lead_scores.c.computed_at >= since)
        ).scalar_one()
    return [(str(rule), int(n)) for rule, n in fired], int(scores)


def ingest(state: State, caller: Caller, sent: list[dict[str, Any]]) -> tuple[float, int, int]:
    started = time.perf_counter()
    accepted = duplicates = 0
    for batch in sent:
        result = state.automation.events.ingest(caller, batch)
        accepted += result["accepted"]
        duplicates += result["duplicates"]
    return time.perf_counter() - started, accepted, duplicates


def report(backend: str, leads: int, events: int, workers: int, work: Path) -> None:
    print(
        f"\n== {backend}: {events:,} events over {leads:,} leads, batches of {_BATCH}; "
        f"jobs run by {workers} worker(s)"
    )
    (work / "off").mkdir()
    (work / "on").mkdir()
    with deployment(backend, work / "off") as state:
        rng = random.Random(11)
        caller, ids = seed(state, leads, rng)
        sent = batches(state, ids, events, rng)
        off_seconds, accepted, _ = ingest(state, caller, sent)
        idle = drain(state)  # automation off: nothing follows
        assert accepted == events
        assert not any(idle.values())
    off_rate = events / off_seconds
    print(
        f"automation off (store only):            {off_seconds:6.1f} s  {off_rate:8,.0f} events/s"
    )
    with deployment(backend, work / "on", AUTOMATION_ON) as state:
        rng = random.Random(11)
        caller, ids = seed(state, leads, rng)
        sent = batches(state, ids, events, rng)
        seeded = state.clock.now()  # what seeding made automation do is not counted
        stored_seconds, accepted, _ = ingest(state, caller, sent)
        started = time.perf_counter()
        jobs = drain(state, workers)
        job_seconds = time.perf_counter() - started
        on_seconds = stored_seconds + job_seconds
        fired, scores = did(state, since=seeded)
        again_seconds, again_accepted, again_duplicates = ingest(state, caller, sent)
        again_jobs = drain(state)
    on_rate = events / on_seconds
    print(
        f"automation on (stored + rules, scoring): {on_seconds:6.1f} s  {on_rate:8,.0f} events/s  "
        f"(storing {stored_seconds:.1f} s, jobs {job_seconds:.1f} s: "
        + ", ".join(f"{n} {name}" for name, n in sorted(jobs.items()))
        + ")"
    )
    print(
        f"automation did: {scores:,} scores written; rules fired: "
        + (", ".join(f"{rule} {n}" for rule, n in sorted(fired)) or "none")
    )
    print(
        f"same batches again:                      {again_seconds:6.1f} s  "
        f"{events / again_seconds:8,.0f} events/s  (accepted {again_accepted}, duplicates "
        f"{again_duplicates:,}, jobs {sum(again_jobs.values())})"
    )
    print(f"automation on / off: {on_rate / off_rate:.2f}x")
    if backend == "postgresql":
        verdict = "met" if on_rate >= GOAL else "NOT met"
        print(
            f"goal: >= {GOAL:,} events/s ingested with rules and scoring on, on PostgreSQL: "
            f"{on_rate:,.0f} events/s ({verdict}; automation off {off_rate:,.0f} events/s)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=("sqlite", "postgresql", "all"), default="all")
    parser.add_argument("--leads", type=int, default=1_000)
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--workers", type=int, default=2, help="job runner threads (default 2)")
    args = parser.parse_args()
    configure_logging("console", "error")
    for backend in chosen_backends(args.backend):
        with tempfile.TemporaryDirectory(prefix="bastion-bench-events-") as work:
            report(backend, args.leads, args.events, args.workers, Path(work))


if __name__ == "__main__":
    main()
