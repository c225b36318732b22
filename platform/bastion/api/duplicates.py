"""`/v1/{contacts,leads}/{id}/duplicates` and `/v1/duplicates` (the review queue).

Handlers parse HTTP and call `DuplicateService` in a worker thread. A scan through
the API is one bounded, resumable step (`quality.service` says why).
"""

from __future__ import annotations

import math
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from bastion.api.auth import caller_of, state_of
from bastion.api.params import integer, invalid, known_params
from bastion.api.problems import JSON
from bastion.api.records import json_object
from bastion.errors import FieldError, ValidationFailed
from bastion.quality.duplicates import DEDUP_ENTITIES, DEFAULT_MIN_SCORE
from bastion.quality.queue import QUEUE_MIN_SCORE, STATUSES
from bastion.quality.scoring import WEIGHTS
from bastion.quality.service import SCAN_PAGE_DEFAULT, SCAN_PAGE_MAX

_QUEUE_LIMIT = (1, 100, 50)  # low, high, default
_SCAN_FIELDS = frozenset({"entity", "region", "cursor", "limit"})


def _duplicates_of(entity: str) -> Any:
    async def endpoint(request: Request) -> Response:
        caller = await caller_of(request)
        params = known_params(request, frozenset({"min_score"}))
        min_score = _min_score(params.get("min_score"))
        found = await run_in_threadpool(
            state_of(request).duplicates.find,
            caller,
            entity,
            request.path_params["record_id"],
            min_score=min_score,
        )
        return JSON({"data": [m.as_json() for m in found], "min_score": min_score})

    return endpoint


async def pairs(request: Request) -> Response:
    caller = await caller_of(request)
    params = known_params(request, frozenset({"entity", "region", "status", "limit", "cursor"}))
    for name in ("entity", "region"):
        if name not in params:
            raise invalid(name, "is required")
    low, high, default = _QUEUE_LIMIT
    page = await run_in_threadpool(
        state_of(request).duplicates.pairs,
        caller,
        params["entity"],
        params["region"],
        status=params.get("status", "open"),
        limit=integer(params, "limit", low, high) or default,
        cursor=params.get("cursor"),
    )
    return JSON(page)


async def scans(request: Request) -> Response:
    caller = await caller_of(request)
    body = await json_object(request)
    unknown = sorted(set(body) - _SCAN_FIELDS)
    if unknown:
        raise ValidationFailed(
            "invalid scan", [FieldError(n, "is not a field of a scan") for n in unknown]
        )
    errors = [
        FieldError(name, "is required and must be a string")
        for name in ("entity", "region")
        if not isinstance(body.get(name), str)
    ]
    cursor = body.get("cursor")
    if cursor is not None and not isinstance(cursor, str):
        errors.append(FieldError("cursor", "must be a string"))
    limit = body.get("limit", SCAN_PAGE_DEFAULT)
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= SCAN_PAGE_MAX:
        errors.append(FieldError("limit", f"must be an integer from 1 to {SCAN_PAGE_MAX}"))
    if errors:
        raise ValidationFailed("invalid scan", errors)
    progress = await run_in_threadpool(
        state_of(request).duplicates.scan_page,
        caller,
        body["entity"],
        body["region"],
        cursor=cursor,
        limit=limit,
    )
    return JSON(progress)


async def dismiss(request: Request) -> Response:
    caller = await caller_of(request)
    if await request.body():
        body = await json_object(request)
        if body:
            raise ValidationFailed(
                "invalid dismissal", [FieldError(n, "is not a field") for n in sorted(body)]
            )
    pair = await run_in_threadpool(
        state_of(request).duplicates.dismiss, caller, request.path_params["pair_id"]
    )
    return JSON(pair)


def _min_score(value: str | None) -> float:
    if value is None:
        return DEFAULT_MIN_SCORE
    try:
        score = float(value)
    except ValueError:
        score = math.nan
    if not 0 <= score <= 1:  # also refuses nan
        raise invalid("min_score", "must be a number from 0 to 1")
    return score


routes = [
    *(
        Route(f"/v1/{entity}/{{record_id}}/duplicates", _duplicates_of(entity), methods=["GET"])
        for entity in DEDUP_ENTITIES
    ),
    Route("/v1/duplicates", pairs, methods=["GET"]),
    Route("/v1/duplicates/scans", scans, methods=["POST"]),
    Route("/v1/duplicates/{pair_id}/dismiss", dismiss, methods=["POST"]),
]


