"""Data-quality settings: the `[dedup]` table of bastion.toml and `BASTION_DEDUP_*`."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class DedupSettings(BaseModel):
    """How duplicates are merged.

    `merge_undo_days`: how long a merge can be undone. Until then the losers'
    tombstones keep their sealed data (under their own keys) so an undo restores
    them exactly; afterwards housekeeping finalises the merge and shreds those keys.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    merge_undo_days: int = Field(default=30, ge=1, le=365)
