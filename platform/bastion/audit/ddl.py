"""The audit tables' DDL, run by both audit migrations (region d3a1f0c0e502, control d3a1f0c0e503).

Every database holds one chain in the same tables, so both migrations call
`upgrade(version_table)` / `downgrade()` here and a fix lands once. This is
migration code: it runs inside Alembic (`alembic.op`), uses plain column types
(see `bastion.migrate.render_item`) and never the application's `Table`s. Once
released, what it does is history: change it only together with a new migration.

**Queue** (trigger): inserting an event also inserts its `audit_pending` row and
its `audit_record_refs` rows (one per record id of the payload). On PostgreSQL the
trigger function is SECURITY DEFINER, so the application role needs no INSERT on
either table and cannot write a fake index row or queue entry itself.

**Guards** (triggers), on SQLite and PostgreSQL:

- `audit_chain`: no UPDATE; DELETE only at or below the highest prune mark
  (`audit_prunes.upto_seq`).
- `audit_events`: DELETE as for the chain. UPDATE only of the payload (the header
  columns unchanged), only once an `audit_redactions` row exists for the event,
  and — PostgreSQL — only from the payload whose SHA-256 the row records as the
  original to the one it records as redacted: once, and to exactly that payload.
  SQLite has no SHA-256 in SQL: there the trigger checks the redacted shape (same
  field names and reason, no client address or details, record ids only kept or
  replaced by `psn_` pseudonyms) and `verify` enforces the hashes.
- `audit_record_refs`: no UPDATE; DELETE for pruned events, and for a redacted
  event only of record ids its (redacted) payload no longer names.
- `audit_checkpoints`, `audit_prunes`, `audit_redactions`: no UPDATE, no DELETE.
- PostgreSQL also rejects TRUNCATE on all of them (a statement trigger).
- `audit_pending` is a work queue, not evidence: the sequencer deletes from it.

Every PostgreSQL function pins `search_path = pg_catalog, public, pg_temp` and
names tables as `public.…`: PostgreSQL otherwise searches the session's temporary
schema *first*, and a role that may create temporary tables could shadow
`audit_prunes` or `audit_redactions` with its own and walk through the guards.
For the same reason the migration revokes TEMPORARY on the database from PUBLIC
and the application role (Bastion never uses temporary tables).

**Redaction** (PostgreSQL): `audit_redact_event(redaction_event_id, payload)`, a
SECURITY DEFINER function, is the only way the application role changes an
event. Erasure needs redaction from the application (the DSR worker runs as it),
so the choice was between this function and granting INSERT on
`audit_redactions`; the grant would let the application rewrite a payload to
anything at all, while the function checks, against rows the database holds,
what a redaction may be: the `audit.redact` event it is given is already chained,
unmodified, and names the target event and both payload hashes in its details;
the target is chained, unmodified and not itself an `audit.redact` event; the
new payload keeps the target's field names and reason, drops its client address
and details, and only keeps or pseudonymises (`psn_…`) record ids. It then
records the redaction, replaces the payload and re-indexes the record ids.
`verify` independently demands that chained event for every redacted payload.

**Role** (PostgreSQL): `bastion_app` (NOLOGIN, created once per cluster if
missing). It may SELECT/INSERT/UPDATE/DELETE the other tables of the schema (now
and, through default privileges, tables later migrations create). On the audit
tables it has SELECT, and only what the running application needs: INSERT on
`audit_events` (`append`), `audit_chain` and `audit_checkpoints` (the
sequencer), DELETE on `audit_pending` (the sequencer) and EXECUTE on
`audit_redact_event`. Pruning (`bastion audit prune`) runs as the owner.
Production connects as a login role that is a member of it, e.g. `CREATE ROLE
bastion_web LOGIN PASSWORD '…' IN ROLE bastion_app` (or `SET ROLE bastion_app` on
connect). Triggers and grants stop the application; only the signed checkpoints
catch a database superuser.
"""

# DDL assembled from this module's own constants, never from input.
# ruff: noqa: S608

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

