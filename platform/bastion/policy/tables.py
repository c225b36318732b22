"""Control database tables: every policy version loaded, which one is active, and
every change (who, when, old -> new, the diff). Policies are not personal data."""

from __future__ import annotations

from sqlalchemy import Column, ForeignKey, Integer, String, Table, Text

from bastion.principals.tables import control_metadata
from bastion.sqltypes import UTCDateTime

policy_versions = Table(
    "policy_versions",
    control_metadata,
    Column("version", String(64), primary_key=True),
    Column("model_text", Text, nullable=False),
    Column("policy_text", Text, nullable=False),
    Column("origin", String(500), nullable=False),
    Column("recorded_at", UTCDateTime(), nullable=False),
    Column("recorded_by", String(200), nullable=False),
)

# One row (id = 1): the version every worker should be running.
policy_active = Table(
    "policy_active",
    control_metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("version", String(64), ForeignKey("policy_versions.version"), nullable=False),
    Column("changed_at", UTCDateTime(), nullable=False),
)

policy_changes = Table(
    "policy_changes",
    control_metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("changed_at", UTCDateTime(), nullable=False, index=True),
    Column("actor", String(200), nullable=False),
    Column("old_version", String(64), nullable=True),
    Column("new_version", String(64), ForeignKey("policy_versions.version"), nullable=False),
    Column("reason", String(500), nullable=False),
    Column("diff", Text, nullable=False),
)
