"""`/v1/policy`: the running policy, its history, explain, batch checks and reload.

Anyone authenticated may explain or check decisions about *their own* roles
("why can't I see this field?"). Asking about other roles, reading the policy and
its history needs `read` on the `policy` resource; reloading needs `reload`.
"""

from __future__ import annotations

from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from bastion.api.auth import authenticate, state_of
from bastion.api.bodies import (
    PolicyCheckResult,
    PolicyChecks,
    PolicyHistory,
    PolicyReload,
    RunningPolicy,
    json_response,
)
from bastion.api.problems import JSON
from bastion.api.records import json_object
from bastion.errors import Conflict, FieldError, Forbidden, ValidationFailed
from bastion.policy.conditions import ConditionError, RecordFacts, record_facts
from bastion.policy.engine import Policy
from bastion.policy.explain import ExplainError, Explanation, explain
from bastion.policy.lint import Finding
from bastion.policy.rules import PolicyError
from bastion.principals.tokens import Principal
from bastion.state import State

MAX_CHECKS = 100
_QUESTION_KEYS = frozenset({"region", "target", "action", "record", "roles"})


def _require(state: State, principal: Principal, action: str) -> None:
    """A `policy` permission is not about any region's data: any of yours will do."""
    if not any(
        state.policy.allows(principal.roles, r, "policy", action) for r in principal.regions
    ):
        raise Forbidden(f"your roles do not allow {action} on the policy")


async def current(request: Request) -> Response:
    principal = await authenticate(request)
    state = state_of(request)
    _require(state, principal, "read")
    policy = state.policy
    active = await run_in_threadpool(state.policy_store.active_version)
    answer: RunningPolicy = {
        "version": policy.version,
        "active_version": active,
        "origin": policy.source.origin,
        "roles": sorted(policy.roles),
        "regions": list(policy.regions),
        "resources": {name: list(actions) for name, actions in policy.resources.items()},
    }
    return JSON(answer)


async def history(request: Request) -> Response:
    principal = await authenticate(request)
    state = state_of(request)
    _require(state, principal, "read")
    changes = await run_in_threadpool(state.policy_store.history)
    answer: PolicyHistory = {"data": [c.as_dict() for c in changes]}
    return JSON(answer)


async def explain_one(request: Request) -> Response:
    principal = await authenticate(request)
    state = state_of(request)
    body = await json_object(request)
    policy = state.policy
    explanation = _answer(state, policy, principal, body, "")
    return JSON(explanation.as_dict())


async def check(request: Request) -> Response:
    principal = await authenticate(request)
    state = state_of(request)
    body = await json_object(request)
    unknown = sorted(set(body) - {"checks", "roles"})
    checks = body.get("checks")
    errors = [FieldError(name, "is not a field of a check request") for name in unknown]
    if not isinstance(checks, list) or not checks or len(checks) > MAX_CHECKS:
        errors.append(FieldError("checks", f"must be a list of 1 to {MAX_CHECKS} questions"))
    if errors:
        raise ValidationFailed("invalid check request", errors)
    assert isinstance(checks, list)
    policy = state.policy
    results: list[PolicyCheckResult] = []
    for index, question in enumerate(checks):
        if not isinstance(question, dict):
            raise ValidationFailed(
                "invalid check request", [FieldError(f"checks.{index}", "must be an object")]
            )
        merged = {"roles": body["roles"], **question} if "roles" in body else question
        explanation = _answer(state, policy, principal, merged, f"checks.{index}.")
        results.append(
            {
                "target": explanation.target,
                "action": explanation.action,
                "region": explanation.region,
                "decision": "allow" if explanation.allowed else "deny",
                "reason": explanation.reason,
            }
        )
    answer: PolicyChecks = {"policy_version": policy.version, "results": results}
    return JSON(answer)


async def reload(request: Request) -> Response:
    principal = await authenticate(request)
    state = state_of(request)
    _require(state, principal, "reload")
    body = await json_object(request) if await request.body() else {}
    reason = body.get("reason", "reloaded through the API")
    if not isinstance(reason, str) or len(reason) > 500 or set(body) - {"reason"}:
        raise ValidationFailed(
            "invalid reload request",
            [FieldError("reason", "must be text of at most 500 characters")],
        )
    old = state.policy.version
    try:
        policy, change, findings = await run_in_threadpool(
            state.reload_policy, actor=principal.id, reason=reason
        )
    except PolicyError as exc:
        raise Conflict(
            f"the policy files were refused; version {old} keeps running: {exc}"
        ) from None
    answer: PolicyReload = {
        "old_version": old,
        "version": policy.version,
        "changed": change is not None,
        "warnings": [f.as_dict() for f in findings if _is_warning(f)],
    }
    return JSON(answer)


def _is_warning(finding: Finding) -> bool:
    return finding.severity == "warning"