APP_ROLE = "bastion_app"
# Evidence tables: see the module docstring for what may change them.
EVIDENCE = (
    "audit_events",
    "audit_record_refs",
    "audit_chain",
    "audit_checkpoints",
    "audit_prunes",
    "audit_redactions",
)
# Must match `bastion.audit.retention.PSEUDONYM_RE` (a test checks).
PSEUDONYM_PATTERN = "psn_[0-9a-hjkmnp-tv-z]{26}"
SEARCH_PATH = "SET search_path = pg_catalog, public, pg_temp"
FUNCTIONS = (
    "audit_queue_event()",
    "audit_reject()",
    "audit_guard_events()",
    "audit_guard_record_refs()",
    "audit_guard_chain()",
    "audit_redact_event(text, text)",
)
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


def upgrade(version_table: str) -> None:
    """Create the audit tables, their triggers and (PostgreSQL) the role's grants."""
    _create_tables()
    if op.get_bind().dialect.name == "postgresql":
        _postgresql_queue()
        _postgresql_guards()
        _postgresql_redaction()
        _postgresql_role(version_table)
    else:
        _sqlite_queue()
        _sqlite_guards()


def _create_tables() -> None:
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
        sa.Column("redacted_payload_hash", sa.LargeBinary(length=32), nullable=False),
        sa.Column("redacted_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(length=80), nullable=False),
        sa.Column("reason", sa.String(length=200), nullable=False),
        sa.PrimaryKeyConstraint("event_id", name=op.f("pk_audit_redactions")),
    )


# -- SQLite ---------------------------------------------------------------------------
# No roles, no SECURITY DEFINER, no SHA-256: whoever can write the file can drop
# the triggers, so these stop mistakes and the application's own code; `verify`
# is what catches a determined writer.


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


def _sqlite_mark() -> str:
    return "(SELECT coalesce(max(p.upto_seq), 0) FROM audit_prunes p)"


def _sqlite_guards() -> None:
    def reject(name: str, table: str, when: str = "") -> None:
        op.execute(
            f"CREATE TRIGGER {name} BEFORE {table} "
            f"{when} BEGIN SELECT RAISE(ABORT, 'audit tables are append-only'); END"
        )

    prunable = (
        "EXISTS (SELECT 1 FROM audit_chain c WHERE c.event_id = OLD.{column} "
        f"AND c.seq <= {_sqlite_mark()})"
    )
    redacted = "EXISTS (SELECT 1 FROM audit_redactions r WHERE r.event_id = OLD.{column})"
    same_header = " AND ".join(f"NEW.{c} IS OLD.{c}" for c in _HEADER)
    # The shape of a redacted payload (retention.redact); the hashes are verify's job.
    pseudonym = (
        "(n.value GLOB 'psn_*' AND length(n.value) = 30 "
        "AND substr(n.value, 5) NOT GLOB '*[^0-9a-hjkmnp-tv-z]*')"
    )
    redacted_shape = (
        "json_valid(NEW.payload)"
        " AND json_type(NEW.payload, '$.client_address') = 'null'"
        " AND json_extract(NEW.payload, '$.details') = '{}'"
        " AND json_extract(NEW.payload, '$.fields') IS json_extract(OLD.payload, '$.fields')"
        " AND json_extract(NEW.payload, '$.reason') IS json_extract(OLD.payload, '$.reason')"
        " AND NOT EXISTS (SELECT 1 FROM json_each(NEW.payload, '$.record_ids') n"
        "   WHERE n.value NOT IN (SELECT o.value FROM json_each(OLD.payload, '$.record_ids') o)"
        f"  AND NOT {pseudonym})"
    )
    reject(
        "audit_events_update",
        "UPDATE ON audit_events",
        f"WHEN NOT ({same_header} AND {redacted.format(column='id')} AND {redacted_shape})",
    )
    reject(
        "audit_events_delete",
        "DELETE ON audit_events",
        f"WHEN NOT {prunable.format(column='id')}",
    )
    reject("audit_record_refs_update", "UPDATE ON audit_record_refs")
    no_longer_named = (
        "OLD.record_id NOT IN (SELECT n.value FROM audit_events e, "
        "json_each(e.payload, '$.record_ids') n WHERE e.id = OLD.event_id)"
    )
    reject(
        "audit_record_refs_delete",
        "DELETE ON audit_record_refs",
        f"WHEN NOT ({prunable.format(column='event_id')} "
        f"OR ({redacted.format(column='event_id')} AND {no_longer_named}))",
    )
    reject("audit_chain_update", "UPDATE ON audit_chain")
    reject("audit_chain_delete", "DELETE ON audit_chain", f"WHEN NOT OLD.seq <= {_sqlite_mark()}")
    for table in ("audit_checkpoints", "audit_prunes", "audit_redactions"):
        reject(f"{table}_update", f"UPDATE ON {table}")
        reject(f"{table}_delete", f"DELETE ON {table}")


