"""Logging in and out of the console.

`GET /console/login` shows the form (and sets the login form's own CSRF cookie);
`POST /console/login` exchanges the bearer token typed into it for a session
(`SessionService.open`) and sets the session cookie: `HttpOnly` (no script reads
it), `Secure` (see `ConsoleSettings.cookie_secure`), `SameSite=Strict` (no other
site's page or link sends it) and `Path=/console` (the API never sees it). A wrong
token answers 401, which counts against the client address's failed-authentication
allowance like any bad bearer token (`api.limits`). `POST /console/logout` ends
the session.
"""

from __future__ import annotations

import secrets

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from bastion.api.auth import state_of
from bastion.console.csrf import FIELD, CsrfRefused
from bastion.console.forms import read_form
from bastion.console.pages import (
    COOKIE,
    PATH,
    Console,
    Visit,
    client_address,
    console_of,
    page,
    safe_next,
    secured,
)
from bastion.errors import BastionError, Unauthenticated

LOGIN_COOKIE = "bastion_console_login"
LOGIN_PATH = f"{PATH}/login"
_LOGIN_FORM_SECONDS = 15 * 60
_REASONS = {
    "ended": "Your session ended. Log in again to continue.",
    "logout": "You are logged out.",
}


async def login(request: Request) -> Response:
    console = console_of(request)
    if request.method == "GET":
        return secured(
            _form(console, request, request.query_params.get("next"), status=200, error=None)
        )
    try:
        form = await read_form(request)
        nonce = request.cookies.get(LOGIN_COOKIE)
        if not nonce:
            raise CsrfRefused("the login form has expired; reload the page and log in again")
        console.csrf.check(request, "login", nonce, form.get(FIELD))
        token = form.text("token", max_length=200)
        next_path = form.get("next")
        assert token is not None
    except BastionError as exc:
        return secured(console.error(request, exc, None))
    state = state_of(request)
    client = client_address(request)
    try:
        opened = await run_in_threadpool(state.sessions.open, token, client_address=client)
    except Unauthenticated:
        return secured(
            _form(
                console,
                request,
                next_path,
                status=401,
                error="That token is invalid, expired or revoked.",
            )
        )
    previous = request.cookies.get(COOKIE)
    if previous:
        await run_in_threadpool(state.sessions.close, previous, client_address=client)
    response = RedirectResponse(safe_next(next_path), status_code=303)
    console.set_cookie(
        response,
        request,
        COOKIE,
        opened.secret,
        max_age=int((opened.session.expires_at - opened.session.created_at).total_seconds()),
        path=PATH,
    )
    response.delete_cookie(LOGIN_COOKIE, path=LOGIN_PATH)
    return secured(response)


def _form(
    console: Console, request: Request, next_path: str | None, *, status: int, error: str | None
) -> Response:
    """The login page (going on to `next_path` after), with a fresh login-form token
    and its cookie."""
    nonce = secrets.token_urlsafe(32)
    reason = request.query_params.get("reason")
    response = console.render(
        request,
        "login.html",
        {
            "principal": None,
            "nav": None,
            "csrf_token": console.csrf.token("login", nonce),
            "next": safe_next(next_path),
            "notice": _REASONS.get(reason or ""),
            "error": error,
        },
        status=status,
    )
    console.set_cookie(
        response, request, LOGIN_COOKIE, nonce, max_age=_LOGIN_FORM_SECONDS, path=LOGIN_PATH
    )
    return response


@page
async def logout(visit: Visit) -> Response:
    await visit.call(
        visit.state.sessions.close, visit.secret, client_address=visit.caller.client_address
    )
    response = visit.redirect(LOGIN_PATH, reason="logout")
    response.delete_cookie(COOKIE, path=PATH)
    return response
