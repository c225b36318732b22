"""`/docs`: the API contract as a readable page, generated from the OpenAPI document."""

from __future__ import annotations

import base64
import hashlib
import html
from functools import cache

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from bastion.api.openapi import openapi_document
from bastion.crm.catalog import ENTITIES

_STYLE = (
    "body{font:15px/1.5 system-ui,sans-serif;max-width:70em;margin:2em auto;padding:0 1em}"
    "table{border-collapse:collapse;width:100%}"
    "td,th{border-bottom:1px solid #ddd;padding:.25em .5em;text-align:left}"
    "code{background:#f4f4f4;padding:0 .2em}"
)
# The page's one inline style is admitted by its hash; nothing else loads or runs.
_CSP = (
    "default-src 'none'; style-src 'sha256-"
    + base64.b64encode(hashlib.sha256(_STYLE.encode()).digest()).decode()
    + "'; frame-ancestors 'none'"
)


@cache
def _docs_html() -> str:
    document = openapi_document()
    parts = [
        "<!doctype html><html lang=en><head><meta charset=utf-8>",
        f"<title>Bastion API</title><style>{_STYLE}</style></head><body>",
        "<h1>Bastion API</h1>",
        f"<p>{html.escape(document['info']['description'])}</p>",
        "<p>Machine-readable: <a href=/openapi.json>/openapi.json</a> (OpenAPI 3.1). "
        "Authenticate with <code>Authorization: Bearer &lt;token&gt;</code>. Errors are "
        "<code>application/problem+json</code>.</p><h2>Endpoints</h2><table>",
        "<tr><th>Method</th><th>Path</th><th>Summary</th></tr>",
    ]
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if method == "parameters":
                continue
            parts.append(
                f"<tr><td>{method.upper()}</td><td><code>{html.escape(path)}</code></td>"
                f"<td>{html.escape(operation.get('summary', ''))}</td></tr>"
            )
    parts.append("</table><h2>Entities and fields</h2>")
    for spec in ENTITIES.values():
        parts.append(
            f"<h3 id={spec.name}>{spec.name}</h3><p>{html.escape(spec.description)} "
            f"Ids: <code>{spec.prefix}_&lt;region&gt;_…</code></p><table><tr><th>Field</th>"
            "<th>Type</th><th>Required</th><th>Classification</th><th>Category</th>"
            "<th>Description</th></tr>"
        )
        for field in spec.fields:
            flags = [
                flag
                for flag, on in (
                    ("searchable", field.searchable),
                    ("read-only", field.read_only),
                )
                if on
            ]
            parts.append(
                f"<tr><td><code>{field.name}</code></td><td>{field.type}</td>"
                f"<td>{'yes' if field.required else ''}</td><td>{field.classification}"
                f"{' (' + ', '.join(flags) + ')' if flags else ''}</td>"
                f"<td>{html.escape(field.category)}</td>"
                f"<td>{html.escape(field.description)}</td></tr>"
            )
        parts.append("</table>")
    parts.append("</body></html>")
    return "".join(parts)


async def docs(_request: Request) -> Response:
    return HTMLResponse(_docs_html(), headers={"Content-Security-Policy": _CSP})


routes = [Route("/docs", docs, methods=["GET"])]
