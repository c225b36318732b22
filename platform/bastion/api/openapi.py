"""The OpenAPI 3.1 document and the docs page, both generated from the field catalog.

The request schemas are the JSON Schemas of the very pydantic models that validate
request bodies (`crm.schemas`), so the published contract and the validator
cannot drift apart; likewise the bodies that are not records are described from the
definitions the code builds them with (`api.bodies`).
"""

from __future__ import annotations

from functools import cache
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

import bastion
from bastion.api import analytics as analytics_api
from bastion.api import audit as audit_api
from bastion.api import automation as automation_api
from bastion.api import dsr as dsr_api
from bastion.api import duplicates as duplicates_api
from bastion.api import events as events_api
from bastion.api import export as export_api
from bastion.api import imports as imports_api
from bastion.api import merges as merges_api
from bastion.api import policy as policy_api
from bastion.api import scoring as scoring_api
from bastion.api import webhooks as webhooks_api
from bastion.api.auth import authenticate, state_of
from bastion.api.bodies import components, json_response
from bastion.api.openapi_tailor import tailored
from bastion.api.problems import JSON
from bastion.crm.catalog import ENTITIES, EntitySpec, FieldSpec
from bastion.crm.listing import DEFAULT_LIMIT, MAX_LIMIT
from bastion.crm.records import ERASED, RESTRICTED, WITHHELD
from bastion.crm.schemas import create_model, json_schema, patch_model

_PROBLEM = {"$ref": "#/components/responses/Problem"}
_ERRORS = {
    "400": _PROBLEM,
    "401": _PROBLEM,
    "403": _PROBLEM,
    "404": _PROBLEM,
    "503": _PROBLEM,
}

# A merged person's old id (`quality.merge`): a problem naming the survivor, which
# `Location` points at (for callers who may read it; 404 for anyone else).
_MERGED = {
    "description": "Merged into another record: `Location` and `merged_into` name it.",
    "headers": {"Location": {"schema": {"type": "string"}}},
    "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}},
}

_METHODS = frozenset({"get", "put", "post", "patch", "delete"})


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _title(spec: EntitySpec) -> str:
    return spec.singular.title().replace(" ", "")


def _record_schema(spec: EntitySpec) -> dict[str, Any]:
    properties: dict[str, Any] = {
        "id": {"type": "string", "description": f"Region-bearing id ({spec.prefix}_<region>_…)."},
        "region": {"type": "string", "description": "Region whose database holds the record."},
        "version": {"type": "integer", "description": "Increases by one on every change."},
        "created_at": {"type": "string", "format": "date-time"},
        "updated_at": {"type": "string", "format": "date-time"},
    }
    for field in spec.fields:
        schema = json_schema(field)
        properties[field.name] = (
            {"anyOf": [schema, {"type": "null"}]} if not field.required else schema
        )
        if field.read_only:
            properties[field.name] = {**properties[field.name], "readOnly": True}
    properties[WITHHELD] = {
        "type": "array",
        "items": {"type": "string"},
        "description": "Fields of this record the caller may not read (absent from it).",
    }
    properties[ERASED] = {
        "type": "array",
        "items": {"type": "string"},
        "description": "Readable fields whose data subject was erased (absent; only if any).",
    }
    properties[RESTRICTED] = {
        "type": "array",
        "items": {"type": "string"},
        "description": "Readable fields kept after their data subject's erasure, for a legal "
        "hold or a retention rule: shown only to those who handle data subjects' requests "
        "(absent; only if any).",
    }
    return {
        "type": "object",
        "description": spec.description,
        "properties": properties,
        "required": ["id", "region", "version", "created_at", "updated_at", WITHHELD],
        "x-data-subject": spec.data_subject,
    }


_VALUE_KEYWORDS = frozenset(
    {"type", "enum", "format", "pattern", "maxLength", "minimum", "maximum"}
    | {"exclusiveMinimum", "exclusiveMaximum"}
)


