"""`/v1/{entity}` and `/v1/{entity}/{id}`: the CRM record routes.

Handlers parse HTTP (body, headers, query) and call `RecordService` in a worker
thread; the service runs the pipeline (route, authorize, validate, persist).
"""

from __future__ import annotations

import json
import re
from decimal import Decimal
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from bastion.api.auth import caller_of, state_of
from bastion.api.problems import JSON
from bastion.crm.listing import LIST_PARAMETERS, ListQuery
from bastion.crm.records import etag
from bastion.errors import BadRequest, MalformedBody, UnsupportedMediaType

_JSON_TYPES = ("application/json",)
_PARAMETER_RE = re.compile(r"[a-z][a-z0-9_]{0,63}")
_PATCH_TYPES = ("application/json", "application/merge-patch+json")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


async def json_object(request: Request, *, accept: tuple[str, ...] = _JSON_TYPES) -> dict[str, Any]:
    """The request body as a JSON object (numbers with fractions as exact Decimals)."""
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type not in accept:
        raise UnsupportedMediaType(f"send the body as {' or '.join(accept)}")
    raw = await request.body()
    try:
        body = json.loads(raw, parse_float=Decimal, parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise MalformedBody("the body is not well-formed UTF-8 JSON") from None
    if not isinstance(body, dict):
        raise MalformedBody("the body must be a JSON object")
    return body


def _record_response(record: dict[str, Any], status: int = 200, **headers: str) -> Response:
    return JSON(record, status_code=status, headers={"ETag": etag(record), **headers})


async def collection(request: Request) -> Response:
    caller = await caller_of(request)
    records = state_of(request).records
    entity = request.path_params["entity"]
    if request.method == "POST":
        body = await json_object(request)
        key = request.headers.get("idempotency-key")
        created = await run_in_threadpool(
            records.create,
            caller,
            entity,
            body,
            idempotency_key=key,
            allow_duplicate=_flag(request, "allow_duplicate"),
        )
        headers = {"Location": f"/v1/{entity}/{created.record['id']}"}
        if created.replayed:
            headers["Idempotent-Replayed"] = "true"
        return _record_response(created.record, 201, **headers)
    page = await run_in_threadpool(records.list_records, caller, entity, _list_query(request))
    return JSON({"data": page.data, "next_cursor": page.next_cursor})


async def item(request: Request) -> Response:
    caller = await caller_of(request)
    records = state_of(request).records
    entity, record_id = request.path_params["entity"], request.path_params["record_id"]
    if request.method == "GET":
        record = await run_in_threadpool(records.get, caller, entity, record_id)
        return _record_response(record)
    if_match = request.headers.get("if-match")
    if request.method == "PATCH":
        body = await json_object(request, accept=_PATCH_TYPES)
        record = await run_in_threadpool(
            records.update, caller, entity, record_id, body, if_match=if_match
        )
        return _record_response(record)
    await run_in_threadpool(records.delete, caller, entity, record_id, if_match=if_match)
    return Response(status_code=204)


async def convert_lead(request: Request) -> Response:
    caller = await caller_of(request)
    records = state_of(request).records
    body = await json_object(request) if await request.body() else {}
    result = await run_in_threadpool(
        records.convert_lead,
        caller,
        request.path_params["record_id"],
        body,
        if_match=request.headers.get("if-match"),
    )
    return JSON(
        {
            "lead": result.lead,
            "contact": result.contact,
            "account": result.account,
            "opportunity": result.opportunity,
        }
    )


def _flag(request: Request, name: str) -> bool:
    """A boolean query parameter of a write: absent, true or false; anything else is 400."""
    value = request.query_params.get(name)
    if value is None or value == "false":
        return False
    if value == "true":
        return True
    raise BadRequest(f"the query parameter {name!r} must be true or false")


def _list_query(request: Request) -> ListQuery:
    params: dict[str, str] = {}
    for name, value in request.query_params.multi_items():
        if not _PARAMETER_RE.fullmatch(name):
            raise BadRequest("a query parameter name is not a field name or list option")
        if name in params:
            raise BadRequest(f"the query parameter {name!r} is given more than once")
        params[name] = value
    return ListQuery(
        filters={k: v for k, v in params.items() if k not in LIST_PARAMETERS},
        limit=params.get("limit"),
        cursor=params.get("cursor"),
        sort=params.get("sort"),
        region=params.get("region"),
    )


routes = [
    Route("/v1/leads/{record_id}/convert", convert_lead, methods=["POST"]),
    Route("/v1/{entity}", collection, methods=["GET", "POST"]),
    Route("/v1/{entity}/{record_id}", item, methods=["GET", "PATCH", "DELETE"]),
]
