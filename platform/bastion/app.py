"""`create_app(settings)`: the Starlette application.

The lifespan builds the `State` (one engine per region, the control database,
the loaded policy) and disposes of it on shutdown. Tests pass a ready `State`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware

from bastion.api import analytics as analytics_api
from bastion.api import audit, docs, dsr, openapi, policy, records, system
from bastion.api import automation as automation_api
from bastion.api import duplicates as duplicates_api
from bastion.api import events as events_api
from bastion.api import export as export_api
from bastion.api import imports as imports_api
from bastion.api import merges as merges_api
from bastion.api import scoring as scoring_api
from bastion.api import webhooks as webhooks_api
from bastion.api.limits import RateLimit
from bastion.api.middleware import RequestContext
from bastion.api.problems import on_bastion_error, on_http_exception
from bastion.config import Settings, load_settings
from bastion.console.pages import Console
from bastion.console.routes import console_routes
from bastion.errors import BastionError
from bastion.logs import configure_logging
from bastion.state import State, build_state


def create_app(settings: Settings, *, state: State | None = None) -> Starlette:
    """The application for `settings`. With `state`, the caller owns its lifetime."""

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        owned = state is None
        app.state.bastion = state if state is not None else build_state(settings)
        # This process's audit sequencer: chains and checkpoints in the background.
        app.state.bastion.audit.start()
        # Follows the policy version activated in the control database (hot reload).
        app.state.bastion.policy_watcher.start()
        # Background jobs (data subjects' requests, automation): run here on the
        # embedded default, else by `bastion worker`.
        if app.state.bastion.runs_jobs_in_process:
            app.state.bastion.jobs.start()
        try:
            yield
        finally:
            app.state.bastion.jobs.stop()
            app.state.bastion.policy_watcher.stop()
            app.state.bastion.audit.stop()
            if owned:
                app.state.bastion.close()

    app = Starlette(
        # Audit before records: `/v1/{entity}` would otherwise claim `/v1/audit/...`.
        routes=[
            *system.routes,
            *openapi.routes,
            *docs.routes,
            *audit.routes,
            *policy.routes,
            *dsr.routes,
            *analytics_api.routes,
            *duplicates_api.routes,
            *export_api.routes,
            *imports_api.routes,
            *merges_api.routes,
            *events_api.routes,
            *scoring_api.routes,
            *webhooks_api.routes,
            *automation_api.routes,
            *console_routes(),
            *records.routes,
        ],
        middleware=[
            Middleware(
                RequestContext,
                max_body_bytes=settings.max_body_bytes,
                # A CSV import's body is a file, not a JSON document.
                larger_bodies={"/v1/imports": settings.imports.max_file_bytes},
            ),
            Middleware(RateLimit, settings=settings.limits),
        ],
        exception_handlers={
            BastionError: on_bastion_error,
            HTTPException: on_http_exception,
        },
        lifespan=lifespan,
    )
    app.state.console = Console(settings)
    if state is not None:
        app.state.bastion = state
    return app


def app_from_environment() -> Starlette:
    """Factory for `uvicorn --factory` (several workers): settings from the environment."""
    settings = load_settings()
    configure_logging(settings.log_format, settings.log_level)
    return create_app(settings)
