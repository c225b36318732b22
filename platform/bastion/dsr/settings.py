"""DSR settings: the `[dsr]` table of bastion.toml and `BASTION_DSR_*` variables."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class DsrSettings(BaseModel):
    """How data subjects' requests run.

    `in_process`: run jobs in the serving process (the embedded default does, since
    SQLite has one writer anyway); on PostgreSQL run `bastion worker` processes
    instead (any number; they claim jobs with FOR UPDATE SKIP LOCKED). Unset means:
    in process exactly when every database is SQLite.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    in_process: bool | None = None
    package_ttl_hours: int = Field(default=72, ge=1, le=24 * 90)
    due_soon_days: int = Field(default=7, ge=1, le=90)
    lease_seconds: int = Field(default=300, ge=10, le=86_400)
    poll_seconds: float = Field(default=1.0, ge=0.05, le=3600)
