"""What expires, checked each time a worker looks at a region: export packages (and
the keys that sealed them), idempotency fingerprints, merges past their undo window
(`quality.finalize`: the losers' keys are shredded), and what erasures kept once
nothing keeps it any more (`kept.sweep`: holds that expired, retention periods that
ended; checked at most hourly)."""

from __future__ import annotations

from datetime import datetime, timedelta

from bastion.clock import Clock
from bastion.crm.auditing import Recorder
from bastion.crypto.keyring import Keyring
from bastion.dsr import kept
from bastion.dsr import repository as repo
from bastion.dsr.journal import Journal
from bastion.quality.finalize import finalize_due
from bastion.residency.databases import Database

# Idempotency-Key fingerprints are kept this long (a retry window, not a record).
IDEMPOTENCY_HOURS = 24
KEPT_CHECK = timedelta(hours=1)


class Housekeeping:
    def __init__(
        self, *, journal: Journal, keys: Keyring, clock: Clock, recorder: Recorder
    ) -> None:
        self._journal = journal
        self._keys = keys
        self._clock = clock
        self._recorder = recorder
        self._kept_checked: dict[str, datetime] = {}

    def run(self, database: Database) -> None:
        now = self._clock.now()
        with database.transaction(write=True) as conn:
            for request_id in repo.expired_packages(conn, now):
                repo.delete_package(conn, request_id)
                self._keys.shred(conn, database.name, request_id)
            repo.purge_idempotency(conn, now - timedelta(hours=IDEMPOTENCY_HOURS))
        finalize_due(database, self._keys, self._recorder, self._clock)
        last = self._kept_checked.get(database.name)
        if last is None or now - last >= KEPT_CHECK:
            self._kept_checked[database.name] = now
            self._sweep_kept(database, now)

    def _sweep_kept(self, database: Database, now: datetime) -> None:
        region = database.name
        with database.transaction() as conn:
            request_ids = repo.erasures_keeping(conn)
        for request_id in request_ids:
            with database.transaction(write=True) as conn:
                request = repo.fetch_request(conn, request_id, lock=True)
                if request is None:
                    continue
                swept = kept.sweep(
                    conn, self._keys, request, repo.done_steps(conn, request_id), now
                )
                if swept is None:
                    continue
                for chunk in kept.chunks(swept.deleted):
                    self._journal.event(
                        conn,
                        region,
                        request,
                        "kept_deleted",
                        {"records": len(chunk)},
                        [request_id, *chunk],
                    )
                if swept.remaining == 0:
                    self._journal.event(
                        conn, region, request, kept.DONE, {"keys": swept.keys_destroyed}
                    )
