"""`GET /v1/analytics/pipeline`: pipeline figures over opportunities.

The handler checks the query string's shape and calls `PipelineAnalytics` (rights,
SQL aggregates per region, audit) in a worker thread. `openapi_paths()` describes
the operation for the OpenAPI document.
"""

from __future__ import annotations

from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from bastion.analytics.query import GRANULARITIES, GROUPINGS, PARAMETERS, PERIOD_FIELDS, parse_query
from bastion.analytics.service import WITHHOLDABLE
from bastion.api.auth import caller_of, state_of
from bastion.api.params import all_checked
from bastion.api.problems import JSON
from bastion.crm.catalog import OPPORTUNITY_STAGES


async def pipeline(request: Request) -> Response:
    caller = await caller_of(request)
    query = parse_query(all_checked(request, PARAMETERS))
    figures = await run_in_threadpool(state_of(request).analytics.figures, caller, query)
    return JSON(figures)


routes = [Route("/v1/analytics/pipeline", pipeline, methods=["GET"])]


def openapi_paths(problem: dict[str, Any]) -> dict[str, Any]:
    """The OpenAPI 3.1 path item of the analytics route (merged into /openapi.json)."""
    groupings = "|".join(GROUPINGS)
    nullable_string = {"type": ["string", "null"]}
    money = {"type": "string", "pattern": r"^\d+\.\d{2}$"}
    metrics = {
        "currency": {
            "type": ["string", "null"],
            "description": "Amounts are never summed across currencies.",
        },
        "count": {"type": "integer", "minimum": 0},
        "amount": {**money, "description": "Sum of the deals' amounts."},
        "weighted_amount": {
            **money,
            "description": "Sum of amount * probability / 100 (half-even to the cent).",
        },
    }
    group = {
        "type": "object",
        "description": "One group: its `group_by` values (null where the deals have "
        "none), and its figures.",
        "properties": {
            "stage": {"enum": [*OPPORTUNITY_STAGES, None]},
            "owner": {**nullable_string, "description": "The owner's principal id."},
            "team": nullable_string,
            "period": {
                **nullable_string,
                "description": "`2027-01` (month), `2027-Q1` (quarter) or `2027` (year).",
            },
            **metrics,
        },
        "required": ["count"],
    }
    average = {"type": ["number", "null"], "minimum": 0}
    summary = {
        "type": "object",
        "description": "Over the groups shown (under suppression: the cells kept). "
        "Under suppression, an average over fewer than `min_group_size` deals or stays "
        "is null.",
        "properties": {
            "win_loss": {
                "type": "object",
                "properties": {
                    "won": {"type": "integer", "minimum": 0},
                    "lost": {"type": "integer", "minimum": 0},
                    "ratio": {
                        **average,
                        "maximum": 1,
                        "description": "won / (won + lost); null when no deal is closed.",
                    },
                },
                "required": ["won", "lost", "ratio"],
            },
            "average_sales_cycle_days": {
                **average,
                "description": "Creation to entering closed_won, over the deals won now.",
            },
            "stage_velocity": {
                "type": "array",
                "description": "Average days spent in each stage, over the stays that ended.",
                "items": {
                    "type": "object",
                    "properties": {
                        "stage": {"enum": list(OPPORTUNITY_STAGES)},
                        "average_days": average,
                        "count": {"type": "integer", "minimum": 1},
                    },
                    "required": ["stage", "average_days", "count"],
                },
            },
        },
        "required": ["win_loss", "average_sales_cycle_days", "stage_velocity"],
    }
    figures = {
        "type": "object",
        "properties": {
            "group_by": {"type": "array", "items": {"enum": list(GROUPINGS)}},
            "period": {"enum": list(GRANULARITIES)},
            "period_field": {"enum": list(PERIOD_FIELDS)},
            "from": {"type": ["string", "null"], "format": "date"},
            "to": {"type": ["string", "null"], "format": "date"},
            "regions": {"type": "array", "items": {"type": "string"}},
            "groups": {"type": "array", "items": group},
            "totals": {
                "type": "array",
                "description": "Per currency, over the groups shown.",
                "items": {"type": "object", "properties": metrics, "required": ["count"]},
            },
            "summary": summary,
            "suppressed_groups": {
                "type": "integer",
                "minimum": 0,
                "description": "Callers with `analytics read` but not `list` on "
                "opportunities: cells (deals of one owner, team, stage, close month, "
                "creation month and currency) of fewer than `min_group_size` deals left "
                "out of every figure. Otherwise 0.",
            },
            "min_group_size": {
                "type": ["integer", "null"],
                "description": "k, when suppression applied; null otherwise.",
            },
            "_withheld": {
                "type": "array",
                "items": {"enum": list(WITHHOLDABLE)},
                "description": "Figures left out: over fields you may not read in every "
                "deal of every region queried.",
            },
        },
        "required": [
            "group_by",
            "period",
            "period_field",
            "regions",
            "groups",
            "totals",
            "suppressed_groups",
            "min_group_size",
            "_withheld",
        ],
    }
    date = {"type": "string", "format": "date"}
    return {
        "/v1/analytics/pipeline": {
            "get": {
                "operationId": "pipeline_analytics",
                "summary": "Pipeline figures over opportunities, within your rights",
                "description": (
                    "Counts, amounts and weighted amounts per group (always split by "
                    "currency), win/loss, sales cycle and stage velocity, computed in each "
                    "region's database. With `list` on opportunities: over the deals you "
                    "may list and read. With only `analytics read`: every figure is a sum "
                    "over the same fixed cells (deals of one owner, team, stage, close "
                    "month, creation month and currency, per region), those of fewer than "
                    "`min_group_size` deals left out and counted in `suppressed_groups`, "
                    "so no difference of two answers isolates them; `from`/`to` must then "
                    "be the first/last day of a month (422 otherwise). "
                    "Grouping or filtering on a field you may not read is a 403 naming it."
                ),
                "tags": ["analytics"],
                "parameters": [
                    {
                        "name": "group_by",
                        "in": "query",
                        "schema": {
                            "type": "string",
                            "pattern": f"^({groupings})(,({groupings}))*$",
                        },
                        "description": "Comma list of stage, owner, team, period.",
                    },
                    {"name": "period", "in": "query", "schema": {"enum": list(GRANULARITIES)}},
                    {
                        "name": "period_field",
                        "in": "query",
                        "schema": {"enum": list(PERIOD_FIELDS)},
                        "description": "What `period`, `from` and `to` apply to.",
                    },
                    {
                        "name": "from",
                        "in": "query",
                        "schema": date,
                        "description": "First day (inclusive); under k-suppression, the "
                        "first day of a month.",
                    },
                    {
                        "name": "to",
                        "in": "query",
                        "schema": date,
                        "description": "Last day (inclusive); under k-suppression, the "
                        "last day of a month.",
                    },
                    {
                        "name": "region",
                        "in": "query",
                        "schema": {"type": "string"},
                        "description": "One region (default: every region you may use).",
                    },
                ],
                "responses": {
                    "200": {
                        "description": "The figures.",
                        "content": {"application/json": {"schema": figures}},
                    },
                    **dict.fromkeys(("401", "403", "422", "503"), problem),
                },
            }
        }
    }
