"""The JSON bodies of the API that are not records, and their OpenAPI components.

Each body has one definition, which both the code that builds it and `/openapi.json`
use, so the two cannot drift apart:

- a body built as a dict literal is a TypedDict (`bastion.wire`): mypy checks the
  literal against it, and its schema is the one pydantic generates from it. The
  handlers' own bodies are defined here; the domains' next to the code that builds
  them (`VerifyReport.to_json`, `Explanation.as_dict`, `effective_permissions`, ...);
- a body that shows a table row (a data subject's request, a legal hold) is
  described from the table's columns: their types, and null where a column may be.

`components()` answers them all, under `#/components/schemas/<name>`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal, get_args

from pydantic import TypeAdapter
from pydantic.json_schema import GenerateJsonSchema
from pydantic_core import CoreSchema
from sqlalchemy import Integer, String, Table
from typing_extensions import TypedDict

from bastion.audit.checkpoints import AuditCheckpoint
from bastion.audit.sequencer import SequencerState
from bastion.audit.verify import AuditVerification
from bastion.crm.permissions import EntityPermissions
from bastion.dsr.certificate import SignedCertificate
from bastion.dsr.inputs import IDENTIFIERS
from bastion.dsr.model import REGIMES, STEPS, TYPES, Status
from bastion.dsr.service import SHOWN_COLUMNS, DsrPreview
from bastion.dsr.steps import DsrResult
from bastion.dsr.tables import dsr_requests, legal_holds
from bastion.policy.explain import PolicyExplanation
from bastion.policy.lint import PolicyFinding
from bastion.policy.rules import Effect
from bastion.policy.store import PolicyActivation
from bastion.sqltypes import UTCDateTime
from bastion.wire import closed

_REF = "#/components/schemas/{model}"


def ref(name: str) -> dict[str, str]:
    return {"$ref": _REF.format(model=name)}


def json_response(name: str, description: str, *, or_text: bool = False) -> dict[str, Any]:
    """An OpenAPI response whose JSON body is the component `name` (or, `or_text`,
    text/plain, as the request asks)."""
    content: dict[str, Any] = {"application/json": {"schema": ref(name)}}
    if or_text:
        content["text/plain"] = {"schema": {"type": "string"}}
    return {"description": description, "content": content}


# -- the handlers' own bodies -------------------------------------------------------------


@closed
class Me(TypedDict):
    """The caller, its roles, regions and teams, and what the policy lets it do."""

    id: str
    name: str
    roles: list[str]
    regions: list[str]
    teams: list[str]
    policy_version: str
    permissions: dict[str, EntityPermissions]
    """Per entity (`accounts`, `contacts`, ...)."""
    resources: dict[str, list[str]]
    """The actions allowed on Bastion's own resources (audit, keys, policy, ...)."""


@closed
class Liveness(TypedDict):
    status: Literal["ok"]


Health = Literal["ok", "unavailable"]
ChainHealth = Literal["ok", "behind or unavailable"]


@closed
class ReadinessAudit(TypedDict):
    sequencer: SequencerState
    chains: dict[str, ChainHealth]


@closed
class Readiness(TypedDict):
    """Whether every database, every region's key service and the audit log answer."""

    status: Literal["ready", "unavailable"]
    databases: dict[str, Health]
    keys: dict[str, Health]
    audit: ReadinessAudit


@closed
class RunningPolicy(TypedDict):
    """The policy this process enforces, and the version active in the control database
    (they differ for up to `policy_poll_seconds` after a reload)."""

    version: str
    active_version: str | None
    origin: str
    """Where the policy files were read from."""
    roles: list[str]
    regions: list[str]
    resources: dict[str, list[str]]
    """Every entity and resource, with its actions."""


@closed
class PolicyHistory(TypedDict):
    data: list[PolicyActivation]
    """Newest first."""


@closed
class PolicyCheckResult(TypedDict):
    target: str
    action: str
    region: str
    decision: Effect
    reason: str


@closed
class PolicyChecks(TypedDict):
    policy_version: str
    results: list[PolicyCheckResult]
    """One per question, in the order asked."""


@closed
class PolicyReload(TypedDict):
    old_version: str
    version: str
    """The version now active."""
    changed: bool
    warnings: list[PolicyFinding]


@closed
class AuditCheckpointPage(TypedDict):
    data: list[AuditCheckpoint]
    """Newest first."""
    verifier_key: str
    """The chain's Ed25519 verifier key, for checking the notes."""
    next_cursor: str | None


