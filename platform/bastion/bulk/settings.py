"""Import settings: the `[imports]` table of bastion.toml and `BASTION_IMPORTS_*`."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class ImportSettings(BaseModel):
    """How CSV imports run.

    `batch_size`: rows per transaction. Each batch commits whole (its records, their
    keys, its report lines and one audit event) or not at all, and is the unit a
    resumed import restarts from. `max_file_bytes`: the largest CSV `POST /v1/imports`
    accepts (the CLI reads files of any size). `helper_process`: prepare the rows of
    files of at least `helper_min_bytes` (coercion, validation, policy checks) in a
    helper process, one batch ahead of the batch being written (`bulk.preparation`);
    a smaller file is done before the helper would have started.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    # At most 500: one audit event names a batch's records (audit.events.MAX_RECORD_IDS).
    batch_size: int = Field(default=500, ge=1, le=500)
    max_file_bytes: int = Field(default=256 * 1_048_576, ge=1024, le=4 * 1024 * 1_048_576)
    helper_process: bool = True
    helper_min_bytes: int = Field(default=1_048_576, ge=0)
