"""`/v1/dsr` (data subjects' requests) and `/v1/legal-holds`."""

from __future__ import annotations

from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from bastion.api.auth import caller_of, state_of
from bastion.api.bodies import json_response
from bastion.api.params import flag, integer, invalid, known_params
from bastion.api.problems import JSON
from bastion.api.records import json_object
from bastion.dsr.certificate import as_text
from bastion.dsr.model import STATUSES
from bastion.errors import FieldError, ValidationFailed

_LIST_PARAMS = frozenset({"region", "status", "overdue", "due_within_days", "limit", "cursor"})
_STATUSES = frozenset(STATUSES)


async def collection(request: Request) -> Response:
    caller = await caller_of(request)
    service = state_of(request).dsr
    if request.method == "POST":
        body = await json_object(request)
        created = await run_in_threadpool(service.create, caller, body)
        return JSON(created, status_code=201, headers={"Location": f"/v1/dsr/{created['id']}"})
    params = known_params(request, _LIST_PARAMS)
    status = params.get("status")
    if status is not None and status not in _STATUSES:
        raise invalid("status", f"must be one of {', '.join(sorted(_STATUSES))}")
    page = await run_in_threadpool(
        service.list,
        caller,
        region=params.get("region"),
        status=status,
        overdue=flag(params, "overdue"),
        due_within_days=integer(params, "due_within_days", 1, 365),
        limit=integer(params, "limit", 1, 200) or 50,
        cursor=params.get("cursor"),
    )
    return JSON(page)


async def item(request: Request) -> Response:
    caller = await caller_of(request)
    record = await run_in_threadpool(
        state_of(request).dsr.get, caller, request.path_params["request_id"]
    )
    return JSON(record)


_BODIES = {"verify": {"method"}, "reject": {"reason"}, "extend": {"reason"}}


def _action(verb: str) -> Any:
    """The endpoint of one state change: verify, approve, reject, extend, cancel."""

    async def endpoint(request: Request) -> Response:
        caller = await caller_of(request)
        service = state_of(request).dsr
        request_id = request.path_params["request_id"]
        body = await json_object(request) if await request.body() else {}
        unknown = sorted(set(body) - _BODIES.get(verb, set()))
        if unknown:
            raise ValidationFailed(
                f"invalid {verb} request",
                [FieldError(n, f"is not a field of {verb}") for n in unknown],
            )
        calls: dict[str, Any] = {
            "verify": lambda: service.verify_identity(caller, request_id, body.get("method")),
            "approve": lambda: service.approve(caller, request_id),
            "reject": lambda: service.reject(caller, request_id, body.get("reason")),
            "extend": lambda: service.extend(caller, request_id, body.get("reason")),
            "cancel": lambda: service.cancel(caller, request_id),
        }
        return JSON(await run_in_threadpool(calls[verb]))

    return endpoint


async def preview(request: Request) -> Response:
    caller = await caller_of(request)
    result = await run_in_threadpool(
        state_of(request).dsr.preview, caller, request.path_params["request_id"]
    )
    return JSON(result)


async def package(request: Request) -> Response:
    caller = await caller_of(request)
    request_id = request.path_params["request_id"]
    data, digest = await run_in_threadpool(state_of(request).dsr.package, caller, request_id)
    return Response(
        data,
        media_type="application/zip",
        headers={
            "Content-Disposition": f'attachment; filename="{request_id}.zip"',
            "Digest": f"sha-256={digest}",
            "Cache-Control": "no-store",
        },
    )


async def certificate(request: Request) -> Response:
    caller = await caller_of(request)
    document = await run_in_threadpool(
        state_of(request).dsr.certificate, caller, request.path_params["request_id"]
    )
    if request.query_params.get("format") == "text":
        return PlainTextResponse(as_text(document["certificate"]))
    return JSON(document)


