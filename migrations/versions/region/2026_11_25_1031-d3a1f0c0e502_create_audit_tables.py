"""create audit tables: events, pending queue, hash chain, checkpoints, prunes, redactions

Also the append-only guards and, on PostgreSQL, the application role. The body is
`bastion.audit.ddl`, shared with the control kind's audit migration (d3a1f0c0e503); its
docstring describes the queue and guard triggers, the role's grants and why.

In short: the application role `bastion_app` may append events and run the
sequencer (INSERT on `audit_events`, `audit_chain`, `audit_checkpoints`; DELETE
on `audit_pending`); the queue trigger (SECURITY DEFINER) fills `audit_pending`
and `audit_record_refs`; pruning runs as the owner. Erasure must redact from the
application, so instead of INSERT on `audit_redactions` (which would let it
rewrite any payload to anything) it gets EXECUTE on `audit_redact_event`, a
SECURITY DEFINER function that accepts only a pseudonymising redaction announced
by an already chained `audit.redact` event naming the event and both payload
hashes; `verify` demands that event independently. Every trigger function pins
its `search_path` and schema-qualifies tables, and TEMPORARY on the database is
revoked from PUBLIC, so temporary tables cannot shadow the guards' tables.

Revision ID: d3a1f0c0e502
Revises: d3a1f0c0e501
Create Date: 2026-11-25 10:31:00
"""

from collections.abc import Sequence

from bastion.audit import ddl

revision: str = "d3a1f0c0e502"
down_revision: str | None = "d3a1f0c0e501"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

VERSION_TABLE = "alembic_version_region"


def upgrade() -> None:
    ddl.upgrade(VERSION_TABLE)


def downgrade() -> None:
    ddl.downgrade()
