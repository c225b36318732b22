"""One console request from start to finish: session, form, CSRF, handler, page.

Every console page is a handler `async def view(visit: Visit) -> Response` wrapped
in `@page`, which

1. resumes the session named by the cookie (no cookie, or a session that ended:
   a browser is sent to the login page, anything else gets 401 problem+json);
2. for a POST, reads the URL-encoded form and checks its CSRF token (403 without);
3. runs the handler, which calls the same services as the API in a worker thread
   (`visit.call`) as the logged-in principal (`visit.caller`);
4. renders a `BastionError` as an HTML page with the same status for a browser
   (`Accept: text/html`), as problem+json for anything else -- naming fields, never
   a value;
5. sets the console's Content-Security-Policy: scripts, styles and images from the
   console's own origin only, no inline script or style, no frames, forms posted
   only back to it.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
from typing import Any, ParamSpec, TypeVar
from urllib.parse import urlencode

from jinja2 import Environment, PackageLoader, StrictUndefined
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from bastion.api.auth import state_of
from bastion.api.problems import problem
from bastion.config import Settings
from bastion.console.csrf import FIELD, Csrf
from bastion.console.forms import Form, read_form
from bastion.console.settings import ConsoleSettings
from bastion.crm.catalog import ENTITIES
from bastion.errors import BastionError, Unauthenticated
from bastion.principals.caller import Caller
from bastion.principals.sessions import ConsoleSession, SessionEnded
from bastion.principals.tokens import Principal
from bastion.state import State, derived_key

COOKIE = "bastion_console"
PATH = "/console"
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)
# Where a login may send the browser on: console paths only, never another site.
_NEXT_RE = re.compile(r"/console(?:/[A-Za-z0-9_.~/-]*)?(?:\?[A-Za-z0-9_.~=&%+-]*)?")

P = ParamSpec("P")
T = TypeVar("T")


class Console:
    """What the console needs beyond `State`: templates, CSRF key, cookie rules."""

    def __init__(self, settings: Settings) -> None:
        self.settings: ConsoleSettings = settings.console
        self.csrf = Csrf(derived_key(settings, b"bastion console csrf v1"))
        self.templates = Environment(
            loader=PackageLoader("bastion.console", "templates"),
            autoescape=True,
            undefined=StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.templates.filters["when"] = when

    def render(
        self, request: Request, template: str, context: dict[str, Any], status: int = 200
    ) -> HTMLResponse:
        text = self.templates.get_template(template).render(
            request_path=request.url.path, **context
        )
        return HTMLResponse(text, status_code=status)

    def cookie_secure(self, request: Request) -> bool:
        """`Secure` on the cookie, unless turned off and the client is on loopback."""
        if self.settings.cookie_secure:
            return True
        address = client_address(request)
        return address is None or not ipaddress.ip_address(address).is_loopback

    def set_cookie(
        self,
        response: Response,
        request: Request,
        name: str,
        value: str,
        *,
        max_age: int,
        path: str,
    ) -> None:
        response.set_cookie(
            name,
            value,
            max_age=max_age,
            path=path,
            secure=self.cookie_secure(request),
            httponly=True,
            samesite="strict",
        )

    def error(self, request: Request, error: BastionError, visit: Visit | None) -> Response:
        """`error` as an HTML page for a browser, as problem+json for anything else."""
        if not wants_html(request):
            return problem(error, _request_id(request))
        context: dict[str, Any] = {
            "error": error,
            "fields": list(getattr(error, "errors", ())),
            "request_id": _request_id(request),
        }
        if visit is not None:
            context |= visit.context()
        else:
            context |= {"principal": None, "nav": None, "csrf_token": ""}
        response = self.render(request, "error.html", context, status=error.status)
        retry_after = getattr(error, "retry_after", None)
        if retry_after is not None:
            response.headers["Retry-After"] = str(retry_after)
        return response

    def not_logged_in(self, request: Request, error: Unauthenticated) -> Response:
        """A browser goes to the login page (and back here after); others get 401."""
        if not wants_html(request):
            return problem(error, _request_id(request))
        query = {"next": request.url.path}
        if isinstance(error, SessionEnded):
            query["reason"] = "ended"
        response = RedirectResponse(f"{PATH}/login?{urlencode(query)}", status_code=303)
        if COOKIE in request.cookies:
            response.delete_cookie(COOKIE, path=PATH)
        return response


def console_of(request: Request) -> Console:
    console = request.app.state.console
    assert isinstance(console, Console)
    return console


def wants_html(request: Request) -> bool:
    return "text/html" in request.headers.get("accept", "")


def secured(response: Response) -> Response:
    response.headers["Content-Security-Policy"] = CSP
    # Links to other sites carry no referrer; the console's own requests name their
    # origin (the CSRF check compares it).
    response.headers["Referrer-Policy"] = "same-origin"
    return response


def safe_next(value: str | None) -> str:
    """Where to go after logging in: a console path, else the console's start page."""
    if value and _NEXT_RE.fullmatch(value) and "//" not in value:
        return value
    return f"{PATH}/"