def _filter_schema(field: FieldSpec) -> dict[str, Any]:
    """A filter's value as the query string carries it: the field's own schema (a
    decimal as a plain decimal string)."""
    schema = {k: v for k, v in json_schema(field).items() if k in _VALUE_KEYWORDS}
    if field.type == "decimal":
        return {"type": "string", "pattern": schema["pattern"]}
    return schema


def _body_schema(model: Any) -> dict[str, Any]:
    schema: dict[str, Any] = model.model_json_schema(ref_template="#/components/schemas/{model}")
    schema.pop("title", None)
    return schema


def _links(spec: EntitySpec, *operations: str) -> dict[str, Any]:
    """OpenAPI links from a response carrying one record (its body and ETag) to the
    operations on that record: what a client, or a stateful fuzzer, does next."""
    singular = spec.singular.replace(" ", "_")
    record_id = {"path.id": "$response.body#/id"}
    versioned = {**record_id, "header.If-Match": "$response.header.ETag"}
    links: dict[str, Any] = {}
    for operation in operations:
        links[f"{operation.title()}{_title(spec)}"] = {
            "operationId": f"{operation}_{singular}",
            "parameters": record_id if operation == "get" else versioned,
        }
    if spec.name == "leads":
        links["ConvertLead"] = {"operationId": "convert_lead", "parameters": versioned}
    return links


def _entity_paths(spec: EntitySpec) -> dict[str, Any]:
    name, title = spec.name, _title(spec)
    record = {"application/json": {"schema": _ref(title)}}
    etag = {"ETag": {"schema": {"type": "string"}, "description": "The record's version."}}
    filters = [
        {
            "name": field.name,
            "in": "query",
            "required": False,
            "description": f"Equality filter on {field.name}.",
            "schema": _filter_schema(field),
        }
        for field in spec.fields
        if field.filterable
    ]
    sortable = ["id", "created_at", "updated_at", *(f.name for f in spec.fields if f.sortable)]
    return {
        f"/v1/{name}": {
            "get": {
                "operationId": f"list_{name}",
                "summary": f"List {name} across your regions",
                "tags": [name],
                "parameters": [
                    {
                        "name": "limit",
                        "in": "query",
                        "schema": {
                            "type": "integer",
                            "minimum": 1,
                            "maximum": MAX_LIMIT,
                            "default": DEFAULT_LIMIT,
                        },
                    },
                    {"name": "cursor", "in": "query", "schema": {"type": "string"}},
                    {
                        "name": "sort",
                        "in": "query",
                        "schema": {
                            "type": "string",
                            "enum": [*sortable, *(f"-{s}" for s in sortable)],
                        },
                    },
                    {
                        "name": "region",
                        "in": "query",
                        "description": "Only this region (default: all of yours).",
                        "schema": {"type": "string"},
                    },
                    *filters,
                ],
                "responses": {
                    "200": {
                        "description": "A page of records.",
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "properties": {
                                        "data": {"type": "array", "items": _ref(title)},
                                        "next_cursor": {"type": ["string", "null"]},
                                    },
                                    "required": ["data", "next_cursor"],
                                }
                            }
                        },
                    },
                    "422": _PROBLEM,
                    **_ERRORS,
                },
            },
            "post": {
                "operationId": f"create_{spec.singular.replace(' ', '_')}",
                "summary": f"Create a {spec.singular}",
                "tags": [name],
                "parameters": [
                    {
                        "name": "Idempotency-Key",
                        "in": "header",
                        "schema": {"type": "string", "maxLength": 255},
                    }
                ],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _ref(f"{title}Create")}},
                },
                "responses": {
                    "201": {
                        "description": "Created.",
                        "content": record,
                        "headers": {**etag, "Location": {"schema": {"type": "string"}}},
                        "links": _links(spec, "get", "update", "delete"),
                    },
                    "409": _PROBLEM,
                    "413": _PROBLEM,
                    "415": _PROBLEM,
                    "422": _PROBLEM,
                    **_ERRORS,
                },
            },
        },
        f"/v1/{name}/{{id}}": {
            "parameters": [
                {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}
            ],
            "get": {
                "operationId": f"get_{spec.singular.replace(' ', '_')}",
                "tags": [name],
                "responses": {
                    "200": {
                        "description": "The record.",
                        "content": record,
                        "headers": etag,
                        "links": _links(spec, "update", "delete"),
                    },
                    **({"301": _MERGED} if spec.data_subject else {}),
                    **_ERRORS,
                },
            },
            "patch": {
                "operationId": f"update_{spec.singular.replace(' ', '_')}",
                "summary": "JSON merge patch (RFC 7396); needs If-Match",
                "tags": [name],
                "parameters": [
                    {
                        "name": "If-Match",
                        "in": "header",
                        "required": True,
                        "schema": {"type": "string"},
                    }
                ],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/merge-patch+json": {"schema": _ref(f"{title}Patch")},
                        "application/json": {"schema": _ref(f"{title}Patch")},
                    },
                },
                "responses": {
                    "200": {
                        "description": "The record.",
                        "content": record,
                        "headers": etag,
                        "links": _links(spec, "get", "update", "delete"),
                    },
                    "409": _PROBLEM,
                    "412": _PROBLEM,
                    "415": _PROBLEM,
                    "422": _PROBLEM,
                    "428": _PROBLEM,
                    **_ERRORS,
                },
            },
            "delete": {
                "operationId": f"delete_{spec.singular.replace(' ', '_')}",
                "tags": [name],
                "parameters": [
                    {
                        "name": "If-Match",
                        "in": "header",
                        "schema": {"type": "string"},
                        "description": "Optional: the record's ETag (`*` is refused, 428).",
                    }
                ],
                "responses": {
                    "204": {"description": "Deleted."},
                    "409": _PROBLEM,
                    "412": _PROBLEM,
                    "428": _PROBLEM,
                    **_ERRORS,
                },
            },
        },
    }


