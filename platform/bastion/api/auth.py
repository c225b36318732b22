"""Bearer-token authentication for every /v1 request."""

from __future__ import annotations

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from bastion.errors import Unauthenticated
from bastion.principals.caller import Caller
from bastion.principals.tokens import Principal
from bastion.state import State


def state_of(request: Request) -> State:
    state = request.app.state.bastion
    assert isinstance(state, State)
    return state


async def authenticate(request: Request) -> Principal:
    header = request.headers.get("authorization")
    if header is None:
        raise Unauthenticated("this request needs an Authorization: Bearer <token> header")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated("the Authorization header must be: Bearer <token>")
    tokens = state_of(request).tokens
    presented = token.strip()
    # A token this worker checked moments ago needs no database, so no thread either.
    principal = tokens.authenticate_cached(presented)
    if principal is not None:
        return principal
    return await run_in_threadpool(tokens.authenticate, presented)


async def caller_of(request: Request) -> Caller:
    """The authenticated principal, with the request id and client address the audit
    events of this request carry."""
    principal = await authenticate(request)
    request_id = request.scope.get("state", {}).get("request_id")
    client = request.client.host if request.client else None
    return Caller.of(principal, request_id if isinstance(request_id, str) else None, client)
