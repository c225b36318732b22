"""`POST /v1/events` and the behaviour timeline.

A replayed batch changes nothing the second time; a batch that is not right in any
way is a 4xx problem naming what, and nothing of it is stored; events land on the
subject's timeline in the subject's region, their properties sealed under the
person's key (so an access request returns them, and an erasure takes them away).
"""

from __future__ import annotations

import io
import json
import zipfile
from typing import Any

from sqlalchemy import func, select
from starlette.testclient import TestClient

from bastion.automation.tables import (
    activity_events,
    automation_events,
    automation_rescores,
    automation_runs,
    lead_scores,
)
from bastion.crm.tables import ENTITY_TABLES
from bastion.state import State
from tests.conftest import Tokens
from tests.factories import AUTOMATION_ENV, caller, contact_body, create, drain, lead_body

SETTINGS_ENV = AUTOMATION_ENV
CANARY = "zqeventcanary"
WHEN = "2026-11-24T08:00:00Z"


def event(n: int, subject_id: str, kind: str = "page_visited", **extra: Any) -> dict[str, Any]:
    return {"id": f"evt-{n}", "type": kind, "subject_id": subject_id, "occurred_at": WHEN, **extra}


def snapshot(state: State, region: str = "eu") -> dict[str, Any]:
    """What the events could have changed: rows of every automation table, and the leads."""
    with state.regions.get(region).transaction() as conn:
        counts = {
            table.name: conn.execute(select(func.count()).select_from(table)).scalar_one()
            for table in (
                activity_events,
                automation_events,
                automation_runs,
                lead_scores,
                automation_rescores,
            )
        }
        leads = ENTITY_TABLES["leads"]
        counts["leads"] = sorted(
            tuple(r)
            for r in conn.execute(
                select(leads.c.id, leads.c.version, leads.c.score, leads.c.status)
            )
        )
    return counts


def test_replaying_the_same_batch_twice_changes_nothing_the_second_time(
    client: TestClient, state: State, tokens: Tokens
) -> None:
    marketing = tokens.headers("marketing", name="mk", regions=("eu",))
    leads = [
        create(client, "leads", lead_body(region="eu", status="new"), marketing) for _ in range(2)
    ]
    drain(state)
    batch = {
        "events": [
            event(
                1,
                leads[0]["id"],
                "form_submitted",
                properties={"form": "demo", "url": f"/{CANARY}"},
            ),
            event(2, leads[0]["id"], "email_opened"),
            event(3, leads[1]["id"], "link_clicked", properties={"url": "/pricing"}),
        ]
    }
    first = client.post("/v1/events", json=batch, headers=marketing)
    assert first.status_code == 202, first.text
    assert (first.json()["accepted"], first.json()["duplicates"]) == (3, 0)
    drain(state)
    before = snapshot(state)
    assert before["activity_events"] == 3
    assert before["automation_runs"] > 0  # the form fed a rule, the events fed scoring

    again = client.post("/v1/events", json=batch, headers=marketing)
    assert again.status_code == 202, again.text
    assert (again.json()["accepted"], again.json()["duplicates"]) == (0, 3)
    assert {e["status"] for e in again.json()["events"]} == {"duplicate"}
    drain(state)
    assert snapshot(state) == before

    # The same id with other content is refused whole: nothing of that batch is stored.
    changed = {"events": [event(4, leads[1]["id"]), {**batch["events"][1], "type": "page_visited"}]}
    conflict = client.post("/v1/events", json=changed, headers=marketing)
    assert conflict.status_code == 409
    assert "events[1]" in conflict.json()["detail"]
    assert snapshot(state) == before

    with state.regions.get("eu").transaction() as conn:
        sealed = [
            bytes(p) for p in conn.execute(select(activity_events.c.properties)).scalars() if p
        ]
    assert sealed
    assert all(CANARY.encode() not in p for p in sealed)
    timeline = client.get(f"/v1/leads/{leads[0]['id']}/events", headers=marketing).json()
    assert sorted(e["id"] for e in timeline["data"]) == ["evt-1", "evt-2"]
    assert {e["id"]: e["properties"] for e in timeline["data"]}["evt-1"] == {
        "form": "demo",
        "url": f"/{CANARY}",
    }


