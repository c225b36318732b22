"""Automation settings: `[automation]` and `[webhooks]` in bastion.toml, and the
`BASTION_AUTOMATION_*` and `BASTION_WEBHOOKS_*` variables."""

from __future__ import annotations

import ipaddress
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator


class AutomationSettings(BaseModel):
    """Where the rules are and how automation jobs run.

    `workflows` and `scoring`: directories of YAML files (`workflows/*.yaml`,
    `scoring/*.yaml`); one that does not exist means no rules (or no scoring model).
    `max_chain_depth`: how many automated changes may follow from one change before
    rules stop reacting (a change made by a rule triggers other rules at depth + 1;
    past the bound they are recorded as suppressed, not run). `max_events_per_batch`:
    the largest batch `POST /v1/events` takes (more is 413).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    workflows: Path = Path("workflows")
    scoring: Path = Path("scoring")
    max_chain_depth: int = Field(default=3, ge=1, le=10)
    lease_seconds: int = Field(default=120, ge=10, le=3600)
    batch_size: int = Field(default=100, ge=1, le=1000)
    max_attempts: int = Field(default=5, ge=1, le=20)
    retry_base_seconds: float = Field(default=10, ge=0.1, le=3600)
    max_events_per_batch: int = Field(default=500, ge=1, le=500)
    # Finished automation events and their runs are kept this long (the run record).
    keep_days: int = Field(default=30, ge=1, le=3650)


class WebhookSettings(BaseModel):
    """How webhooks are delivered.

    Deliveries go only to public addresses: a URL whose host is (or resolves to) a
    loopback, private, link-local, multicast or reserved address is refused, unless
    the address lies in `allow_networks` (CIDRs, e.g. `10.20.0.0/16` for an internal
    receiver; tests use `127.0.0.1/32`). `https_only`: refuse `http://` endpoints —
    unset means in production mode only. A failed delivery is retried after
    `retry_base_seconds`, then twice as long each time up to `retry_cap_seconds`, and
    dead-lettered after `max_attempts` attempts.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    allow_networks: tuple[str, ...] = ()
    https_only: bool | None = None
    connect_timeout_seconds: float = Field(default=3, gt=0, le=30)
    timeout_seconds: float = Field(default=10, gt=0, le=60)
    max_attempts: int = Field(default=8, ge=1, le=30)
    retry_base_seconds: float = Field(default=30, ge=0.1, le=86_400)
    retry_cap_seconds: float = Field(default=6 * 3600, ge=1, le=7 * 86_400)
    batch_size: int = Field(default=50, ge=1, le=1000)

    @field_validator("allow_networks", mode="before")
    @classmethod
    def _networks(cls, value: object) -> object:
        if isinstance(value, str):  # from BASTION_WEBHOOKS_ALLOW_NETWORKS: comma-separated
            value = [part.strip() for part in value.split(",") if part.strip()]
        if isinstance(value, list | tuple):
            for item in value:
                try:
                    ipaddress.ip_network(str(item), strict=False)
                except ValueError:
                    raise ValueError("each entry must be a network in CIDR form") from None
        return value

    def networks(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        return tuple(ipaddress.ip_network(item, strict=False) for item in self.allow_networks)
