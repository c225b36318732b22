"""`/v1/imports`: CSV import over HTTP, and the report of a run.

`POST /v1/imports?entity=contacts&region=eu` with the CSV file as the body
(`Content-Type: text/csv`) and, optionally, the mapping as a JSON object in the
`mapping` query parameter (the same keys as a mapping file; `bulk.mapping`). The body
is spooled to an unnamed temporary file as it arrives (memory holds 1 MiB of it; the
file has no name on disk and is gone when the request ends) and imported in the
request: the answer is the finished run — 201 for a new run, 200 when it resumed an
unfinished one. Nothing of the file is kept anywhere else: an import needs no
storage of personal data outside the sealed records. The body may be up to
`[imports] max_file_bytes`; larger files go through `bastion import`.
"""

from __future__ import annotations

import tempfile
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from bastion.api.auth import caller_of, state_of
from bastion.api.params import integer, invalid, known_params
from bastion.api.problems import JSON
from bastion.bulk.imports import ImportRun
from bastion.bulk.mapping import MAX_MAPPING_BYTES, parse_mapping
from bastion.crm.catalog import ENTITIES
from bastion.errors import UnsupportedMediaType

_SPOOL_IN_MEMORY = 1_048_576
_CSV_TYPES = ("text/csv", "application/csv")
_CREATE_PARAMS = frozenset({"entity", "region", "mapping", "file_name"})
_PROBLEM_PARAMS = frozenset({"limit", "cursor"})


async def create(request: Request) -> Response:
    caller = await caller_of(request)
    state = state_of(request)
    params = known_params(request, _CREATE_PARAMS)
    entity = params.get("entity")
    if entity is None or entity not in ENTITIES:
        raise invalid("entity", f"must be one of {', '.join(sorted(ENTITIES))}")
    mapping_text = params.get("mapping")
    if mapping_text is not None and len(mapping_text) > MAX_MAPPING_BYTES:
        raise invalid("mapping", f"must be at most {MAX_MAPPING_BYTES} characters")
    mapping = parse_mapping(mapping_text)
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type not in _CSV_TYPES:
        raise UnsupportedMediaType("send the file as text/csv")
    with tempfile.SpooledTemporaryFile(max_size=_SPOOL_IN_MEMORY) as spool:
        async for chunk in request.stream():
            spool.write(chunk)
        spool.seek(0)
        run = await run_in_threadpool(
            state.imports.run,
            caller,
            entity,
            spool,
            region=params.get("region"),
            mapping=mapping,
            file_name=params.get("file_name"),
        )
    return JSON(
        run.as_json(),
        status_code=200 if run.resumed else 201,
        headers={"Location": f"/v1/imports/{run.id}"},
    )


async def item(request: Request) -> Response:
    caller = await caller_of(request)
    known_params(request, frozenset())
    run: ImportRun = await run_in_threadpool(
        state_of(request).imports.get, caller, request.path_params["import_id"]
    )
    return JSON(run.as_json())


async def problems(request: Request) -> Response:
    caller = await caller_of(request)
    params = known_params(request, _PROBLEM_PARAMS)
    lines, cursor = await run_in_threadpool(
        state_of(request).imports.problems,
        caller,
        request.path_params["import_id"],
        cursor=params.get("cursor"),
        limit=integer(params, "limit", 1, 1000) or 100,
    )
    return JSON({"data": [line.as_json() for line in lines], "next_cursor": cursor})


routes = [
    Route("/v1/imports", create, methods=["POST"]),
    Route("/v1/imports/{import_id}", item, methods=["GET"]),
    Route("/v1/imports/{import_id}/problems", problems, methods=["GET"]),
]


def openapi_paths(problem: dict[str, Any]) -> dict[str, Any]:
    """The OpenAPI 3.1 path items of the import routes (merged into /openapi.json)."""
    run = {
        "type": "object",
        "description": "One run of an import: counts only, never a value from the file.",
        "properties": {
            "id": {"type": "string"},
            "region": {"type": "string"},
            "entity": {"type": "string"},
            "status": {"enum": ["running", "completed", "failed"]},
            "file_name": {"type": ["string", "null"]},
            "source_sha256": {"type": "string"},
            "rows": {"type": "integer", "description": "Data rows handled (header excluded)."},
            "created": {"type": "integer"},
            "duplicates": {"type": "integer"},
            "invalid": {"type": "integer"},
            "skipped": {"type": "integer", "description": "Rows imported by an earlier run."},
            "started_at": {"type": "string", "format": "date-time"},
            "updated_at": {"type": "string", "format": "date-time"},
            "completed_at": {"type": ["string", "null"], "format": "date-time"},
            "error": {"type": ["string", "null"]},
            "resumed": {"type": "boolean"},
        },
        "required": ["id", "region", "entity", "status", "rows", "created"],
    }
    line = {
        "type": "object",
        "properties": {
            "row": {"type": "integer", "description": "As a spreadsheet numbers it (header 1)."},
            "field": {"type": "string"},
            "kind": {"enum": ["invalid", "duplicate"]},
            "message": {"type": "string"},
            "existing_id": {"type": ["string", "null"]},
        },
        "required": ["row", "field", "kind", "message"],
    }
    import_id = {"name": "import_id", "in": "path", "required": True, "schema": {"type": "string"}}
    errors = dict.fromkeys(("400", "401", "403", "404", "422", "503"), problem)
    ok_run = {"content": {"application/json": {"schema": run}}}
    return {
        "/v1/imports": {
            "post": {
                "operationId": "createImport",
                "summary": "Import a CSV file of records (each row checked as a create)",
                "tags": ["imports"],
                "parameters": [
                    {
                        "name": "entity",
                        "in": "query",
                        "required": True,
                        "schema": {"enum": sorted(ENTITIES)},
                    },
                    {"name": "region", "in": "query", "schema": {"type": "string"}},
                    {
                        "name": "mapping",
                        "in": "query",
                        "schema": {"type": "string"},
                        "description": "The mapping as a JSON object: columns, ignore, "
                        "defaults, dates, booleans, decimal_separator, delimiter.",
                    },
                    {"name": "file_name", "in": "query", "schema": {"type": "string"}},
                ],
                "requestBody": {
                    "required": True,
                    "content": {"text/csv": {"schema": {"type": "string"}}},
                },
                "responses": {
                    "201": {"description": "The finished run", **ok_run},
                    "200": {"description": "The resumed run, finished", **ok_run},
                    **errors,
                    "413": problem,
                    "415": problem,
                },
            }
        },
        "/v1/imports/{import_id}": {
            "get": {
                "operationId": "getImport",
                "summary": "One of your import runs",
                "tags": ["imports"],
                "parameters": [import_id],
                "responses": {"200": {"description": "The run", **ok_run}, **errors},
            }
        },
        "/v1/imports/{import_id}/problems": {
            "get": {
                "operationId": "listImportProblems",
                "summary": "The report of a run: invalid rows and duplicates",
                "tags": ["imports"],
                "parameters": [
                    import_id,
                    {
                        "name": "limit",
                        "in": "query",
                        "schema": {"type": "integer", "minimum": 1, "maximum": 1000},
                    },
                    {"name": "cursor", "in": "query", "schema": {"type": "string"}},
                ],
                "responses": {
                    "200": {
                        "description": "A page of report lines",
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "properties": {
                                        "data": {"type": "array", "items": line},
                                        "next_cursor": {"type": ["string", "null"]},
                                    },
                                    "required": ["data", "next_cursor"],
                                }
                            }
                        },
                    },
                    **errors,
                },
            }
        },
    }
