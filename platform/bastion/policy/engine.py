"""The loaded policy: Casbin as the source of truth, a compiled index for requests.

`policies/model.conf` and `policies/policy.csv` are loaded by pycasbin's own file
adapter; `Policy.enforce` and `Policy.enforce_field` answer exactly as Casbin does
(explain and `bastion policy test` use them). Requests use the compiled index
(`bastion.policy.compiled`), which tests prove equal to `enforce`.

A `Policy` never changes once built: a reload builds a new one aside and swaps one
reference (`PolicyHolder`), so a request sees one policy from start to end.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import casbin

from bastion.crm.catalog import ENTITIES, EntitySpec
from bastion.policy.compiled import CompiledPolicy, FieldMask, RowScope
from bastion.policy.conditions import RecordFacts, condition_holds, scope_covers
from bastion.policy.resources import RECORD_ACTIONS, resource_actions
from bastion.policy.rules import (
    FieldAction,
    ParsedPolicy,
    PolicyError,
    catalog_groups,
    parse_policy,
)

__all__ = ["ACTIONS", "Policy", "PolicyError", "PolicySource", "build_policy", "load_policy"]

ACTIONS = RECORD_ACTIONS
MODEL_FILE = "model.conf"
POLICY_FILE = "policy.csv"
# The request and policy shapes Bastion compiles; a model.conf that changes them
# would make the index and Casbin disagree, so it is refused.
_EXPECTED_MODEL = {
    ("r", "r"): ["r_sub", "r_dom", "r_obj", "r_act", "r_rec"],
    ("r", "r2"): ["r2_sub", "r2_dom", "r2_obj", "r2_act", "r2_rec"],
    ("p", "p"): ["p_sub", "p_dom", "p_obj", "p_act", "p_scope", "p_eft"],
    ("p", "p2"): ["p2_sub", "p2_dom", "p2_obj", "p2_act", "p2_cond", "p2_eft"],
}
_CASBIN_LOCK = threading.Lock()  # pycasbin enforcers are not thread-safe


@dataclass(frozen=True, slots=True)
class PolicySource:
    """The text of a policy: what its version hashes and what a reload ships around."""

    model_text: str
    policy_text: str
    origin: str  # the directory it was read from, or where else it came from

    @property
    def version(self) -> str:
        digest = hashlib.sha256(
            self.model_text.encode() + b"\0" + self.policy_text.encode()
        ).hexdigest()
        return digest[:16]

    @classmethod
    def from_directory(cls, directory: Path) -> PolicySource:
        texts = []
        for name in (MODEL_FILE, POLICY_FILE):
            path = directory / name
            if not path.is_file():
                raise PolicyError(f"policy file {path} does not exist")
            try:
                texts.append(path.read_bytes().decode("utf-8"))
            except UnicodeDecodeError:
                raise PolicyError(f"{path}: the file is not UTF-8") from None
            except OSError as exc:
                raise PolicyError(f"cannot read {path}: {exc.strerror}") from None
        return cls(texts[0], texts[1], str(directory))


class Policy:
    """A loaded, immutable policy and its decision index."""

    def __init__(
        self,
        *,
        source: PolicySource,
        parsed: ParsedPolicy,
        enforcer: casbin.Enforcer,
        regions: tuple[str, ...],
        entities: tuple[str, ...],
        resources: Mapping[str, tuple[str, ...]],
        catalog: Mapping[str, EntitySpec],
    ) -> None:
        self.source = source
        self.version = source.version
        self.parsed = parsed
        self.enforcer = enforcer
        self.regions = regions
        self.entities = entities
        self.resources = dict(resources)
        self.catalog = catalog
        self.roles = parsed.roles
        self.implied_roles = {
            role: frozenset({role, *enforcer.get_implicit_roles_for_user(role)})
            for role in self.roles
        }
        self.compiled = CompiledPolicy(
            entity_rules=parsed.entity_rules,
            field_rules=parsed.field_rules,
            implied_roles=self.implied_roles,
            regions=regions,
            resources=self.resources,
        )

    # -- the request path: compiled ----------------------------------------------------

    def scope(self, roles: frozenset[str], region: str, resource: str, action: str) -> RowScope:
        """The rows `roles` may take `action` on; `permits_any` is False when forbidden."""
        return self.compiled.scope(roles, region, resource, action)

    def allows(self, roles: frozenset[str], region: str, resource: str, action: str) -> bool:
        """Whether `roles` may take `action` on `resource` in `region` (on some rows)."""
        return self.compiled.scope(roles, region, resource, action).permits_any

    def actions(self, roles: frozenset[str], region: str, resource: str) -> tuple[str, ...]:
        """The actions on `resource` (a CRM entity or a system resource) `roles` may take."""
        return tuple(
            a for a in self.resources.get(resource, ()) if self.allows(roles, region, resource, a)
        )

    def mask(
        self, roles: frozenset[str], region: str, entity: str, action: FieldAction
    ) -> FieldMask:
        """The fields of `entity` `roles` may read or write in `region`."""
        return self.compiled.mask(roles, region, entity, action)

    # -- Casbin itself: explain and tests ----------------------------------------------

    def enforce(
        self,
        roles: str | Sequence[str],
        region: str,
        resource: str,
        action: str,
        facts: RecordFacts | None = None,
    ) -> bool:
        """Casbin's own decision for a principal holding `roles` (slow; not for requests)."""
        facts = facts or RecordFacts(resource)
        return self._enforce(roles, None, region, resource, action, facts)

    def enforce_field(
        self,
        roles: str | Sequence[str],
        region: str,
        entity: str,
        field: str,
        action: FieldAction,
        facts: RecordFacts | None = None,
    ) -> bool:
        """Casbin's own decision on one field (slow; not for requests)."""
        facts = facts or RecordFacts(entity)
        return self._enforce(roles, "2", region, f"{entity}.{field}", action, facts)

    def enforce_ex(
        self,
        roles: str | Sequence[str],
        kind: str | None,
        region: str,
        obj: str,
        action: str,
        facts: RecordFacts,
    ) -> tuple[bool, list[str]]:
        """Casbin's decision and the rule it names (`kind` "2" for field rules)."""
        role_list = [roles] if isinstance(roles, str) else list(roles)
        with _CASBIN_LOCK:
            subject = role_list[0] if len(role_list) == 1 else _SYNTHETIC
            if subject == _SYNTHETIC:
                # Casbin decides for one subject; linking a synthetic one to all the
                # roles gives deny-overrides across roles, as the index does.
                self.enforcer.add_grouping_policies([[_SYNTHETIC, r] for r in role_list])
            try:
                args: list[Any] = [subject, region, obj, action, facts]
                if kind is not None:
                    args.insert(0, self.enforcer.new_enforce_context(kind))
                allowed, rule = self.enforcer.enforce_ex(*args)
            finally:
                if subject == _SYNTHETIC:
                    self.enforcer.remove_grouping_policies([[_SYNTHETIC, r] for r in role_list])
        return bool(allowed), list(rule)

    def _enforce(
        self,
        roles: str | Sequence[str],
        kind: str | None,
        region: str,
        obj: str,
        action: str,
        facts: RecordFacts,
    ) -> bool:
        if not roles:
            return False
        return self.enforce_ex(roles, kind, region, obj, action, facts)[0]


