"""Running data subjects' requests: claimed, stepped, resumable, never applied twice.

The job runner (`bastion.jobs.runner`: `bastion worker`, or a thread in the serving
process on the embedded default) gives this queue each region in turn; it claims an
approved request with a lease (`bastion.jobs.lease`: PostgreSQL `FOR UPDATE SKIP
LOCKED`, so any number of workers share the queue), then runs the type's steps in
order (`model.STEPS`). A step's completion record (a `dsr_steps` row and a
`dsr.<type>.<step>` audit event) commits with the step's last transaction, and only
while the lease is this worker's, so a step is recorded once. Its work is
idempotent: long steps (deleting thousands of records) work in batches, and a
step that runs again — after a crash, or in the worker that took over a lease —
re-reads what still exists and changes nothing already done. A worker killed at any point leaves a
lease that expires; the next worker resumes at the first step without a record.
Two requests for the same person cannot double-apply: every step re-reads what
still exists.

The steps themselves are `steps.py`; what a step leaves behind (lease, completion,
events) is `journal.py`; what expires is `housekeeping.py`.

Failpoints for crash tests: outside production mode, `BASTION_FAILPOINT=<name>`
makes the process exit at once (as if killed) after the named point commits —
`dsr:<step>` after each step, `dsr:erase-batch` after the first deletion batch.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any

import structlog

from bastion.audit import AuditLog
from bastion.clock import Clock
from bastion.crm.service import RecordService
from bastion.crypto.keyring import Keyring
from bastion.dsr import repository as repo
from bastion.dsr.housekeeping import Housekeeping
from bastion.dsr.journal import Journal, LeaseLost
from bastion.dsr.model import RUNNABLE, STEPS
from bastion.dsr.settings import DsrSettings
from bastion.dsr.steps import Steps
from bastion.errors import BastionError
from bastion.jobs.lease import backoff
from bastion.jobs.runner import TRANSIENT, drain
from bastion.policy.engine import Policy
from bastion.residency.databases import Database, Regions

log = structlog.get_logger("bastion.dsr")

MAX_ATTEMPTS = 3
# A request that met a transient failure is retried after 30 s, then 60 s.
RETRY_BASE_SECONDS = 30


class DsrRunner:
    """The queue of data subjects' requests (a `bastion.jobs.runner.Queue`)."""

    name = "dsr"

    def __init__(
        self,
        *,
        regions: Regions,
        keys: Keyring,
        records: RecordService,
        audit: AuditLog,
        clock: Clock,
        settings: DsrSettings,
        policy: Callable[[], Policy],
        worker_id: str,
        failpoints: bool,
    ) -> None:
        self._regions = regions
        self._keys = keys
        self._clock = clock
        self._settings = settings
        self.worker_id = worker_id
        self._journal = Journal(
            worker_id=worker_id,
            clock=clock,
            recorder=records.recorder,
            policy=policy,
            lease_seconds=settings.lease_seconds,
            failpoint=os.environ.get("BASTION_FAILPOINT") if failpoints else None,
        )
        self._steps = Steps(
            journal=self._journal,
            regions=regions,
            keys=keys,
            records=records,
            audit=audit,
            clock=clock,
            settings=settings,
            policy=policy,
        )
        self._housekeeping = Housekeeping(
            journal=self._journal, keys=keys, clock=clock, recorder=records.recorder
        )

    # -- the queue -------------------------------------------------------------------

    def run_once(self) -> int:
        """Claim and run every runnable request of every region; how many ran."""
        return drain(self._regions, [self], threading.Event())[self.name]

    def run_region(self, database: Database, stop: threading.Event) -> int:
        """Expire what is due, then claim and run every runnable request of one region."""
        self._housekeeping.run(database)
        ran = 0
        while not stop.is_set():
            request_id = self._claim(database)
            if request_id is None:
                break
            self.run(database.name, request_id)
            ran += 1
        return ran

    def _claim(self, database: Database, request_id: str | None = None) -> str | None:
        now = self._clock.now()
        with database.transaction(write=True) as conn:
            return repo.claim(
                conn, now, self.worker_id, self._journal.lease_until(now), request_id=request_id
            )

    def run_now(
        self, region: str, request_id: str, on_step: Callable[[str], None] | None = None
    ) -> str:
        """Claim this request and run it here (`bastion dsr approve --wait`); its status
        after — `running` still if another worker holds it or it will be retried."""
        database = self._regions.get(region)
        if self._claim(database, request_id) is not None:
            self.run(region, request_id, on_step)
        with database.transaction() as conn:
            request = repo.fetch_request(conn, request_id)
        return str(request["status"]) if request else "missing"

    # -- one request -----------------------------------------------------------------

    def run(
        self, region: str, request_id: str, on_step: Callable[[str], None] | None = None
    ) -> str:
        """Run the remaining steps of a request this worker has claimed; its status.
        `on_step` hears of each step as it completes (a progress bar)."""
        database = self._regions.get(region)
        with database.transaction(write=True) as conn:
            request = repo.fetch_request(conn, request_id, lock=True)
            if request is None or request["status"] not in RUNNABLE:
                return request["status"] if request else "missing"
            if request["lease_owner"] != self.worker_id:
                return str(request["status"])  # not ours (any more): leave it alone
            if request["status"] == "approved":
                now = self._clock.now()
                repo.update_request(conn, request_id, status="running", started_at=now)
                self._journal.event(conn, region, request, "started")
                request["status"] = "running"
            done = repo.done_steps(conn, request_id)
        for step in STEPS[request["type"]]:
            if step in done:
                continue
            try:
                self._journal.renew(database, request_id, step=step)
                done[step] = getattr(self._steps, step)(database, request, done)
            except LeaseLost:
                log.warning("dsr_lease_lost", request=request_id, step=step)
                return "running"  # another worker took it over; it resumes from here
            except TRANSIENT:
                return self._retry(database, request, step, "unavailable")
            except BastionError as exc:
                return self._fail(database, request, step, exc.detail)
            except Exception as exc:  # a bug or a surprise: retried, then failed
                log.error(
                    "dsr_step_crashed", request=request_id, step=step, error_type=type(exc).__name__
                )
                return self._retry(database, request, step, type(exc).__name__)
            self._journal.hit(f"dsr:{step}")
            if on_step is not None:
                on_step(step)
        return str(request["status"])

    def _retry(self, database: Database, request: dict[str, Any], step: str, why: str) -> str:
        """A transient failure: try again later, and give up after `MAX_ATTEMPTS`."""
        progress = dict(request.get("progress") or {})
        attempts = int(progress.get("attempts", 0)) + 1
        if attempts >= MAX_ATTEMPTS:
            return self._fail(database, request, step, f"gave up after {attempts} attempts ({why})")
        progress["attempts"] = attempts
        request["progress"] = progress
        with database.transaction(write=True) as conn:
            # Only while the lease is ours: a worker that took over decides now.
            repo.update_if_leased(
                conn,
                request["id"],
                self.worker_id,
                {
                    "progress": progress,
                    "lease_owner": None,
                    "lease_expires_at": self._clock.now()
                    + backoff(attempts, base_seconds=RETRY_BASE_SECONDS, cap_seconds=3600),
                },
            )
        return "running"

    def _fail(self, database: Database, request: dict[str, Any], step: str, why: str) -> str:
        with database.transaction(write=True) as conn:
            failed = repo.update_if_leased(
                conn,
                request["id"],
                self.worker_id,
                {
                    "status": "failed",
                    "error": f"{step}: {why}"[:500],
                    "lease_owner": None,
                    "lease_expires_at": None,
                    "completed_at": self._clock.now(),
                },
            )
            if not failed:
                # Another worker holds the request now: its outcome stands, not ours.
                log.warning("dsr_lease_lost", request=request["id"], step=step)
                return "running"
            if request["type"] == "rectification":  # its corrections will not be applied
                self._keys.shred(conn, database.name, request["id"])
            self._journal.event(conn, database.name, request, "failed")
        log.warning("dsr_failed", request=request["id"], step=step)
        return "failed"
