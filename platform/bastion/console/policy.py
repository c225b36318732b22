"""The policy workbench: what a role may do, why, and what a change would change.

For security teams (and compliance officers): it needs `read` on the `policy`
resource in one of the caller's regions, as `/v1/policy` does. Its pages are
GET forms (they change nothing):

- effective permissions of a role in a region: per entity its actions and row
  scopes, and per field whether the role reads and writes it always, never or
  under a condition (the compiled policy the pipeline enforces);
- a record as role X sees it: the record is read as the *logged-in* principal
  through the record pipeline (audited, masked by the caller's own rights); the
  role's read mask is then applied to what the caller could see, so no value the
  caller may not read is ever shown;
- explain a decision (`policy.explain`: the decision, every matching line, and
  whether Casbin and the compiled index agree);
- diff two policy versions from the policy history (`policy.diff`);
- run the policy test cases of the policy directory against the running policy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from starlette.responses import Response
from starlette.routing import Route

from bastion.console.pages import Visit, page
from bastion.crm.catalog import ENTITIES, ENTITIES_BY_PREFIX, EntitySpec
from bastion.errors import FieldError, Forbidden, NotFound, ValidationFailed
from bastion.policy.cases import CaseError, load_checks, run_checks
from bastion.policy.compiled import FieldAccess
from bastion.policy.conditions import ConditionError, RecordFacts, record_facts
from bastion.policy.diff import access_text, diff
from bastion.policy.engine import Policy, build_policy
from bastion.policy.explain import ExplainError, explain
from bastion.policy.resources import SYSTEM_RESOURCES
from bastion.policy.rules import PolicyError
from bastion.policy.store import text_diff
from bastion.residency.ids import InvalidId, RecordId

_OWNERS = ("other", "self")
_TEAMS = ("other", "mine")


def _require_read(visit: Visit) -> Policy:
    policy = visit.state.policy
    principal = visit.principal
    if not any(policy.allows(principal.roles, r, "policy", "read") for r in principal.regions):
        raise Forbidden("your roles do not allow read on the policy")
    return policy


def _one_of(visit: Visit, name: str, allowed: tuple[str, ...] | frozenset[str]) -> str | None:
    value = visit.param(name)
    if value is not None and value not in allowed:
        raise ValidationFailed(
            "invalid question", [FieldError(name, f"must be one of {', '.join(sorted(allowed))}")]
        )
    return value


def _choices(policy: Policy) -> dict[str, Any]:
    return {
        "roles": sorted(policy.roles),
        "regions": list(policy.regions),
        "entities": list(ENTITIES),
        "owners": _OWNERS,
        "teams": _TEAMS,
    }


@dataclass(frozen=True, slots=True)
class FieldRow:
    name: str
    classification: str
    read: str
    write: str


@dataclass(frozen=True, slots=True)
class EntityRights:
    entity: str
    scopes: dict[str, str]  # action -> row scope, for the actions allowed
    fields: list[FieldRow]


@page
async def workbench(visit: Visit) -> Response:
    policy = _require_read(visit)
    role = _one_of(visit, "role", policy.roles)
    region = _one_of(visit, "region", tuple(policy.regions))
    rights: list[EntityRights] = []
    resources: dict[str, list[str]] = {}
    if role is not None and region is not None:
        roles = frozenset({role})
        for name, spec in ENTITIES.items():
            read = policy.mask(roles, region, name, "read")
            write = policy.mask(roles, region, name, "write")
            rights.append(
                EntityRights(
                    entity=name,
                    scopes={
                        action: policy.scope(roles, region, name, action).describe()
                        for action in policy.actions(roles, region, name)
                    },
                    fields=[
                        FieldRow(
                            f.name,
                            f.classification,
                            access_text(read, f.name),
                            "read-only" if f.read_only else access_text(write, f.name),
                        )
                        for f in spec.fields
                    ],
                )
            )
        resources = {r: list(policy.actions(roles, region, r)) for r in SYSTEM_RESOURCES}
    active = await visit.call(visit.state.policy_store.active_version)
    return visit.render(
        "policy/workbench.html",
        policy=policy,
        active_version=active,
        role=role,
        region=region,
        rights=rights,
        resources=resources,
        **_choices(policy),
    )


@dataclass(frozen=True, slots=True)
class SeenField:
    name: str
    verdict: str  # "reads", "withheld", "undetermined", "erased", "restricted"
    note: str  # why (a condition, the field the verdict depends on)
    shown: bool  # whether `value` is shown (the role reads it and so may the caller)
    value: Any


@page
async def view_as(visit: Visit) -> Response:
    policy = _require_read(visit)
    role = _one_of(visit, "role", policy.roles)
    owner = _one_of(visit, "owner", _OWNERS) or "other"
    team = _one_of(visit, "team", _TEAMS) or "other"
    record_id = visit.param("record_id")
    context: dict[str, Any] = {
        "role": role,
        "owner": owner,
        "team": team,
        "record_id": record_id,
        "record": None,
        **_choices(policy),
    }
    if role is not None and record_id is not None:
        spec = _entity_of(record_id.strip())
        record = await visit.call(visit.state.records.get, visit.caller, spec.name, record_id)
        context |= _as_role(policy, spec, record, role, owner, team)
        context["record"] = record
        context["entity"] = spec.name
    return visit.render("policy/view_as.html", **context)


def _entity_of(record_id: str) -> EntitySpec:
    try:
        parsed = RecordId.parse(record_id)
    except InvalidId:
        raise ValidationFailed(
            "invalid question", [FieldError("record_id", "must be a record id (con_eu_…)")]
        ) from None
    spec = ENTITIES_BY_PREFIX.get(parsed.prefix)
    if spec is None:
        raise NotFound("no CRM record has that id")
    return spec


def _as_role(
    policy: Policy, spec: EntitySpec, record: dict[str, Any], role: str, owner: str, team: str
) -> dict[str, Any]:
    """Role `role`'s view of `record` (what the caller could read of it)."""
    roles, region = frozenset({role}), str(record["region"])
    scope = policy.scope(roles, region, spec.name, "read")
    mask = policy.mask(roles, region, spec.name, "read")
    visible = {name for name in record if name in {f.name for f in spec.fields}}
    needed = set().union(*(_condition_fields(a) for a in mask.conditional.values()))
    known = {name: record[name] for name in needed & visible}
    facts = _facts(spec.name, known, owner, team)
    erased, restricted = set(record.get("_erased", ())), set(record.get("_restricted", ()))
    fields = []
    for f in spec.fields:
        access = mask.conditional.get(f.name)
        blind = sorted(_condition_fields(access) - visible) if access is not None else []
        if f.name in erased or f.name in restricted:
            verdict = "erased" if f.name in erased else "restricted"
            fields.append(SeenField(f.name, verdict, "", False, None))
        elif blind:
            note = f"depends on {', '.join(blind)}, which you may not read"
            fields.append(SeenField(f.name, "undetermined", note, False, None))
        elif f.name in mask.permitted(facts):
            note = "" if f.name in mask.always else access_text(mask, f.name)
            fields.append(SeenField(f.name, "reads", note, f.name in visible, record.get(f.name)))
        else:
            note = access_text(mask, f.name) if access is not None else ""
            fields.append(SeenField(f.name, "withheld", note, False, None))
    return {
        "covered": scope.covers(facts.scopes),
        "scope": scope.describe(),
        "seen": fields,
    }


