"""Finalising merges whose undo window has passed: the losers' data is shredded.

Until `undo_until` a loser's tombstone keeps its sealed fields under its own data
key, so an undo can restore it. Afterwards nothing may need them: the loser's key is
destroyed (every ciphertext under it, backups included, becomes noise) and its
plaintext personal fields and custom fields are cleared; the tombstone itself stays,
so the old id still redirects to the survivor. Runs with the DSR housekeeping of
each region (`dsr.housekeeping`) and as `bastion merges finalize --region R`.

A legal hold on the survivor or on a loser postpones it: a hold preserves the
person's data as it is, and a loser's key is the only copy of what the survivor did
not take. The merge stays open (its undo window stays closed) and each run logs
`merge_final_postponed` with the hold ids, until the holds end.
"""

from __future__ import annotations

import structlog
from sqlalchemy import Connection

from bastion.audit import AuditEvent
from bastion.clock import Clock
from bastion.crm import repository
from bastion.crm.auditing import Recorder
from bastion.crm.catalog import ENTITIES, EntitySpec
from bastion.crypto.keyring import Keyring
from bastion.dsr.erasure import active_holds
from bastion.dsr.repository import lock_holds
from bastion.quality import merge_repository as repo
from bastion.residency.databases import Database

ACTOR = "system:merges"
log = structlog.get_logger("bastion.merges")


def finalize_due(database: Database, keys: Keyring, recorder: Recorder, clock: Clock) -> int:
    """Finalise every merge of the region whose window has passed and whose records
    no legal hold preserves, one transaction each (a crash leaves the others for the
    next run). Returns how many it finalised."""
    now = clock.now()
    with database.transaction() as conn:
        due = repo.due_merges(conn, now)
    finalized = 0
    for merge_id in due:
        with database.transaction(write=True) as conn:
            merge = repo.fetch_merge(conn, merge_id)
            if merge is None or merge["status"] != repo.MERGED:
                continue  # undone or finalised by another process meanwhile
            survivor = str(merge["survivor_id"])
            losers = [str(i) for i in merge["loser_ids"]]
            # Holds are placed under this lock: one placed after it is released finds
            # the merge final, as it would find an erasure done.
            lock_holds(conn, database.name)
            holds = active_holds(conn, [survivor, *losers], now)
            if holds:
                log.info(
                    "merge_final_postponed",
                    region=database.name,
                    merge_id=merge_id,
                    holds=sorted(str(h["id"]) for h in holds.values()),
                )
                continue
            if repo.close_merge(conn, merge, repo.FINAL) is None:
                continue  # undone or finalised by another process meanwhile
            spec = ENTITIES[merge["entity"]]
            destroyed = 0
            for loser in losers:
                _clear(conn, spec, loser, survivor, clock)
                destroyed += keys.shred(conn, database.name, loser)
            recorder.append(
                conn,
                database.name,
                AuditEvent.new(
                    clock,
                    actor=ACTOR,
                    action="record.merge_final",
                    entity=spec.name,
                    record_ids=[survivor, *losers],
                    details={"merge_id": merge_id, "keys_destroyed": destroyed},
                ),
            )
        recorder.committed(database)
        finalized += 1
    return finalized


def _clear(conn: Connection, spec: EntitySpec, loser: str, survivor: str, clock: Clock) -> None:
    """Clear a tombstone's plaintext personal fields (its key goes next, taking its
    ciphertexts with it). A tombstone an erasure already shelled is left as it is."""
    row = repository.fetch(conn, spec, loser)
    if row is None or row.merged_into != survivor or row.erased_at is not None:
        return
    columns: dict[str, object] = {
        field.name: None for field in spec.fields if field.personal and not field.encrypted
    }
    columns["custom"] = None
    columns["updated_at"] = clock.now()
    repository.update_record(conn, spec, loser, expected_version=row.version, values=columns)
