"""create audit tables: events, pending queue, hash chain, checkpoints, prunes, redactions

Also the append-only guards and, on PostgreSQL, the application role.

Queue (trigger): inserting an event also inserts its `audit_pending` row and its
`audit_record_refs` rows (one per record id in the payload).

Guards (triggers), on SQLite and PostgreSQL alike:
- `audit_chain`, `audit_events`, `audit_record_refs`: no UPDATE and no DELETE,
  except (a) deleting entries at or below the highest signed prune mark in
  `audit_prunes` (retention pruning) and (b) a redaction: an UPDATE of
  `audit_events.payload` alone, and deleting that event's `audit_record_refs`
  rows, once `audit_redactions` holds a row for the event.
- `audit_checkpoints`, `audit_prunes`, `audit_redactions`: no UPDATE, no DELETE.
- PostgreSQL also rejects TRUNCATE on all of them (a statement trigger).
- `audit_pending` is a work queue, not evidence: the sequencer deletes from it.

Role (PostgreSQL): `bastion_app` (NOLOGIN, created once per cluster if missing —
roles are cluster-global, so this is idempotent and tolerates a concurrent
migration of another database). It may SELECT/INSERT/UPDATE/DELETE the other
tables of the schema (now and, through default privileges, tables later
migrations create) but only SELECT and INSERT the audit tables, plus exactly
what the sequencer and redaction need: DELETE on `audit_pending`, UPDATE of
`audit_events.payload` and DELETE on `audit_record_refs` (both still subject to
the triggers above). Production connects as a login role that is a member of
it, e.g. `CREATE ROLE bastion_web LOGIN PASSWORD '…' IN ROLE bastion_app` (or
`SET ROLE bastion_app` on connect), while migrations, `bastion audit prune` and
key administration run as the owner. Triggers and grants stop the application;
only the signed checkpoints catch a database superuser.

Revision ID: d3a1f0c0e503
Revises: decf3690fc0d
Create Date: 2026-11-25 10:31:00
"""

# DDL assembled from this file's own constants, never from input.
# ruff: noqa: S608

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "d3a1f0c0e503"
down_revision: str | None = "decf3690fc0d"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

VERSION_TABLE = "alembic_version_control"
APP_ROLE = "bastion_app"
# Evidence tables: insert-only for the application.
EVIDENCE = (
    "audit_events",
    "audit_record_refs",
    "audit_chain",
    "audit_checkpoints",
    "audit_prunes",
    "audit_redactions",
)
_MARK = "(SELECT coalesce(max(upto_seq), 0) FROM audit_prunes)"
_HEADER = (
    "id",
    "occurred_at",
    "actor",
    "action",
    "entity",
    "decision",
    "policy_version",
    "request_id",
)


