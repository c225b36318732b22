"""The OpenAPI document on its own (no database): every success an operation answers
has its body described, every reference resolves, and the components made from
TypedDicts and tables (`bastion.api.bodies`) follow their definitions."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import jsonschema_rs
import pytest

from bastion.api.bodies import components, row_schema
from bastion.api.openapi import openapi_document
from bastion.crm.catalog import ENTITIES
from bastion.dsr.service import SHOWN_COLUMNS
from bastion.dsr.tables import dsr_requests, legal_holds

_METHODS = ("get", "put", "post", "patch", "delete")


def _is_json(media_type: str) -> bool:
    return media_type == "application/json" or media_type.endswith("+json")


def undescribed(document: dict[str, Any]) -> list[str]:
    """`METHOD path status` of every success whose body the document does not describe:
    no content at all (but 204 No Content), or a JSON media type without a schema.
    A download (the export zip) is raw binary, which OpenAPI 3.1 describes by its
    media type alone; text bodies carry a string schema anyway."""
    found = []
    for path, item in document["paths"].items():
        for method in _METHODS:
            for status, response in item.get(method, {}).get("responses", {}).items():
                if not status.startswith("2") or status == "204":
                    continue
                content = response.get("content")
                if not content or any(
                    _is_json(media) and "schema" not in body for media, body in content.items()
                ):
                    found.append(f"{method.upper()} {path} {status}")
    return found


def test_every_success_has_its_body_described() -> None:
    assert undescribed(openapi_document()) == []


def test_a_success_without_a_schema_is_found() -> None:
    document = copy.deepcopy(openapi_document())
    document["paths"]["/v1/me"]["get"]["responses"]["200"] = {"description": "The principal."}
    held = document["paths"]["/v1/legal-holds"]["post"]["responses"]["201"]
    held["content"]["application/json"] = {}
    assert sorted(undescribed(document)) == ["GET /v1/me 200", "POST /v1/legal-holds 201"]


def test_every_operation_taking_if_match_documents_428() -> None:
    """Found by the fuzz: lead conversion and merges answered `If-Match: *` with 428
    (`crm.records.parse_if_match` refuses a wildcard everywhere: it would allow lost
    updates) without documenting it."""
    document = openapi_document()
    taking = []
    for path, item in document["paths"].items():
        for method in _METHODS:
            operation = item.get(method)
            if operation is None:
                continue
            parameters = [*item.get("parameters", []), *operation.get("parameters", [])]
            if any(p["name"] == "If-Match" and p["in"] == "header" for p in parameters):
                taking.append(f"{method.upper()} {path}")
                assert "428" in operation["responses"], f"{method.upper()} {path}"
    assert {"POST /v1/leads/{id}/convert", "POST /v1/contacts/merge"} <= set(taking)


def references(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        if isinstance(node.get("$ref"), str):
            yield node["$ref"]
        for value in node.values():
            yield from references(value)
    elif isinstance(node, list):
        for value in node:
            yield from references(value)


def resolves(document: dict[str, Any], reference: str) -> bool:
    """Whether `reference` (`#/a/b`) points at something in `document`."""
    node: Any = document
    for part in reference.removeprefix("#/").split("/"):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def test_every_reference_resolves_and_every_component_is_a_json_schema() -> None:
    document = openapi_document()
    for reference in set(references(document)):
        assert resolves(document, reference), reference
    assert not resolves(document, "#/components/schemas/Nobody")
    for name, schema in document["components"]["schemas"].items():
        assert jsonschema_rs.meta.is_valid(schema), name


def test_body_components_leave_the_record_schemas_alone() -> None:
    records = {"Problem"}
    for spec in ENTITIES.values():
        title = spec.singular.title().replace(" ", "")
        records |= {title, f"{title}Create", f"{title}Patch"}
    assert not records & set(components())


def test_bodies_built_as_literals_are_closed_and_stored_documents_open() -> None:
    schemas = components()
    for name in ("Me", "PolicyExplanation", "AuditVerification", "DsrPreview", "DsrRequest"):
        assert schemas[name]["additionalProperties"] is False, name
    # Read back from a database: a row an older version wrote may hold other keys.
    for name in ("DsrResult", "ErasureCertificateBody", "KeptRecord"):
        assert "additionalProperties" not in schemas[name], name
    assert "pseudonymised" not in schemas["ErasureCertificateBody"]["required"]


def _allows_null(schema: dict[str, Any]) -> bool:
    return {"type": "null"} in schema.get("anyOf", [])


def test_a_request_shows_its_columns_null_only_where_a_column_may_be() -> None:
    schema = components()["DsrRequest"]
    properties = schema["properties"]
    assert list(properties) == [*SHOWN_COLUMNS, "extended", "overdue", "due_soon"]
    assert schema["required"] == list(properties)
    for name in SHOWN_COLUMNS:
        assert _allows_null(properties[name]) == dsr_requests.c[name].nullable, name
    for hidden in ("corrections", "correction_fields", "lease_owner", "version"):
        assert hidden not in properties
    assert properties["received_at"] == {"type": "string", "format": "date-time"}
    assert properties["result"]["anyOf"][0] == {"$ref": "#/components/schemas/DsrResult"}


def test_a_legal_hold_shows_every_column_of_its_table() -> None:
    schema = components()["LegalHold"]
    assert list(schema["properties"]) == [*(c.name for c in legal_holds.columns), "active"]
    assert _allows_null(schema["properties"]["released_at"])
    assert not _allows_null(schema["properties"]["target_id"])


def test_a_column_whose_type_does_not_say_how_it_shows_must_be_described() -> None:
    with pytest.raises(TypeError, match=r"dsr_requests\.progress"):
        row_schema(dsr_requests, ["progress"], description="", shown_as={}, added={})
