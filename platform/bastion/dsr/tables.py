"""Region tables of data subjects' requests: requests, their steps, export packages,
erasure certificates, and legal holds.

A request lives in its data subject's region, like everything else about the
person. Nothing here holds a field value in the clear: corrections for a
rectification and export packages are sealed under the request's own data key
(`subject_keys` with the request id as subject), which is shredded when the
package expires or the request is closed.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    Column,
    Index,
    Integer,
    LargeBinary,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
)
from sqlalchemy.dialects.postgresql import JSONB

from bastion.crm.tables import region_metadata
from bastion.residency.ids import ID_MAX_LENGTH
from bastion.sqltypes import UTCDateTime

_JSON = JSON().with_variant(JSONB(), "postgresql")

dsr_requests = Table(
    "dsr_requests",
    region_metadata,
    Column("id", String(ID_MAX_LENGTH), nullable=False),
    Column("region", String(16), nullable=False),
    Column("type", String(16), nullable=False),
    Column("regime", String(8), nullable=False),
    Column("status", String(24), nullable=False, index=True),
    # The data subjects the request resolved to (contact/lead ids), a JSON list.
    Column("subject_ids", _JSON, nullable=False),
    # How the subject was identified: "record" or an identifier kind (email, phone).
    Column("identified_by", String(16), nullable=False),
    Column("verification", String(16), nullable=False),
    Column("verification_method", String(64), nullable=True),
    Column("verified_by", String(64), nullable=True),
    Column("verified_at", UTCDateTime(), nullable=True),
    Column("received_at", UTCDateTime(), nullable=False),
    Column("due_at", UTCDateTime(), nullable=False, index=True),
    Column("extended", Integer, nullable=False),
    Column("extension_reason", String(500), nullable=True),
    Column("created_by", String(64), nullable=False),
    Column("approved_by", String(64), nullable=True),
    Column("approved_at", UTCDateTime(), nullable=True),
    Column("started_at", UTCDateTime(), nullable=True),
    Column("completed_at", UTCDateTime(), nullable=True),
    Column("rejection_reason", String(500), nullable=True),
    # Sealed under the request's key: a rectification's corrections (JSON); their
    # field names in the clear, so the approver sees what will change.
    Column("corrections", LargeBinary(), nullable=True),
    Column("correction_fields", _JSON, nullable=True),
    Column("policy_version", String(64), nullable=False),
    # Job state: the step running, progress per step, the result, the lease.
    Column("step", String(32), nullable=True),
    Column("progress", _JSON, nullable=False),
    Column("result", _JSON, nullable=True),
    Column("error", String(500), nullable=True),
    Column("lease_owner", String(64), nullable=True),
    Column("lease_expires_at", UTCDateTime(), nullable=True),
    Column("version", Integer, nullable=False),
    PrimaryKeyConstraint("id"),
)

# One row per completed step of a request: a step that has a row is never run again.
dsr_steps = Table(
    "dsr_steps",
    region_metadata,
    Column("request_id", String(ID_MAX_LENGTH), nullable=False),
    Column("step", String(32), nullable=False),
    Column("completed_at", UTCDateTime(), nullable=False),
    Column("details", _JSON, nullable=False),
    PrimaryKeyConstraint("request_id", "step"),
)

# The export package: a zip sealed under the request's key, until it expires.
dsr_packages = Table(
    "dsr_packages",
    region_metadata,
    Column("request_id", String(ID_MAX_LENGTH), nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("expires_at", UTCDateTime(), nullable=False, index=True),
    Column("sha256", String(64), nullable=False),
    Column("size", Integer, nullable=False),
    Column("sealed", LargeBinary(), nullable=False),
    PrimaryKeyConstraint("request_id"),
)

# The signed erasure certificate (evidence; holds ids, names and counts, no values).
dsr_certificates = Table(
    "dsr_certificates",
    region_metadata,
    Column("request_id", String(ID_MAX_LENGTH), nullable=False),
    Column("issued_at", UTCDateTime(), nullable=False),
    Column("body", Text(), nullable=False),
    Column("key_id", String(16), nullable=False),
    Column("signature", String(128), nullable=False),
    PrimaryKeyConstraint("request_id"),
)

legal_holds = Table(
    "legal_holds",
    region_metadata,
    Column("id", String(ID_MAX_LENGTH), nullable=False),
    Column("region", String(16), nullable=False),
    # A data subject (every record about the person) or one record.
    Column("target_id", String(ID_MAX_LENGTH), nullable=False),
    Column("reason", String(500), nullable=False),
    Column("created_by", String(64), nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("expires_at", UTCDateTime(), nullable=True),
    Column("released_at", UTCDateTime(), nullable=True),
    Column("released_by", String(64), nullable=True),
    PrimaryKeyConstraint("id"),
    Index("ix_legal_holds_active", "target_id", "released_at"),
)