def upgrade() -> None:
    op.create_table(
        "audit_chain",
        sa.Column("seq", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("event_id", sa.String(length=30), nullable=False),
        sa.Column("prev_hash", sa.LargeBinary(length=32), nullable=False),
        sa.Column("payload_hash", sa.LargeBinary(length=32), nullable=False),
        sa.Column("hash", sa.LargeBinary(length=32), nullable=False),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_audit_chain")),
        sa.UniqueConstraint("event_id", name=op.f("uq_audit_chain_event_id")),
    )
    op.create_table(
        "audit_checkpoints",
        sa.Column("tree_size", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("origin", sa.String(length=320), nullable=False),
        sa.Column("head_hash", sa.LargeBinary(length=32), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("key_id", sa.String(length=8), nullable=False),
        sa.Column("signature", sa.LargeBinary(length=64), nullable=False),
        sa.PrimaryKeyConstraint("tree_size", name=op.f("pk_audit_checkpoints")),
    )
    op.create_table(
        "audit_events",
        sa.Column("id", sa.String(length=30), nullable=False),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(length=80), nullable=False),
        sa.Column("action", sa.String(length=140), nullable=False),
        sa.Column("entity", sa.String(length=64), nullable=False),
        sa.Column("decision", sa.String(length=5), nullable=False),
        sa.Column("policy_version", sa.String(length=64), nullable=True),
        sa.Column("request_id", sa.String(length=128), nullable=True),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_events")),
    )
    with op.batch_alter_table("audit_events", schema=None) as batch_op:
        batch_op.create_index(
            "ix_audit_events_actor_occurred_at_id", ["actor", "occurred_at", "id"], unique=False
        )
        batch_op.create_index("ix_audit_events_occurred_at_id", ["occurred_at", "id"], unique=False)

    op.create_table(
        "audit_pending",
        sa.Column("event_id", sa.String(length=30), nullable=False),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("event_id", name=op.f("pk_audit_pending")),
    )
    op.create_table(
        "audit_prunes",
        sa.Column("upto_seq", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("origin", sa.String(length=320), nullable=False),
        sa.Column("head_hash", sa.LargeBinary(length=32), nullable=False),
        sa.Column("cutoff", sa.DateTime(timezone=True), nullable=False),
        sa.Column("pruned_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(length=80), nullable=False),
        sa.Column("key_id", sa.String(length=8), nullable=False),
        sa.Column("signature", sa.LargeBinary(length=64), nullable=False),
        sa.PrimaryKeyConstraint("upto_seq", name=op.f("pk_audit_prunes")),
    )
    op.create_table(
        "audit_record_refs",
        sa.Column("record_id", sa.String(length=47), nullable=False),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("event_id", sa.String(length=30), nullable=False),
        sa.PrimaryKeyConstraint(
            "record_id", "occurred_at", "event_id", name=op.f("pk_audit_record_refs")
        ),
    )
    op.create_table(
        "audit_redactions",
        sa.Column("event_id", sa.String(length=30), nullable=False),
        sa.Column("redaction_event_id", sa.String(length=30), nullable=False),
        sa.Column("original_payload_hash", sa.LargeBinary(length=32), nullable=False),
        sa.Column("redacted_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(length=80), nullable=False),
        sa.Column("reason", sa.String(length=200), nullable=False),
        sa.PrimaryKeyConstraint("event_id", name=op.f("pk_audit_redactions")),
    )
    if op.get_bind().dialect.name == "postgresql":
        _postgresql_queue()
        _postgresql_guards()
        _postgresql_role()
    else:
        _sqlite_queue()
        _sqlite_guards()


def _sqlite_queue() -> None:
    # Every inserted event is queued for the sequencer and indexed by record id, by
    # the database itself: `append` is one INSERT, and an event cannot be written
    # without being queued (an event neither queued nor chained is tampering).
    op.execute(
        """
        CREATE TRIGGER audit_events_queue AFTER INSERT ON audit_events
        BEGIN
            INSERT INTO audit_pending (event_id, occurred_at) VALUES (NEW.id, NEW.occurred_at);
            INSERT INTO audit_record_refs (record_id, occurred_at, event_id)
                SELECT value, NEW.occurred_at, NEW.id
                FROM json_each(NEW.payload, '$.record_ids');
        END
        """
    )


def _postgresql_queue() -> None:
    # See _sqlite_queue. Runs with the inserting role's rights (INSERT on both tables).
    op.execute(
        """
        CREATE FUNCTION audit_queue_event() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            INSERT INTO audit_pending (event_id, occurred_at) VALUES (NEW.id, NEW.occurred_at);
            INSERT INTO audit_record_refs (record_id, occurred_at, event_id)
                SELECT value, NEW.occurred_at, NEW.id
                FROM json_array_elements_text(NEW.payload::json -> 'record_ids') AS value;
            RETURN NULL;
        END $$;
        CREATE TRIGGER audit_events_queue AFTER INSERT ON audit_events
            FOR EACH ROW EXECUTE FUNCTION audit_queue_event();
        """
    )


def _sqlite_guards() -> None:
    def reject(name: str, table: str, when: str = "") -> None:
        op.execute(
            f"CREATE TRIGGER {name} BEFORE {table} "
            f"{when} BEGIN SELECT RAISE(ABORT, 'audit tables are append-only'); END"
        )

    prunable = (
        "EXISTS (SELECT 1 FROM audit_chain c WHERE c.event_id = OLD.{column} "
        f"AND c.seq <= {_MARK})"
    )
    redacted = "EXISTS (SELECT 1 FROM audit_redactions r WHERE r.event_id = OLD.{column})"
    same_header = " AND ".join(f"NEW.{c} IS OLD.{c}" for c in _HEADER)
    reject(
        "audit_events_update",
        "UPDATE ON audit_events",
        f"WHEN NOT ({same_header} AND {redacted.format(column='id')})",
    )
    reject(
        "audit_events_delete",
        "DELETE ON audit_events",
        f"WHEN NOT {prunable.format(column='id')}",
    )
    reject("audit_record_refs_update", "UPDATE ON audit_record_refs")
    reject(
        "audit_record_refs_delete",
        "DELETE ON audit_record_refs",
        f"WHEN NOT ({prunable.format(column='event_id')} OR {redacted.format(column='event_id')})",
    )
    reject("audit_chain_update", "UPDATE ON audit_chain")
    reject("audit_chain_delete", "DELETE ON audit_chain", f"WHEN NOT OLD.seq <= {_MARK}")
    for table in ("audit_checkpoints", "audit_prunes", "audit_redactions"):
        reject(f"{table}_update", f"UPDATE ON {table}")
        reject(f"{table}_delete", f"DELETE ON {table}")


def _postgresql_guards() -> None:
    raise_ = "RAISE EXCEPTION 'audit table % is append-only (%)', TG_TABLE_NAME, TG_OP"
    same_header = " AND ".join(f"NEW.{c} IS NOT DISTINCT FROM OLD.{c}" for c in _HEADER)
    op.execute(
        f"""
        CREATE FUNCTION audit_reject() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            {raise_};
        END $$;

        CREATE FUNCTION audit_guard_events() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF TG_OP = 'UPDATE' THEN
                IF {same_header}
                   AND EXISTS (SELECT 1 FROM audit_redactions r WHERE r.event_id = OLD.id) THEN
                    RETURN NEW;
                END IF;
            ELSIF EXISTS (SELECT 1 FROM audit_chain c
                          WHERE c.event_id = OLD.id AND c.seq <= {_MARK}) THEN
                RETURN OLD;
            END IF;
            {raise_};
        END $$;

        CREATE FUNCTION audit_guard_record_refs() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF TG_OP = 'DELETE' AND (
                EXISTS (SELECT 1 FROM audit_chain c
                        WHERE c.event_id = OLD.event_id AND c.seq <= {_MARK})
                OR EXISTS (SELECT 1 FROM audit_redactions r WHERE r.event_id = OLD.event_id)
            ) THEN
                RETURN OLD;
            END IF;
            {raise_};
        END $$;

        CREATE FUNCTION audit_guard_chain() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF TG_OP = 'DELETE' AND OLD.seq <= {_MARK} THEN
                RETURN OLD;
            END IF;
            {raise_};
        END $$;
        """
    )
    guards = {
        "audit_events": "audit_guard_events",
        "audit_record_refs": "audit_guard_record_refs",
        "audit_chain": "audit_guard_chain",
        "audit_checkpoints": "audit_reject",
        "audit_prunes": "audit_reject",
        "audit_redactions": "audit_reject",
    }
    for table, function in guards.items():
        op.execute(
            f"CREATE TRIGGER {table}_guard BEFORE UPDATE OR DELETE ON {table} "
            f"FOR EACH ROW EXECUTE FUNCTION {function}()"
        )
        op.execute(
            f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table} "
            "FOR EACH STATEMENT EXECUTE FUNCTION audit_reject()"
        )


def _postgresql_role() -> None:
    op.execute(
        f"""
        DO $$
        BEGIN
            IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = '{APP_ROLE}') THEN
                BEGIN
                    CREATE ROLE {APP_ROLE} NOLOGIN;
                EXCEPTION WHEN duplicate_object OR unique_violation THEN
                    NULL;  -- created meanwhile by the migration of another database
                END;
            END IF;
        END $$;
        """
    )
    evidence = ", ".join(EVIDENCE)
    for statement in (
        f"GRANT USAGE ON SCHEMA public TO {APP_ROLE}",
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {APP_ROLE}",
        f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {APP_ROLE}",
        "ALTER DEFAULT PRIVILEGES IN SCHEMA public "
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO {APP_ROLE}",
        f"ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT USAGE, SELECT ON SEQUENCES TO {APP_ROLE}",
        f"REVOKE ALL ON {VERSION_TABLE} FROM {APP_ROLE}",
        f"GRANT SELECT ON {VERSION_TABLE} TO {APP_ROLE}",
        f"REVOKE ALL ON {evidence} FROM {APP_ROLE}",
        f"GRANT SELECT, INSERT ON {evidence} TO {APP_ROLE}",
        # Redaction only; the triggers still demand a recorded redaction.
        f"GRANT UPDATE (payload) ON audit_events TO {APP_ROLE}",
        f"GRANT DELETE ON audit_record_refs TO {APP_ROLE}",
        f"REVOKE ALL ON audit_pending FROM {APP_ROLE}",
        f"GRANT SELECT, INSERT, DELETE ON audit_pending TO {APP_ROLE}",
    ):
        op.execute(statement)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS audit_events_queue ON audit_events")
        for table in (*EVIDENCE, "audit_pending"):
            op.execute(f"DROP TRIGGER IF EXISTS {table}_guard ON {table}")
            op.execute(f"DROP TRIGGER IF EXISTS {table}_no_truncate ON {table}")
        for function in (
            "audit_queue_event",
            "audit_reject",
            "audit_guard_events",
            "audit_guard_record_refs",
            "audit_guard_chain",
        ):
            op.execute(f"DROP FUNCTION IF EXISTS {function}()")
        # The role is cluster-wide and may serve other databases: keep it, but take
        # back what this database granted it.
        op.execute(
            f"""
            DO $$
            BEGIN
                IF EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = '{APP_ROLE}') THEN
                    ALTER DEFAULT PRIVILEGES IN SCHEMA public
                        REVOKE SELECT, INSERT, UPDATE, DELETE ON TABLES FROM {APP_ROLE};
                    ALTER DEFAULT PRIVILEGES IN SCHEMA public
                        REVOKE USAGE, SELECT ON SEQUENCES FROM {APP_ROLE};
                    REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {APP_ROLE};
                    REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM {APP_ROLE};
                    REVOKE USAGE ON SCHEMA public FROM {APP_ROLE};
                END IF;
            END $$;
            """
        )
    else:
        op.execute("DROP TRIGGER IF EXISTS audit_events_queue")
        for table in EVIDENCE:
            for operation in ("update", "delete"):
                op.execute(f"DROP TRIGGER IF EXISTS {table}_{operation}")
    op.drop_table("audit_redactions")
    op.drop_table("audit_record_refs")
    op.drop_table("audit_prunes")
    op.drop_table("audit_pending")
    with op.batch_alter_table("audit_events", schema=None) as batch_op:
        batch_op.drop_index("ix_audit_events_occurred_at_id")
        batch_op.drop_index("ix_audit_events_actor_occurred_at_id")

    op.drop_table("audit_events")
    op.drop_table("audit_checkpoints")
    op.drop_table("audit_chain")
