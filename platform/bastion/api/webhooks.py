"""`/v1/webhooks`: subscriptions, their delivery log, replay (`automation.webhooks`)."""

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
from bastion.automation.webhooks import MAX_TOPICS


async def collection(request: Request) -> Response:
    caller = await caller_of(request)
    webhooks = state_of(request).automation.webhooks
    if request.method == "POST":
        known_params(request, frozenset())
        body = await json_object(request)
        created = await run_in_threadpool(webhooks.create, caller, body)
        return JSON(created, status_code=201, headers={"Location": f"/v1/webhooks/{created['id']}"})
    params = known_params(request, frozenset({"region", "limit", "cursor"}))
    page = await run_in_threadpool(
        webhooks.list,
        caller,
        region=params.get("region"),
        **paging(params),
    )
    return JSON(page)


async def item(request: Request) -> Response:
    caller = await caller_of(request)
    known_params(request, frozenset())
    webhooks = state_of(request).automation.webhooks
    subscription_id = request.path_params["subscription_id"]
    if request.method == "DELETE":
        await run_in_threadpool(webhooks.delete, caller, subscription_id)
        return Response(status_code=204)
    return JSON(await run_in_threadpool(webhooks.get, caller, subscription_id))


async def deliveries(request: Request) -> Response:
    caller = await caller_of(request)
    params = known_params(request, frozenset({"status", "limit", "cursor"}))
    page = await run_in_threadpool(
        state_of(request).automation.webhooks.deliveries,
        caller,
        request.path_params["subscription_id"],
        status=params.get("status"),
        **paging(params),
    )
    return JSON(page)


async def replay(request: Request) -> Response:
    caller = await caller_of(request)
    known_params(request, frozenset())
    replayed = await run_in_threadpool(
        state_of(request).automation.webhooks.replay,
        caller,
        request.path_params["subscription_id"],
        request.path_params["delivery_id"],
    )
    return JSON(replayed)


routes = [
    Route("/v1/webhooks", collection, methods=["GET", "POST"]),
    Route("/v1/webhooks/{subscription_id}", item, methods=["GET", "DELETE"]),
    Route("/v1/webhooks/{subscription_id}/deliveries", deliveries, methods=["GET"]),
    Route(
        "/v1/webhooks/{subscription_id}/deliveries/{delivery_id}/replay", replay, methods=["POST"]
    ),
]

_SUBSCRIPTION: dict[str, Any] = {
    "type": "object",
    "properties": {
        "id": {"type": "string"},
        "region": {"type": "string"},
        "url": {"type": "string"},
        "topics": {"type": "array", "items": {"type": "string"}},
        "endpoint_region": {"type": "string"},
        "payload": {"type": "string", "enum": ["full", "ids"]},
        "description": {"type": ["string", "null"]},
        "owner_id": {"type": "string"},
        "status": {"type": "string"},
        "created_at": {"type": "string", "format": "date-time"},
    },
    "required": ["id", "region", "url", "topics", "endpoint_region", "payload", "owner_id"],
}
_DELIVERY: dict[str, Any] = {
    "type": "object",
    "properties": {
        "id": {"type": "string", "description": "Also the webhook-id header."},
        "subscription_id": {"type": "string"},
        "topic": {"type": "string"},
        "entity": {"type": "string"},
        "record_id": {"type": "string"},
        "rule_id": {"type": ["string", "null"]},
        "status": {"type": "string", "enum": ["pending", "delivered", "dead", "cancelled"]},
        "attempts": {"type": "integer"},
        "replays": {"type": "integer"},
        "next_attempt_at": {"type": ["string", "null"]},
        "last_status": {"type": ["integer", "null"]},
        "last_error": {"type": ["string", "null"]},
        "created_at": {"type": "string"},
        "delivered_at": {"type": ["string", "null"]},
        "log": {
            "type": "array",
            "description": "Every attempt: status code (never the body) or error.",
            "items": {"type": "object"},
        },
    },
    "required": ["id", "subscription_id", "topic", "status", "attempts", "log"],
}


