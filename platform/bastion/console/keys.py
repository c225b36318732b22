"""Keys and regions: each region's KEK versions, rotation status and health.

The key status (what `bastion keys status` prints) needs `read` on the `keys`
resource in the region (security admins); each region shown records a `keys.read`
event in its own audit chain, and a region refused records a denied one. Health
is what `/readyz` checks, per region: the database answers, the key service
answers, the audit chain keeps up. Rotating and retiring KEKs stay on the
command line (`bastion keys rotate-kek | retire-kek`): a rotation runs for
minutes and retiring destroys a key for good.
"""

from __future__ import annotations

from dataclasses import dataclass

from starlette.responses import Response
from starlette.routing import Route

from bastion.audit.events import AuditEvent
from bastion.audit.sequencer import ChainHealth
from bastion.console.pages import Visit, page
from bastion.crypto.rotation import KekStatus, kek_status
from bastion.errors import Forbidden
from bastion.state import State


@dataclass(frozen=True, slots=True)
class RegionHealth:
    region: str
    database: bool
    keys: bool
    chain: ChainHealth | None


@page
async def keys(visit: Visit) -> Response:
    state, principal = visit.state, visit.principal
    allowed = [
        r for r in principal.regions if state.policy.allows(principal.roles, r, "keys", "read")
    ]
    refused = [r for r in principal.regions if r not in allowed]
    if refused:
        await visit.call(_record, visit, refused, "deny")
    if not allowed:
        raise Forbidden("your roles do not allow reading key status in any of your regions")
    statuses: list[KekStatus] = []
    for region in allowed:
        statuses.append(await visit.call(kek_status, state.keys, region))
    await visit.call(_record, visit, allowed, "allow")
    health = await visit.call(_health, state)
    return visit.render("keys.html", statuses=statuses, health=health)


def _record(visit: Visit, regions: list[str], decision: str) -> None:
    caller = visit.caller
    for region in regions:
        visit.state.audit.record(
            region,
            AuditEvent.new(
                visit.state.clock,
                actor=caller.principal.id,
                action="keys.read",
                entity="keys",
                decision="allow" if decision == "allow" else "deny",
                reason=None if decision == "allow" else "policy:action-denied",
                policy_version=visit.state.policy.version,
                request_id=caller.request_id,
                client_address=caller.client_address,
            ),
        )


def _health(state: State) -> list[RegionHealth]:
    chains = {chain.chain: chain for chain in state.audit.health().chains}
    return [
        RegionHealth(
            region=name,
            database=state.regions.get(name).ping(),
            keys=state.keys.ping(name),
            chain=chains.get(name),
        )
        for name in state.regions.names
    ]


routes = [Route("/keys", keys, methods=["GET"])]
