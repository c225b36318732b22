"""`GET /v1/automation/runs`: what workflow rules decided and did (`automation`)."""

from __future__ import annotations

from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from bastion.api.auth import caller_of, state_of
from bastion.api.pages import PAGE_PARAMETERS, page_of
from bastion.api.params import known_params, paging
from bastion.api.problems import JSON

_PARAMS = frozenset({"region", "record_id", "rule", "limit", "cursor"})


async def runs(request: Request) -> Response:
    caller = await caller_of(request)
    params = known_params(request, _PARAMS)
    page = await run_in_threadpool(
        state_of(request).automation.runs,
        caller,
        region=params.get("region"),
        record_id=params.get("record_id"),
        rule_id=params.get("rule"),
        **paging(params),
    )
    return JSON(page)


routes = [Route("/v1/automation/runs", runs, methods=["GET"])]

_RUN = {
    "type": "object",
    "properties": {
        "id": {"type": "string"},
        "region": {"type": "string"},
        "rule_id": {"type": "string"},
        "entity": {"type": "string"},
        "record_id": {"type": "string"},
        "trigger_id": {"type": "string"},
        "event_id": {"type": "string"},
        "outcome": {"type": "string", "enum": ["fired", "not_matched", "suppressed", "skipped"]},
        "reasons": {"type": "array", "items": {"type": "object"}},
        "plan": {"type": "array", "items": {"type": "object"}},
        "depth": {"type": "integer"},
        "decided_at": {"type": "string", "format": "date-time"},
        "effects": {"type": "array", "items": {"type": "object"}},
    },
    "required": ["id", "rule_id", "record_id", "outcome", "reasons", "plan", "effects"],
}


def openapi_paths(problem: dict[str, str]) -> dict[str, Any]:
    return {
        "/v1/automation/runs": {
            "get": {
                "operationId": "automation_runs",
                "summary": "What workflow rules decided about which events, why, and did",
                "tags": ["automation"],
                "parameters": [
                    {"name": "region", "in": "query", "schema": {"type": "string"}},
                    {"name": "record_id", "in": "query", "schema": {"type": "string"}},
                    {"name": "rule", "in": "query", "schema": {"type": "string"}},
                    *PAGE_PARAMETERS,
                ],
                "responses": {
                    "200": {
                        "description": "A page of runs.",
                        "content": page_of(_RUN),
                    },
                    "403": problem,
                    "422": problem,
                    "503": problem,
                },
            }
        }
    }
