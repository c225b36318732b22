"""Region table of opportunity stage history: when each deal entered and left each
stage, written by the record pipeline with the change that moved it. Stage velocity
and the sales cycle are computed from it in SQL."""

from __future__ import annotations

from sqlalchemy import Column, ForeignKey, Integer, PrimaryKeyConstraint, String, Table

from bastion.crm.tables import region_metadata
from bastion.residency.ids import ID_MAX_LENGTH
from bastion.sqltypes import UTCDateTime

opportunity_stages = Table(
    "opportunity_stages",
    region_metadata,
    Column(
        "opportunity_id",
        String(ID_MAX_LENGTH),
        ForeignKey("opportunities.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("seq", Integer, nullable=False),  # 1, 2, ... per opportunity
    Column("region", String(16), nullable=False),
    Column("stage", String(16), nullable=False, index=True),
    Column("entered_at", UTCDateTime(), nullable=False),
    Column("left_at", UTCDateTime(), nullable=True),
    PrimaryKeyConstraint("opportunity_id", "seq"),
)