def _answer(
    state: State, policy: Policy, principal: Principal, question: dict[str, Any], prefix: str
) -> Explanation:
    unknown = sorted(set(question) - _QUESTION_KEYS)
    if unknown:
        raise ValidationFailed(
            "invalid question",
            [FieldError(f"{prefix}{name}", "is not a field of a question") for name in unknown],
        )
    roles = question.get("roles")
    if roles is None:
        roles = sorted(principal.roles)
    elif not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
        raise ValidationFailed(
            "invalid question", [FieldError(f"{prefix}roles", "must be a list of role names")]
        )
    elif set(roles) != set(principal.roles):
        _require(state, principal, "read")
    region = question.get("region", principal.default_region if principal.regions else None)
    target, action = question.get("target"), question.get("action")
    errors = [
        FieldError(f"{prefix}{name}", "must be text")
        for name, value in (("region", region), ("target", target), ("action", action))
        if not isinstance(value, str) or not value or len(value) > 200
    ]
    record = question.get("record", {})
    if not isinstance(record, dict):
        errors.append(FieldError(f"{prefix}record", "must be an object"))
    if errors:
        raise ValidationFailed("invalid question", errors)
    assert isinstance(region, str)
    assert isinstance(target, str)
    assert isinstance(action, str)
    try:
        facts = _facts(target, record)
        return explain(policy, roles, region, target, action, facts)
    except (ExplainError, ConditionError) as exc:
        raise ValidationFailed(
            "invalid question", [FieldError(f"{prefix}question", str(exc))]
        ) from None


def _facts(target: str, record: dict[str, Any]) -> RecordFacts:
    entity = target.partition(".")[0]
    attributes = {k: v for k, v in record.items() if k not in ("owner", "team")}
    owner, team = record.get("owner", "other"), record.get("team", "other")
    if not isinstance(owner, str) or not isinstance(team, str):
        raise ConditionError("owner is self or other; team is mine or other")
    return record_facts(entity, attributes, owner=owner, team=team)


routes = [
    Route("/v1/policy", current, methods=["GET"]),
    Route("/v1/policy/history", history, methods=["GET"]),
    Route("/v1/policy/explain", explain_one, methods=["POST"]),
    Route("/v1/policy/check", check, methods=["POST"]),
    Route("/v1/policy/reload", reload, methods=["POST"]),
]


def openapi_paths(problem: dict[str, str]) -> dict[str, Any]:
    """The `/v1/policy` operations for the OpenAPI document."""
    question = {
        "type": "object",
        "additionalProperties": False,
        "required": ["target", "action"],
        "properties": {
            "roles": {
                "type": "array",
                "items": {"type": "string"},
                "description": "Roles to ask about (default: yours; others need policy read).",
            },
            "region": {"type": "string", "description": "Default: your first region."},
            "target": {
                "type": "string",
                "description": "An entity (contacts) or a field (contacts.email).",
            },
            "action": {
                "type": "string",
                "description": "read, list, create, update, delete; read or write for a field.",
            },
            "record": {
                "type": "object",
                "description": (
                    "The record asked about: owner (self|other), team (mine|other), field values."
                ),
            },
        },
    }
    errors = {"401": problem, "403": problem, "422": problem}
    return {
        "/v1/policy": {
            "get": {
                "operationId": "policy_current",
                "summary": "The running policy version, its roles and resources",
                "tags": ["policy"],
                "responses": {"200": json_response("RunningPolicy", "The policy."), **errors},
            }
        },
        "/v1/policy/history": {
            "get": {
                "operationId": "policy_history",
                "summary": "Every activation: who, when, old -> new version, the diff",
                "tags": ["policy"],
                "responses": {
                    "200": json_response("PolicyHistory", "The changes, newest first."),
                    **errors,
                },
            }
        },
        "/v1/policy/explain": {
            "post": {
                "operationId": "policy_explain",
                "summary": "A decision and the policy lines that produced it",
                "tags": ["policy"],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": question}},
                },
                "responses": {
                    "200": json_response("PolicyExplanation", "The explanation."),
                    **errors,
                },
            }
        },
        "/v1/policy/check": {
            "post": {
                "operationId": "policy_check",
                "summary": f"Up to {MAX_CHECKS} decisions at once",
                "tags": ["policy"],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "additionalProperties": False,
                                "required": ["checks"],
                                "properties": {
                                    "roles": {"type": "array", "items": {"type": "string"}},
                                    "checks": {
                                        "type": "array",
                                        "minItems": 1,
                                        "maxItems": MAX_CHECKS,
                                        "items": question,
                                    },
                                },
                            }
                        }
                    },
                },
                "responses": {"200": json_response("PolicyChecks", "The decisions."), **errors},
            }
        },
        "/v1/policy/reload": {
            "post": {
                "operationId": "policy_reload",
                "summary": "Load the policy files and activate them in every worker",
                "tags": ["policy"],
                "requestBody": {
                    "required": False,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "additionalProperties": False,
                                "properties": {"reason": {"type": "string", "maxLength": 500}},
                            }
                        }
                    },
                },
                "responses": {
                    "200": json_response("PolicyReload", "The version now active."),
                    "409": problem,
                    **errors,
                },
            }
        },
    }
