"""RFC 9457 problem+json responses for every error Bastion answers with."""

from __future__ import annotations

import json
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from bastion.errors import BadRequest, BastionError, MethodNotAllowed, NotFound

PROBLEM_JSON = "application/problem+json"


class JSON(JSONResponse):
    """Compact UTF-8 JSON (values are already JSON-safe: see crm.service.to_json_value)."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=False, separators=(",", ":")).encode()


def problem(error: BastionError, request_id: str | None = None) -> Response:
    body: dict[str, Any] = {
        "type": error.type_uri,
        "title": error.title,
        "status": error.status,
        "detail": error.detail,
    }
    errors = getattr(error, "errors", None)
    if errors:
        body["errors"] = [{"field": e.field, "message": e.message} for e in errors]
    region = getattr(error, "region", None)
    if region is not None:
        body["region"] = region
    for key, value in error.extensions.items():
        body.setdefault(key, value)
    if request_id is not None:
        body["request_id"] = request_id
    headers: dict[str, str] = {}
    allowed = getattr(error, "allowed", None)
    if allowed:
        headers["Allow"] = ", ".join(allowed)
    if error.status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="bastion"'
    location = getattr(error, "location", None)
    if location is not None:
        headers["Location"] = location  # a redirect answered as a problem (a merged record)
    retry_after = getattr(error, "retry_after", None)
    if retry_after is not None:
        headers["Retry-After"] = str(retry_after)
    elif error.status == 503:
        headers["Retry-After"] = "5"
    return JSON(body, status_code=error.status, headers=headers, media_type=PROBLEM_JSON)


def _request_id(request: Request) -> str | None:
    value = request.scope.get("state", {}).get("request_id")
    return value if isinstance(value, str) else None


async def on_bastion_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, BastionError)
    return problem(exc, _request_id(request))


async def on_http_exception(request: Request, exc: Exception) -> Response:
    """Starlette's own 404/405 (no route, wrong method) as problems."""
    assert isinstance(exc, HTTPException)
    if exc.status_code == 405:
        allowed = (exc.headers or {}).get("Allow", "")
        error: BastionError = MethodNotAllowed(
            f"{request.method} is not allowed here", [m.strip() for m in allowed.split(",") if m]
        )
    elif exc.status_code == 404:
        error = NotFound("there is no such resource; see /openapi.json")
    else:
        error = BadRequest(exc.detail if isinstance(exc.detail, str) else "the request failed")
    return problem(error, _request_id(request))