async def holds(request: Request) -> Response:
    caller = await caller_of(request)
    service = state_of(request).legal_holds
    if request.method == "POST":
        body = await json_object(request)
        created = await run_in_threadpool(service.create, caller, body)
        return JSON(
            created, status_code=201, headers={"Location": f"/v1/legal-holds/{created['id']}"}
        )
    params = known_params(request, frozenset({"region", "target_id", "active", "limit", "cursor"}))
    result = await run_in_threadpool(
        service.find,
        caller,
        region=params.get("region"),
        target_id=params.get("target_id"),
        active=flag(params, "active"),
        limit=integer(params, "limit", 1, 200) or 50,
        cursor=params.get("cursor"),
    )
    return JSON(result)


async def hold(request: Request) -> Response:
    caller = await caller_of(request)
    released = await run_in_threadpool(
        state_of(request).legal_holds.release, caller, request.path_params["hold_id"]
    )
    return JSON(released)


routes = [
    Route("/v1/dsr", collection, methods=["GET", "POST"]),
    Route("/v1/dsr/{request_id}", item, methods=["GET"]),
    Route("/v1/dsr/{request_id}/preview", preview, methods=["GET"]),
    Route("/v1/dsr/{request_id}/package", package, methods=["GET"]),
    Route("/v1/dsr/{request_id}/certificate", certificate, methods=["GET"]),
    *(
        Route(f"/v1/dsr/{{request_id}}/{verb}", _action(verb), methods=["POST"])
        for verb in ("verify", "approve", "reject", "extend", "cancel")
    ),
    Route("/v1/legal-holds", holds, methods=["GET", "POST"]),
    Route("/v1/legal-holds/{hold_id}", hold, methods=["DELETE"]),
]


def _object_body(properties: dict[str, Any], *, required: list[str]) -> dict[str, Any]:
    """A required JSON object body of exactly these properties."""
    schema = {
        "type": "object",
        "additionalProperties": False,
        "required": required,
        "properties": properties,
    }
    return {"required": True, "content": {"application/json": {"schema": schema}}}


