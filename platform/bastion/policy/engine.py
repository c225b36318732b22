"""The loaded Casbin policy and the decision index compiled from it.

Casbin is the source of truth: `policies/model.conf` and `policies/policy.csv` are
loaded by pycasbin's own file adapter, and `Policy.enforcer` answers explain and
policy-test questions exactly as Casbin would. Requests, however, never call
`enforce`: it scans every policy line (milliseconds at a few thousand lines, see
research/policy-engine.md). At load time the policy is compiled into a dict keyed
by (role, region, entity, action); a request costs one dict lookup per role.
`tests/unit/policy` checks that the index and `enforce` agree on every request.

Deny overrides allow, across a principal's roles too: a principal holding `admin`
and `auditor` is denied what `auditor` is denied (separation of duties).
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import product
from pathlib import Path
from typing import Literal

import casbin

from bastion.policy.resources import RECORD_ACTIONS, resource_actions

ACTIONS = RECORD_ACTIONS
WILDCARD = "*"
_LINE_RE = re.compile(r"[A-Za-z0-9_.*\- ,]+")
Effect = Literal["allow", "deny"]


class PolicyError(Exception):
    """The policy files are missing or invalid; the message names file and line."""


@dataclass(frozen=True, slots=True)
class Rule:
    role: str
    region: str
    entity: str
    action: str
    effect: Effect


@dataclass(slots=True)
class Policy:
    """An immutable, loaded policy. Build a new one to reload; never mutate."""

    version: str
    enforcer: casbin.Enforcer
    rules: tuple[Rule, ...]
    roles: frozenset[str]
    regions: tuple[str, ...]
    entities: tuple[str, ...]
    resources: dict[str, tuple[str, ...]] = field(default_factory=dict)
    _index: dict[tuple[str, str, str, str], Effect] = field(default_factory=dict)
    _memo: dict[tuple[frozenset[str], str, str, str], bool] = field(default_factory=dict)

    def allows(self, roles: frozenset[str], region: str, entity: str, action: str) -> bool:
        """Whether a principal holding `roles` may do `action` on `entity` in `region`."""
        key = (roles, region, entity, action)
        decided = self._memo.get(key)
        if decided is None:
            effects = {self._index.get((role, region, entity, action)) for role in roles}
            decided = "allow" in effects and "deny" not in effects
            self._memo[key] = decided
        return decided

    def actions(self, roles: frozenset[str], region: str, entity: str) -> tuple[str, ...]:
        """The actions on `entity` (a CRM entity or a system resource) `roles` may take."""
        return tuple(
            a for a in self.resources.get(entity, ()) if self.allows(roles, region, entity, a)
        )

    def enforce(self, role: str, region: str, entity: str, action: str) -> bool:
        """Casbin's own decision for one role (slow; for explain and tests)."""
        return bool(self.enforcer.enforce(role, region, entity, action))


def load_policy(directory: Path, *, regions: Sequence[str], entities: Sequence[str]) -> Policy:
    """Load and validate `model.conf` + `policy.csv` from `directory`, then compile.

    Raises `PolicyError` naming the file and line of the first invalid rule, an
    unknown region, entity, action or effect included.
    """
    model_path = directory / "model.conf"
    policy_path = directory / "policy.csv"
    for path in (model_path, policy_path):
        if not path.is_file():
            raise PolicyError(f"policy file {path} does not exist")
    digest = hashlib.sha256(model_path.read_bytes() + b"\0" + policy_path.read_bytes())
    resources = resource_actions(tuple(entities))
    _check_lines(policy_path, regions=regions, resources=resources)
    # pycasbin logs every loaded line at INFO through the root logger's handlers.
    logging.getLogger("casbin").setLevel(logging.WARNING)
    try:
        enforcer = casbin.Enforcer(str(model_path), str(policy_path))
    except Exception as exc:  # pycasbin raises bare exceptions of many kinds
        raise PolicyError(f"{model_path}: cannot load the Casbin model: {exc}") from None
    rules = tuple(
        Rule(sub, dom, obj, act, eft) for sub, dom, obj, act, eft in enforcer.get_policy()
    )
    inherits = [tuple(link[:2]) for link in enforcer.get_grouping_policy()]
    roles = frozenset(r.role for r in rules) | frozenset(x for link in inherits for x in link)
    policy = Policy(
        version=digest.hexdigest()[:16],
        enforcer=enforcer,
        rules=rules,
        roles=roles,
        regions=tuple(regions),
        entities=tuple(entities),
        resources=resources,
    )
    policy._index.update(_compile(policy))
    return policy


def _compile(policy: Policy) -> dict[tuple[str, str, str, str], Effect]:
    index: dict[tuple[str, str, str, str], Effect] = {}
    for role in policy.roles:
        granted = {role, *policy.enforcer.get_implicit_roles_for_user(role)}
        mine = [r for r in policy.rules if r.role in granted]
        requests = (
            (region, entity, action)
            for region, (entity, actions) in product(policy.regions, policy.resources.items())
            for action in actions
        )
        for region, entity, action in requests:
            effects = {
                r.effect
                for r in mine
                if _covers(r.region, region)
                and _covers(r.entity, entity)
                and _covers(r.action, action)
            }
            if "deny" in effects:
                index[(role, region, entity, action)] = "deny"
            elif "allow" in effects:
                index[(role, region, entity, action)] = "allow"
    return index


def _covers(pattern: str, value: str) -> bool:
    return pattern in (WILDCARD, value)


def _check_lines(
    path: Path, *, regions: Iterable[str], resources: Mapping[str, tuple[str, ...]]
) -> None:
    known_regions = {*regions, WILDCARD}
    known_entities = {*resources, WILDCARD}
    all_actions = {a for actions in resources.values() for a in actions}
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise PolicyError(f"{path}: the file is not UTF-8") from None
    # Split exactly as Casbin does (on \n only), so the lines checked here are the
    # lines Casbin loads.
    for number, raw in enumerate(text.split("\n"), start=1):
        line = raw.strip(" \t")
        if not line or line.startswith("#"):
            continue
        where = f"{path}:{number}"
        if _LINE_RE.fullmatch(line) is None:
            raise PolicyError(
                f"{where}: only letters, digits, _ . - * and comma-separated spaces are "
                "allowed in a rule (Casbin reads brackets and control characters specially)"
            )
        parts = [p.strip() for p in line.split(",")]
        if parts[0] == "g":
            if len(parts) != 3 or not all(parts[1:]):
                raise PolicyError(f"{where}: a role link is `g, role, inherited_role`")
            continue
        if parts[0] != "p" or len(parts) != 6:
            raise PolicyError(f"{where}: a rule is `p, role, region, entity, action, allow|deny`")
        _, role, region, entity, action, effect = parts
        if not role:
            raise PolicyError(f"{where}: the role is empty")
        if region not in known_regions:
            raise PolicyError(f"{where}: unknown region {region!r}")
        if entity not in known_entities:
            raise PolicyError(f"{where}: unknown entity {entity!r}")
        allowed_actions = resources.get(entity, all_actions)
        if action != WILDCARD and action not in allowed_actions:
            raise PolicyError(f"{where}: unknown action {action!r} for {entity}")
        if effect not in ("allow", "deny"):
            raise PolicyError(f"{where}: the effect must be allow or deny")