def _convert_path() -> dict[str, Any]:
    converted = {
        "type": "object",
        "properties": {
            "lead": _ref("Lead"),
            "contact": _ref("Contact"),
            "account": _ref("Account"),
            "opportunity": {"anyOf": [_ref("Opportunity"), {"type": "null"}]},
        },
        "required": ["lead", "contact", "account", "opportunity"],
    }
    return {
        "post": {
            "operationId": "convert_lead",
            "summary": "Convert a lead into a contact, an account and optionally an opportunity",
            "tags": ["leads"],
            "parameters": [
                {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}},
                {
                    "name": "If-Match",
                    "in": "header",
                    "description": "The lead's ETag (optional; 412 if stale, 428 for `*`).",
                    "schema": {"type": "string"},
                },
            ],
            "requestBody": {
                "required": False,
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "additionalProperties": False,
                            "properties": {
                                "account_id": {
                                    "type": "string",
                                    "description": "An existing account (default: a new one).",
                                },
                                "opportunity": {
                                    "type": "object",
                                    "description": "Fields of a new opportunity.",
                                },
                            },
                        }
                    }
                },
            },
            "responses": {
                "200": {
                    "description": "The converted lead and the records made from it.",
                    "content": {"application/json": {"schema": converted}},
                },
                "409": _PROBLEM,
                "412": _PROBLEM,
                "422": _PROBLEM,
                "428": _PROBLEM,
                **_ERRORS,
            },
        }
    }


def _complete_problems(paths: dict[str, Any]) -> None:
    """Document the problems every operation of a kind can answer, whatever its handler:
    401 without a valid token, 400/413/415 for a body that is not well-formed JSON, too
    large or of another media type, and 400 for a list cursor that is not ours."""
    for item in paths.values():
        for method, operation in item.items():
            if method not in _METHODS:
                continue
            responses = operation.setdefault("responses", {})
            codes: list[str] = []
            if operation.get("security") != []:
                codes.append("401")
            if "requestBody" in operation:
                codes += ["400", "413", "415"]
            parameters = [*item.get("parameters", []), *operation.get("parameters", [])]
            if any(p.get("name") == "cursor" and p.get("in") == "query" for p in parameters):
                codes.append("400")
            for code in codes:
                responses.setdefault(code, _PROBLEM)


