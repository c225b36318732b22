"""The OpenAPI shapes of the keyset-paginated lists of the API's own resources:
`{"data": [...], "next_cursor": str | null}`, with `limit` and `cursor`."""

from __future__ import annotations

from typing import Any

PAGE_PARAMETERS: list[dict[str, Any]] = [
    {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 200}},
    {"name": "cursor", "in": "query", "schema": {"type": "string"}},
]


def page_of(item_schema: dict[str, Any]) -> dict[str, Any]:
    """A response's content: one page of items of `item_schema`."""
    return {
        "application/json": {
            "schema": {
                "type": "object",
                "properties": {
                    "data": {"type": "array", "items": item_schema},
                    "next_cursor": {"type": ["string", "null"]},
                },
                "required": ["data", "next_cursor"],
            }
        }
    }
