"""Audit settings: the `[audit]` table of bastion.toml and `BASTION_AUDIT_*` variables."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class AuditSettings(BaseModel):
    """Checkpoint cadence, sequencer pace and retention of the per-database audit chains.

    The Ed25519 checkpoint signing keys live outside the databases, under
    `signing_key_dir` (default: `<BASTION_HOME>/audit-keys`), one per database.
    `origin` prefixes every chain's name in signed checkpoints
    (`<origin>/<database>`); make it unique per deployment (e.g. your domain) so a
    third party keeping checkpoints of several deployments can tell them apart.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    signing_key_dir: str | None = None
    checkpoint_interval_seconds: int = Field(default=60, ge=1, le=86_400)
    checkpoint_every_events: int = Field(default=10_000, ge=1, le=10_000_000)
    retention_days: int = Field(default=2557, ge=1, le=36_500)
    # How often each process's background sequencer looks for pending events.
    sequencer_interval_seconds: float = Field(default=0.5, ge=0.05, le=60)
    # Events chained per sequencer transaction.
    batch_size: int = Field(default=5000, ge=1, le=100_000)
    # How far an event's occurred_at may fall outside the signed checkpoint times
    # around it before `verify` flags it (a warning: backdating or clock skew).
    clock_tolerance_seconds: int = Field(default=300, ge=1, le=86_400)
    # `AuditLog.health()` is not ok when a pending event has waited longer than this.
    max_backlog_age_seconds: int = Field(default=60, ge=1, le=86_400)
    origin: str = Field(
        default="bastion.local/audit",
        pattern=r"^[a-z0-9][a-z0-9.-]{0,62}(/[a-z0-9._-]{1,63}){0,4}$",
    )