@cache
def openapi_document() -> dict[str, Any]:
    schemas: dict[str, Any] = {
        "Problem": {
            "type": "object",
            "properties": {
                "type": {"type": "string"},
                "title": {"type": "string"},
                "status": {"type": "integer"},
                "detail": {"type": "string"},
                "request_id": {"type": "string"},
                "errors": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {
                            "field": {"type": "string"},
                            "message": {"type": "string"},
                        },
                        "required": ["field", "message"],
                    },
                },
            },
            "required": ["type", "title", "status", "detail"],
        }
    }
    paths: dict[str, Any] = {}
    for spec in ENTITIES.values():
        title = _title(spec)
        schemas[title] = _record_schema(spec)
        schemas[f"{title}Create"] = {
            **_body_schema(create_model(spec)),
            "properties": {
                "region": {"type": "string", "description": "Region (default: your first)."},
                **_body_schema(create_model(spec))["properties"],
            },
        }
        schemas[f"{title}Patch"] = _body_schema(patch_model(spec))
        paths.update(_entity_paths(spec))
    schemas.update(components())
    paths["/v1/leads/{id}/convert"] = _convert_path()
    paths.update(policy_api.openapi_paths(_PROBLEM))
    paths.update(audit_api.openapi_paths())
    paths.update(analytics_api.openapi_paths(_PROBLEM))
    paths.update(duplicates_api.openapi_paths(_PROBLEM))
    paths.update(export_api.openapi_paths(_PROBLEM, paths))
    paths.update(dsr_api.openapi_paths(_PROBLEM))
    paths.update(imports_api.openapi_paths(_PROBLEM))
    paths.update(merges_api.openapi_paths(_PROBLEM))
    paths.update(events_api.openapi_paths(_PROBLEM, max_events=500))
    paths.update(scoring_api.openapi_paths(_PROBLEM))
    paths.update(webhooks_api.openapi_paths(_PROBLEM))
    paths.update(automation_api.openapi_paths(_PROBLEM))
    paths["/v1/me"] = {
        "get": {
            "operationId": "me",
            "summary": "The caller, its roles, regions and effective permissions",
            "responses": {"200": json_response("Me", "The principal."), "401": _PROBLEM},
        }
    }
    for item in paths.values():  # every operation can meet the per-token rate limit
        for method, operation in item.items():
            if method != "parameters":
                operation["responses"].setdefault("429", _PROBLEM)
    paths["/healthz"] = {
        "get": {
            "operationId": "healthz",
            "summary": "Liveness",
            "security": [],
            "responses": {"200": json_response("Liveness", "The process answers.")},
        }
    }
    paths["/readyz"] = {
        "get": {
            "operationId": "readyz",
            "summary": "Readiness of every database, key service and audit chain",
            "security": [],
            "responses": {
                "200": json_response("Readiness", "Ready."),
                # Not a problem: a load balancer or an operator reads what is down.
                "503": json_response("Readiness", "Not ready: says what is not."),
            },
        }
    }
    _complete_problems(paths)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Bastion",
            "version": bastion.__version__,
            "description": "Compliance-first CRM data platform. Every record is read and "
            "written through one pipeline: authenticate, route to its region, authorize, "
            "validate, persist.",
        },
        "jsonSchemaDialect": "https://json-schema.org/draft/2020-12/schema",
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "responses": {
                "Problem": {
                    "description": "An RFC 9457 problem.",
                    "content": {"application/problem+json": {"schema": _ref("Problem")}},
                }
            },
        },
    }


async def openapi_json(request: Request) -> Response:
    """The whole contract; with a bearer token, the caller's own view of it (only the
    operations, fields and filters its roles allow, and its effective permissions)."""
    if request.headers.get("authorization") is None:
        return JSON(openapi_document())
    principal = await authenticate(request)
    return JSON(tailored(openapi_document(), state_of(request).policy, principal))


routes = [Route("/openapi.json", openapi_json, methods=["GET"])]
