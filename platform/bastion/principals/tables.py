"""Control database tables: principals and the hashes of their API tokens."""

from __future__ import annotations

from sqlalchemy import JSON, Boolean, Column, ForeignKey, LargeBinary, String, Table

from bastion.sqltypes import UTCDateTime, new_metadata

control_metadata = new_metadata()

principals = Table(
    "principals",
    control_metadata,
    Column("id", String(64), primary_key=True),
    Column("name", String(100), nullable=False, unique=True),
    # JSON lists of role names, region names and team ids.
    Column("roles", JSON, nullable=False),
    Column("regions", JSON, nullable=False),
    Column("teams", JSON, nullable=False),
    Column("disabled", Boolean, nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
)

api_tokens = Table(
    "api_tokens",
    control_metadata,
    # The public half of a token (`bst_<id>_<secret>`): what lookups use.
    Column("id", String(32), primary_key=True),
    Column(
        "principal_id",
        String(64),
        ForeignKey("principals.id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    # SHA-256 of the secret half. Tokens are 256 random bits, so a fast hash is
    # enough: there is nothing to brute-force that a slow KDF would protect.
    Column("secret_hash", LargeBinary(32), nullable=False),
    Column("description", String(200), nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("expires_at", UTCDateTime(), nullable=True),
    Column("revoked_at", UTCDateTime(), nullable=True),
)