def openapi_paths(problem: dict[str, str]) -> dict[str, Any]:
    """The webhook operations for the OpenAPI document."""
    errors: dict[str, Any] = {"403": problem, "404": problem, "422": problem, "503": problem}
    subscription_id = {
        "name": "subscription_id",
        "in": "path",
        "required": True,
        "schema": {"type": "string"},
    }
    create = {
        "type": "object",
        "additionalProperties": False,
        "required": ["url", "topics", "endpoint_region"],
        "properties": {
            "url": {
                "type": "string",
                "maxLength": 2048,
                "description": "http(s); public addresses only.",
            },
            "topics": {
                "type": "array",
                "minItems": 1,
                "maxItems": MAX_TOPICS,
                "items": {"type": "string"},
                "description": "<entity>.created|updated|deleted|*, workflow.<topic>, workflow.*",
            },
            "region": {
                "type": "string",
                "description": "Whose changes (default: your first region).",
            },
            "endpoint_region": {"type": "string", "description": "Where the endpoint runs."},
            "payload": {"type": "string", "enum": ["full", "ids"], "default": "full"},
            "description": {"type": "string", "maxLength": 200},
        },
    }
    created = {
        **_SUBSCRIPTION,
        "properties": {
            **_SUBSCRIPTION["properties"],
            "secret": {"type": "string", "description": "whsec_…: shown only now."},
        },
    }
    one = {"application/json": {"schema": _SUBSCRIPTION}}
    return {
        "/v1/webhooks": {
            "get": {
                "operationId": "list_webhooks",
                "summary": "Webhook subscriptions of a region",
                "tags": ["webhooks"],
                "parameters": [
                    {"name": "region", "in": "query", "schema": {"type": "string"}},
                    *PAGE_PARAMETERS,
                ],
                "responses": {
                    "200": {"description": "A page.", "content": page_of(_SUBSCRIPTION)},
                    **errors,
                },
            },
            "post": {
                "operationId": "create_webhook",
                "summary": "Subscribe an endpoint to changes (signed, Standard Webhooks)",
                "tags": ["webhooks"],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": create}},
                },
                "responses": {
                    "201": {
                        "description": "The subscription, with its secret.",
                        "headers": {"Location": {"schema": {"type": "string"}}},
                        "content": {"application/json": {"schema": created}},
                    },
                    **errors,
                },
            },
        },
        "/v1/webhooks/{subscription_id}": {
            "get": {
                "operationId": "get_webhook",
                "summary": "One subscription (never its secret)",
                "tags": ["webhooks"],
                "parameters": [subscription_id],
                "responses": {
                    "200": {"description": "The subscription.", "content": one},
                    **errors,
                },
            },
            "delete": {
                "operationId": "delete_webhook",
                "summary": "Delete a subscription (pending deliveries are cancelled)",
                "tags": ["webhooks"],
                "parameters": [subscription_id],
                "responses": {"204": {"description": "Deleted."}, **errors},
            },
        },
        "/v1/webhooks/{subscription_id}/deliveries": {
            "get": {
                "operationId": "webhook_deliveries",
                "summary": "The delivery log of a subscription, newest first",
                "tags": ["webhooks"],
                "parameters": [
                    subscription_id,
                    {
                        "name": "status",
                        "in": "query",
                        "schema": {
                            "type": "string",
                            "enum": ["pending", "delivered", "dead", "cancelled"],
                        },
                    },
                    *PAGE_PARAMETERS,
                ],
                "responses": {
                    "200": {"description": "A page.", "content": page_of(_DELIVERY)},
                    **errors,
                },
            }
        },
        "/v1/webhooks/{subscription_id}/deliveries/{delivery_id}/replay": {
            "post": {
                "operationId": "replay_webhook_delivery",
                "summary": "Send a delivered or dead-lettered delivery again",
                "tags": ["webhooks"],
                "parameters": [
                    subscription_id,
                    {
                        "name": "delivery_id",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string"},
                    },
                ],
                "responses": {
                    "200": {
                        "description": "The delivery, pending again.",
                        "content": {"application/json": {"schema": _DELIVERY}},
                    },
                    "409": problem,
                    **errors,
                },
            }
        },
    }
