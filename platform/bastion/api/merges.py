"""`/v1/{contacts,leads}/merge` and `/v1/merges/{merge_id}` (`quality.merge`).

A merge answers 201 with `{"merge": …, "survivor": …}`, `Location` naming the merge
and the survivor's `ETag`. `If-Match` (optional) is the survivor's ETag: 412 when it
changed. The losers need no version: a loser changed or merged meanwhile is a 409.
"""

from __future__ import annotations

from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from bastion.api.auth import caller_of, state_of
from bastion.api.problems import JSON
from bastion.api.records import json_object
from bastion.crm.catalog import ENTITIES
from bastion.crm.records import etag
from bastion.quality.merge import MAX_LOSERS, MERGEABLE


def _merge(entity: str) -> Any:
    async def endpoint(request: Request) -> Response:
        caller = await caller_of(request)
        body = await json_object(request)
        merged = await run_in_threadpool(
            state_of(request).merges.merge,
            caller,
            entity,
            body,
            if_match=request.headers.get("if-match"),
        )
        return JSON(
            {"merge": merged.merge, "survivor": merged.survivor},
            status_code=201,
            headers={"Location": f"/v1/merges/{merged.merge['id']}", "ETag": etag(merged.survivor)},
        )

    return endpoint


async def merge_item(request: Request) -> Response:
    caller = await caller_of(request)
    merge = await run_in_threadpool(
        state_of(request).merges.get, caller, request.path_params["merge_id"]
    )
    return JSON(merge)


async def undo(request: Request) -> Response:
    caller = await caller_of(request)
    merge = await run_in_threadpool(
        state_of(request).merges.undo, caller, request.path_params["merge_id"]
    )
    return JSON(merge)


routes = [
    *(Route(f"/v1/{entity}/merge", _merge(entity), methods=["POST"]) for entity in MERGEABLE),
    Route("/v1/merges/{merge_id}", merge_item, methods=["GET"]),
    Route("/v1/merges/{merge_id}/undo", undo, methods=["POST"]),
]

_MERGE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "id": {"type": "string"},
        "region": {"type": "string"},
        "entity": {"type": "string", "enum": list(MERGEABLE)},
        "survivor_id": {"type": "string"},
        "loser_ids": {"type": "array", "items": {"type": "string"}},
        "fields": {
            "type": "object",
            "description": "Field name -> the record its value was taken from.",
            "additionalProperties": {"type": "string"},
        },
        "moved": {
            "type": "array",
            "description": "Records relinked from a loser to the survivor (ids only), "
            "those the caller may read; `from` is null once the merge is undone or final.",
            "items": {
                "type": "object",
                "properties": {
                    "entity": {"type": "string"},
                    "id": {"type": "string"},
                    "field": {"type": "string"},
                    "from": {"type": ["string", "null"]},
                },
                "required": ["entity", "id", "field", "from"],
            },
        },
        "moved_withheld": {
            "type": "integer",
            "minimum": 0,
            "description": "How many moved records are not listed: outside the "
            "caller's read scope, or deleted since (by an erasure).",
        },
        "status": {"type": "string", "enum": ["merged", "undone", "final"]},
        "merged_by": {"type": "string"},
        "merged_at": {"type": "string", "format": "date-time"},
        "undo_until": {"type": "string", "format": "date-time"},
        "undone_by": {"type": ["string", "null"]},
        "undone_at": {"type": ["string", "null"], "format": "date-time"},
    },
    "required": [
        "id",
        "region",
        "entity",
        "survivor_id",
        "loser_ids",
        "fields",
        "moved",
        "moved_withheld",
        "status",
        "merged_by",
        "merged_at",
        "undo_until",
        "undone_by",
        "undone_at",
    ],
}


def openapi_paths(problem: dict[str, str]) -> dict[str, Any]:
    """The merge operations for the OpenAPI document."""
    errors = {"403": problem, "404": problem, "409": problem, "422": problem, "503": problem}
    merge_id = [{"name": "merge_id", "in": "path", "required": True, "schema": {"type": "string"}}]
    merge = {"application/json": {"schema": _MERGE_SCHEMA}}
    paths: dict[str, Any] = {}
    for entity in MERGEABLE:
        spec = ENTITIES[entity]
        title = spec.singular.title()
        body = {
            "type": "object",
            "additionalProperties": False,
            "required": ["survivor_id", "loser_ids"],
            "properties": {
                "survivor_id": {"type": "string", "description": f"The {spec.singular} kept."},
                "loser_ids": {
                    "type": "array",
                    "description": "Records merged into the survivor (same region).",
                    "items": {"type": "string"},
                    "minItems": 1,
                    "maxItems": MAX_LOSERS,
                    "uniqueItems": True,
                },
                "fields": {
                    "type": "object",
                    "description": "Field name -> id of the survivor or the loser to take "
                    "its value from (default: the survivor's own values).",
                    "additionalProperties": {"type": "string"},
                },
            },
        }
        paths[f"/v1/{entity}/merge"] = {
            "post": {
                "operationId": f"merge_{entity}",
                "summary": f"Merge duplicate {entity} into one (undoable for a while)",
                "tags": [entity],
                "parameters": [
                    {
                        "name": "If-Match",
                        "in": "header",
                        "description": "The survivor's ETag (optional; 412 if stale, 428 for `*`).",
                        "schema": {"type": "string"},
                    }
                ],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": body}},
                },
                "responses": {
                    "201": {
                        "description": "The merge and the survivor as it is now.",
                        "headers": {
                            "Location": {"schema": {"type": "string"}},
                            "ETag": {"schema": {"type": "string"}},
                        },
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "properties": {
                                        "merge": _MERGE_SCHEMA,
                                        "survivor": {"$ref": f"#/components/schemas/{title}"},
                                    },
                                    "required": ["merge", "survivor"],
                                }
                            }
                        },
                    },
                    "412": problem,
                    "428": problem,
                    **errors,
                },
            }
        }
    paths["/v1/merges/{merge_id}"] = {
        "get": {
            "operationId": "get_merge",
            "summary": "A merge: what was merged, chosen and moved (ids and names only)",
            "tags": ["merges"],
            "parameters": merge_id,
            "responses": {"200": {"description": "The merge.", "content": merge}, **errors},
        }
    }
    paths["/v1/merges/{merge_id}/undo"] = {
        "post": {
            "operationId": "undo_merge",
            "summary": "Undo a merge within its window, if the survivor has not changed since",
            "tags": ["merges"],
            "parameters": merge_id,
            "responses": {"200": {"description": "The undone merge.", "content": merge}, **errors},
        }
    }
    return paths
