"""create key tables: subject_keys, region_keys, key_rotations

Revision ID: d3a1f0c0e501
Revises: c98d3b0b2faf
Create Date: 2026-11-25 10:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "d3a1f0c0e501"
down_revision: str | None = "c98d3b0b2faf"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "subject_keys",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("region", sa.String(length=16), nullable=False),
        sa.Column("subject_id", sa.String(length=64), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("kek_version", sa.Integer(), nullable=False),
        sa.Column("wrapped", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("rewrapped_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_subject_keys")),
        sa.UniqueConstraint(
            "subject_id", "version", name=op.f("uq_subject_keys_subject_id_version")
        ),
    )
    with op.batch_alter_table("subject_keys", schema=None) as batch_op:
        batch_op.create_index("ix_subject_keys_kek_version", ["kek_version"], unique=False)

    op.create_table(
        "region_keys",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("region", sa.String(length=16), nullable=False),
        sa.Column("purpose", sa.String(length=32), nullable=False),
        sa.Column("kek_version", sa.Integer(), nullable=False),
        sa.Column("wrapped", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("rewrapped_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_region_keys")),
        sa.UniqueConstraint("purpose", name=op.f("uq_region_keys_purpose")),
    )

    op.create_table(
        "key_rotations",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("region", sa.String(length=16), nullable=False),
        sa.Column("from_version", sa.Integer(), nullable=True),
        sa.Column("to_version", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("cursor", sa.String(length=32), nullable=False),
        sa.Column("total", sa.Integer(), nullable=False),
        sa.Column("rewrapped", sa.Integer(), nullable=False),
        sa.Column("passes", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("completed_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_key_rotations")),
    )
    with op.batch_alter_table("key_rotations", schema=None) as batch_op:
        batch_op.create_index("ix_key_rotations_region_state", ["region", "state"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("key_rotations", schema=None) as batch_op:
        batch_op.drop_index("ix_key_rotations_region_state")

    op.drop_table("key_rotations")
    op.drop_table("region_keys")
    with op.batch_alter_table("subject_keys", schema=None) as batch_op:
        batch_op.drop_index("ix_subject_keys_kek_version")

    op.drop_table("subject_keys")
