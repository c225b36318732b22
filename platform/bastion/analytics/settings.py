"""Analytics settings: the `[analytics]` table of bastion.toml and `BASTION_ANALYTICS_*`."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class AnalyticsSettings(BaseModel):
    """How pipeline figures are protected for callers who may not list the deals.

    `min_group_size` (k): a caller who sees figures only through the `analytics read`
    grant never sees a group of fewer than k deals, so no figure singles out a deal.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    min_group_size: int = Field(default=5, ge=1, le=1000)
