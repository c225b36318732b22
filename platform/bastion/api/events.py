"""`POST /v1/events` (behaviour events of leads and contacts) and their timeline,
`GET /v1/{leads|contacts}/{id}/events` (`automation.events`)."""

from __future__ import annotations

from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from bastion.api.auth import caller_of, state_of
from bastion.api.pages import PAGE_PARAMETERS, page_of
from bastion.api.params import known_params, paging
from bastion.api.problems import JSON
from bastion.api.records import json_object
from bastion.automation.event_input import MAX_PROPERTIES
from bastion.automation.model import ACTIVITY_TYPES, SUBJECT_ENTITIES


async def ingest(request: Request) -> Response:
    caller = await caller_of(request)
    known_params(request, frozenset())
    body = await json_object(request)
    result = await run_in_threadpool(state_of(request).automation.events.ingest, caller, body)
    return JSON(result, status_code=202)


def _timeline(entity: str) -> Any:
    async def endpoint(request: Request) -> Response:
        caller = await caller_of(request)
        params = known_params(request, frozenset({"limit", "cursor"}))
        page = await run_in_threadpool(
            state_of(request).automation.events.timeline,
            caller,
            entity,
            request.path_params["record_id"],
            **paging(params),
        )
        return JSON(page)

    return endpoint


routes = [
    Route("/v1/events", ingest, methods=["POST"]),
    *(
        Route(f"/v1/{entity}/{{record_id}}/events", _timeline(entity), methods=["GET"])
        for entity in SUBJECT_ENTITIES
    ),
]

_EVENT = {
    "type": "object",
    "additionalProperties": False,
    "required": ["id", "type", "subject_id", "occurred_at"],
    "properties": {
        "id": {
            "type": "string",
            "pattern": "^[A-Za-z0-9._:-]{1,64}$",
            "description": "The sender's own id: a replayed event with it changes nothing.",
        },
        "type": {"type": "string", "enum": list(ACTIVITY_TYPES)},
        "subject_id": {"type": "string", "description": "A lead or contact id (led_…, con_…)."},
        "occurred_at": {"type": "string", "format": "date-time"},
        "properties": {
            "type": "object",
            "maxProperties": MAX_PROPERTIES,
            "description": "Scalar values (an URL, a form's fields); sealed under the "
            "person's key.",
            "additionalProperties": {"type": ["string", "number", "boolean", "null"]},
        },
    },
}
_INGESTED = {
    "type": "object",
    "properties": {
        "region": {"type": "string"},
        "accepted": {"type": "integer"},
        "duplicates": {"type": "integer"},
        "events": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "id": {"type": "string"},
                    "status": {"type": "string", "enum": ["accepted", "duplicate"]},
                },
                "required": ["id", "status"],
            },
        },
    },
    "required": ["region", "accepted", "duplicates", "events"],
}
_TIMELINE_EVENT = {
    "type": "object",
    "properties": {
        "id": {"type": "string"},
        "subject_id": {"type": "string"},
        "type": {"type": "string"},
        "occurred_at": {"type": "string", "format": "date-time"},
        "received_at": {"type": "string", "format": "date-time"},
        "properties": {"type": ["object", "null"]},
    },
    "required": ["id", "type", "occurred_at", "received_at", "properties"],
}


def openapi_paths(problem: dict[str, str], max_events: int) -> dict[str, Any]:
    """The activity-event operations for the OpenAPI document."""
    errors = {"403": problem, "404": problem, "422": problem, "503": problem}
    paths: dict[str, Any] = {
        "/v1/events": {
            "post": {
                "operationId": "ingest_events",
                "summary": "Store a batch of behaviour events of leads and contacts (idempotent)",
                "tags": ["events"],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "additionalProperties": False,
                                "required": ["events"],
                                "properties": {
                                    "events": {
                                        "type": "array",
                                        "minItems": 1,
                                        "maxItems": max_events,
                                        "items": _EVENT,
                                    }
                                },
                            }
                        }
                    },
                },
                "responses": {
                    "202": {
                        "description": "Stored (scoring and rules follow).",
                        "content": {"application/json": {"schema": _INGESTED}},
                    },
                    "409": problem,
                    **errors,
                },
            }
        }
    }
    for entity in SUBJECT_ENTITIES:
        paths[f"/v1/{entity}/{{id}}/events"] = {
            "get": {
                "operationId": f"{entity}_timeline",
                "summary": f"The behaviour timeline of one of the {entity}, newest first",
                "tags": [entity],
                "parameters": [
                    {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}},
                    *PAGE_PARAMETERS,
                ],
                "responses": {
                    "200": {
                        "description": "A page of events.",
                        "content": page_of(_TIMELINE_EVENT),
                    },
                    "301": problem,
                    "410": problem,
                    **errors,
                },
            }
        }
    return paths
