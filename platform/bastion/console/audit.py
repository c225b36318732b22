"""The audit explorer: search events, who accessed a person's data, chain status.

Everything goes through `AuditAccess`, as `/v1/audit` does: the policy decides
which chains the officer or auditor may read, verify and export, and each query,
verification and export is itself recorded (`audit.read`, `audit.verify`,
`audit.export`) in every chain it touched.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from bastion.audit.access import AuditAccess, Caller
from bastion.audit.checkpoints import AuditCheckpoint
from bastion.audit.queries import FILTER_PARAMETERS, MAX_LIMIT, EventFilter, parse_filter
from bastion.console.pages import Visit, page
from bastion.errors import FieldError, Forbidden, ValidationFailed
from bastion.residency.databases import CONTROL

# `<input type="datetime-local">` sends minutes (or seconds) without a zone; the form
# says the times are UTC.
_LOCAL_TIME_RE = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(?::\d{2})?")
# "Who accessed this person's data" summarises at most this many of the newest events.
PERSON_EVENTS = 2 * MAX_LIMIT


def _access(visit: Visit) -> AuditAccess:
    state = visit.state
    return AuditAccess(state.audit, state.policy, regions=state.regions.names, clock=state.clock)


def _caller(visit: Visit) -> Caller:
    caller = visit.caller
    return Caller(caller.principal, caller.request_id, caller.client_address)


def _region(visit: Visit) -> str | None:
    region = visit.param("region")
    if region is not None and region != CONTROL and region not in visit.state.regions.names:
        raise ValidationFailed(
            "invalid audit query", [FieldError("region", "must be a region name (or control)")]
        )
    return region


def _filters(visit: Visit) -> tuple[dict[str, str], EventFilter]:
    """The query's filters as given (for the form and links) and parsed (422 naming
    each bad one)."""
    given: dict[str, str] = {}
    for name in FILTER_PARAMETERS:
        value = visit.param(name)
        if value is None:
            continue
        given[name] = value.strip()
    parsed = dict(given)
    for name in ("since", "until"):
        if name in parsed and _LOCAL_TIME_RE.fullmatch(parsed[name]):
            parsed[name] += "+00:00"
    return given, parse_filter(parsed)


@page
async def events(visit: Visit) -> Response:
    given, flt = _filters(visit)
    region = _region(visit)
    query = {**given, **({"region": region} if region else {})}
    page_of = await visit.call(
        _access(visit).events,
        _caller(visit),
        region,
        flt,
        limit=visit.page_size,
        cursor=visit.param("cursor"),
        descending=True,
    )
    return visit.render(
        "audit/events.html",
        events=page_of.data,
        pages=visit.pager(query, page_of.next_cursor),
        given=given,
        region=region,
        query=query,
        regions=_readable_chains(visit),
    )


@dataclass
class ActorSummary:
    actor: str
    events: int = 0
    denied: int = 0
    first: str = ""
    last: str = ""
    actions: set[str] = field(default_factory=set)


@page
async def person(visit: Visit) -> Response:
    """Who accessed one person's (or any record's) data: its events, summed up by actor."""
    record_id = visit.param("record_id")
    summary: list[ActorSummary] = []
    seen = 0
    capped = False
    if record_id is not None:
        flt = parse_filter({"record_id": record_id.strip()})
        access, caller = _access(visit), _caller(visit)
        actors: dict[str, ActorSummary] = {}
        cursor: str | None = None
        while seen < PERSON_EVENTS:
            found = await visit.call(
                access.events, caller, None, flt, limit=MAX_LIMIT, cursor=cursor, descending=True
            )
            for event in found.data:
                entry = actors.setdefault(event["actor"], ActorSummary(event["actor"]))
                entry.events += 1
                entry.denied += event["decision"] == "deny"
                entry.actions.add(event["action"])
                entry.last = entry.last or event["occurred_at"]  # newest first
                entry.first = event["occurred_at"]
            seen += len(found.data)
            cursor = found.next_cursor
            if cursor is None:
                break
        capped = cursor is not None
        summary = sorted(actors.values(), key=lambda a: a.last, reverse=True)
    return visit.render(
        "audit/person.html",
        record_id=record_id,
        summary=summary,
        seen=seen,
        capped=capped,
        limit=PERSON_EVENTS,
    )


@dataclass(frozen=True, slots=True)
class ChainStatus:
    chain: str
    checkpoint: AuditCheckpoint | None
    verified: dict[str, Any] | None  # the last audit.verify event of the chain
    may_verify: bool


@page
async def chains(visit: Visit) -> Response:
    return visit.render("audit/chains.html", chains=await _statuses(visit), report=None)


@page
async def verify(visit: Visit) -> Response:
    chain = visit.request.path_params["chain"]
    report = await visit.call(_access(visit).verify, _caller(visit), chain, None)
    return visit.render(
        "audit/chains.html", chains=await _statuses(visit), report=report.to_json(), chain=chain
    )


async def _statuses(visit: Visit) -> list[ChainStatus]:
    """Each chain the caller may read: its newest signed checkpoint and last verification."""
    access, caller = _access(visit), _caller(visit)
    statuses = []
    for chain in _readable_chains(visit):
        found, _verifier = await visit.call(access.checkpoints, caller, chain, before=None, limit=1)
        last = await visit.call(
            access.events,
            caller,
            chain,
            EventFilter(action="audit.verify"),
            limit=1,
            cursor=None,
            descending=True,
        )
        statuses.append(
            ChainStatus(
                chain=chain,
                checkpoint=found[0].to_json() if found else None,
                verified=last.data[0] if last.data else None,
                may_verify=_allowed(visit, "verify", chain),
            )
        )
    if not statuses:
        raise Forbidden("your roles do not allow reading the audit log in any of your regions")
    return statuses


def _allowed(visit: Visit, action: str, chain: str) -> bool:
    principal, policy = visit.principal, visit.state.policy
    regions = visit.state.regions.names if chain == CONTROL else (chain,)
    return all(
        region in principal.regions and policy.allows(principal.roles, region, "audit", action)
        for region in regions
    )


def _readable_chains(visit: Visit) -> list[str]:
    names = [r for r in visit.principal.regions if _allowed(visit, "read", r)]
    return [*names, CONTROL] if _allowed(visit, "read", CONTROL) else names


@page
async def export(visit: Visit) -> Response:
    _given, flt = _filters(visit)
    stream = await visit.call(_access(visit).export, _caller(visit), _region(visit), flt)

    def lines() -> Iterator[bytes]:
        for event in stream:
            yield json.dumps(event, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"

    stamp = visit.state.clock.now().strftime("%Y%m%dT%H%M%SZ")
    return StreamingResponse(
        lines(),
        media_type="application/x-ndjson",
        headers={"Content-Disposition": f'attachment; filename="audit-{stamp}.jsonl"'},
    )


routes = [
    Route("/audit", events, methods=["GET"]),
    Route("/audit/person", person, methods=["GET"]),
    Route("/audit/chains", chains, methods=["GET"]),
    Route("/audit/chains/{chain}/verify", verify, methods=["POST"]),
    Route("/audit/export", export, methods=["GET"]),
]
