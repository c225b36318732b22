"""`/v1/audit/...`: query, verify, checkpoint and export the audit chains.

Handlers parse the query string and call `AuditAccess` (authorization, and the
`audit.*` event recording the access) in a worker thread. `openapi_paths()`
describes these operations for the OpenAPI document.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Iterator
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from bastion.api.auth import authenticate, state_of
from bastion.api.bodies import AuditCheckpointPage, json_response
from bastion.api.params import all_checked
from bastion.api.problems import JSON
from bastion.audit.access import AuditAccess, Caller
from bastion.audit.queries import (
    DEFAULT_LIMIT,
    FILTER_PARAMETERS,
    MAX_LIMIT,
    parse_filter,
    parse_limit,
)
from bastion.audit.witness import MAX_NOTE_BYTES
from bastion.errors import (
    BadRequest,
    FieldError,
    PayloadTooLarge,
    UnsupportedMediaType,
    ValidationFailed,
)
from bastion.principals.tokens import Principal

_REGION_RE = re.compile(r"[a-z][a-z0-9]{1,15}")
_SEQ_MAX = 1 << 62
NDJSON = "application/x-ndjson"


def _params(request: Request, allowed: tuple[str, ...]) -> dict[str, str]:
    """The query parameters (`params.all_checked`), and a region that names one."""
    params = all_checked(request, allowed)
    region = params.get("region")
    if region is not None and _REGION_RE.fullmatch(region) is None:
        raise ValidationFailed(
            "invalid query parameters",
            [FieldError("region", "must be a region name (or control)")],
        )
    return params


def _sequence_number(params: dict[str, str], name: str) -> int | None:
    raw = params.get(name)
    if raw is None:
        return None
    if not raw.isdigit() or not 1 <= int(raw) < _SEQ_MAX:
        raise ValidationFailed("invalid query parameters", [FieldError(name, "must be >= 1")])
    return int(raw)


def _required_region(params: dict[str, str]) -> str:
    region = params.get("region")
    if region is None:
        raise ValidationFailed("a region is required", [FieldError("region", "is required")])
    return region


def _caller(request: Request, principal: Principal) -> Caller:
    request_id = request.scope.get("state", {}).get("request_id")
    host = request.client.host if request.client else None
    try:
        address = str(ipaddress.ip_address(host)) if host else None
    except ValueError:
        address = None  # a proxy's or test client's label, not an address
    return Caller(
        principal, request_id if isinstance(request_id, str) else None, client_address=address
    )


def _access(request: Request) -> AuditAccess:
    state = state_of(request)
    return AuditAccess(state.audit, state.policy, regions=state.regions.names, clock=state.clock)


async def events(request: Request) -> Response:
    """A page of events, merged by time across the chosen (or all permitted) regions."""
    principal = await authenticate(request)
    params = _params(request, (*FILTER_PARAMETERS, "region", "limit", "cursor", "order"))
    flt = parse_filter(params)
    limit = parse_limit(params.get("limit"))
    order = params.get("order", "desc")
    if order not in ("asc", "desc"):
        raise ValidationFailed("invalid order", [FieldError("order", "must be asc or desc")])
    page = await run_in_threadpool(
        _access(request).events,
        _caller(request, principal),
        params.get("region"),
        flt,
        limit=limit,
        cursor=params.get("cursor"),
        descending=order == "desc",
    )
    return JSON({"data": page.data, "next_cursor": page.next_cursor})


async def verify(request: Request) -> Response:
    """Verify one chain: `ok`, or the first bad sequence number and what is wrong.

    `from` may be at most one past the head (422 naming `from` otherwise). POST
    sends a signed checkpoint note (text/plain) kept outside the database: the
    chain must also agree with it (see `bastion.audit.witness`).
    """
    principal = await authenticate(request)
    params = _params(request, ("region", "from"))
    region = _required_region(params)
    from_seq = _sequence_number(params, "from")
    access = _access(request)
    note = None
    if request.method == "POST":
        access.chains(principal, "verify", region)  # 403/404 before the body's 415/422
        note = await _witness_note(request)
    report = await run_in_threadpool(
        access.verify, _caller(request, principal), region, from_seq, note
    )
    return JSON(report.to_json())


async def _witness_note(request: Request) -> str:
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type != "text/plain":
        raise UnsupportedMediaType("send the signed checkpoint note as text/plain")
    raw = await request.body()
    if len(raw) > MAX_NOTE_BYTES:
        raise PayloadTooLarge(f"a signed checkpoint note is at most {MAX_NOTE_BYTES} bytes")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ValidationFailed(
            "the witness checkpoint is not usable", [FieldError("body", "must be UTF-8 text")]
        ) from None


async def checkpoints(request: Request) -> Response:
    principal = await authenticate(request)
    access = _access(request)
    caller = _caller(request, principal)
    if request.method == "POST":
        params = _params(request, ("region",))
        checkpoint, created = await run_in_threadpool(
            access.create_checkpoint, caller, _required_region(params)
        )
        return JSON(checkpoint.to_json(), status_code=201 if created else 200)
    params = _params(request, ("region", "limit", "cursor"))
    region = _required_region(params)
    limit = parse_limit(params.get("limit"), default=DEFAULT_LIMIT)
    # The cursor is the tree size to continue below: public, so it needs no sealing.
    cursor = params.get("cursor")
    if cursor is not None and (not cursor.isdigit() or len(cursor) > 19):
        raise BadRequest("the cursor is invalid")
    before = int(cursor) if cursor is not None else None
    found, verifier = await run_in_threadpool(
        access.checkpoints, caller, region, before=before, limit=limit + 1
    )
    if "text/plain" in request.headers.get("accept", "") and "json" not in request.headers.get(
        "accept", ""
    ):
        # The newest checkpoint as a signed note, for a witness to store as is.
        return PlainTextResponse(found[0].note if found else "", status_code=200 if found else 204)
    page = found[:limit]
    body: AuditCheckpointPage = {
        "data": [c.to_json() for c in page],
        "verifier_key": verifier,
        "next_cursor": str(page[-1].tree_size) if len(found) > limit else None,
    }
    return JSON(body)


async def export(request: Request) -> Response:
    """Matching events as JSON lines (SIEM-friendly), oldest first, with their hashes."""
    principal = await authenticate(request)
    params = _params(request, (*FILTER_PARAMETERS, "region"))
    flt = parse_filter(params)
    stream = await run_in_threadpool(
        _access(request).export, _caller(request, principal), params.get("region"), flt
    )

    def lines() -> Iterator[bytes]:
        for event in stream:
            yield json.dumps(event, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"

    return StreamingResponse(lines(), media_type=NDJSON)


routes = [
    Route("/v1/audit/events", events, methods=["GET"]),
    Route("/v1/audit/verify", verify, methods=["GET", "POST"]),
    Route("/v1/audit/checkpoints", checkpoints, methods=["GET", "POST"]),
    Route("/v1/audit/export", export, methods=["GET"]),
]


def openapi_paths() -> dict[str, Any]:
    """The OpenAPI 3.1 path items of the audit routes (merged into /openapi.json)."""
    problem = {"$ref": "#/components/responses/Problem"}
    errors = dict.fromkeys(("401", "403", "404", "422", "503"), problem)
    region = {
        "name": "region",
        "in": "query",
        "schema": {"type": "string"},
        "description": "A region name, or `control` for the control-plane chain.",
    }
    required_region = {**region, "required": True}
    filters = [
        {"name": "actor", "in": "query", "schema": {"type": "string"}},
        {"name": "record_id", "in": "query", "schema": {"type": "string"}},
        {"name": "entity", "in": "query", "schema": {"type": "string"}},
        {"name": "action", "in": "query", "schema": {"type": "string"}},
        {"name": "decision", "in": "query", "schema": {"enum": ["allow", "deny"]}},
        {"name": "since", "in": "query", "schema": {"type": "string", "format": "date-time"}},
        {"name": "until", "in": "query", "schema": {"type": "string", "format": "date-time"}},
    ]
    event = {
        "type": "object",
        "description": "An audit event: ids and names only, never record values.",
        "properties": {
            "id": {"type": "string"},
            "chain": {"type": "string"},
            "seq": {"type": ["integer", "null"], "description": "Null until chained."},
            "occurred_at": {"type": "string", "format": "date-time"},
            "actor": {"type": "string"},
            "action": {"type": "string"},
            "entity": {"type": "string"},
            "decision": {"enum": ["allow", "deny"]},
            "record_ids": {"type": "array", "items": {"type": "string"}},
            "fields": {"type": "array", "items": {"type": "string"}},
            "reason": {"type": ["string", "null"]},
            "policy_version": {"type": ["string", "null"]},
            "request_id": {"type": ["string", "null"]},
            "client_address": {"type": ["string", "null"]},
            "details": {"type": "object"},
            "redacted": {"type": "boolean"},
        },
    }
    verify_parameters = [
        required_region,
        {
            "name": "from",
            "in": "query",
            "schema": {"type": "integer", "minimum": 1},
            "description": "Start here; at most one past the head (422 otherwise).",
        },
    ]
    verified = json_response(
        "AuditVerification",
        "`ok`, or the first bad sequence number and what is wrong; "
        "`time_anomalies` counts events dated outside the signed checkpoint times.",
    )
    return {
        "/v1/audit/events": {
            "get": {
                "operationId": "list_audit_events",
                "summary": "Query audit events across your regions (or one), newest first",
                "tags": ["audit"],
                "parameters": [
                    *filters,
                    region,
                    {
                        "name": "limit",
                        "in": "query",
                        "schema": {
                            "type": "integer",
                            "minimum": 1,
                            "maximum": MAX_LIMIT,
                            "default": DEFAULT_LIMIT,
                        },
                    },
                    {"name": "cursor", "in": "query", "schema": {"type": "string"}},
                    {"name": "order", "in": "query", "schema": {"enum": ["asc", "desc"]}},
                ],
                "responses": {
                    "200": {
                        "description": "A page of events.",
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "properties": {
                                        "data": {"type": "array", "items": event},
                                        "next_cursor": {"type": ["string", "null"]},
                                    },
                                }
                            }
                        },
                    },
                    "400": problem,
                    **errors,
                },
            }
        },
        "/v1/audit/verify": {
            "get": {
                "operationId": "verify_audit_chain",
                "summary": "Re-walk a chain and its signed checkpoints",
                "tags": ["audit"],
                "parameters": verify_parameters,
                "responses": {"200": verified, **errors},
            },
            "post": {
                "operationId": "verify_audit_chain_against_witness",
                "summary": "Re-walk a chain and check it against a checkpoint kept elsewhere",
                "description": (
                    "The body is a signed checkpoint note (as `GET /v1/audit/checkpoints` "
                    "with `Accept: text/plain` returns it). A chain that was rewritten or "
                    "truncated since is reported even if its stored checkpoints were deleted."
                ),
                "tags": ["audit"],
                "parameters": verify_parameters,
                "requestBody": {
                    "required": True,
                    "content": {"text/plain": {"schema": {"type": "string"}}},
                },
                "responses": {
                    "200": verified,
                    "409": problem,
                    "413": problem,
                    "415": problem,
                    **errors,
                },
            },
        },
        "/v1/audit/checkpoints": {
            "get": {
                "operationId": "list_audit_checkpoints",
                "summary": "Signed checkpoints, newest first (text/plain: the newest note)",
                "tags": ["audit"],
                "parameters": [
                    required_region,
                    {"name": "limit", "in": "query", "schema": {"type": "integer"}},
                    {"name": "cursor", "in": "query", "schema": {"type": "string"}},
                ],
                "responses": {
                    "200": json_response(
                        "AuditCheckpointPage",
                        "Checkpoints and the chain's verifier key (text/plain: the newest note).",
                        or_text=True,
                    ),
                    "204": {"description": "No checkpoint yet (text/plain asked for)."},
                    **errors,
                },
            },
            "post": {
                "operationId": "create_audit_checkpoint",
                "summary": "Chain pending events and sign a checkpoint now",
                "tags": ["audit"],
                "parameters": [required_region],
                "responses": {
                    "201": json_response("AuditCheckpoint", "A new checkpoint."),
                    "200": json_response("AuditCheckpoint", "The head already had this one."),
                    "409": problem,
                    **errors,
                },
            },
        },
        "/v1/audit/export": {
            "get": {
                "operationId": "export_audit_events",
                "summary": "Stream matching events as JSON lines, with their hashes",
                "tags": ["audit"],
                "parameters": [*filters, region],
                "responses": {
                    "200": {
                        "description": "One event per line.",
                        "content": {NDJSON: {"schema": {"type": "string"}}},
                    },
                    **errors,
                },
            }
        },
    }