def _condition_fields(access: FieldAccess) -> set[str]:
    """The fields the conditions of a field's rules look at."""
    return {n for c in (*access.allows, *access.denies) if c is not None for n in c.fields}


def _facts(entity: str, values: dict[str, Any], owner: str, team: str) -> RecordFacts:
    try:
        return record_facts(entity, values, owner=owner, team=team)
    except ConditionError as exc:
        raise ValidationFailed("invalid question", [FieldError("record", str(exc))]) from None


@page
async def explain_page(visit: Visit) -> Response:
    policy = _require_read(visit)
    roles = [r for r in visit.request.query_params.getlist("roles") if r]
    region = _one_of(visit, "region", tuple(policy.regions))
    target, action = visit.param("target"), visit.param("action")
    owner = _one_of(visit, "owner", _OWNERS) or "other"
    team = _one_of(visit, "team", _TEAMS) or "other"
    values_text = visit.param("values") or ""
    explanation = None
    if roles and region and target and action:
        values = _values(values_text)
        entity = target.partition(".")[0]
        try:
            facts = record_facts(entity, values, owner=owner, team=team)
            explanation = explain(policy, roles, region, target, action, facts).as_dict()
        except (ExplainError, ConditionError) as exc:
            raise ValidationFailed("invalid question", [FieldError("question", str(exc))]) from None
    return visit.render(
        "policy/explain.html",
        chosen_roles=roles,
        region=region,
        target=target,
        action=action,
        owner=owner,
        team=team,
        values=values_text,
        explanation=explanation,
        **_choices(policy),
    )


