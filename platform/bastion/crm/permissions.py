"""A principal's effective permissions, as `/v1/me` and the caller's OpenAPI show them.

Per entity: the actions allowed (in any of the principal's regions), the fields it
may always read and write in every one of its regions, the fields it may read or
write only on records meeting
a condition (with the condition), the row scope of reads, and the same broken down
per region. Computed from the compiled policy, so it is exactly what the pipeline
enforces.
"""

from __future__ import annotations

from typing import Literal

from typing_extensions import TypedDict

from bastion.crm.catalog import ENTITIES
from bastion.policy.engine import Policy
from bastion.policy.resources import SYSTEM_RESOURCES
from bastion.principals.tokens import Principal
from bastion.wire import closed


@closed
class RegionPermissions(TypedDict):
    """What the policy lets a principal do with an entity in one of its regions."""

    actions: list[str]
    scopes: dict[str, str]
    """The row scope of each action allowed (`all`, `region`, `team`, `own`, ...)."""
    read_fields: list[str]
    write_fields: list[str]
    conditional_read_fields: dict[str, str]
    """Fields readable only on records meeting a condition, with the condition."""
    conditional_write_fields: dict[str, str]


@closed
class EntityPermissions(TypedDict):
    """What the policy lets a principal do with an entity: actions in any of its
    regions, fields in every one of them, and each region's own under `regions`."""

    actions: list[str]
    read_fields: list[str]
    write_fields: list[str]
    conditional_read_fields: dict[str, str]
    conditional_write_fields: dict[str, str]
    scope: str
    """The row scope of reads in the principal's default region."""
    regions: dict[str, RegionPermissions]


def effective_permissions(policy: Policy, principal: Principal) -> dict[str, EntityPermissions]:
    roles = principal.roles
    permissions: dict[str, EntityPermissions] = {}
    for name, spec in ENTITIES.items():
        by_region: dict[str, RegionPermissions] = {}
        for region in principal.regions:
            actions = policy.actions(roles, region, name)
            read = (
                policy.mask(roles, region, name, "read")
                if "read" in actions or "list" in actions
                else None
            )
            writes = {"create", "update"} & set(actions)
            write = policy.mask(roles, region, name, "write") if writes else None
            by_region[region] = {
                "actions": list(actions),
                "scopes": {
                    action: policy.scope(roles, region, name, action).describe()
                    for action in actions
                },
                "read_fields": _ordered(spec.name, read.always if read else frozenset()),
                "write_fields": _writable(spec.name, write.always if write else frozenset()),
                "conditional_read_fields": read.conditions() if read else {},
                "conditional_write_fields": {
                    k: v
                    for k, v in (write.conditions() if write else {}).items()
                    if not spec_field_read_only(name, k)
                },
            }
        regions = list(by_region.values())
        all_actions = sorted({a for r in regions for a in r["actions"]})
        default = by_region.get(principal.default_region) if principal.regions else None
        permissions[name] = {
            "actions": all_actions,
            # In every region the caller holds (the per-region lists are under "regions").
            "read_fields": _ordered(name, _common(regions, "read_fields", ("read", "list"))),
            "write_fields": _writable(name, _common(regions, "write_fields", ("create", "update"))),
            "conditional_read_fields": _merged(regions, "conditional_read_fields"),
            "conditional_write_fields": _merged(regions, "conditional_write_fields"),
            "scope": (default["scopes"].get("read", "none") if default else "none"),
            "regions": by_region,
        }
    return permissions


def system_permissions(policy: Policy, principal: Principal) -> dict[str, list[str]]:
    """The actions on Bastion's own resources (audit, keys, policy, tokens, dsr)."""
    return {
        resource: sorted(
            {
                action
                for region in principal.regions
                for action in policy.actions(principal.roles, region, resource)
            }
        )
        for resource in SYSTEM_RESOURCES
    }


def _ordered(entity: str, names: set[str] | frozenset[str]) -> list[str]:
    """Field names in catalog order, as records show them."""
    return [f.name for f in ENTITIES[entity].fields if f.name in names]


def _writable(entity: str, names: set[str] | frozenset[str]) -> list[str]:
    """Writable field names: read-only fields are set by Bastion, never by a caller."""
    return [f.name for f in ENTITIES[entity].writable_fields() if f.name in names]


def _common(
    regions: list[RegionPermissions],
    key: Literal["read_fields", "write_fields"],
    actions: tuple[str, ...],
) -> set[str]:
    """The fields listed under `key` in every region where one of `actions` is allowed."""
    lists = [set(r[key]) for r in regions if set(actions) & set(r["actions"])]
    return set.intersection(*lists) if lists else set()


def _merged(
    regions: list[RegionPermissions],
    key: Literal["conditional_read_fields", "conditional_write_fields"],
) -> dict[str, str]:
    merged: dict[str, str] = {}
    for region in regions:
        merged.update(region[key])
    return merged


def spec_field_read_only(entity: str, name: str) -> bool:
    field = ENTITIES[entity].field(name)
    return field is not None and field.read_only
