"""The job runner: one loop over every queue of every region.

`bastion worker` runs it in its own process (PostgreSQL: any number of them, side by
side); on the embedded default (every database SQLite) the serving process runs it
in a thread instead (`State.runs_jobs_in_process`). Each pass gives every queue
(`Queue`) each region in turn; a region that is down is skipped until the next pass
and the others go on.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Protocol

import structlog

from bastion.crm.auditing import AuditUnavailable
from bastion.crypto.errors import KeyServiceUnavailable
from bastion.errors import RegionUnavailable
from bastion.residency.databases import Database, Regions

log = structlog.get_logger("bastion.jobs")

# Failures that say "not now" rather than "never": the job is retried later.
TRANSIENT = (RegionUnavailable, KeyServiceUnavailable, AuditUnavailable)


class Queue(Protocol):
    """One kind of job. `run_region` runs what is due in one region's database and
    says how many jobs it ran; it returns early once `stop` is set."""

    @property
    def name(self) -> str:
        """A short name for logs and `bastion worker`'s summary."""

    def run_region(self, database: Database, stop: threading.Event) -> int:
        """Run the jobs due in `database`; how many ran."""


def drain(regions: Regions, queues: Sequence[Queue], stop: threading.Event) -> dict[str, int]:
    """One pass: every queue over every region; jobs run, per queue name."""
    counts = {queue.name: 0 for queue in queues}
    for region in regions.names:
        database = regions.get(region)
        for queue in queues:
            if stop.is_set():
                return counts
            try:
                counts[queue.name] += queue.run_region(database, stop)
            except TRANSIENT:
                log.warning("jobs_region_unavailable", queue=queue.name, region=region)
    return counts


class JobRunner:
    def __init__(self, *, regions: Regions, queues: Sequence[Queue], poll_seconds: float) -> None:
        self._regions = regions
        self._queues = tuple(queues)
        self._poll = poll_seconds
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def queues(self) -> tuple[Queue, ...]:
        return self._queues

    def run_once(self) -> dict[str, int]:
        """Run what is due in every queue of every region, once; jobs run per queue."""
        return drain(self._regions, self._queues, self._stop)

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="bastion-jobs", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        """Look for work now rather than at the next poll."""
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.run_once()
            except Exception as exc:  # the loop must survive whatever one pass meets
                log.error("jobs_loop_failed", error_type=type(exc).__name__)
            self._wake.wait(self._poll)
            self._wake.clear()
