"""Region tables of automation: its queue, timers and run record; activity events and
lead scores; webhook subscriptions and their deliveries.

Everything here names a data subject or a record, so it lives in that record's
region, never in the control database. Nothing holds a personal value in the clear:
an event's properties are sealed under the subject's data key, a subscription's
secret under the subscription's own key; `previous` keeps the old values of changed
fields only for fields that are neither personal nor encrypted (a status, a score),
and run records name rules, conditions (as the rule file writes them), fields and
ids.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    Index,
    Integer,
    LargeBinary,
    PrimaryKeyConstraint,
    String,
    Table,
    UniqueConstraint,
)
from sqlalchemy.dialects.postgresql import JSONB

from bastion.crm.tables import region_metadata
from bastion.residency.ids import ID_MAX_LENGTH
from bastion.sqltypes import UTCDateTime

_JSON = JSON().with_variant(JSONB(), "postgresql")
_RULE = 64  # rule ids: `[a-z][a-z0-9-]*`, at most 64 characters
_TOPIC = 80


def _lease() -> tuple[Column[Any], Column[Any]]:
    return (
        Column("lease_owner", String(64), nullable=True),
        Column("lease_expires_at", UTCDateTime(), nullable=True),
    )


# The queue: one row per change, batch of activity events or timer that some rule,
# scoring model or webhook subscription cares about, written in the transaction of
# the change itself (an outbox: the change and its event commit together or not at
# all). Its id is the idempotency key of everything done about it.
automation_events = Table(
    "automation_events",
    region_metadata,
    Column("id", String(ID_MAX_LENGTH), nullable=False),
    Column("region", String(16), nullable=False),
    # created | updated | deleted | activity | timer
    Column("kind", String(16), nullable=False),
    Column("entity", String(32), nullable=False),
    Column("record_id", String(ID_MAX_LENGTH), nullable=False, index=True),
    # The fields the change wrote (names).
    Column("fields", _JSON, nullable=False),
    # Old values of changed fields that are neither personal nor encrypted ({} else).
    Column("previous", _JSON, nullable=False),
    # For `activity`: the activity events (ids, their types) this row stands for.
    Column("activities", _JSON, nullable=True),
    # For `timer`: the rule whose timer came due.
    Column("rule_id", String(_RULE), nullable=True),
    # What made the change: a rule id, `scoring`, or null for a person or a system.
    Column("cause", String(_RULE), nullable=True),
    # How many automated changes led to this one (0: a person's change).
    Column("depth", Integer, nullable=False),
    Column("actor", String(64), nullable=False),
    # Whether a webhook subscription listened to the change's topic when it was made
    # (the engine then queues deliveries; else it skips that step).
    Column("notify", Boolean, nullable=False),
    # pending | done | failed
    Column("status", String(16), nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("next_attempt_at", UTCDateTime(), nullable=False),
    *_lease(),
    Column("error", String(200), nullable=True),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("finished_at", UTCDateTime(), nullable=True),
    PrimaryKeyConstraint("id"),
    Index("ix_automation_events_status_next_attempt_at", "status", "next_attempt_at"),
)

# Time triggers: a due-at row written when the record is created (or, for rules timed
# from the last change, moved on each change), claimed when due. Never a scan of the
# records themselves.
automation_timers = Table(
    "automation_timers",
    region_metadata,
    Column("id", String(ID_MAX_LENGTH), nullable=False),
    Column("region", String(16), nullable=False),
    # A workflow rule id, or `scoring` for a decayed score's next recomputation.
    Column("rule_id", String(_RULE), nullable=False),
    Column("entity", String(32), nullable=False),
    Column("record_id", String(ID_MAX_LENGTH), nullable=False, index=True),
    Column("due_at", UTCDateTime(), nullable=False, index=True),
    *_lease(),
    Column("created_at", UTCDateTime(), nullable=False),
    PrimaryKeyConstraint("id"),
    UniqueConstraint("rule_id", "record_id"),
)

# What each rule decided about each triggering event, once: the unique (trigger,
# rule) pair is what makes a rule fire exactly once per event, whichever worker or
# how many workers get to it. Rules decide on the record as it is when the event is
# processed, so two events may find it in the same state: `fired_version` keeps the
# rule from firing twice on one state.
automation_runs = Table(
    "automation_runs",
    region_metadata,
    Column("id", String(ID_MAX_LENGTH), nullable=False),
    Column("region", String(16), nullable=False),
    # The automation event, or the activity event, the rule answered.
    Column("trigger_id", String(ID_MAX_LENGTH), nullable=False),
    Column("event_id", String(ID_MAX_LENGTH), nullable=False, index=True),
    Column("rule_id", String(_RULE), nullable=False, index=True),
    Column("entity", String(32), nullable=False),
    Column("record_id", String(ID_MAX_LENGTH), nullable=False, index=True),
    # fired | not_matched | suppressed | skipped
    Column("outcome", String(16), nullable=False),
    # Why: each condition with whether it held, or a code (own-change, chain-limit, …).
    Column("reasons", _JSON, nullable=False),
    # The actions decided on, fully resolved (the owner round-robin chose, …).
    Column("plan", _JSON, nullable=False),
    Column("depth", Integer, nullable=False),
    # For a fired rule on a record change: the record's version it fired on. Unique
    # with the rule and record (nulls never collide), so two events that find the
    # record in the same state make the rule fire once.
    Column("fired_version", Integer, nullable=True),
    Column("decided_at", UTCDateTime(), nullable=False),
    PrimaryKeyConstraint("id"),
    UniqueConstraint("trigger_id", "rule_id"),
    UniqueConstraint("rule_id", "record_id", "fired_version"),
)

# One row per action of a fired rule, written in the transaction of the action's own
# write: an action is applied once, even when its run is resumed by another worker.
automation_effects = Table(
    "automation_effects",
    region_metadata,
    Column("run_id", String(ID_MAX_LENGTH), nullable=False),
    Column("action", Integer, nullable=False),
    # done | failed | skipped
    Column("status", String(16), nullable=False),
    Column("record_id", String(ID_MAX_LENGTH), nullable=True),
    Column("error", String(200), nullable=True),
    Column("applied_at", UTCDateTime(), nullable=False),
    PrimaryKeyConstraint("run_id", "action"),
)

# Round-robin assignment: where each rule's rotation over each pool of owners stands.
automation_counters = Table(
    "automation_counters",
    region_metadata,
    Column("rule_id", String(_RULE), nullable=False),
    Column("pool", String(_TOPIC), nullable=False),
    Column("next", Integer, nullable=False),
    PrimaryKeyConstraint("rule_id", "pool"),
)

# Leads whose score needs computing again (new events, a changed field, decay): one
# row per lead however many reasons pile up, so a burst of events costs one score.
automation_rescores = Table(
    "automation_rescores",
    region_metadata,
    Column("record_id", String(ID_MAX_LENGTH), nullable=False),
    Column("region", String(16), nullable=False),
    Column("requested_at", UTCDateTime(), nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("next_attempt_at", UTCDateTime(), nullable=False, index=True),
    *_lease(),
    PrimaryKeyConstraint("record_id"),
)

# The behaviour timeline of leads and contacts (`POST /v1/events`).
activity_events = Table(
    "activity_events",
    region_metadata,
    Column("id", String(ID_MAX_LENGTH), nullable=False),
    Column("region", String(16), nullable=False),
    # The sender's own id for the event: what makes a replayed batch change nothing.
    Column("event_id", String(64), nullable=False, unique=True),
    Column("subject_id", String(ID_MAX_LENGTH), nullable=False),
    Column("type", String(32), nullable=False),
    Column("occurred_at", UTCDateTime(), nullable=False),
    Column("received_at", UTCDateTime(), nullable=False),
    # Sealed under the subject's data key (an URL, a form's fields: personal data).
    Column("properties", LargeBinary(), nullable=True),
    # Keyed hash of the event as sent: the same id with other content is refused.
    Column("fingerprint", LargeBinary(32), nullable=False),
    Column("source", String(64), nullable=False),
    PrimaryKeyConstraint("id"),
    Index("ix_activity_events_subject_id_occurred_at", "subject_id", "occurred_at"),
)

# Every score a lead was given, with its breakdown (rule ids and points, no values).
lead_scores = Table(
    "lead_scores",
    region_metadata,
    Column("id", String(ID_MAX_LENGTH), nullable=False),
    Column("region", String(16), nullable=False),
    Column("lead_id", String(ID_MAX_LENGTH), nullable=False),
    Column("model", String(_RULE), nullable=False),
    Column("score", Integer, nullable=False),
    Column("previous", Integer, nullable=True),
    Column("breakdown", _JSON, nullable=False),
    Column("computed_at", UTCDateTime(), nullable=False),
    PrimaryKeyConstraint("id"),
    Index("ix_lead_scores_lead_id_computed_at", "lead_id", "computed_at"),
)

webhook_subscriptions = Table(
    "webhook_subscriptions",
    region_metadata,
    Column("id", String(ID_MAX_LENGTH), nullable=False),
    Column("region", String(16), nullable=False),
    # Whose field mask and row scope every payload is rendered through.
    Column("owner_id", String(64), nullable=False),
    Column("url", String(2048), nullable=False),
    # Where the receiver says it runs; another region than this one gets ids only.
    Column("endpoint_region", String(16), nullable=False),
    # full | ids
    Column("payload", String(8), nullable=False),
    Column("description", String(200), nullable=True),
    # Sealed under the subscription's own key; null once deleted (and the key shredded).
    Column("secret", LargeBinary(), nullable=True),
    # active | deleted
    Column("status", String(16), nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("deleted_at", UTCDateTime(), nullable=True),
    PrimaryKeyConstraint("id"),
)

# What each subscription listens to, one row per topic (indexed: the change feed asks
# "does anyone listen to leads.updated here?" inside the write's transaction).
webhook_topics = Table(
    "webhook_topics",
    region_metadata,
    Column("subscription_id", String(ID_MAX_LENGTH), nullable=False),
    Column("topic", String(_TOPIC), nullable=False, index=True),
    PrimaryKeyConstraint("subscription_id", "topic"),
)

webhook_deliveries = Table(
    "webhook_deliveries",
    region_metadata,
    # Also the `webhook-id` header: the same on every retry and replay.
    Column("id", String(ID_MAX_LENGTH), nullable=False),
    Column("region", String(16), nullable=False),
    Column("subscription_id", String(ID_MAX_LENGTH), nullable=False, index=True),
    Column("source_id", String(ID_MAX_LENGTH), nullable=False),
    Column("topic", String(_TOPIC), nullable=False),
    Column("entity", String(32), nullable=False),
    Column("record_id", String(ID_MAX_LENGTH), nullable=False, index=True),
    Column("rule_id", String(_RULE), nullable=True),
    Column("fields", _JSON, nullable=False),
    Column("occurred_at", UTCDateTime(), nullable=False),
    # pending | delivered | dead | cancelled
    Column("status", String(16), nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("replays", Integer, nullable=False),
    Column("next_attempt_at", UTCDateTime(), nullable=False),
    *_lease(),
    Column("last_status", Integer, nullable=True),
    Column("last_error", String(64), nullable=True),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("delivered_at", UTCDateTime(), nullable=True),
    PrimaryKeyConstraint("id"),
    UniqueConstraint("subscription_id", "source_id"),
    Index("ix_webhook_deliveries_status_next_attempt_at", "status", "next_attempt_at"),
)

# The delivery log: every attempt, its answer (status code, never the body) and when
# the next one is due.
webhook_attempts = Table(
    "webhook_attempts",
    region_metadata,
    Column("delivery_id", String(ID_MAX_LENGTH), nullable=False),
    Column("number", Integer, nullable=False),
    Column("attempted_at", UTCDateTime(), nullable=False),
    Column("status_code", Integer, nullable=True),
    Column("error", String(64), nullable=True),
    Column("duration_ms", Integer, nullable=False),
    Column("next_attempt_at", UTCDateTime(), nullable=True),
    PrimaryKeyConstraint("delivery_id", "number"),
)