# -- PostgreSQL ---------------------------------------------------------------------------

_PG_MARK = "(SELECT coalesce(max(p.upto_seq), 0) FROM public.audit_prunes p)"
_PG_RAISE = "RAISE EXCEPTION 'audit table % is append-only (%)', TG_TABLE_NAME, TG_OP"


def _postgresql_queue() -> None:
    # See _sqlite_queue. SECURITY DEFINER: the application role has no INSERT on
    # audit_pending or audit_record_refs, so the index holds only what events say.
    op.execute(
        f"""
        CREATE FUNCTION public.audit_queue_event() RETURNS trigger
        LANGUAGE plpgsql SECURITY DEFINER {SEARCH_PATH} AS $$
        BEGIN
            INSERT INTO public.audit_pending (event_id, occurred_at)
                VALUES (NEW.id, NEW.occurred_at);
            INSERT INTO public.audit_record_refs (record_id, occurred_at, event_id)
                SELECT value, NEW.occurred_at, NEW.id
                FROM json_array_elements_text(NEW.payload::json -> 'record_ids') AS value;
            RETURN NULL;
        END $$;
        CREATE TRIGGER audit_events_queue AFTER INSERT ON public.audit_events
            FOR EACH ROW EXECUTE FUNCTION public.audit_queue_event();
        """
    )