def test_a_batch_that_is_not_right_is_refused_whole_naming_what(
    client: TestClient, state: State, tokens: Tokens, admin: dict[str, str]
) -> None:
    marketing = tokens.headers("marketing", name="mk", regions=("eu",))
    eu_lead = create(client, "leads", lead_body(region="eu"), admin)
    us_lead = create(client, "leads", lead_body(region="us"), admin)
    account = create(client, "accounts", {"name": "Nordlicht", "region": "eu"}, admin)
    before = snapshot(state)
    bad: list[tuple[Any, int, list[str]]] = [
        ({"events": []}, 422, ["events"]),
        ({"events": "all of them"}, 422, ["events"]),
        ({"events": [event(1, eu_lead["id"])], "extra": 1}, 422, ["events", "extra"]),
        ({"events": [event(1, eu_lead["id"], "purchased")]}, 422, ["events[0].type"]),
        (
            {"events": [{**event(1, eu_lead["id"]), "occurred_at": "yesterday"}]},
            422,
            ["events[0].occurred_at"],
        ),
        (
            {"events": [{**event(1, eu_lead["id"]), "occurred_at": "2026-11-24T08:00:00"}]},
            422,
            ["events[0].occurred_at"],
        ),
        (
            {"events": [{**event(1, eu_lead["id"]), "occurred_at": "2031-01-01T00:00:00Z"}]},
            422,
            ["events[0].occurred_at"],
        ),
        ({"events": [{**event(1, eu_lead["id"]), "id": "no spaces here"}]}, 422, ["events[0].id"]),
        ({"events": [event(1, account["id"])]}, 422, ["events[0].subject_id"]),
        (
            {"events": [event(1, eu_lead["id"], properties={"Url": "x"})]},
            422,
            ["events[0].properties"],
        ),
        (
            {"events": [event(1, eu_lead["id"], properties={"nested": {"a": 1}})]},
            422,
            ["events[0].properties"],
        ),
        (
            {"events": [event(1, eu_lead["id"], properties={"k": "x" * 1001})]},
            422,
            ["events[0].properties"],
        ),
        ({"events": [event(1, eu_lead["id"], colour="red")]}, 422, ["events[0].colour"]),
        ({"events": [event(1, eu_lead["id"]), event(1, eu_lead["id"])]}, 422, ["events[1].id"]),
        (
            {"events": [event(1, eu_lead["id"]), event(2, us_lead["id"])]},
            422,
            ["events[1].subject_id"],
        ),
        (
            {"events": [event(1, "led_eu_01m86ch3m0fpt9ashsm8c0e4p0")]},
            422,
            ["events[0].subject_id"],
        ),
        ({"events": [event(n, eu_lead["id"]) for n in range(501)]}, 413, []),
    ]
    for body, status, fields in bad:
        response = client.post("/v1/events", json=body, headers=marketing)
        assert response.status_code == status, (body if status != 413 else "501", response.text)
        assert response.headers["content-type"] == "application/problem+json"
        if fields:
            assert [e["field"] for e in response.json()["errors"]] == fields, response.text
        assert CANARY not in response.text
    assert snapshot(state) == before

    # Someone of the US only may not send events about an EU lead: as if it did not exist.
    us_only = tokens.headers("marketing", name="mk-us", regions=("us",))
    outside = client.post("/v1/events", json={"events": [event(1, eu_lead["id"])]}, headers=us_only)
    assert outside.status_code == 422
    assert eu_lead["id"] not in outside.text
    # A role without the right: 403, audited.
    rep = tokens.headers("sales_rep", name="rep")
    refused = client.post("/v1/events", json={"events": [event(1, eu_lead["id"])]}, headers=rep)
    assert refused.status_code == 403
    assert client.post("/v1/events", json={"events": []}).status_code == 401
    not_json = client.post(
        "/v1/events", content=b"{", headers={**marketing, "Content-Type": "application/json"}
    )
    assert not_json.status_code == 400
    assert snapshot(state) == before