def client_address(request: Request) -> str | None:
    """The client's IP address for audit events (None when it reports no IP address)."""
    host = request.client.host if request.client else None
    try:
        return str(ipaddress.ip_address(host)) if host else None
    except ValueError:
        return None


def _request_id(request: Request) -> str | None:
    value = request.scope.get("state", {}).get("request_id")
    return value if isinstance(value, str) else None


def when(value: Any) -> str:
    """An ISO 8601 time (or datetime) as people read it: `2026-11-24 09:00 UTC`."""
    if value is None or value == "":
        return "\N{EN DASH}"
    moment = value if isinstance(value, datetime) else None
    if moment is None:
        try:
            moment = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
        except ValueError:
            return str(value)
    return moment.strftime("%Y-%m-%d %H:%M UTC")


@dataclass(frozen=True, slots=True)
class Nav:
    """The sections a principal may open (links to the others are not shown)."""

    dsr: bool
    audit: bool
    policy: bool
    keys: bool
    entities: tuple[str, ...]


def nav_for(state: State, principal: Principal) -> Nav:
    policy = state.policy

    def anywhere(resource: str, action: str) -> bool:
        return any(
            policy.allows(principal.roles, region, resource, action) for region in principal.regions
        )

    return Nav(
        dsr=anywhere("dsr", "list"),
        audit=anywhere("audit", "read"),
        policy=anywhere("policy", "read"),
        keys=anywhere("keys", "read"),
        entities=tuple(name for name in ENTITIES if anywhere(name, "list")),
    )


@dataclass(frozen=True, slots=True)
class Pager:
    first: str | None
    next: str | None


@dataclass
class Visit:
    """One request of a logged-in principal."""

    request: Request
    state: State
    console: Console
    session: ConsoleSession
    secret: str
    form: Form = field(default_factory=Form)

    @property
    def principal(self) -> Principal:
        return self.session.principal

    @property
    def caller(self) -> Caller:
        return Caller(self.principal, _request_id(self.request), client_address(self.request))

    @property
    def page_size(self) -> int:
        return self.console.settings.page_size

    @cached_property
    def nav(self) -> Nav:
        return nav_for(self.state, self.principal)

    def param(self, name: str) -> str | None:
        """A query parameter (None when absent or empty)."""
        value = self.request.query_params.get(name)
        return value if value else None

    async def call(self, function: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run a (synchronous, transaction-holding) service call in a worker thread."""
        return await run_in_threadpool(function, *args, **kwargs)

    def context(self) -> dict[str, Any]:
        return {
            "principal": self.principal,
            "nav": self.nav,
            "csrf_token": self.console.csrf.token("session", self.secret),
        }

    def render(self, template: str, status: int = 200, **context: Any) -> HTMLResponse:
        return self.console.render(self.request, template, self.context() | context, status)

    def pager(self, query: dict[str, str], next_cursor: str | None) -> Pager:
        """Links to the first and the next keyset page of a list filtered by `query`."""
        path = self.request.url.path
        base = f"{path}?{urlencode(query)}" if query else path
        joiner = "&" if query else "?"
        return Pager(
            first=base if self.param("cursor") else None,
            next=f"{base}{joiner}{urlencode({'cursor': next_cursor})}" if next_cursor else None,
        )

    def redirect(self, path: str, **query: str) -> RedirectResponse:
        """303 See Other after a post (the browser then GETs the page)."""
        target = f"{path}?{urlencode(query)}" if query else path
        return RedirectResponse(target, status_code=303)


Handler = Callable[[Visit], Awaitable[Response]]


def page(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    """The endpoint for a console page (see the module docstring)."""

    @functools.wraps(handler)
    async def endpoint(request: Request) -> Response:
        console = console_of(request)
        state = state_of(request)
        secret = request.cookies.get(COOKIE)
        try:
            if secret is None:
                raise Unauthenticated("log in to the console first")
            session = await run_in_threadpool(state.sessions.resume, secret)
        except Unauthenticated as exc:
            return secured(console.not_logged_in(request, exc))
        visit = Visit(request, state, console, session, secret)
        try:
            if request.method == "POST":
                visit.form = await read_form(request)
                console.csrf.check(request, "session", secret, visit.form.get(FIELD))
            response = await handler(visit)
        except BastionError as exc:
            response = console.error(request, exc, visit)
        return secured(response)

    return endpoint