def _values(text: str) -> dict[str, str]:
    """`field=value` lines (the record's values the question is about)."""
    values: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line:
            continue
        name, sep, value = line.partition("=")
        if not sep or not name.strip():
            raise ValidationFailed(
                "invalid question", [FieldError("values", f"line {number} is not field=value")]
            )
        values[name.strip()] = value.strip()
    if len(values) > 50:
        raise ValidationFailed("invalid question", [FieldError("values", "at most 50 values")])
    return values


@page
async def diff_page(visit: Visit) -> Response:
    _require_read(visit)
    store = visit.state.policy_store
    history = await visit.call(store.history, 50)
    versions = list(
        dict.fromkeys(
            v for change in history for v in (change.new_version, change.old_version) if v
        )
    )
    before = _one_of(visit, "before", tuple(versions))
    after = _one_of(visit, "after", tuple(versions))
    changes = None
    text = ""
    if before is not None and after is not None:
        old_source = await visit.call(store.source, before)
        new_source = await visit.call(store.source, after)
        if old_source is None or new_source is None:
            raise NotFound("that policy version is not recorded")
        regions = visit.state.regions.names
        try:
            old, new = (build_policy(s, regions=regions) for s in (old_source, new_source))
        except PolicyError as exc:
            raise ValidationFailed(
                "a version does not load", [FieldError("before", str(exc)[:300])]
            ) from None
        changes = diff(old, new)
        text = text_diff(old_source, new_source)
    return visit.render(
        "policy/diff.html",
        history=history,
        versions=versions,
        before=before,
        after=after,
        changes=changes,
        text=text,
    )


@page
async def tests_page(visit: Visit) -> Response:
    policy = _require_read(visit)
    directory = visit.state.settings.policies_dir / "tests"
    try:
        checks = await visit.call(load_checks, directory)
    except CaseError as exc:
        raise ValidationFailed(
            "the policy test cases do not load", [FieldError("cases", str(exc)[:500])]
        ) from None
    outcomes = await visit.call(run_checks, policy, checks)
    failed = [o for o in outcomes if not o.passed]
    cases = sorted({o.check.source for o in outcomes})
    return visit.render(
        "policy/tests.html",
        policy=policy,
        outcomes=outcomes,
        failed=failed,
        cases=len(cases),
        directory=directory,
    )


routes = [
    Route("/policy", workbench, methods=["GET"]),
    Route("/policy/view-as", view_as, methods=["GET"]),
    Route("/policy/explain", explain_page, methods=["GET"]),
    Route("/policy/diff", diff_page, methods=["GET"]),
    Route("/policy/tests", tests_page, methods=["GET"]),
]
