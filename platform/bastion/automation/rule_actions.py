"""The actions of workflow rules, checked when the rule files load (`rules`): each
problem names the action's key and what is expected."""

from __future__ import annotations

import re

from bastion.automation.model import TOPIC_RE, parse_duration
from bastion.crm.catalog import SYSTEM_FIELDS, EntitySpec
from bastion.crm.schemas import validate_patch
from bastion.errors import ValidationFailed

ACTIONS = ("set", "assign", "escalate", "create_task", "webhook")
TASK_TYPES = ("task", "call", "email", "meeting", "note")
# Which link of an activity names a record of each entity (cases: their person's).
TASK_LINKS = {
    "leads": "lead_id",
    "contacts": "contact_id",
    "accounts": "account_id",
    "opportunities": "opportunity_id",
    "cases": "contact_id",
}
_PRINCIPAL_RE = re.compile(r"prn_[0-9a-hjkmnp-tv-z]{26}")
_TEAM_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,63}")


def check_action(kind: str, spec: EntitySpec, options: object, problems: list[str]) -> None:
    """Add to `problems` what is wrong with an action of `kind` on `spec`'s records."""
    _CHECKS[kind](spec, options, problems)


def _check_set(spec: EntitySpec, options: object, problems: list[str]) -> None:
    if not isinstance(options, dict) or not options:
        problems.append("must map fields to the values to set")
        return
    for name in options:
        field_spec = spec.field(name) if isinstance(name, str) else None
        if field_spec is None or field_spec.read_only:
            problems.append(f"{spec.name} has no field {name!r} that can be written")
        elif field_spec.encrypted or field_spec.personal:
            # The plan of a fired rule is stored in the clear: no personal value in it.
            problems.append(f"{name}: automation sets plain, non-personal fields only")
    if problems:
        return
    try:
        validate_patch(spec, options)
    except ValidationFailed as exc:
        problems.extend(f"{error.field}: {error.message}" for error in exc.errors)


def _check_escalate(spec: EntitySpec, options: object, problems: list[str]) -> None:
    field_spec = spec.field(options) if isinstance(options, str) else None
    if field_spec is None or field_spec.type != "enum" or field_spec.read_only:
        problems.append(f"must name an enum field of {spec.name} (e.g. priority)")


def _check_assign(spec: EntitySpec, options: object, problems: list[str]) -> None:
    if not isinstance(options, dict):
        problems.append("must be a mapping: owner, round_robin or territory")
        return
    ways = [key for key in ("owner", "round_robin", "territory") if key in options]
    extra = set(options) - {"owner", "round_robin", "territory", "rotate"}
    problems.extend(f"{key}: is not an option of assign" for key in sorted(extra))
    if len(ways) != 1:
        problems.append("needs exactly one of owner, round_robin, territory")
        return
    if "rotate" in options and (ways != ["territory"] or not isinstance(options["rotate"], bool)):
        problems.append("rotate: is true or false, and only goes with territory")
    if "owner" in options and not _principal(options["owner"]):
        problems.append("owner: must be a principal id (prn_…)")
    if "round_robin" in options:
        _check_pool(options["round_robin"], problems)
    if "territory" in options:
        _check_territory(spec, options["territory"], problems)


def _check_pool(pool: object, problems: list[str]) -> None:
    if not isinstance(pool, dict) or len(pool) != 1 or next(iter(pool)) not in ("team", "owners"):
        problems.append("round_robin: must be {team: T} or {owners: [prn_…, …]}")
        return
    if "team" in pool and not _team(pool["team"]):
        problems.append("round_robin.team: must be a team id")
    owners = pool.get("owners", ["prn_" + "0" * 26])
    if not isinstance(owners, list) or not 1 <= len(owners) <= 50:
        problems.append("round_robin.owners: must list 1 to 50 principal ids")
    elif not all(_principal(o) for o in owners):
        problems.append("round_robin.owners: must be principal ids (prn_…)")


def _check_territory(spec: EntitySpec, territory: object, problems: list[str]) -> None:
    if not isinstance(territory, dict) or set(territory) - {"field", "teams", "default"}:
        problems.append("territory: must be {field: F, teams: {value: team}, default: team}")
        return
    name = territory.get("field")
    field_spec = spec.field(name) if isinstance(name, str) else None
    if field_spec is None or field_spec.encrypted or name in SYSTEM_FIELDS:
        problems.append(f"territory.field: must be a plain field of {spec.name}")
    teams = territory.get("teams")
    if not isinstance(teams, dict) or not teams or not all(_team(t) for t in teams.values()):
        problems.append("territory.teams: must map field values to team ids")
    if "default" in territory and not _team(territory["default"]):
        problems.append("territory.default: must be a team id")


def _check_task(spec: EntitySpec, options: object, problems: list[str]) -> None:
    if spec.name not in TASK_LINKS:
        problems.append(f"an activity cannot be about {spec.name}")
    if not isinstance(options, dict) or set(options) - {"subject", "due_in", "type"}:
        problems.append("must be {subject: …, due_in: 4h, type: task}")
        return
    subject = options.get("subject")
    if not isinstance(subject, str) or not 1 <= len(subject) <= 255:
        problems.append("subject: must be text of 1 to 255 characters")
    if options.get("type", "task") not in TASK_TYPES:
        problems.append(f"type: must be one of {', '.join(TASK_TYPES)}")
    if "due_in" in options:
        try:
            parse_duration(options["due_in"])
        except ValueError as exc:
            problems.append(f"due_in: {exc}")


def _check_webhook(spec: EntitySpec, options: object, problems: list[str]) -> None:
    if not isinstance(options, str) or TOPIC_RE.fullmatch(options) is None:
        problems.append("must be a topic: dotted lower-case words, e.g. lead.hot")


def _principal(value: object) -> bool:
    return isinstance(value, str) and _PRINCIPAL_RE.fullmatch(value) is not None


def _team(value: object) -> bool:
    return isinstance(value, str) and _TEAM_RE.fullmatch(value) is not None


_CHECKS = {
    "set": _check_set,
    "escalate": _check_escalate,
    "assign": _check_assign,
    "create_task": _check_task,
    "webhook": _check_webhook,
}