_SYNTHETIC = "__bastion_principal__"


def load_policy(
    directory: Path,
    *,
    regions: Sequence[str],
    entities: Sequence[str] = tuple(ENTITIES),
    catalog: Mapping[str, EntitySpec] = ENTITIES,
) -> Policy:
    """Load `model.conf` + `policy.csv` from `directory`; `PolicyError` names file and line."""
    if not directory.is_dir():
        raise PolicyError(f"policy directory {directory} does not exist")
    return build_policy(
        PolicySource.from_directory(directory),
        regions=regions,
        entities=entities,
        catalog=catalog,
    )


def build_policy(
    source: PolicySource,
    *,
    regions: Sequence[str],
    entities: Sequence[str] = tuple(ENTITIES),
    catalog: Mapping[str, EntitySpec] = ENTITIES,
) -> Policy:
    """Validate, load into Casbin (file adapter) and compile a policy's text."""
    resources = resource_actions(tuple(entities))
    policy_path = str(Path(source.origin) / POLICY_FILE)
    parsed = parse_policy(
        policy_path, source.policy_text, regions=regions, resources=resources, catalog=catalog
    )
    enforcer = _enforcer(source, catalog)
    return Policy(
        source=source,
        parsed=parsed,
        enforcer=enforcer,
        regions=tuple(regions),
        entities=tuple(entities),
        resources=resources,
        catalog=catalog,
    )


def _enforcer(source: PolicySource, catalog: Mapping[str, EntitySpec]) -> casbin.Enforcer:
    # pycasbin logs every request at INFO and every denial at WARNING, with the
    # request's arguments — which include record attributes. Never.
    logging.getLogger("casbin").setLevel(logging.CRITICAL + 1)
    model_where = str(Path(source.origin) / MODEL_FILE)
    with tempfile.TemporaryDirectory(prefix="bastion-policy-") as directory:
        model_path = Path(directory) / MODEL_FILE
        policy_path = Path(directory) / POLICY_FILE
        model_path.write_text(source.model_text, encoding="utf-8")
        policy_path.write_text(source.policy_text, encoding="utf-8")
        try:
            enforcer = casbin.Enforcer(str(model_path), str(policy_path))
        except Exception as exc:  # pycasbin raises bare exceptions of many kinds
            raise PolicyError(f"{model_where}: cannot load the Casbin model: {exc}") from None
    model = enforcer.get_model()
    for (section, key), tokens in _EXPECTED_MODEL.items():
        assertion = model.model.get(section, {}).get(key)
        if assertion is None or list(assertion.tokens) != tokens:
            raise PolicyError(
                f"{model_where}: Bastion compiles `{key}` as ({', '.join(tokens)}); "
                "the model defines it differently"
            )
    for name in ("g", "g2"):
        if name not in model.model.get("g", {}):
            raise PolicyError(f"{model_where}: the model must define the role type {name}")
    enforcer.enable_auto_save(False)
    enforcer.add_function("scopeCovers", scope_covers)
    enforcer.add_function("conditionHolds", condition_holds)
    links = [
        [f"{entity}.{name}", group]
        for (entity, name), groups in catalog_groups(catalog).items()
        for group in groups
    ]
    if links:
        enforcer.add_named_grouping_policies("g2", links)
    return enforcer