def test_the_timeline_is_for_those_who_may_read_the_person_and_their_events(
    client: TestClient, state: State, tokens: Tokens, admin: dict[str, str]
) -> None:
    rep = caller(state, "sales_rep", name="rep", regions=["eu"], teams=["t1"])
    mine = create(client, "contacts", contact_body(region="eu"), rep.headers)
    theirs = create(client, "contacts", contact_body(region="eu", team_id="t9"), admin)
    batch = {
        "events": [event(n, mine["id"], "page_visited", properties={"n": n}) for n in range(3)]
    }
    batch["events"].append(event(9, theirs["id"]))
    assert client.post("/v1/events", json=batch, headers=admin).status_code == 202

    first = client.get(f"/v1/contacts/{mine['id']}/events?limit=2", headers=rep.headers)
    assert first.status_code == 200, first.text
    page = first.json()
    rest = client.get(
        f"/v1/contacts/{mine['id']}/events?limit=2&cursor={page['next_cursor']}",
        headers=rep.headers,
    ).json()
    assert sorted(e["properties"]["n"] for e in page["data"] + rest["data"]) == [0, 1, 2]
    assert rest["next_cursor"] is None
    assert client.get(f"/v1/contacts/{theirs['id']}/events", headers=rep.headers).status_code == 404
    agent = tokens.headers("support_agent", name="agent")
    assert client.get(f"/v1/contacts/{mine['id']}/events", headers=agent).status_code == 403
    us_admin = tokens.headers("admin", name="us-admin", regions=("us",))
    assert client.get(f"/v1/contacts/{mine['id']}/events", headers=us_admin).status_code == 404
    bad = client.get(f"/v1/contacts/{mine['id']}/events?limit=0", headers=rep.headers)
    assert bad.status_code == 422
    forged = client.get(f"/v1/contacts/{mine['id']}/events?cursor=abc", headers=rep.headers)
    assert forged.status_code == 400


def test_an_access_request_returns_the_events_and_an_erasure_takes_them(
    client: TestClient, state: State, tokens: Tokens, admin: dict[str, str]
) -> None:
    officer = tokens.headers("compliance_officer", name="dpo")
    approver = tokens.headers("compliance_officer", name="dpo-2")
    person = create(client, "leads", lead_body(region="eu", status="new"), admin)
    batch = {"events": [event(1, person["id"], "form_submitted", properties={"note": CANARY})]}
    assert client.post("/v1/events", json=batch, headers=admin).status_code == 202
    drain(state)

    def run(kind: str) -> dict[str, Any]:
        made = client.post(
            "/v1/dsr", json={"type": kind, "subject_id": person["id"]}, headers=officer
        )
        assert made.status_code == 201, made.text
        request_id = made.json()["id"]
        assert (
            client.post(
                f"/v1/dsr/{request_id}/verify", json={"method": "call"}, headers=officer
            ).status_code
            == 200
        )
        assert client.post(f"/v1/dsr/{request_id}/approve", headers=approver).status_code == 200
        drain(state)
        done: dict[str, Any] = client.get(f"/v1/dsr/{request_id}", headers=officer).json()
        assert done["status"] == "completed", done
        return done

    access = run("access")
    package = client.get(f"/v1/dsr/{access['id']}/package", headers=officer)
    with zipfile.ZipFile(io.BytesIO(package.content)) as archive:
        events = json.loads(archive.read("activity_events.json"))
    assert [(e["id"], e["properties"]) for e in events] == [("evt-1", {"note": CANARY})]

    run("erasure")
    after = snapshot(state)
    assert (after["activity_events"], after["lead_scores"], after["automation_runs"]) == (0, 0, 0)
