"""`GET /v1/leads/{id}/score`: a lead's score, explained (`automation.scores`)."""

from __future__ import annotations

from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from bastion.api.auth import caller_of, state_of
from bastion.api.params import known_params
from bastion.api.problems import JSON


async def score(request: Request) -> Response:
    caller = await caller_of(request)
    known_params(request, frozenset())
    explained = await run_in_threadpool(
        state_of(request).automation.scores.explain, caller, request.path_params["record_id"]
    )
    return JSON(explained)


routes = [Route("/v1/leads/{record_id}/score", score, methods=["GET"])]

_ITEM = {
    "type": "object",
    "properties": {
        "rule": {"type": "string"},
        "kind": {"type": "string", "enum": ["firmographic", "behavioural"]},
        "points": {"type": "number"},
        "fields": {"type": "array", "items": {"type": "string"}},
        "matched": {"type": "boolean"},
        "event": {"type": "string"},
        "count": {"type": "integer"},
        "capped": {"type": "boolean"},
    },
    "required": ["rule", "kind", "points"],
}
_EXPLAINED = {
    "type": "object",
    "properties": {
        "lead_id": {"type": "string"},
        "region": {"type": "string"},
        "score": {"type": ["integer", "null"]},
        "model": {"type": ["string", "null"]},
        "computed_at": {"type": ["string", "null"], "format": "date-time"},
        "breakdown": {"type": "array", "items": _ITEM},
        "withheld_points": {
            "type": "number",
            "description": "Points from rules about fields (or behaviour events) the caller "
            "may not read, summed instead of shown.",
        },
        "history": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "score": {"type": "integer"},
                    "previous": {"type": ["integer", "null"]},
                    "computed_at": {"type": "string", "format": "date-time"},
                },
                "required": ["score", "previous", "computed_at"],
            },
        },
    },
    "required": [
        "lead_id",
        "region",
        "score",
        "model",
        "computed_at",
        "breakdown",
        "withheld_points",
        "history",
    ],
}


def openapi_paths(problem: dict[str, str]) -> dict[str, Any]:
    return {
        "/v1/leads/{id}/score": {
            "get": {
                "operationId": "lead_score",
                "summary": "A lead's score: the breakdown of its last computation, and history",
                "tags": ["leads"],
                "parameters": [
                    {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}
                ],
                "responses": {
                    "200": {
                        "description": "The score explained.",
                        "content": {"application/json": {"schema": _EXPLAINED}},
                    },
                    "301": problem,
                    "403": problem,
                    "404": problem,
                    "410": problem,
                    "503": problem,
                },
            }
        }
    }
