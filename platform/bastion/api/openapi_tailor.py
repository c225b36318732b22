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
from bastion.crm.permissions import effective_permissions, system_permissions
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


def _regions_allowing(granted: dict[str, Any], action: str) -> list[str]:
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
