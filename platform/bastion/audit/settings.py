"""Audit settings: the `[audit]` table of bastion.toml and `BASTION_AUDIT_*` variables."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class AuditSettings(BaseModel):
    """Checkpoint cadence and retention of the per-database audit chains.

    The Ed25519 checkpoint signing keys live outside the databases, under
    `signing_key_dir` (default: `<BASTION_HOME>/audit-keys`), one per database.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    signing_key_dir: str | None = None
    checkpoint_interval_seconds: int = Field(default=60, ge=1, le=86_400)
    checkpoint_every_events: int = Field(default=10_000, ge=1, le=10_000_000)
    retention_days: int = Field(default=2557, ge=1, le=36_500)
