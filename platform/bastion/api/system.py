"""`/v1/me`, `/healthz` and `/readyz`."""

from __future__ import annotations

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from bastion.api.auth import authenticate, state_of
from bastion.api.bodies import ChainHealth, Health, Liveness, Me, Readiness
from bastion.api.problems import JSON
from bastion.crm.permissions import effective_permissions, system_permissions


async def me(request: Request) -> Response:
    """The caller and what the policy lets it do, per entity and region."""
    principal = await authenticate(request)
    policy = state_of(request).policy
    body: Me = {
        "id": principal.id,
        "name": principal.name,
        "roles": sorted(principal.roles),
        "regions": list(principal.regions),
        "teams": list(principal.teams),
        "policy_version": policy.version,
        "permissions": effective_permissions(policy, principal),
        "resources": system_permissions(policy, principal),
    }
    return JSON(body)


async def healthz(_request: Request) -> Response:
    """Liveness: the process answers. Says nothing about databases (see /readyz)."""
    body: Liveness = {"status": "ok"}
    return JSON(body)


async def readyz(request: Request) -> Response:
    """Readiness: every database answers, every region's key service answers, and the
    audit log keeps up. 503 names what does not (unauthenticated: states only)."""
    state = state_of(request)
    databases = [state.control, *(state.regions.get(name) for name in state.regions.names)]
    checks: dict[str, Health] = {}
    for database in databases:
        checks[database.name] = "ok" if await run_in_threadpool(database.ping) else "unavailable"
    keys: dict[str, Health] = {
        region: "ok" if await run_in_threadpool(state.keys.ping, region) else "unavailable"
        for region in state.regions.names
    }
    audit = await run_in_threadpool(state.audit.health)
    chains: dict[str, ChainHealth] = {
        chain.chain: "ok" if chain.ok else "behind or unavailable" for chain in audit.chains
    }
    ready = (
        all(status == "ok" for status in checks.values())
        and all(status == "ok" for status in keys.values())
        and audit.ok
    )
    body: Readiness = {
        "status": "ready" if ready else "unavailable",
        "databases": checks,
        "keys": keys,
        "audit": {"sequencer": audit.sequencer, "chains": chains},
    }
    return JSON(body, status_code=200 if ready else 503)


routes = [
    Route("/v1/me", me, methods=["GET"]),
    Route("/healthz", healthz, methods=["GET"]),
    Route("/readyz", readyz, methods=["GET"]),
]
