"""Filling the phonetic index of records written before it existed.

Rows written before `<field>_pidx` existed have it NULL: `reindex` decrypts their
phonetic fields (a maintenance task of the deployment, like DEK rotation; nothing
leaves the process) and stores the index, in batches of one transaction each.

Resumable by construction: a batch selects only rows whose index is NULL and whose
name is not, so an interrupted run simply starts again where the NULLs are. Within
one run it walks ids in order, so rows that get no index (a name without Latin
letters, a destroyed key) are passed over once, not retried forever.

Erased shells and merged tombstones (`crm.repository.live`) are skipped: their
indexes were cleared on purpose, so that nothing finds them. The UPDATE repeats
that condition (and that the index is still NULL) because the SELECT takes no lock:
on PostgreSQL an erasure or a merge may commit between the two, and the UPDATE,
which re-reads the row, must then leave it alone.
"""

from __future__ import annotations

from sqlalchemy import select, update

from bastion.audit import AuditEvent
from bastion.clock import Clock
from bastion.crm.catalog import ENTITIES
from bastion.crm.pipeline import Pipeline
from bastion.crm.repository import live
from bastion.crm.tables import ENTITY_TABLES

DEFAULT_BATCH = 500
MAX_BATCH = 500  # an audit event names at most 500 record ids


def reindex(
    pipeline: Pipeline,
    region: str,
    clock: Clock,
    *,
    actor: str,
    batch_size: int = DEFAULT_BATCH,
) -> dict[str, int]:
    """Fill the missing phonetic indexes of every entity in `region`'s database.

    Returns, per entity, how many rows got an index. Each batch (at most `MAX_BATCH`
    rows) is audited as `record.reindex` (ids and the field name) by `actor`, in
    the batch's transaction."""
    if not 1 <= batch_size <= MAX_BATCH:
        raise ValueError(f"the batch size is 1 to {MAX_BATCH}")
    codec = pipeline.codec
    database = pipeline.database(region)
    filled: dict[str, int] = {}
    for spec in ENTITIES.values():
        table = ENTITY_TABLES[spec.name]
        for field in spec.encrypted_fields:
            column = field.phonetic_column
            if column is None:
                continue
            filled[spec.name] = filled.get(spec.name, 0)
            after = ""
            while True:
                with database.transaction(write=True) as conn:
                    rows = conn.execute(
                        select(table.c.id, table.c.region, table.c[field.name])
                        .where(
                            table.c[column].is_(None),
                            table.c[field.name].is_not(None),
                            table.c.id > after,
                            *live(table),
                        )
                        .order_by(table.c.id)
                        .limit(batch_size)
                    ).all()
                    done = []
                    for row in rows:
                        stored = dict(row._mapping)
                        value = codec.open_field(conn, spec, region, stored, field)
                        index = (
                            None
                            if value is None
                            else codec.phonetic(conn, spec, region, field, value)
                        )
                        if index is None:
                            continue
                        written = conn.execute(
                            update(table)
                            .where(table.c.id == row.id, table.c[column].is_(None), *live(table))
                            .values({column: index})
                        )
                        if written.rowcount:
                            done.append(str(row.id))
                    if done:
                        event = AuditEvent.new(
                            clock,
                            actor=actor,
                            action="record.reindex",
                            entity=spec.name,
                            record_ids=done,
                            fields=[field.name],
                            details={"count": len(done)},
                        )
                        pipeline.recorder.append(conn, region, event)
                pipeline.recorder.committed(database)
                filled[spec.name] += len(done)
                if len(rows) < batch_size:
                    break
                after = str(rows[-1].id)
    return filled
