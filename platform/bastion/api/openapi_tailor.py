"""The caller's own view of the API: the OpenAPI document cut down to its permissions.

`GET /openapi.json` with a bearer token answers this view: record schemas list only
the fields the caller may read (fields readable only under a condition carry
`x-readable-if`), create and patch bodies only the fields it may write, list
operations only the filters and sorts it may use, operations its roles never allow
are left out, and `x-bastion-permissions` holds the same effective permissions as
`/v1/me`. It is derived from the compiled policy, so it is what the pipeline enforces.
"""

from __future__ import annotations

import copy
from typing import Any

from bastion.crm.catalog import ENTITIES, SYSTEM_FIELDS
from bastion.crm.permissions import EntityPermissions, effective_permissions, system_permissions
from bastion.crm.records import ERASED, RESTRICTED, WITHHELD
from bastion.policy.engine import Policy
from bastion.principals.tokens import Principal

_OPERATIONS = {"get": "list", "post": "create"}
# Lists of field names any record may carry, whoever reads it.
_MARKERS = (WITHHELD, ERASED, RESTRICTED)
_ITEM_OPERATIONS = {"get": "read", "patch": "update", "delete": "delete"}


def tailored(document: dict[str, Any], policy: Policy, principal: Principal) -> dict[str, Any]:
    view = copy.deepcopy(document)
    permissions = effective_permissions(policy, principal)
    schemas = view["components"]["schemas"]
    paths = view["paths"]
    for name, spec in ENTITIES.items():
        granted = permissions[name]
        title = spec.singular.title().replace(" ", "")
        readable = set(granted["read_fields"]) | set(granted["conditional_read_fields"])
        writable = set(granted["write_fields"]) | set(granted["conditional_write_fields"])
        record = schemas[title]
        record["properties"] = {
            key: value
            for key, value in record["properties"].items()
            if key in SYSTEM_FIELDS or key in _MARKERS or key in readable
        }
        for field, condition in granted["conditional_read_fields"].items():
            record["properties"][field] = {
                **record["properties"][field],
                "x-readable-if": condition,
            }
        for body in (f"{title}Create", f"{title}Patch"):
            schema = schemas[body]
            schema["properties"] = {
                key: value
                for key, value in schema["properties"].items()
                if key == "region" or key in writable
            }
            for field, condition in granted["conditional_write_fields"].items():
                if field in schema["properties"]:
                    schema["properties"][field] = {
                        **schema["properties"][field],
                        "x-writable-if": condition,
                    }
            if "required" in schema:
                schema["required"] = [r for r in schema["required"] if r in schema["properties"]]
        creatable = _regions_allowing(granted, "create")
        region = schemas[f"{title}Create"]["properties"].get("region")
        if region is not None and creatable:
            region["enum"] = creatable
        allowed = set(granted["actions"])
        _keep(paths, f"/v1/{name}", _OPERATIONS, allowed)
        _keep(paths, f"/v1/{name}/{{id}}", _ITEM_OPERATIONS, allowed)
        _keep(paths, f"/v1/{name}/export", {"get": "export"}, allowed)
        _keep(paths, f"/v1/{name}/{{id}}/duplicates", {"get": "read"}, allowed)
        _keep(paths, f"/v1/{name}/merge", {"post": "merge"}, allowed)
        _keep(paths, f"/v1/{name}/{{id}}/events", {"get": "read"}, allowed)
        _keep(paths, f"/v1/{name}/{{id}}/score", {"get": "read"}, allowed)
        exporting = paths.get(f"/v1/{name}/export", {}).get("get")
        if exporting is not None:
            _tailor_export(exporting, granted)
        listing = paths.get(f"/v1/{name}", {}).get("get")
        if listing is not None:
            # A list spans the caller's regions and needs a filter or sort field
            # readable in each of them.
            listed = [r for r in granted["regions"].values() if "list" in r["actions"]]
            always = set.intersection(*(set(r["read_fields"]) for r in listed)) if listed else set()
            listing["parameters"] = [
                p
                for p in listing["parameters"]
                if p["in"] != "query"
                or p["name"] in ("limit", "cursor", "region", "sort")
                or p["name"] in always
            ]
            for parameter in listing["parameters"]:
                if parameter["name"] == "region" and listed:
                    parameter["schema"] = {
                        **parameter["schema"],
                        "enum": _regions_allowing(granted, "list"),
                    }
                if parameter["name"] == "sort":
                    parameter["schema"]["enum"] = [
                        s
                        for s in parameter["schema"]["enum"]
                        if s.lstrip("-") in SYSTEM_FIELDS or s.lstrip("-") in always
                    ]
    _keep_if_any(paths, permissions, system_permissions(policy, principal))
    _drop_dangling_links(paths)
    view["x-bastion-permissions"] = {
        "principal": principal.id,
        "roles": sorted(principal.roles),
        "regions": list(principal.regions),
        "policy_version": policy.version,
        "entities": permissions,
        "resources": system_permissions(policy, principal),
    }
    return view