def openapi_paths(problem: dict[str, str]) -> dict[str, Any]:
    """The `/v1/dsr` and `/v1/legal-holds` operations for the OpenAPI document."""
    errors = {"401": problem, "403": problem, "404": problem, "422": problem}
    request_id = [
        {"name": "request_id", "in": "path", "required": True, "schema": {"type": "string"}}
    ]
    create_schema = {
        "type": "object",
        "additionalProperties": False,
        "required": ["type"],
        "properties": {
            "type": {"type": "string", "enum": ["access", "export", "erasure", "rectification"]},
            "regime": {"type": "string", "enum": ["gdpr", "ccpa"], "default": "gdpr"},
            "subject_id": {"type": "string", "description": "A contact or lead id."},
            "region": {"type": "string", "description": "Required with identifier."},
            "identifier": {
                "type": "object",
                "description": "Find the subject through the blind indexes.",
                "minProperties": 1,
                "maxProperties": 1,
                "properties": {"email": {"type": "string"}, "phone": {"type": "string"}},
                "additionalProperties": False,
            },
            "corrections": {"type": "object", "description": "Rectification: fields to correct."},
        },
    }

    def change(summary: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        operation: dict[str, Any] = {
            "summary": summary,
            "tags": ["dsr"],
            "parameters": request_id,
            "responses": {
                "200": json_response("DsrRequest", "The request."),
                "409": problem,
                **errors,
            },
        }
        if body is not None:
            operation["requestBody"] = _object_body(body, required=list(body))
        return {"post": {"operationId": f"dsr_{summary.split()[0].lower()}", **operation}}

    text = {"type": "string", "maxLength": 500}
    return {
        "/v1/dsr": {
            "get": {
                "operationId": "dsr_list",
                "summary": "Requests by deadline; overdue and due soon",
                "tags": ["dsr"],
                "parameters": [
                    {"name": n, "in": "query", "schema": {"type": "string"}}
                    for n in sorted(_LIST_PARAMS)
                ],
                "responses": {
                    "200": json_response("DsrRequestPage", "A page of requests."),
                    **errors,
                },
            },
            "post": {
                "operationId": "dsr_create",
                "summary": "Record a data subject's request",
                "tags": ["dsr"],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": create_schema}},
                },
                "responses": {
                    "201": {
                        **json_response("DsrRequest", "The request."),
                        "headers": {"Location": {"schema": {"type": "string"}}},
                    },
                    "409": problem,
                    **errors,
                },
            },
        },
        "/v1/dsr/{request_id}": {
            "get": {
                "operationId": "dsr_get",
                "tags": ["dsr"],
                "parameters": request_id,
                "responses": {"200": json_response("DsrRequest", "The request."), **errors},
            }
        },
        "/v1/dsr/{request_id}/preview": {
            "get": {
                "operationId": "dsr_preview",
                "summary": "Dry run: what would be exported or erased and kept",
                "tags": ["dsr"],
                "parameters": request_id,
                "responses": {"200": json_response("DsrPreview", "The preview."), **errors},
            }
        },
        "/v1/dsr/{request_id}/package": {
            "get": {
                "operationId": "dsr_package",
                "summary": "The export package (zip)",
                "tags": ["dsr"],
                "parameters": request_id,
                "responses": {
                    "200": {"description": "The zip.", "content": {"application/zip": {}}},
                    "409": problem,
                    "410": problem,
                    **errors,
                },
            }
        },
        "/v1/dsr/{request_id}/certificate": {
            "get": {
                "operationId": "dsr_certificate",
                "summary": "The signed erasure certificate (?format=text for people)",
                "tags": ["dsr"],
                "parameters": [
                    *request_id,
                    {
                        "name": "format",
                        "in": "query",
                        "description": "`text`: the certificate for people, as text/plain "
                        "(only the JSON document verifies); anything else: the JSON document.",
                        "schema": {"type": "string"},
                    },
                ],
                "responses": {
                    "200": json_response("SignedCertificate", "The certificate.", or_text=True),
                    "409": problem,
                    **errors,
                },
            }
        },
        "/v1/dsr/{request_id}/verify": change("Verify the requester's identity", {"method": text}),
        "/v1/dsr/{request_id}/approve": change("Approve a verified request"),
        "/v1/dsr/{request_id}/reject": change("Reject a request", {"reason": text}),
        "/v1/dsr/{request_id}/extend": change("Extend the deadline once", {"reason": text}),
        "/v1/dsr/{request_id}/cancel": change("Cancel a request before it runs"),
        "/v1/legal-holds": {
            "get": {
                "operationId": "holds_list",
                "tags": ["legal-holds"],
                "parameters": [
                    {"name": n, "in": "query", "schema": {"type": "string"}}
                    for n in ("region", "target_id", "active", "limit", "cursor")
                ],
                "responses": {"200": json_response("LegalHoldPage", "Legal holds."), **errors},
            },
            "post": {
                "operationId": "holds_create",
                "summary": "Hold a data subject or a record through erasures",
                "tags": ["legal-holds"],
                "requestBody": _object_body(
                    {
                        "target_id": {"type": "string"},
                        "reason": text,
                        "expires_at": {"type": "string", "format": "date-time"},
                    },
                    required=["target_id", "reason"],
                ),
                "responses": {
                    "201": {
                        **json_response("LegalHold", "The hold."),
                        "headers": {"Location": {"schema": {"type": "string"}}},
                    },
                    **errors,
                },
            },
        },
        "/v1/legal-holds/{hold_id}": {
            "delete": {
                "operationId": "holds_release",
                "tags": ["legal-holds"],
                "parameters": [
                    {
                        "name": "hold_id",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string"},
                    }
                ],
                "responses": {
                    "200": json_response("LegalHold", "The released hold."),
                    "409": problem,
                    **errors,
                },
            }
        },
    }
