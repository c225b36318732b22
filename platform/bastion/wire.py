"""Building blocks of the TypedDicts that define Bastion's JSON bodies.

A body the code builds as a TypedDict is checked by mypy against that definition,
and `/openapi.json` describes it with the JSON Schema pydantic generates from the
same definition (`bastion.api.bodies`), so the document and the code cannot drift
apart. Before Python 3.12 pydantic reads TypedDicts from `typing_extensions` only,
so they are defined with `typing_extensions.TypedDict`; each is decorated `closed`
or `extensible`, and a docstring under a key describes that key in the document.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import ConfigDict, WithJsonSchema, with_config

# A UTC time in ISO 8601 (RFC 3339) form, as `crm.records.to_json_value` writes it.
Timestamp = Annotated[str, WithJsonSchema({"type": "string", "format": "date-time"})]

# A body built as one dict literal has exactly its TypedDict's keys (mypy refuses
# any other), so its schema says `additionalProperties: false`.
closed = with_config(ConfigDict(extra="forbid", use_attribute_docstrings=True))
# A document read back from a database (a certificate, a request's result) stays
# open: a row written by an older version may hold keys this one no longer writes.
extensible = with_config(ConfigDict(use_attribute_docstrings=True))
