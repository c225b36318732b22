"""The DSR queue and request pages: what is due, acting on it, and the proof.

Everything goes through `DsrService` as the logged-in officer: the queue is
`DsrService.list` (keyset pages by deadline across the officer's regions), a
request page is `get`, the dry run `preview`, the buttons `verify_identity`,
`approve`, `reject`, `extend` and `cancel`, the downloads `package` and
`certificate` -- each decided by the policy and audited in the request's region
exactly as through `/v1/dsr`.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from bastion.console.pages import PATH, Visit, page
from bastion.dsr.certificate import as_text
from bastion.dsr.model import FINAL, FOUR_EYES, REGIMES, STATUSES, STEPS, TYPES
from bastion.errors import FieldError, ValidationFailed

VERIFICATION_METHODS = (
    ("id-document", "Identity document checked"),
    ("email-confirmation", "Confirmed from the email address on record"),
    ("account-login", "Signed in to their customer account"),
    ("in-person", "In person"),
    ("signed-letter", "Signed letter"),
)
_DUE = ("overdue", "soon")
_NOTICES = {
    "created": "The request is recorded.",
    "verify": "The requester's identity is recorded as verified.",
    "approve": "The request is approved; it runs now.",
    "reject": "The request is rejected.",
    "extend": "The deadline is extended.",
    "cancel": "The request is cancelled.",
}


def _choice(visit: Visit, name: str, allowed: tuple[str, ...]) -> str | None:
    value = visit.param(name)
    if value is not None and value not in allowed:
        raise ValidationFailed(
            "invalid filter", [FieldError(name, f"must be one of {', '.join(allowed)}")]
        )
    return value


@page
async def queue(visit: Visit) -> Response:
    status = _choice(visit, "status", STATUSES)
    due = _choice(visit, "due", _DUE)
    region = _choice(visit, "region", visit.principal.regions)
    result = await visit.call(
        visit.state.dsr.list,
        visit.caller,
        region=region,
        status=status,
        overdue=due == "overdue",
        due_within_days=visit.state.settings.dsr.due_soon_days if due == "soon" else None,
        limit=visit.page_size,
        cursor=visit.param("cursor"),
    )
    filters = {k: v for k, v in (("status", status), ("due", due), ("region", region)) if v}
    return visit.render(
        "dsr/queue.html",
        requests=result["data"],
        pages=visit.pager(filters, result["next_cursor"]),
        filters=filters,
        statuses=STATUSES,
        # A rectification carries the corrected values: recorded through the API or CLI.
        types=tuple(t for t in TYPES if t != "rectification"),
        regimes=REGIMES,
        due_soon_days=visit.state.settings.dsr.due_soon_days,
        notice=None,
    )


@page
async def create(visit: Visit) -> Response:
    form = visit.form
    body: dict[str, Any] = {
        "type": form.text("type", max_length=20),
        "regime": form.text("regime", max_length=10),
    }
    subject_id = form.text("subject_id", max_length=100, required=False)
    email = form.text("email", max_length=254, required=False)
    phone = form.text("phone", max_length=32, required=False)
    if subject_id is not None:
        body["subject_id"] = subject_id
    if email is not None or phone is not None:
        body["region"] = form.text("region", max_length=16)
        body["identifier"] = {"email": email} if email is not None else {"phone": phone}
    if email is not None and phone is not None:
        raise ValidationFailed(
            "give one identifier", [FieldError("phone", "give an email or a phone, not both")]
        )
    created = await visit.call(visit.state.dsr.create, visit.caller, body)
    return visit.redirect(f"{PATH}/dsr/{created['id']}", done="created")


@page
async def request_page(visit: Visit) -> Response:
    request_id = visit.request.path_params["request_id"]
    record = await visit.call(visit.state.dsr.get, visit.caller, request_id)
    return visit.render(
        "dsr/request.html",
        item=record,
        steps=_steps(record),
        final=record["status"] in FINAL,
        methods=VERIFICATION_METHODS,
        notice=_NOTICES.get(visit.param("done") or ""),
        four_eyes_blocked=(
            record["type"] in FOUR_EYES and record["created_by"] == visit.principal.id
        ),
    )


@page
async def progress(visit: Visit) -> Response:
    """The progress part of a request page alone (the page's script polls it)."""
    request_id = visit.request.path_params["request_id"]
    record = await visit.call(visit.state.dsr.get, visit.caller, request_id)
    return visit.render(
        "dsr/progress.html", item=record, steps=_steps(record), final=record["status"] in FINAL
    )


def _steps(record: dict[str, Any]) -> list[dict[str, Any]]:
    """Each step of the request's type: done (and when), running now, or to come."""
    done = record.get("progress") or {}
    steps = []
    for name in STEPS[record["type"]]:
        entry = done.get(name)
        if isinstance(entry, dict):
            steps.append({"name": name, "state": "done", "at": entry.get("completed_at")})
        elif record.get("step") == name and record["status"] == "running":
            steps.append({"name": name, "state": "running", "at": None})
        else:
            steps.append({"name": name, "state": "pending", "at": None})
    return steps


@page
async def preview(visit: Visit) -> Response:
    request_id = visit.request.path_params["request_id"]
    record = await visit.call(visit.state.dsr.get, visit.caller, request_id)
    found = await visit.call(visit.state.dsr.preview, visit.caller, request_id)
    return visit.render("dsr/preview.html", item=record, preview=found)


def _action(verb: str) -> Any:
    @page
    async def act(visit: Visit) -> Response:
        request_id = visit.request.path_params["request_id"]
        service, caller, form = visit.state.dsr, visit.caller, visit.form
        if verb == "verify":
            await visit.call(
                service.verify_identity, caller, request_id, form.text("method", max_length=64)
            )
        elif verb == "approve":
            await visit.call(service.approve, caller, request_id)
        elif verb == "reject":
            await visit.call(
                service.reject, caller, request_id, form.text("reason", max_length=500)
            )
        elif verb == "extend":
            await visit.call(
                service.extend, caller, request_id, form.text("reason", max_length=500)
            )
        else:
            await visit.call(service.cancel, caller, request_id)
        return visit.redirect(f"{PATH}/dsr/{request_id}", done=verb)

    act.__name__ = f"dsr_{verb}"
    return act


@page
async def package(visit: Visit) -> Response:
    request_id = visit.request.path_params["request_id"]
    data, digest = await visit.call(visit.state.dsr.package, visit.caller, request_id)
    return Response(
        data,
        media_type="application/zip",
        headers={
            "Content-Disposition": f'attachment; filename="{request_id}.zip"',
            "Digest": f"sha-256={digest}",
        },
    )


@page
async def certificate(visit: Visit) -> Response:
    request_id = visit.request.path_params["request_id"]
    document = await visit.call(visit.state.dsr.certificate, visit.caller, request_id)
    shown = visit.param("format")
    if shown == "text":
        return PlainTextResponse(as_text(document["certificate"]))
    if shown is not None:
        raise ValidationFailed(
            "invalid format", [FieldError("format", "must be text (or absent, for JSON)")]
        )
    return Response(
        json.dumps(document, indent=2, ensure_ascii=False),
        media_type="application/json",
        headers={"Content-Disposition": f'attachment; filename="{request_id}-certificate.json"'},
    )


routes = [
    Route("/dsr", queue, methods=["GET"]),
    Route("/dsr", create, methods=["POST"]),
    Route("/dsr/{request_id}", request_page, methods=["GET"]),
    Route("/dsr/{request_id}/progress", progress, methods=["GET"]),
    Route("/dsr/{request_id}/preview", preview, methods=["GET"]),
    Route("/dsr/{request_id}/package", package, methods=["GET"]),
    Route("/dsr/{request_id}/certificate", certificate, methods=["GET"]),
    *(
        Route(f"/dsr/{{request_id}}/{verb}", _action(verb), methods=["POST"])
        for verb in ("verify", "approve", "reject", "extend", "cancel")
    ),
]
