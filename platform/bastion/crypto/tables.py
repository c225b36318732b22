"""Key tables of every region database (part of the region schema, `region_metadata`).

Key material is only ever stored *wrapped* by a KEK version of the region's key
provider; the `kek_version` column says which. Every row stores its region,
which is also bound into the wrapping AAD: a row copied to another region's
database neither passes the residency check nor unwraps.
"""

from __future__ import annotations

from sqlalchemy import (
    Column,
    Index,
    Integer,
    LargeBinary,
    PrimaryKeyConstraint,
    String,
    Table,
    UniqueConstraint,
)

from bastion.crm.tables import region_metadata
from bastion.sqltypes import UTCDateTime

KEY_ID_HEX_LENGTH = 32  # 16 random bytes, hex
SUBJECT_ID_MAX_LENGTH = 64

# One row per data encryption key (DEK) of a data subject; a subject's current key
# is its highest version. Deleting a subject's rows is crypto-shredding.
subject_keys = Table(
    "subject_keys",
    region_metadata,
    Column("id", String(KEY_ID_HEX_LENGTH), nullable=False),
    Column("region", String(16), nullable=False),
    Column("subject_id", String(SUBJECT_ID_MAX_LENGTH), nullable=False),
    Column("version", Integer, nullable=False),
    Column("kek_version", Integer, nullable=False),
    Column("wrapped", LargeBinary, nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("rewrapped_at", UTCDateTime(), nullable=True),
    PrimaryKeyConstraint("id"),
    # Also the subject_id index: lookups by subject use its leading column. Two
    # transactions creating a subject's first key at once collide here, and the
    # loser reads the winner's key back.
    UniqueConstraint("subject_id", "version"),
    Index("ix_subject_keys_kek_version", "kek_version"),
)

# Region-wide keys (today: the blind-index root key), one per purpose.
region_keys = Table(
    "region_keys",
    region_metadata,
    Column("id", String(KEY_ID_HEX_LENGTH), nullable=False),
    Column("region", String(16), nullable=False),
    Column("purpose", String(32), nullable=False),
    Column("kek_version", Integer, nullable=False),
    Column("wrapped", LargeBinary, nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("rewrapped_at", UTCDateTime(), nullable=True),
    PrimaryKeyConstraint("id"),
    UniqueConstraint("purpose"),
)

# KEK rotations: the persisted cursor that makes a rotation resumable. `cursor` is
# the last subject key id re-wrapped (keys are visited in id order).
key_rotations = Table(
    "key_rotations",
    region_metadata,
    Column("id", String(KEY_ID_HEX_LENGTH), nullable=False),
    Column("region", String(16), nullable=False),
    Column("from_version", Integer, nullable=True),
    Column("to_version", Integer, nullable=False),
    Column("state", String(16), nullable=False),
    Column("cursor", String(KEY_ID_HEX_LENGTH), nullable=False),
    Column("total", Integer, nullable=False),
    Column("rewrapped", Integer, nullable=False),
    Column("passes", Integer, nullable=False),
    Column("started_at", UTCDateTime(), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
    Column("completed_at", UTCDateTime(), nullable=True),
    PrimaryKeyConstraint("id"),
    Index("ix_key_rotations_region_state", "region", "state"),
)