def _postgresql_guards() -> None:
    same_header = " AND ".join(f"NEW.{c} IS NOT DISTINCT FROM OLD.{c}" for c in _HEADER)
    op.execute(
        f"""
        CREATE FUNCTION public.audit_reject() RETURNS trigger
        LANGUAGE plpgsql {SEARCH_PATH} AS $$
        BEGIN
            {_PG_RAISE};
        END $$;

        CREATE FUNCTION public.audit_guard_events() RETURNS trigger
        LANGUAGE plpgsql {SEARCH_PATH} AS $$
        BEGIN
            IF TG_OP = 'UPDATE' THEN
                -- A recorded redaction, applied once: from the original payload to
                -- exactly the redacted one whose hash the redaction recorded.
                IF {same_header}
                   AND EXISTS (
                       SELECT 1 FROM public.audit_redactions r
                       WHERE r.event_id = OLD.id
                         AND r.original_payload_hash = sha256(convert_to(OLD.payload, 'UTF8'))
                         AND r.redacted_payload_hash = sha256(convert_to(NEW.payload, 'UTF8'))
                   ) THEN
                    RETURN NEW;
                END IF;
            ELSIF EXISTS (SELECT 1 FROM public.audit_chain c
                          WHERE c.event_id = OLD.id AND c.seq <= {_PG_MARK}) THEN
                RETURN OLD;
            END IF;
            {_PG_RAISE};
        END $$;

        CREATE FUNCTION public.audit_guard_record_refs() RETURNS trigger
        LANGUAGE plpgsql {SEARCH_PATH} AS $$
        BEGIN
            IF TG_OP = 'DELETE' AND (
                EXISTS (SELECT 1 FROM public.audit_chain c
                        WHERE c.event_id = OLD.event_id AND c.seq <= {_PG_MARK})
                OR (EXISTS (SELECT 1 FROM public.audit_redactions r
                            WHERE r.event_id = OLD.event_id)
                    AND NOT EXISTS (
                        SELECT 1 FROM public.audit_events e,
                            json_array_elements_text(e.payload::json -> 'record_ids') AS v(id)
                        WHERE e.id = OLD.event_id AND v.id = OLD.record_id))
            ) THEN
                RETURN OLD;
            END IF;
            {_PG_RAISE};
        END $$;

        CREATE FUNCTION public.audit_guard_chain() RETURNS trigger
        LANGUAGE plpgsql {SEARCH_PATH} AS $$
        BEGIN
            IF TG_OP = 'DELETE' AND OLD.seq <= {_PG_MARK} THEN
                RETURN OLD;
            END IF;
            {_PG_RAISE};
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
            f"CREATE TRIGGER {table}_guard BEFORE UPDATE OR DELETE ON public.{table} "
            f"FOR EACH ROW EXECUTE FUNCTION public.{function}()"
        )
        op.execute(
            f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON public.{table} "
            "FOR EACH STATEMENT EXECUTE FUNCTION public.audit_reject()"
        )


def _postgresql_redaction() -> None:
    # See "Redaction" in the module docstring. Every check reads rows, not arguments:
    # the target, the actor and the reason come from the chained audit.redact event.
    fail = "RAISE EXCEPTION 'audit redaction refused: %'"
    op.execute(
        f"""
        CREATE FUNCTION public.audit_redact_event(redaction_event_id text, redacted text)
        RETURNS void LANGUAGE plpgsql SECURITY DEFINER {SEARCH_PATH} AS $$
        DECLARE
            redaction record;
            target record;
            details jsonb;
            old_payload jsonb;
            new_payload jsonb;
            redacted_hash bytea := sha256(convert_to(redacted, 'UTF8'));
        BEGIN
            SELECT e.id, e.actor, e.action, e.occurred_at, e.payload, c.seq, c.payload_hash
                INTO redaction
                FROM public.audit_events e JOIN public.audit_chain c ON c.event_id = e.id
                WHERE e.id = redaction_event_id;
            IF NOT FOUND OR redaction.action IS DISTINCT FROM 'audit.redact'
               OR sha256(convert_to(redaction.payload, 'UTF8'))
                  IS DISTINCT FROM redaction.payload_hash THEN
                {fail}, 'not a chained, unmodified audit.redact event';
            END IF;
            IF jsonb_typeof(redaction.payload::jsonb -> 'record_ids') IS DISTINCT FROM 'array'
               OR jsonb_array_length(redaction.payload::jsonb -> 'record_ids') <> 1 THEN
                {fail}, 'the audit.redact event must name exactly one event';
            END IF;
            details := redaction.payload::jsonb -> 'details';
            SELECT e.id, e.action, e.occurred_at, e.payload, c.seq, c.payload_hash INTO target
                FROM public.audit_events e JOIN public.audit_chain c ON c.event_id = e.id
                WHERE e.id = redaction.payload::jsonb -> 'record_ids' ->> 0
                FOR UPDATE OF e;
            IF NOT FOUND OR target.seq >= redaction.seq OR target.action = 'audit.redact'
               OR sha256(convert_to(target.payload, 'UTF8')) IS DISTINCT FROM target.payload_hash
            THEN
                {fail}, 'the named event is not a chained, unmodified, redactable event';
            END IF;
            IF details ->> 'original_sha256' IS DISTINCT FROM encode(target.payload_hash, 'hex')
               OR details ->> 'redacted_sha256' IS DISTINCT FROM encode(redacted_hash, 'hex') THEN
                {fail}, 'the payload hashes differ from those the audit.redact event names';
            END IF;
            old_payload := target.payload::jsonb;
            new_payload := redacted::jsonb;
            IF jsonb_typeof(new_payload) IS DISTINCT FROM 'object'
               OR (SELECT array_agg(k ORDER BY k) FROM jsonb_object_keys(new_payload) AS k)
                   IS DISTINCT FROM ARRAY['client_address', 'details', 'fields', 'reason',
                                          'record_ids']
               OR new_payload -> 'client_address' IS DISTINCT FROM 'null'::jsonb
               OR new_payload -> 'details' IS DISTINCT FROM '{{}}'::jsonb
               OR new_payload -> 'fields' IS DISTINCT FROM old_payload -> 'fields'
               OR new_payload -> 'reason' IS DISTINCT FROM old_payload -> 'reason'
               OR jsonb_typeof(new_payload -> 'record_ids') IS DISTINCT FROM 'array'
               OR EXISTS (
                   SELECT 1 FROM jsonb_array_elements(new_payload -> 'record_ids') AS n(id)
                   WHERE NOT (old_payload -> 'record_ids') @> jsonb_build_array(n.id)
                     AND NOT (jsonb_typeof(n.id) = 'string'
                              AND (n.id #>> '{{}}') ~ '^{PSEUDONYM_PATTERN}$'))
            THEN
                {fail}, 'a redaction only pseudonymises record ids and drops address and details';
            END IF;
            INSERT INTO public.audit_redactions (event_id, redaction_event_id,
                original_payload_hash, redacted_payload_hash, redacted_at, actor, reason)
            VALUES (target.id, redaction.id, target.payload_hash, redacted_hash,
                redaction.occurred_at, redaction.actor,
                coalesce(redaction.payload::jsonb ->> 'reason', ''));
            UPDATE public.audit_events SET payload = redacted WHERE id = target.id;
            DELETE FROM public.audit_record_refs r
                WHERE r.event_id = target.id
                  AND NOT ((new_payload -> 'record_ids') @> jsonb_build_array(r.record_id));
            INSERT INTO public.audit_record_refs (record_id, occurred_at, event_id)
                SELECT DISTINCT n.id, target.occurred_at, target.id
                FROM jsonb_array_elements_text(new_payload -> 'record_ids') AS n(id)
                ON CONFLICT DO NOTHING;
        END $$;
        """
    )


def _postgresql_role(version_table: str) -> None:
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
    audit_tables = ", ".join(f"public.{t}" for t in (*EVIDENCE, "audit_pending"))
    functions = ", ".join(f"public.{f}" for f in FUNCTIONS)
    for statement in (
        f"GRANT USAGE ON SCHEMA public TO {APP_ROLE}",
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {APP_ROLE}",
        f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {APP_ROLE}",
        "ALTER DEFAULT PRIVILEGES IN SCHEMA public "
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO {APP_ROLE}",
        f"ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT USAGE, SELECT ON SEQUENCES TO {APP_ROLE}",
        f"REVOKE ALL ON public.{version_table} FROM {APP_ROLE}",
        f"GRANT SELECT ON public.{version_table} TO {APP_ROLE}",
        f"REVOKE ALL ON {audit_tables} FROM {APP_ROLE}",
        f"GRANT SELECT ON {audit_tables} TO {APP_ROLE}",
        # append (the queue trigger fills audit_pending and audit_record_refs itself)
        f"GRANT INSERT ON public.audit_events TO {APP_ROLE}",
        # the sequencer
        f"GRANT INSERT ON public.audit_chain, public.audit_checkpoints TO {APP_ROLE}",
        f"GRANT DELETE ON public.audit_pending TO {APP_ROLE}",
        # redaction: only through the checking function
        f"REVOKE ALL ON FUNCTION {functions} FROM PUBLIC",
        f"GRANT EXECUTE ON FUNCTION public.audit_redact_event(text, text) TO {APP_ROLE}",
    ):
        op.execute(statement)
    # No temporary tables: they would be searched before `public` by any unqualified
    # name in a session of the role (see the module docstring).
    op.execute(
        f"""
        DO $$
        BEGIN
            EXECUTE format('REVOKE TEMPORARY ON DATABASE %I FROM PUBLIC', current_database());
            EXECUTE format('REVOKE TEMPORARY ON DATABASE %I FROM {APP_ROLE}', current_database());
        END $$;
        """
    )


def downgrade() -> None:
    """Drop what `upgrade` created; on PostgreSQL take back this database's grants."""
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS audit_events_queue ON public.audit_events")
        for table in (*EVIDENCE, "audit_pending"):
            op.execute(f"DROP TRIGGER IF EXISTS {table}_guard ON public.{table}")
            op.execute(f"DROP TRIGGER IF EXISTS {table}_no_truncate ON public.{table}")
        for function in FUNCTIONS:
            op.execute(f"DROP FUNCTION IF EXISTS public.{function}")
        # The role is cluster-wide and may serve other databases: keep it, but take
        # back what this database granted it, and give PUBLIC its TEMPORARY back.
        op.execute(
            f"""
            DO $$
            BEGIN
                EXECUTE format('GRANT TEMPORARY ON DATABASE %I TO PUBLIC', current_database());
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
