"""`GET /v1/{entity}/export`: an entity as CSV or JSON lines, streamed.

The handler parses the query string (`format`, `region` and the list endpoint's
field filters) and calls `bulk.export.export_records` in a worker thread: every
error (404, 422, 403, 503) is answered before the first byte. The body then streams
batch by batch (see `bastion.bulk.export`), each batch audited before it is sent.
"""

from __future__ import annotations

import copy
import re
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from bastion.api.auth import caller_of, state_of
from bastion.bulk.export import FORMATS, ExportQuery, export_records
from bastion.crm.catalog import ENTITIES
from bastion.errors import BadRequest

# Query parameter names: a field name or an export option (as for lists).
_PARAMETER_RE = re.compile(r"[a-z][a-z0-9_]{0,63}")
_OPTIONS = frozenset({"format", "region"})
# List parameters that have no meaning for an export (it has no pages, and one order).
_PAGING = frozenset({"limit", "cursor", "sort"})


async def export(request: Request) -> Response:
    caller = await caller_of(request)
    records = state_of(request).records
    params: dict[str, str] = {}
    for name, value in request.query_params.multi_items():
        if not _PARAMETER_RE.fullmatch(name):
            raise BadRequest("a query parameter name is not a field name or export option")
        if name in params:
            raise BadRequest(f"the query parameter {name!r} is given more than once")
        params[name] = value
    query = ExportQuery(
        format=params.get("format", "csv"),
        filters={k: v for k, v in params.items() if k not in _OPTIONS},
        region=params.get("region"),
    )
    prepared = await run_in_threadpool(
        export_records, records, caller, request.path_params["entity"], query
    )
    return StreamingResponse(
        prepared.chunks,
        media_type=prepared.media_type,
        headers={"Content-Disposition": f"attachment; filename={prepared.filename}"},
    )


routes = [Route("/v1/{entity}/export", export, methods=["GET"])]


def openapi_paths(problem: dict[str, Any], paths: dict[str, Any]) -> dict[str, Any]:
    """The OpenAPI 3.1 path items of the export routes, one per entity. `paths` holds
    the entities' list operations already: an export takes the same `region` and
    filter parameters (the tailored view then trims both alike)."""
    items: dict[str, Any] = {}
    for name in ENTITIES:
        listed = paths[f"/v1/{name}"]["get"]["parameters"]
        parameters = [copy.deepcopy(p) for p in listed if p["name"] not in _PAGING]
        items[f"/v1/{name}/export"] = {
            "get": {
                "operationId": f"export_{name}",
                "summary": f"Export {name} you may read, as CSV or JSON lines (streamed)",
                "description": (
                    "Every record of the entity in your export scope (in `region`, or "
                    "in all your regions), oldest first, with only the fields you may "
                    "read in that record. CSV: a header of the system fields, the "
                    "fields readable in at least one exported region and `_withheld` "
                    "(the fields a row does not give, space-separated); a cell that a "
                    "spreadsheet would take for a formula (starting with = + - @, a tab "
                    "or a carriage return) starts with an apostrophe. JSON lines: one "
                    "record per line, as GET returns it. Each batch of records is "
                    "audited (`record.export`) before it is sent; a stream cut short "
                    "ends without its final chunk."
                ),
                "tags": [name],
                "parameters": [
                    {
                        "name": "format",
                        "in": "query",
                        "schema": {"enum": list(FORMATS), "default": "csv"},
                    },
                    *parameters,
                ],
                "responses": {
                    "200": {
                        "description": "The records, streamed.",
                        "headers": {
                            "Content-Disposition": {
                                "schema": {"type": "string"},
                                "description": "attachment; filename="
                                "<entity>-<region|all>-<UTC timestamp>.<csv|jsonl>",
                            }
                        },
                        "content": {
                            "text/csv": {"schema": {"type": "string"}},
                            "application/x-ndjson": {"schema": {"type": "string"}},
                        },
                    },
                    **dict.fromkeys(("400", "401", "403", "404", "422", "503"), problem),
                },
            }
        }
    return items
