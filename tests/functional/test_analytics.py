"""Pipeline analytics (`GET /v1/analytics/pipeline`): figures, rights, history, audit.

Figures are checked against a computation over the deals each test created through
the API (and once against plain SQL on the region database). k is 3 here
(`BASTION_ANALYTICS_MIN_GROUP_SIZE`), which also proves the setting reaches the
service.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, text
from starlette.testclient import TestClient

from bastion.analytics.tables import opportunity_stages
from bastion.app import create_app
from bastion.state import State, build_state
from tests.conftest import Backend, FrozenClock, ResidencyGuard, Tokens, settings_for
from tests.factories import account_body, caller, create, lead_body, policy_dir, principal_id

REPO = Path(__file__).resolve().parents[2]
URL = "/v1/analytics/pipeline"
K = 3
SETTINGS_ENV = {"BASTION_ANALYTICS_MIN_GROUP_SIZE": str(K)}
CENT = Decimal("0.01")
_RECORD_ID = re.compile(r"[a-z]{3}_(?:eu|us)_[0-9a-z]{26}")


def _deal(account_id: str, **overrides: Any) -> dict[str, Any]:
    return {
        "region": "eu",
        "name": "Rollout",
        "account_id": account_id,
        "stage": "proposal",
        "amount": "1000.00",
        "currency": "EUR",
        "close_date": "2027-01-31",
        "probability": 40,
        **overrides,
    }


def _deals(
    client: TestClient, headers: dict[str, str], bodies: Sequence[dict[str, Any]]
) -> list[dict[str, Any]]:
    return [create(client, "opportunities", body, headers) for body in bodies]


def _account(client: TestClient, headers: dict[str, str], region: str = "eu") -> str:
    return str(create(client, "accounts", account_body(region=region), headers)["id"])


def _figures(client: TestClient, headers: dict[str, str], **params: str) -> dict[str, Any]:
    response = client.get(URL, params=params, headers=headers)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def _expected(
    deals: Sequence[dict[str, Any]], key: Callable[[dict[str, Any]], tuple[Any, ...]]
) -> dict[tuple[Any, ...], dict[str, Any]]:
    """count, amount and weighted amount per (key, currency), in Python."""
    sums: dict[tuple[Any, ...], dict[str, Any]] = {}
    for deal in deals:
        group = sums.setdefault(
            (*key(deal), deal["currency"]),
            {"count": 0, "amount": Decimal(0), "weighted_amount": Decimal(0)},
        )
        group["count"] += 1
        group["amount"] += Decimal(deal["amount"])
        group["weighted_amount"] += Decimal(deal["amount"]) * deal["probability"] / 100
    return {
        key: {
            "count": g["count"],
            "amount": str(g["amount"].quantize(CENT)),
            "weighted_amount": str(g["weighted_amount"].quantize(CENT, ROUND_HALF_EVEN)),
        }
        for key, g in sums.items()
    }


def _shown(figures: dict[str, Any]) -> dict[tuple[Any, ...], dict[str, Any]]:
    names = [*figures["group_by"], "currency"]
    return {
        tuple(group[n] for n in names): {
            k: group[k] for k in ("count", "amount", "weighted_amount") if k in group
        }
        for group in figures["groups"]
    }


def _quarter(day: str) -> str:
    return f"{day[:4]}-Q{(int(day[5:7]) + 2) // 3}"


MIXED = (
    {"stage": "proposal", "amount": "1000.00", "probability": 40},
    {"stage": "proposal", "amount": "2500.55", "probability": 15, "close_date": "2027-04-02"},
    {"stage": "proposal", "amount": "99.99", "probability": 33, "currency": "USD"},
    {"stage": "negotiation", "amount": "40000.00", "probability": 70},
    {"stage": "negotiation", "amount": "0.05", "probability": 50, "close_date": "2028-02-29"},
    {"stage": "closed_won", "amount": "12000.00", "probability": 100},
    {"stage": "closed_lost", "amount": "7000.00", "probability": 0, "currency": "USD"},
    {"stage": "prospecting", "amount": "333.33", "probability": 10, "close_date": "2027-12-01"},
)


@pytest.mark.parametrize(
    ("params", "key"),
    [
        ({"group_by": "stage"}, lambda d: (d["stage"],)),
        ({"group_by": "period"}, lambda d: (d["close_date"][:7],)),
        (
            {"group_by": "stage,period", "period": "quarter"},
            lambda d: (d["stage"], _quarter(d["close_date"])),
        ),
        (
            {"group_by": "period,owner", "period": "year"},
            lambda d: (d["close_date"][:4], d["owner_id"]),
        ),
        ({"group_by": "team"}, lambda d: (d["team_id"],)),
        ({}, lambda d: ()),
    ],
    ids=["stage", "month", "stage-quarter", "year-owner", "team", "none"],
)
def test_figures_equal_a_computation_over_the_deals(
    client: TestClient,
    state: State,
    params: dict[str, str],
    key: Callable[[dict[str, Any]], tuple[Any, ...]],
) -> None:
    admin = caller(state, "admin", name="admin")
    account = _account(client, admin.headers)
    owners = [admin.id, principal_id()]
    bodies = [
        _deal(account, **fields, owner_id=owners[i % 2], team_id="t2" if i % 3 == 0 else "t1")
        for i, fields in enumerate(MIXED)
    ]
    deals = [
        {**body, **created}
        for body, created in zip(bodies, _deals(client, admin.headers, bodies), strict=True)
    ]

    figures = _figures(client, admin.headers, region="eu", **params)

    assert _shown(figures) == _expected(deals, key)
    assert figures["suppressed_groups"] == 0
    assert figures["min_group_size"] is None
    assert figures["_withheld"] == []
    totals = _expected(deals, lambda d: ())
    assert {
        (t["currency"],): {k: t[k] for k in ("count", "amount", "weighted_amount")}
        for t in figures["totals"]
    } == totals
    assert figures["summary"]["win_loss"] == {"won": 1, "lost": 1, "ratio": 0.5}


def test_figures_equal_plain_sql_on_the_region_database(client: TestClient, state: State) -> None:
    admin = caller(state, "admin", name="admin")
    account = _account(client, admin.headers)
    _deals(client, admin.headers, [_deal(account, **fields) for fields in MIXED])
    with state.regions.get("eu").engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT stage, currency, COUNT(*), SUM(amount), SUM(amount * probability) "
                "FROM opportunities GROUP BY stage, currency"
            )
        ).all()
    expected = {
        (stage, currency): {
            "count": count,
            "amount": str(Decimal(amount).scaleb(-2).quantize(CENT)),
            "weighted_amount": str(Decimal(weighted).scaleb(-4).quantize(CENT, ROUND_HALF_EVEN)),
        }
        for stage, currency, count, amount, weighted in rows
    }
    assert _shown(_figures(client, admin.headers, group_by="stage")) == expected


def test_date_filter_keeps_deals_whose_period_field_falls_in_the_days(
    client: TestClient, state: State, clock: FrozenClock
) -> None:
    admin = caller(state, "admin", name="admin")
    account = _account(client, admin.headers)
    _deals(client, admin.headers, [_deal(account, **fields) for fields in MIXED])
    figures = _figures(
        client, admin.headers, group_by="period", **{"from": "2027-01-31", "to": "2027-12-01"}
    )
    # 2028-02-29 is out; 2027-01 holds three deals in EUR and two in USD.
    assert sorted((g["period"], g["count"]) for g in figures["groups"]) == [
        ("2027-01", 2),
        ("2027-01", 3),
        ("2027-04", 1),
        ("2027-12", 1),
    ]
    clock.advance(timedelta(days=2))
    _deals(client, admin.headers, [_deal(account)])
    created_today = clock.current.date().isoformat()
    figures = _figures(
        client,
        admin.headers,
        period_field="created_at",
        group_by="period",
        **{"from": created_today, "to": created_today},
    )
    assert [(g["period"], g["count"]) for g in figures["groups"]] == [(created_today[:7], 1)]


def test_sales_rep_figures_cover_only_its_own_and_its_team_deals(
    client: TestClient, state: State
) -> None:
    admin = caller(state, "admin", name="admin")
    rep = caller(state, "sales_rep", name="rep", teams=["t1"])
    account = _account(client, admin.headers)
    stranger = principal_id()
    bodies = [
        _deal(account, owner_id=rep.id, amount="100.00"),  # own
        _deal(account, owner_id=stranger, team_id="t1", amount="20.00"),  # team
        _deal(account, owner_id=stranger, team_id="t2", amount="3000.00"),  # neither
        _deal(account, owner_id=stranger, amount="40000.00"),  # neither
    ]
    deals = [{**b, **c} for b, c in zip(bodies, _deals(client, admin.headers, bodies), strict=True)]

    mine = _figures(client, rep.headers, group_by="owner")

    assert _shown(mine) == _expected(deals[:2], lambda d: (d["owner_id"],))
    assert mine["totals"] == [
        {"currency": "EUR", "count": 2, "amount": "120.00", "weighted_amount": "48.00"}
    ]
    everything = _figures(client, admin.headers)
    assert everything["totals"][0]["count"] == 4


def test_analyst_sees_groups_of_at_least_k_deals_and_no_record_ids(
    client: TestClient, state: State, clock: FrozenClock
) -> None:
    admin = caller(state, "admin", name="admin")
    analyst = caller(state, "analyst", name="analyst")
    account = _account(client, admin.headers)
    _deals(client, admin.headers, [_deal(account) for _ in range(K)])  # 2026-11
    clock.advance(timedelta(days=40))
    _deals(client, admin.headers, [_deal(account) for _ in range(K - 1)])  # 2027-01

    response = client.get(
        URL, params={"group_by": "period", "period_field": "created_at"}, headers=analyst.headers
    )

    assert response.status_code == 200, response.text
    figures = response.json()
    assert [(g["period"], g["count"]) for g in figures["groups"]] == [("2026-11", K)]
    assert figures["suppressed_groups"] == 1
    assert figures["min_group_size"] == K
    # The shown groups only: no differencing.
    assert [t["count"] for t in figures["totals"]] == [K]
    assert figures["totals"][0]["amount"] == figures["groups"][0]["amount"]
    assert not _RECORD_ID.search(response.text)
    assert not _RECORD_ID.search(str(dict(response.headers)))


def _move(client: TestClient, headers: dict[str, str], deal: dict[str, Any], stage: str) -> None:
    response = client.patch(
        f"/v1/opportunities/{deal['id']}",
        json={"stage": stage},
        headers={**headers, "If-Match": f'"v{deal["version"]}"'},
    )
    assert response.status_code == 200, response.text


def test_analyst_filters_by_whole_months_so_a_one_day_difference_reveals_no_deal(
    client: TestClient, state: State
) -> None:
    admin = caller(state, "admin", name="admin")
    analyst = caller(state, "analyst", name="analyst")
    account = _account(client, admin.headers)
    _deals(
        client,
        admin.headers,
        [
            *(_deal(account, close_date="2026-12-15") for _ in range(K)),
            *(_deal(account, close_date="2027-01-15") for _ in range(K)),
            # Alone in its cell (another owner): the deal the differencing is after.
            _deal(account, owner_id=principal_id(), close_date="2027-01-31", amount="999999.00"),
        ],
    )

    # The attack was `to=2027-01-31` minus `to=2027-01-30`.
    refused = client.get(
        URL, params={"group_by": "stage", "to": "2027-01-30"}, headers=analyst.headers
    )
    assert refused.status_code == 422, refused.text
    assert [e["field"] for e in refused.json()["errors"]] == ["to"]
    january = _figures(client, analyst.headers, group_by="stage", to="2027-01-31")
    december = _figures(client, analyst.headers, group_by="stage", to="2026-12-31")

    def proposals(count: int) -> list[dict[str, Any]]:
        return [
            {
                "stage": "proposal",
                "currency": "EUR",
                "count": count,
                "amount": f"{count * 1000}.00",
                "weighted_amount": f"{count * 400}.00",
            }
        ]

    # Month steps differ by whole visible cells: here January's K deals, never the
    # lone deal, although it closes in January and in the same stage.
    assert january["groups"] == proposals(2 * K)
    assert december["groups"] == proposals(K)
    assert (january["suppressed_groups"], december["suppressed_groups"]) == (1, 0)
    assert "999999" not in str(january) + str(december)
    # Callers who may list the deals keep day-exact filters.
    assert _figures(client, admin.headers, to="2027-01-30")["totals"][0]["count"] == 2 * K
    assert _figures(client, admin.headers, to="2027-01-31")["totals"][0]["count"] == 2 * K + 1


def test_analyst_grouping_differences_reveal_no_hidden_cell(
    client: TestClient, state: State
) -> None:
    admin = caller(state, "admin", name="admin")
    analyst = caller(state, "analyst", name="analyst")
    account = _account(client, admin.headers)
    owner, other = principal_id(), principal_id()
    _deals(
        client,
        admin.headers,
        [
            *(_deal(account, owner_id=owner) for _ in range(K)),
            *(
                _deal(account, owner_id=other, stage="negotiation", amount="50.00")
                for _ in range(K)
            ),
            # The one won deal of `owner`: a cell of one.
            _deal(account, owner_id=owner, stage="closed_won", amount="777777.00", probability=100),
        ],
    )

    by_owner = _figures(client, analyst.headers, group_by="owner")
    by_owner_stage = _figures(client, analyst.headers, group_by="owner,stage")

    # The attack was an owner's group minus its visible (owner, stage) groups.
    assert sorted((g["owner"], g["count"]) for g in by_owner["groups"]) == sorted(
        [(owner, K), (other, K)]
    )
    for group in by_owner["groups"]:
        parts = [g for g in by_owner_stage["groups"] if g["owner"] == group["owner"]]
        for figure in ("count", "amount", "weighted_amount"):
            assert Decimal(group[figure]) == sum(Decimal(p[figure]) for p in parts)
    assert by_owner["suppressed_groups"] == by_owner_stage["suppressed_groups"] == 1
    assert by_owner["summary"]["win_loss"] == {"won": 0, "lost": 0, "ratio": None}
    # Whatever the grouping, totals and summary are those of the same visible cells.
    for params in (
        {},
        {"group_by": "stage"},
        {"group_by": "team"},
        {"group_by": "period,owner", "period": "quarter"},
        {"group_by": "period", "period": "year", "period_field": "created_at"},
    ):
        figures = _figures(client, analyst.headers, **params)
        assert figures["totals"] == by_owner["totals"], params
        assert figures["summary"] == by_owner["summary"], params
        assert "777777" not in str(figures)


def test_analyst_stage_velocity_covers_only_the_deals_of_visible_cells(
    client: TestClient, state: State, clock: FrozenClock
) -> None:
    admin = caller(state, "admin", name="admin")
    analyst = caller(state, "analyst", name="analyst")
    account = _account(client, admin.headers)
    crowd = _deals(client, admin.headers, [_deal(account, stage="prospecting") for _ in range(K)])
    lone = create(
        client,
        "opportunities",
        _deal(account, stage="prospecting", owner_id=principal_id()),
        admin.headers,
    )
    clock.advance(timedelta(days=2))
    for deal in crowd:
        _move(client, admin.headers, deal, "proposal")
    clock.advance(timedelta(days=8))
    _move(client, admin.headers, lone, "proposal")

    velocity = _figures(client, analyst.headers)["summary"]["stage_velocity"]

    # The lone deal's ten days in prospecting count nowhere.
    assert velocity == [{"stage": "prospecting", "average_days": 2.0, "count": K}]
    listed = _figures(client, admin.headers)["summary"]["stage_velocity"]
    average = round((2 * K + 10) / (K + 1), 2)
    assert listed == [{"stage": "prospecting", "average_days": average, "count": K + 1}]


def test_analyst_figures_by_either_period_field_come_from_the_same_cells(
    client: TestClient, state: State, clock: FrozenClock
) -> None:
    admin = caller(state, "admin", name="admin")
    analyst = caller(state, "analyst", name="analyst")
    account = _account(client, admin.headers)
    _deals(client, admin.headers, [_deal(account) for _ in range(K)])
    clock.advance(timedelta(days=40))
    # Same close month as the others, alone in its creation month: were cells keyed
    # on one period field only, it would count under the other one, and the two
    # totals would differ by exactly this deal.
    _deals(client, admin.headers, [_deal(account, amount="888888.00")])

    by_close = _figures(client, analyst.headers, group_by="period")
    by_creation = _figures(client, analyst.headers, group_by="period", period_field="created_at")

    assert [(g["period"], g["count"]) for g in by_close["groups"]] == [("2027-01", K)]
    assert by_close["totals"] == by_creation["totals"]
    assert by_close["suppressed_groups"] == by_creation["suppressed_groups"] == 1
    assert "888888" not in str(by_close) + str(by_creation)


@pytest.mark.parametrize(
    ("params", "fields"),
    [
        ({"to": "2027-01-30"}, ["to"]),
        ({"from": "2027-01-02"}, ["from"]),
        ({"from": "2027-01-31", "to": "2027-01-31"}, ["from"]),
        ({"to": "2028-02-28"}, ["to"]),  # a leap year: February ends on the 29th
        ({"from": "2027-03-15", "to": "2027-04-15", "period_field": "created_at"}, ["from", "to"]),
    ],
)
def test_analyst_date_filters_that_are_not_whole_months_are_422_naming_them(
    client: TestClient, state: State, params: dict[str, str], fields: list[str]
) -> None:
    analyst = caller(state, "analyst", name="analyst")
    response = client.get(URL, params=params, headers=analyst.headers)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert [e["field"] for e in response.json()["errors"]] == fields
    for whole in (
        {"from": "2027-02-01", "to": "2027-02-28"},
        {"to": "2028-02-29"},
        {"from": "2027-03-01", "to": "2027-04-30", "period_field": "created_at"},
    ):
        assert client.get(URL, params=whole, headers=analyst.headers).status_code == 200


@pytest.fixture
def narrow(backend: Backend, tmp_path: Path) -> Iterator[tuple[TestClient, State]]:
    """The default policy, except that analysts may read no deal field at all."""
    fields = ("stage", "amount", "currency", "probability", "close_date", "owner_id", "team_id")
    directory = policy_dir(
        tmp_path / "policies",
        source=REPO / "policies",
        append=[f"p2, analyst, *, opportunities.{name}, read, , deny" for name in fields],
    )
    (tmp_path / "absent.toml").write_text("")
    configured = settings_for(backend, tmp_path, BASTION_POLICIES=str(directory), **SETTINGS_ENV)
    built = build_state(configured, clock=FrozenClock())
    try:
        with TestClient(create_app(configured, state=built)) as client:
            yield client, built
    finally:
        built.close()


def test_grouping_on_a_field_the_caller_may_not_read_is_403_naming_it(
    narrow: tuple[TestClient, State],
) -> None:
    client, state = narrow
    analyst = caller(state, "analyst", name="analyst")
    counted = client.get(
        URL, params={"group_by": "period", "period_field": "created_at"}, headers=analyst.headers
    )
    assert counted.status_code == 200, counted.text
    assert counted.json()["_withheld"] == ["currency", "amount", "weighted_amount", "summary"]
    for params, fields in (
        ({"group_by": "period,stage", "period_field": "created_at"}, ["stage"]),
        ({"group_by": "owner,team"}, ["owner_id", "team_id"]),
        ({"group_by": "period"}, ["close_date"]),  # the default period field
        ({"from": "2027-01-01"}, ["close_date"]),
    ):
        response = client.get(URL, params=params, headers=analyst.headers)
        assert response.status_code == 403, response.text
        assert response.json()["fields"] == fields


@pytest.fixture
def deployment(backend: Backend, tmp_path: Path) -> Iterator[tuple[TestClient, State]]:
    """A policy where analysts may read deals' stage and money (never list them);
    sales reps read an amount only below 100,000 (a conditional mask); support agents
    list and read deals, their amounts but not their probability."""
    directory = policy_dir(
        tmp_path / "policies",
        source=REPO / "policies",
        append=[
            "p2, analyst, *, opportunities.stage, read, , allow",
            "p2, analyst, *, opportunities.currency, read, , allow",
            "p2, analyst, *, opportunities.amount, read, , allow",
            "p2, analyst, *, opportunities.probability, read, , allow",
            "p2, sales_rep, *, opportunities.amount, read, amount >= 100000, deny",
            "p, support_agent, *, opportunities, list, region, allow",
            "p, support_agent, *, opportunities, read, region, allow",
            "p2, support_agent, *, opportunities.stage, read, , allow",
            "p2, support_agent, *, opportunities.currency, read, , allow",
            "p2, support_agent, *, opportunities.amount, read, , allow",
        ],
    )
    (tmp_path / "absent.toml").write_text("")
    configured = settings_for(backend, tmp_path, BASTION_POLICIES=str(directory), **SETTINGS_ENV)
    built = build_state(configured, clock=FrozenClock())
    try:
        with TestClient(create_app(configured, state=built)) as client:
            yield client, built
    finally:
        built.close()


def test_analyst_totals_and_summary_cover_only_the_groups_shown(
    deployment: tuple[TestClient, State],
) -> None:
    client, state = deployment
    admin = caller(state, "admin", name="admin")
    analyst = caller(state, "analyst", name="analyst")
    account = _account(client, admin.headers)
    bodies = [
        *(_deal(account, amount=f"{n}00.00") for n in range(1, K + 1)),
        _deal(account, stage="closed_won", amount="999999.00", probability=100),
        _deal(account, stage="closed_lost", amount="5.00", probability=0),
    ]
    deals = [{**b, **c} for b, c in zip(bodies, _deals(client, admin.headers, bodies), strict=True)]

    figures = _figures(client, analyst.headers, group_by="stage")

    assert _shown(figures) == _expected(deals[:K], lambda d: (d["stage"],))
    assert figures["suppressed_groups"] == 2
    assert figures["totals"] == [
        {"currency": "EUR", **_expected(deals[:K], lambda d: ())[("EUR",)]}
    ]
    # The won and the lost deal are in suppressed groups: the summary does not count them.
    assert figures["summary"]["win_loss"] == {"won": 0, "lost": 0, "ratio": None}
    assert figures["_withheld"] == []


def test_amount_metrics_are_withheld_when_the_amount_is_readable_only_conditionally(
    deployment: tuple[TestClient, State],
) -> None:
    client, state = deployment
    admin = caller(state, "admin", name="admin")
    rep = caller(state, "sales_rep", name="rep")
    agent = caller(state, "support_agent", name="agent")
    account = _account(client, admin.headers)
    _deals(
        client,
        admin.headers,
        [_deal(account, owner_id=rep.id, amount=amount) for amount in ("10.00", "250000.00")],
    )

    figures = _figures(client, rep.headers, group_by="stage")

    assert figures["_withheld"] == ["amount", "weighted_amount"]
    assert figures["groups"] == [{"stage": "proposal", "currency": "EUR", "count": 2}]
    assert figures["totals"] == [{"currency": "EUR", "count": 2}]

    # Amounts without probabilities: sums, but no weighted sums.
    figures = _figures(client, agent.headers, group_by="stage")
    assert figures["_withheld"] == ["weighted_amount"]
    assert figures["groups"] == [
        {"stage": "proposal", "currency": "EUR", "count": 2, "amount": "250010.00"}
    ]


def _history(state: State, opportunity_id: str) -> list[tuple[int, str, Any, Any]]:
    history = opportunity_stages.c
    with state.regions.get("eu").transaction() as conn:
        rows = conn.execute(
            select(history.seq, history.stage, history.entered_at, history.left_at)
            .where(history.opportunity_id == opportunity_id)
            .order_by(history.seq)
        ).all()
    return [tuple(row) for row in rows]


def _at(moment: datetime) -> datetime:
    """A history time compared to the second (the test clock ticks a microsecond per call)."""
    return moment.replace(microsecond=0)


def test_stage_history_is_written_on_create_update_and_conversion(
    client: TestClient, state: State, clock: FrozenClock
) -> None:
    admin = caller(state, "admin", name="admin")
    account = _account(client, admin.headers)
    start = clock.current
    deal = create(client, "opportunities", _deal(account, stage="prospecting"), admin.headers)
    assert [(seq, stage, left) for seq, stage, _e, left in _history(state, deal["id"])] == [
        (1, "prospecting", None)
    ]

    def patch(body: dict[str, Any], version: int) -> None:
        response = client.patch(
            f"/v1/opportunities/{deal['id']}",
            json=body,
            headers={**admin.headers, "If-Match": f'"v{version}"'},
        )
        assert response.status_code == 200, response.text

    clock.advance(timedelta(days=2))
    patch({"stage": "qualification"}, 1)
    patch({"next_step": "call the buyer"}, 2)  # no stage change: no history row
    clock.advance(timedelta(days=3))
    patch({"stage": "closed_won"}, 3)

    history = [
        (s, st, _at(e), None if left is None else _at(left))
        for s, st, e, left in _history(state, deal["id"])
    ]
    day = timedelta(days=1)
    assert history == [
        (1, "prospecting", _at(start), _at(start + 2 * day)),
        (2, "qualification", _at(start + 2 * day), _at(start + 5 * day)),
        (3, "closed_won", _at(start + 5 * day), None),
    ]
    summary = _figures(client, admin.headers)["summary"]
    assert summary["average_sales_cycle_days"] == 5.0
    assert summary["stage_velocity"] == [
        {"stage": "prospecting", "average_days": 2.0, "count": 1},
        {"stage": "qualification", "average_days": 3.0, "count": 1},
    ]
    assert summary["win_loss"] == {"won": 1, "lost": 0, "ratio": 1.0}

    lead = create(client, "leads", lead_body(region="eu"), admin.headers)
    converted = client.post(
        f"/v1/leads/{lead['id']}/convert",
        json={"opportunity": {"name": "From a lead", "amount": "10.00", "currency": "EUR"}},
        headers=admin.headers,
    )
    assert converted.status_code == 200, converted.text
    made = converted.json()["opportunity"]["id"]
    assert [(seq, stage, left) for seq, stage, _e, left in _history(state, made)] == [
        (1, "prospecting", None)
    ]


def test_a_query_over_all_regions_runs_each_region_in_its_own_database(
    client: TestClient, state: State, residency_guard: ResidencyGuard
) -> None:
    admin = caller(state, "admin", name="admin")
    for region, count in (("eu", 2), ("us", 3)):
        account = _account(client, admin.headers, region)
        _deals(client, admin.headers, [_deal(account, region=region) for _ in range(count)])

    figures = _figures(client, admin.headers, group_by="stage")

    assert figures["regions"] == ["eu", "us"]
    assert figures["groups"] == [
        {
            "stage": "proposal",
            "currency": "EUR",
            "count": 5,
            "amount": "5000.00",
            "weighted_amount": "2000.00",
        }
    ]
    residency_guard.assert_clean()
    assert _figures(client, admin.headers, region="us")["totals"][0]["count"] == 3


def test_each_region_queried_logs_one_analytics_read_event(
    client: TestClient, state: State
) -> None:
    admin = caller(state, "admin", name="admin")
    account = _account(client, admin.headers)
    _deals(client, admin.headers, [_deal(account)])
    _figures(client, admin.headers, group_by="stage,period")
    for region in ("eu", "us"):
        response = client.get(
            "/v1/audit/events",
            params={"region": region, "action": "analytics.read"},
            headers=admin.headers,
        )
        assert response.status_code == 200, response.text
        [event] = response.json()["data"]
        assert event["actor"] == admin.id
        assert event["entity"] == "opportunities"
        assert event["record_ids"] == []
        assert event["fields"] == ["amount", "close_date", "currency", "probability", "stage"]
        assert event["details"]["group_by"] == "stage,period"
        assert event["details"]["suppressed"] is False


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"group_by": "color"}, "group_by"),
        ({"group_by": "stage,stage"}, "group_by"),
        ({"group_by": "stage,"}, "group_by"),
        ({"group_by": " stage"}, "group_by"),
        ({"period": "week"}, "period"),
        ({"period_field": "updated_at"}, "period_field"),
        ({"from": "2027-13-01"}, "from"),
        ({"to": "31.01.2027"}, "to"),
        ({"from": "2027-02-01", "to": "2027-01-31"}, "from"),
        ({"region": "mars"}, "region"),
        ({"limit": "5"}, "limit"),
    ],
)
def test_bad_parameters_are_422_naming_them(
    client: TestClient, admin: dict[str, str], params: dict[str, str], field: str
) -> None:
    response = client.get(URL, params=params, headers=admin)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert [e["field"] for e in response.json()["errors"]] == [field]


def test_callers_without_rights_or_outside_the_region_are_refused(
    client: TestClient, state: State, tokens: Tokens
) -> None:
    us_rep = caller(state, "sales_rep", name="us-rep", regions=["us"])
    agent = caller(state, "support_agent", name="agent")
    assert client.get(URL, params={"region": "eu"}, headers=us_rep.headers).status_code == 403
    assert client.get(URL, params={"region": "us"}, headers=us_rep.headers).status_code == 200
    assert client.get(URL, headers=agent.headers).status_code == 403
    assert client.get(URL).status_code == 401
    denied = client.get(
        "/v1/audit/events",
        params={"region": "eu", "decision": "deny", "actor": us_rep.id},
        headers=tokens.headers("admin"),
    )
    assert [e["action"] for e in denied.json()["data"]] == ["record.analytics"]
