"""Console settings: the `[console]` table of bastion.toml and `BASTION_CONSOLE_*`."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class ConsoleSettings(BaseModel):
    """How console sessions behave.

    `cookie_secure`: mark the session cookie `Secure` (sent over HTTPS only). Turning
    it off is refused in production mode, and even then only answers to a client on
    a loopback address (127.0.0.0/8, ::1) get a cookie without it: the setting exists
    so a developer can use the console over plain http on their own machine.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    # A session ends after this long without a request ...
    idle_minutes: int = Field(default=30, ge=1, le=24 * 60)
    # ... and this long after login whatever happens (never past the token's expiry).
    lifetime_hours: int = Field(default=12, ge=1, le=24 * 30)
    cookie_secure: bool = True
    # Rows per page of the lists (the services' keyset pages).
    page_size: int = Field(default=25, ge=5, le=200)
