"""Pure-ASGI middleware around every request: request id, body limit, security
headers, access log, and the last-resort 500 (logged without message or locals,
answered as a problem).
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Mapping
from typing import Any

import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bastion.api.problems import problem
from bastion.errors import BastionError, PayloadTooLarge

log = structlog.get_logger("bastion.api")

_REQUEST_ID_RE = re.compile(r"[A-Za-z0-9._:-]{1,128}")

# On every response unless the route set its own (the /docs page sets a CSP that
# admits its one inline style). Responses carry personal data: never cached, never
# framed, never sniffed into another type, no referrer leaves with a link.
SECURITY_HEADERS = (
    (b"x-content-type-options", b"nosniff"),
    (b"cache-control", b"no-store"),
    (b"content-security-policy", b"default-src 'none'; frame-ancestors 'none'"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-resource-policy", b"same-origin"),
    (b"strict-transport-security", b"max-age=31536000; includeSubDomains"),
)


class InternalError(BastionError):
    status = 500
    slug = "internal-error"
    title = "Internal error"


class RequestContext:
    def __init__(
        self, app: ASGIApp, *, max_body_bytes: int, larger_bodies: Mapping[str, int] | None = None
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        # Exact paths whose bodies may be larger (a CSV import's file).
        self.larger_bodies = dict(larger_bodies or {})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _incoming_request_id(scope) or uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(request_id=request_id)
        started = time.perf_counter()
        status = 0
        response_started = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                status = message["status"]
                response_started = True
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _value in headers}
                headers += [h for h in SECURITY_HEADERS if h[0] not in present]
                headers.append((b"x-request-id", request_id.encode()))
                message = {**message, "headers": headers}
            await send(message)

        try:
            limit = self.larger_bodies.get(scope["path"], self.max_body_bytes)
            declared = _content_length(scope)
            if declared is not None and declared > limit:
                await _send_problem(send_with_id, _too_large(limit), request_id)
            else:
                await self.app(scope, _limited(receive, limit), send_with_id)
        except Exception as exc:
            log.error("request_failed", exc_info=exc)
            if not response_started:
                await _send_problem(
                    send_with_id,
                    InternalError("an internal error occurred; quote the request id to support"),
                    request_id,
                )
        finally:
            route = scope.get("route")
            log.info(
                "request",
                method=scope["method"],
                route=getattr(route, "path", None),
                status=status,
                duration_ms=round((time.perf_counter() - started) * 1000, 2),
            )
            structlog.contextvars.clear_contextvars()


def _incoming_request_id(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == b"x-request-id":
            text = value.decode("latin-1")
            return text if _REQUEST_ID_RE.fullmatch(text) else None
    return None


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            return int(value) if value.isdigit() else None
    return None


def _too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"the request body exceeds the limit of {limit} bytes")


def _limited(receive: Receive, limit: int) -> Receive:
    """A `receive` that fails with 413 once the body passes `limit` bytes."""
    seen = 0

    async def wrapped() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise _too_large(limit)
        return message

    return wrapped


async def _send_problem(send: Send, error: BastionError, request_id: str) -> None:
    response = problem(error, request_id)

    async def no_body() -> Message:
        return {"type": "http.disconnect"}

    scope: dict[str, Any] = {"type": "http"}
    await response(scope, no_body, send)
