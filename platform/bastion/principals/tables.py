"""Control database tables: principals, the hashes of their API tokens, and console
sessions."""

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

console_sessions = Table(
    "console_sessions",
    control_metadata,
    # A public handle for audit events (`ses_<base32>`): never the cookie's value.
    Column("id", String(32), primary_key=True),
    # SHA-256 of the cookie's 256 random bits, what a lookup uses (like a token's hash:
    # nothing to brute-force, so no slow KDF).
    Column("secret_hash", LargeBinary(32), nullable=False, unique=True),
    Column(
        "principal_id",
        String(64),
        ForeignKey("principals.id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    # The token the principal logged in with: revoking it ends the session too.
    Column(
        "token_id",
        String(32),
        ForeignKey("api_tokens.id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("last_seen_at", UTCDateTime(), nullable=False),
    # The absolute end (login + lifetime, never past the token's own expiry).
    Column("expires_at", UTCDateTime(), nullable=False, index=True),
)