_REASON = {
    "type": "object",
    "description": "A field that matched (its name, never its value) and how closely.",
    "properties": {
        "field": {"type": "string", "enum": sorted(WEIGHTS)},
        "match": {"type": "string", "enum": ["exact", "similar", "phonetic"]},
        "similarity": {"type": "number", "minimum": 0, "maximum": 1},
    },
    "required": ["field", "match", "similarity"],
}
_SCORE = {"type": "number", "minimum": 0, "maximum": 1}
_PAIR = {
    "type": "object",
    "properties": {
        "id": {"type": "string", "description": "dup_<region>_…"},
        "entity": {"type": "string", "enum": list(DEDUP_ENTITIES)},
        "region": {"type": "string"},
        "record_id": {"type": "string", "description": "The lower id of the pair."},
        "candidate_id": {"type": "string", "description": "The higher id of the pair."},
        "score": _SCORE,
        "reasons": {"type": "array", "items": _REASON},
        "status": {"type": "string", "enum": list(STATUSES)},
        "found_at": {"type": "string", "format": "date-time"},
        "reviewed_by": {"type": ["string", "null"]},
        "reviewed_at": {"type": ["string", "null"], "format": "date-time"},
    },
    "required": [
        "id",
        "entity",
        "region",
        "record_id",
        "candidate_id",
        "score",
        "reasons",
        "status",
        "found_at",
        "reviewed_by",
        "reviewed_at",
    ],
}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def openapi_paths(problem: dict[str, str]) -> dict[str, Any]:
    """The duplicate-detection operations for the OpenAPI document."""
    errors = {"400": problem, "401": problem, "403": problem, "404": problem, "422": problem}
    errors["503"] = problem
    paths: dict[str, Any] = {}
    for entity in DEDUP_ENTITIES:
        title = entity[:-1].title()
        found = {
            "type": "object",
            "properties": {
                "data": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {
                            "id": {"type": "string"},
                            "score": _SCORE,
                            "reasons": {"type": "array", "items": _REASON},
                            "record": {"$ref": f"#/components/schemas/{title}"},
                        },
                        "required": ["id", "score", "reasons", "record"],
                    },
                },
                "min_score": _SCORE,
            },
            "required": ["data", "min_score"],
        }
        paths[f"/v1/{entity}/{{id}}/duplicates"] = {
            "get": {
                "operationId": f"duplicates_of_{entity[:-1]}",
                "summary": f"Likely duplicates of a {entity[:-1]}, best first",
                "description": "Candidates share a blind-indexed email, phone or mobile, or "
                "the phonetic index of the last name, inside your read and list scopes; "
                "they are scored on the fields you may read only. Needs read on the "
                "record and list on the entity.",
                "tags": ["duplicates"],
                "parameters": [
                    {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}},
                    {
                        "name": "min_score",
                        "in": "query",
                        "schema": {**_SCORE, "default": DEFAULT_MIN_SCORE},
                    },
                ],
                "responses": {"200": _json(found, "The candidates."), **errors},
            }
        }
    low, high, default = _QUEUE_LIMIT
    paths["/v1/duplicates"] = {
        "get": {
            "operationId": "duplicates_list",
            "summary": "The review queue: pairs whose two records you may read and list",
            "description": "Pairs are scored, ordered and kept (from a score of "
            f"{QUEUE_MIN_SCORE}) on the fields you may read only. Needs read and list.",
            "tags": ["duplicates"],
            "parameters": [
                {
                    "name": "entity",
                    "in": "query",
                    "required": True,
                    "schema": {"type": "string", "enum": list(DEDUP_ENTITIES)},
                },
                {"name": "region", "in": "query", "required": True, "schema": {"type": "string"}},
                {
                    "name": "status",
                    "in": "query",
                    "schema": {"type": "string", "enum": list(STATUSES), "default": "open"},
                },
                {
                    "name": "limit",
                    "in": "query",
                    "schema": {
                        "type": "integer",
                        "minimum": low,
                        "maximum": high,
                        "default": default,
                    },
                },
                {"name": "cursor", "in": "query", "schema": {"type": "string"}},
            ],
            "responses": {
                "200": _json(
                    {
                        "type": "object",
                        "properties": {
                            "data": {"type": "array", "items": _PAIR},
                            "next_cursor": {"type": ["string", "null"]},
                        },
                        "required": ["data", "next_cursor"],
                    },
                    "A page of pairs, best score first.",
                ),
                **errors,
            },
        }
    }
    paths["/v1/duplicates/scans"] = {
        "post": {
            "operationId": "duplicates_scan",
            "summary": "Scan a region for duplicates (one bounded step; repeat with the cursor)",
            "tags": ["duplicates"],
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "additionalProperties": False,
                            "required": ["entity", "region"],
                            "properties": {
                                "entity": {"type": "string", "enum": list(DEDUP_ENTITIES)},
                                "region": {"type": "string"},
                                "cursor": {
                                    "type": "string",
                                    "description": "The next_cursor of the previous step.",
                                },
                                "limit": {
                                    "type": "integer",
                                    "minimum": 1,
                                    "maximum": SCAN_PAGE_MAX,
                                    "default": SCAN_PAGE_DEFAULT,
                                },
                            },
                        }
                    }
                },
            },
            "responses": {
                "200": _json(
                    {
                        "type": "object",
                        "properties": {
                            "entity": {"type": "string"},
                            "region": {"type": "string"},
                            "scanned": {"type": "integer", "minimum": 0},
                            "pairs": {"type": "integer", "minimum": 0},
                            "next_cursor": {"type": ["string", "null"]},
                        },
                        "required": ["entity", "region", "scanned", "pairs", "next_cursor"],
                    },
                    "What this step scanned; next_cursor is null when the scan is done.",
                ),
                **errors,
            },
        }
    }
    paths["/v1/duplicates/{pair_id}/dismiss"] = {
        "post": {
            "operationId": "duplicates_dismiss",
            "summary": "Dismiss an open pair: not the same person",
            "tags": ["duplicates"],
            "parameters": [
                {"name": "pair_id", "in": "path", "required": True, "schema": {"type": "string"}}
            ],
            "responses": {"200": _json(_PAIR, "The dismissed pair."), "409": problem, **errors},
        }
    }
    return paths
