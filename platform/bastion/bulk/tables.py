"""Region tables of CSV imports: the import runs, their per-row report, and the keys
of rows already imported.

An import lives in the region it writes to. Nothing here holds a field value: the
report names a row number, a field and what is wrong with it; a row key is a keyed
hash (HMAC) of the row's validated values, so a re-run of the same data recognises
what it created without keeping a copy of it.
"""

from __future__ import annotations

from sqlalchemy import (
    Column,
    Index,
    Integer,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
)

from bastion.crm.tables import import_rows, region_metadata
from bastion.residency.ids import ID_MAX_LENGTH
from bastion.sqltypes import UTCDateTime

imports = Table(
    "imports",
    region_metadata,
    Column("id", String(ID_MAX_LENGTH), nullable=False),
    Column("region", String(16), nullable=False),
    Column("entity", String(32), nullable=False),
    Column("principal_id", String(64), nullable=False),
    # running -> completed | failed (a failed run resumes when started again).
    Column("status", String(16), nullable=False),
    # What makes a run "the same import": the file's bytes and the mapping/options.
    Column("source_sha256", String(64), nullable=False),
    Column("options_sha256", String(64), nullable=False),
    Column("file_name", String(255), nullable=True),
    # Data rows already handled and committed: a resumed run starts after them.
    Column("rows_done", Integer, nullable=False),
    Column("created", Integer, nullable=False),
    Column("duplicates", Integer, nullable=False),
    Column("invalid", Integer, nullable=False),
    Column("skipped", Integer, nullable=False),
    Column("started_at", UTCDateTime(), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
    Column("completed_at", UTCDateTime(), nullable=True),
    Column("error", Text(), nullable=True),
    PrimaryKeyConstraint("id"),
    # A run of the same file, mapping and importer resumes the last unfinished run.
    Index("ix_imports_resume", "principal_id", "entity", "source_sha256", "options_sha256"),
)

# One line per problem: an invalid row (one line per field in error) or a duplicate
# of an existing record (`existing_id`, only when the importer may read that record).
import_problems = Table(
    "import_problems",
    region_metadata,
    Column("import_id", String(ID_MAX_LENGTH), nullable=False),
    Column("row", Integer, nullable=False),
    Column("field", String(64), nullable=False),
    Column("kind", String(16), nullable=False),  # invalid | duplicate
    Column("message", String(500), nullable=False),
    Column("existing_id", String(ID_MAX_LENGTH), nullable=True),
    PrimaryKeyConstraint("import_id", "row", "field"),
)

# `import_rows` (the keys of rows imported before) is a crm table: deleting a record
# deletes its key. Re-exported here for the importer.
__all__ = ["import_problems", "import_rows", "imports"]
