"""The tamper-evident audit log: events, per-database hash chain, signed checkpoints, verify.

For writers:

    event = AuditEvent.new(clock, actor=principal.id, action="record.read",
                           entity="contacts", record_ids=[record_id], fields=["email"])
    with database.transaction(write=True) as conn:
        ...                      # the write the event describes
        append(conn, event)      # same transaction: both commit or neither
    state.audit.notify(database.name)   # optional: chain it now, not at the next tick

Everything else (flush, checkpoints, verify, queries, export, prune, redact, health) is
on `AuditLog` (`State.audit`). The tables (`bastion.audit.tables`) are
registered with the rest in `bastion.schema`.
"""

from bastion.audit.chain import append
from bastion.audit.events import AuditEvent, InvalidAuditEvent
from bastion.audit.service import AuditLog, key_ring

__all__ = ["AuditEvent", "AuditLog", "InvalidAuditEvent", "append", "key_ring"]