def _tailor_export(operation: dict[str, Any], granted: EntityPermissions) -> None:
    """An export spans the caller's regions where it may export, and filters only on
    fields readable in each of them (as a list does)."""
    exported = [r for r in granted["regions"].values() if "export" in r["actions"]]
    always = set.intersection(*(set(r["read_fields"]) for r in exported)) if exported else set()
    operation["parameters"] = [
        p
        for p in operation["parameters"]
        if p["in"] != "query" or p["name"] in ("format", "region") or p["name"] in always
    ]
    for parameter in operation["parameters"]:
        if parameter["name"] == "region" and exported:
            parameter["schema"] = {
                **parameter["schema"],
                "enum": _regions_allowing(granted, "export"),
            }


# Routes not under one entity, and what some entity grant (or a system resource
# grant, `resource:action`) must allow for the caller to use them at all.
_CROSS_ENTITY = {
    "/v1/imports": ("import",),
    "/v1/imports/{import_id}": ("import",),
    "/v1/imports/{import_id}/problems": ("import",),
    "/v1/duplicates": ("read",),
    "/v1/duplicates/scans": ("merge",),
    "/v1/duplicates/{pair_id}/dismiss": ("merge",),
    "/v1/merges/{merge_id}": ("merge",),
    "/v1/merges/{merge_id}/undo": ("merge",),
    "/v1/analytics/pipeline": ("analytics:read",),
    "/v1/events": ("events:create",),
    "/v1/leads/{id}/events": ("events:read",),
    "/v1/contacts/{id}/events": ("events:read",),
    "/v1/automation/runs": ("automation:read",),
    **{
        path: tuple(f"webhooks:{action}" for action in ("read", "create", "delete", "replay"))
        for path in (
            "/v1/webhooks",
            "/v1/webhooks/{subscription_id}",
            "/v1/webhooks/{subscription_id}/deliveries",
            "/v1/webhooks/{subscription_id}/deliveries/{delivery_id}/replay",
        )
    },
}


def _keep_if_any(
    paths: dict[str, Any],
    permissions: dict[str, EntityPermissions],
    resources: dict[str, list[str]],
) -> None:
    """Drop the cross-entity routes none of the caller's grants opens."""
    entity_actions = {a for granted in permissions.values() for a in granted["actions"]}
    can_list_deals = "list" in permissions["opportunities"]["actions"]
    for path, needs in _CROSS_ENTITY.items():
        opened = any(
            (need.partition(":")[2] in resources.get(need.partition(":")[0], []))
            if ":" in need
            else need in entity_actions
            for need in needs
        )
        if path == "/v1/analytics/pipeline":
            opened = opened or can_list_deals
        if not opened:
            paths.pop(path, None)


def _regions_allowing(granted: EntityPermissions, action: str) -> list[str]:
    """The caller's regions where its roles allow `action` on the entity."""
    return [name for name, region in granted["regions"].items() if action in region["actions"]]


def _keep(paths: dict[str, Any], path: str, operations: dict[str, str], allowed: set[str]) -> None:
    item = paths.get(path)
    if item is None:
        return
    for method, action in operations.items():
        if action not in allowed:
            item.pop(method, None)
    if not any(m in item for m in ("get", "post", "patch", "delete", "put")):
        paths.pop(path)


def _drop_dangling_links(paths: dict[str, Any]) -> None:
    """Links to operations the view left out would name operations that do not exist."""
    present = {
        operation["operationId"]
        for item in paths.values()
        for operation in item.values()
        if isinstance(operation, dict) and "operationId" in operation
    }
    for item in paths.values():
        for operation in item.values():
            if not isinstance(operation, dict):
                continue
            for response in operation.get("responses", {}).values():
                links = response.get("links")
                if links is None:
                    continue
                for name in [n for n, link in links.items() if link["operationId"] not in present]:
                    del links[name]
                if not links:
                    del response["links"]