_GENERATED: tuple[type, ...] = (
    Me,
    Liveness,
    Readiness,
    RunningPolicy,
    PolicyHistory,
    PolicyExplanation,
    PolicyChecks,
    PolicyReload,
    AuditVerification,
    AuditCheckpoint,
    AuditCheckpointPage,
    DsrPreview,
    DsrResult,
    SignedCertificate,
)


class _Untitled(GenerateJsonSchema):
    """pydantic's schemas without a title per property (the name says it)."""

    def field_title_should_be_set(self, schema: CoreSchema) -> bool:
        return False


# -- bodies that show a table row ----------------------------------------------------------


def row_schema(
    table: Table,
    columns: Sequence[str],
    *,
    description: str,
    shown_as: Mapping[str, dict[str, Any]],
    added: Mapping[str, dict[str, Any]],
) -> dict[str, Any]:
    """A closed object of `columns` of `table`, each as its column type shows it in JSON
    (`crm.records.to_json_value`) or as `shown_as` says (JSON columns must be named
    there), null allowed where the column is nullable; then the `added` properties.
    Every key is always present."""
    properties: dict[str, Any] = {}
    for name in columns:
        column = table.c[name]
        schema = shown_as.get(name) or _column_schema(table, name)
        properties[name] = {"anyOf": [schema, {"type": "null"}]} if column.nullable else schema
    properties.update(added)
    return {
        "type": "object",
        "description": description,
        "properties": properties,
        "required": list(properties),
        "additionalProperties": False,
    }


def _column_schema(table: Table, name: str) -> dict[str, Any]:
    kind = table.c[name].type
    if isinstance(kind, UTCDateTime):
        return {"type": "string", "format": "date-time"}
    if isinstance(kind, String):
        return {"type": "string"}
    if isinstance(kind, Integer):
        return {"type": "integer"}
    raise TypeError(f"{table.name}.{name} is {kind!r}: say how the API shows it (shown_as)")


def _page(item: str, description: str) -> dict[str, Any]:
    return {
        "type": "object",
        "description": description,
        "properties": {
            "data": {"type": "array", "items": ref(item)},
            "next_cursor": {"type": ["string", "null"]},
        },
        "required": ["data", "next_cursor"],
        "additionalProperties": False,
    }


def _flag(description: str) -> dict[str, Any]:
    return {"type": "boolean", "description": description}


def _dsr_request() -> dict[str, Any]:
    return row_schema(
        dsr_requests,
        SHOWN_COLUMNS,
        description="A data subject's request (`DsrService._render`).",
        shown_as={
            "type": {"type": "string", "enum": list(TYPES)},
            "regime": {"type": "string", "enum": list(REGIMES)},
            "status": {"type": "string", "enum": list(get_args(Status))},
            "identified_by": {"type": "string", "enum": ["record", *IDENTIFIERS]},
            "subject_ids": {"type": "array", "items": {"type": "string"}},
            "step": {
                "type": "string",
                "enum": sorted({step for steps in STEPS.values() for step in steps}),
            },
            "progress": {
                "type": "object",
                "description": "Per completed step, when it completed and what it counted; "
                "`attempts` counts transient failures retried.",
                "properties": {"attempts": {"type": "integer", "minimum": 1}},
                "additionalProperties": {
                    "type": "object",
                    "properties": {"completed_at": {"type": "string", "format": "date-time"}},
                    "required": ["completed_at"],
                },
            },
            "result": ref("DsrResult"),
        },
        added={
            "extended": _flag("Whether the deadline was extended (once at most)."),
            "overdue": _flag("Open past its deadline."),
            "due_soon": _flag("Open, and due within `[dsr] due_soon_days`."),
        },
    )


def _legal_hold() -> dict[str, Any]:
    return row_schema(
        legal_holds,
        [str(column.name) for column in legal_holds.columns],
        description="A legal hold on a data subject or a record (`holds._render`).",
        shown_as={},
        added={"active": _flag("Neither released nor expired.")},
    )


def components() -> dict[str, Any]:
    """Every body above, by component name."""
    _, generated = TypeAdapter.json_schemas(
        [(body, "serialization", TypeAdapter(body)) for body in _GENERATED],
        ref_template=_REF,
        schema_generator=_Untitled,
    )
    schemas: dict[str, Any] = generated["$defs"]
    for schema in schemas.values():
        schema.pop("title", None)
    schemas["DsrRequest"] = _dsr_request()
    schemas["DsrRequestPage"] = _page("DsrRequest", "Requests, soonest deadline first.")
    schemas["LegalHold"] = _legal_hold()
    schemas["LegalHoldPage"] = _page("LegalHold", "Legal holds, newest first.")
    return schemas
