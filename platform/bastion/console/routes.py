"""The console's routes, mounted at `/console` by `bastion.app`."""

from __future__ import annotations

from pathlib import Path

from starlette.responses import Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from bastion.console import audit, dsr, keys, policy, records
from bastion.console.pages import PATH, Visit, page
from bastion.console.sessions import login, logout
from bastion.errors import NotFound

STATIC = Path(__file__).parent / "static"


@page
async def home(visit: Visit) -> Response:
    """Who is logged in, and the sections their roles open."""
    return visit.render(
        "home.html", session=visit.session, idle_minutes=visit.console.settings.idle_minutes
    )


@page
async def not_found(visit: Visit) -> Response:
    raise NotFound("there is no such console page")


def console_routes() -> list[BaseRoute]:
    """`/console/...`: the pages, the login, and the static CSS and script."""
    return [
        Mount(
            PATH,
            routes=[
                Route("/", home, methods=["GET"]),
                Route("/login", login, methods=["GET", "POST"]),
                Route("/logout", logout, methods=["POST"]),
                *dsr.routes,
                *audit.routes,
                *policy.routes,
                *records.routes,
                *keys.routes,
                Mount("/static", app=StaticFiles(directory=STATIC), name="console-static"),
                Route("/{path:path}", not_found, methods=["GET", "POST"]),
            ],
        )
    ]
