"""What expires, checked each time a worker looks at a region: export packages (and
the keys that sealed them), idempotency fingerprints, and the records an erasure
kept only under a retention rule whose period is over."""

from __future__ import annotations

from datetime import datetime, timedelta

from bastion.clock import Clock
from bastion.crm.catalog import ENTITIES
from bastion.crypto.keyring import Keyring
from bastion.dsr import erasure
from bastion.dsr import repository as repo
from bastion.dsr.journal import Journal
from bastion.residency.databases import Database

# Idempotency-Key fingerprints are kept this long (a retry window, not a record).
IDEMPOTENCY_HOURS = 24
RETENTION_CHECK = timedelta(hours=1)


class Housekeeping:
    def __init__(self, *, journal: Journal, keys: Keyring, clock: Clock) -> None:
        self._journal = journal
        self._keys = keys
        self._clock = clock
        self._retention_checked: dict[str, datetime] = {}

    def run(self, database: Database) -> None:
        """What expires: export packages (and their keys), idempotency fingerprints
        (after `IDEMPOTENCY_HOURS`), and records kept under a retention rule whose
        period is over (checked at most hourly)."""
        now = self._clock.now()
        with database.transaction(write=True) as conn:
            for request_id in repo.expired_packages(conn, now):
                repo.delete_package(conn, request_id)
                self._keys.shred(conn, database.name, request_id)
            repo.purge_idempotency(conn, now - timedelta(hours=IDEMPOTENCY_HOURS))
        last = self._retention_checked.get(database.name)
        if last is None or now - last >= RETENTION_CHECK:
            self._retention_checked[database.name] = now
            self._expire_retention(database, now)

    def _expire_retention(self, database: Database, now: datetime) -> None:
        region = database.name
        for request_id in _erasures_with_retention(database):
            with database.transaction(write=True) as conn:
                request = repo.fetch_request(conn, request_id, lock=True)
                steps = repo.done_steps(conn, request_id)
                if request is None or "retention_expired" in steps or "discover" not in steps:
                    continue
                retained = [
                    erasure.Decision.from_dict(d)
                    for d in steps["discover"].get("decisions", [])
                    if d["action"] == "keep" and str(d.get("reason_code")).startswith("retention:")
                ]
                years = max((_retention_years(d) for d in retained), default=0)
                ended = request["completed_at"] + timedelta(days=round(365.25 * years))
                if not retained or ended > now:
                    continue
                doomed = [erasure.Decision(d.entity, d.record_id, "delete") for d in retained]
                deleted = erasure.delete_records(conn, doomed)
                destroyed = self._keys.shred(conn, region, erasure.retention_key(request_id))
                repo.complete_step(
                    conn, request_id, "retention_expired", now, {"deleted": len(deleted)}
                )
                self._journal.event(
                    conn,
                    region,
                    request,
                    "retention_expired",
                    {"records": len(deleted), "keys": destroyed},
                    [request_id, *deleted[:400]],
                )


def _retention_years(decision: erasure.Decision) -> int:
    code = str(decision.reason_code).removeprefix("retention:")
    rules = [r for r in ENTITIES[decision.entity].retention if r.code == code]
    return rules[0].years if rules else 0


def _erasures_with_retention(database: Database) -> list[str]:
    """Finished erasures that kept something (the only ones retention can end)."""
    with database.transaction() as conn:
        return repo.finished_erasures_with_kept(conn)
