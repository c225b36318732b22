"""Workflow rules on the pipeline: the acceptance scenarios of automation.

- a case left open past its 48-hour SLA is escalated exactly once, even with two
  workers at it at the same time (threads with their own worker ids: on PostgreSQL
  they claim with SKIP LOCKED and race on the run's unique key);
- a lead whose score crosses 80 (behaviour events -> rescoring -> the score written
  by automation) is assigned round-robin within the senior team;
- both show in the audit log under `system:automation`, and in the run record;
- loop protection: a rule's own change does not retrigger it, and a chain of rules
  stops at the depth bound, recorded as suppressed.
"""

from __future__ import annotations

import io
import threading
from datetime import timedelta
from typing import Any

from sqlalchemy import select
from starlette.testclient import TestClient

from bastion.automation.rules import parse_workflows
from bastion.automation.tables import automation_events, automation_runs
from bastion.principals.caller import Caller
from bastion.state import State
from tests.conftest import FrozenClock, Tokens
from tests.factories import AUTOMATION_ENV, caller, create, drain, lead_body

SETTINGS_ENV = AUTOMATION_ENV


def audit_events(
    client: TestClient, record_id: str, headers: dict[str, str]
) -> list[dict[str, Any]]:
    response = client.get(f"/v1/audit/events?record_id={record_id}&limit=200", headers=headers)
    assert response.status_code == 200, response.text
    events: list[dict[str, Any]] = response.json()["data"]
    return events


def together(*calls: Any) -> list[Any]:
    barrier = threading.Barrier(len(calls))
    results: list[Any] = [None] * len(calls)

    def run(index: int) -> None:
        barrier.wait()
        results[index] = calls[index]()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return results


def test_a_case_open_past_its_sla_is_escalated_exactly_once_with_two_workers(
    client: TestClient, state: State, clock: FrozenClock, tokens: Tokens, admin: dict[str, str]
) -> None:
    agent = tokens.headers("support_agent", name="agent")
    auditor = tokens.headers("auditor", name="auditor")
    account = create(client, "accounts", {"name": "Nordlicht", "region": "eu"}, admin)
    case = create(
        client,
        "cases",
        {"subject": "Invoice", "priority": "medium", "status": "open", "account_id": account["id"]},
        agent,
    )
    resolved = create(
        client,
        "cases",
        {"subject": "Login", "priority": "medium", "status": "open", "account_id": account["id"]},
        agent,
    )
    patch = client.patch(
        f"/v1/cases/{resolved['id']}",
        json={"status": "resolved"},
        headers={**agent, "If-Match": '"v1"'},
    )
    assert patch.status_code == 200, patch.text

    drain(state)  # before the 48 hours: nothing is due, nothing changes
    assert client.get(f"/v1/cases/{case['id']}", headers=agent).json()["priority"] == "medium"

    clock.advance(timedelta(hours=48, minutes=1))
    database = state.regions.get("eu")
    first, second = (state.automation.worker_queues(name)[0] for name in ("worker-a", "worker-b"))
    stop = threading.Event()
    together(lambda: first.run_region(database, stop), lambda: second.run_region(database, stop))
    drain(state)

    assert client.get(f"/v1/cases/{case['id']}", headers=agent).json()["priority"] == "high"
    assert client.get(f"/v1/cases/{resolved['id']}", headers=agent).json()["priority"] == "medium"
    with database.transaction() as conn:
        runs = conn.execute(
            select(automation_runs.c.record_id, automation_runs.c.outcome).where(
                automation_runs.c.rule_id == "escalate-stale-cases"
            )
        ).all()
    assert sorted(runs) == sorted([(case["id"], "fired"), (resolved["id"], "not_matched")])

    # The same timer's event processed again by both workers at once changes nothing.
    with database.transaction() as conn:
        event_id = conn.execute(
            select(automation_events.c.id).where(
                automation_events.c.record_id == case["id"], automation_events.c.kind == "timer"
            )
        ).scalar_one()
    with database.transaction() as conn:
        event = dict(
            conn.execute(select(automation_events).where(automation_events.c.id == event_id))
            .one()
            ._mapping
        )
    engine = state.automation.engine
    together(
        lambda: engine.process(database, dict(event)), lambda: engine.process(database, dict(event))
    )
    assert client.get(f"/v1/cases/{case['id']}", headers=agent).json()["priority"] == "high"

    updates = [
        e
        for e in audit_events(client, case["id"], auditor)
        if e["action"] == "record.update" and e["actor"] == "system:automation"
    ]
    assert len(updates) == 1
    assert updates[0]["fields"] == ["priority"]
    assert updates[0]["request_id"] == event_id
    fired = [
        e for e in audit_events(client, case["id"], auditor) if e["action"] == "automation.fired"
    ]
    assert [e["reason"] for e in fired] == ["rule:escalate-stale-cases"]
    # Its task, for the case's person or account, made once, by automation.
    tasks = client.get(f"/v1/activities?account_id={account['id']}", headers=admin).json()["data"]
    assert [t["subject"] for t in tasks] == ["Case past its 48-hour SLA"]


def test_a_lead_whose_score_passes_80_is_assigned_in_turn_within_the_senior_team(
    client: TestClient, state: State, tokens: Tokens, admin: dict[str, str]
) -> None:
    seniors = sorted(
        caller(state, "sales_rep", name=f"senior-{n}", regions=["eu"], teams=["senior-sales"]).id
        for n in (1, 2)
    )
    marketing = tokens.headers("marketing", name="marketing-eu", regions=("eu",))
    auditor = tokens.headers("auditor", name="auditor")
    leads = [
        create(
            client,
            "leads",
            lead_body(
                region="eu", industry="software", country="DE", source="referral", status="new"
            ),
            marketing,
        )
        for _ in range(3)
    ]
    drain(state)  # created: routed by country, scored on firmographics (45 points)
    for lead in leads:
        shown = client.get(f"/v1/leads/{lead['id']}", headers=admin).json()
        assert (shown["score"], shown["team_id"]) == (45, "dach")

    # Two forms each (50 points, capped) push the first two past 80; one opened email
    # leaves the third at 47.
    events = [
        {
            "id": f"form-{i}-{k}",
            "type": "form_submitted",
            "subject_id": lead["id"],
            "occurred_at": "2026-11-24T08:00:00Z",
        }
        for i, lead in enumerate(leads[:2])
        for k in range(2)
    ]
    events.append(
        {
            "id": "open-2",
            "type": "email_opened",
            "subject_id": leads[2]["id"],
            "occurred_at": "2026-11-24T08:00:00Z",
        }
    )
    response = client.post("/v1/events", json={"events": events}, headers=marketing)
    assert response.status_code == 202, response.text
    drain(state)

    shown = [client.get(f"/v1/leads/{lead['id']}", headers=admin).json() for lead in leads]
    assert [s["score"] for s in shown[:2]] == [95, 95]
    assert sorted(s["owner_id"] for s in shown[:2]) == seniors  # one each, in turn
    assert {s["team_id"] for s in shown[:2]} == {"senior-sales"}
    assert shown[2]["owner_id"] not in seniors
    assert shown[2]["score"] == 47

    for lead in shown[:2]:
        trail = audit_events(client, lead["id"], auditor)
        by_automation = [
            e for e in trail if e["actor"] == "system:automation" and e["action"] == "record.update"
        ]
        # Scored twice (created, then the forms), routed, put to work by the forms
        # rule, assigned by the hot-lead rule: each a write of automation's, audited.
        assert sorted(field for e in by_automation for field in e["fields"]) == [
            "owner_id",
            "score",
            "score",
            "status",
            "team_id",
            "team_id",
        ]
        calls = client.get(f"/v1/activities?lead_id={lead['id']}&type=call", headers=admin).json()
        owner = client.get(f"/v1/leads/{lead['id']}", headers=admin).json()["owner_id"]
        assert [c["owner_id"] for c in calls["data"]] == [owner]
    runs = client.get(
        f"/v1/automation/runs?record_id={leads[0]['id']}&rule=assign-hot-leads", headers=auditor
    )
    assert runs.status_code == 200, runs.text
    # The rise to 95 fired it; the first score (45) could not, so it was not queued.
    (latest,) = runs.json()["data"]
    assert latest["outcome"] == "fired"
    assert latest["reasons"] == [
        {"condition": "score >= 80 and status in new|working|nurturing", "held": True}
    ]
    assert [e["status"] for e in latest["effects"]] == ["done", "done", "done"]
    assert latest["depth"] == 1  # the score's change, made by scoring, was one level down


PING_PONG = """
rules:
  - id: to-nurturing
    entity: leads
    trigger: {on: changed, fields: [status]}
    when: "status == working"
    actions: [{set: {status: nurturing}}]
  - id: to-working
    entity: leads
    trigger: {on: changed, fields: [status]}
    when: "status == nurturing"
    actions: [{set: {status: working}}]
  - id: stamp-industry
    entity: leads
    trigger: {on: changed, fields: [industry]}
    actions: [{set: {industry: stamped}}]
  - id: close-new-tasks
    entity: activities
    trigger: {on: created}
    when: "type == task"
    actions: [{set: {status: completed}}]
"""


def test_rules_do_not_retrigger_themselves_and_chains_stop_at_the_depth_bound(
    client: TestClient, state: State, tokens: Tokens, admin: dict[str, str]
) -> None:
    state.automation.workflows = parse_workflows({"loops.yaml": PING_PONG})
    state.automation.scoring = None
    lead = create(client, "leads", lead_body(region="eu", status="new"), admin)
    changed = client.patch(
        f"/v1/leads/{lead['id']}",
        json={"status": "working", "industry": "retail"},
        headers={**admin, "If-Match": '"v1"'},
    )
    assert changed.status_code == 200
    drain(state)

    runs = client.get(f"/v1/automation/runs?record_id={lead['id']}&limit=200", headers=admin)
    decided = runs.json()["data"]
    # Rules decide on the record as it is when they run. Each automated change is one
    # level deeper than the change it answered; a rule never answers its own change,
    # never fires twice on one version of the record, and past depth 3 nothing fires.
    suppressed = {
        (r["rule_id"], r["reasons"][0]["code"]) for r in decided if r["outcome"] == "suppressed"
    }
    assert ("stamp-industry", "own-change") in suppressed
    assert ("to-working", "own-change") in suppressed
    limits = [
        r for r in decided if r["reasons"][:1] and r["reasons"][0].get("code") == "chain-limit"
    ]
    assert limits
    assert all(r["depth"] == 4 for r in limits)
    fired = [r for r in decided if r["outcome"] == "fired"]
    assert max(r["depth"] for r in fired) == 3
    assert len(fired) == len(
        {(r["rule_id"], r["effects"][0]["record_id"], r["decided_at"]) for r in fired}
    )
    with state.regions.get("eu").transaction() as conn:
        versions = conn.execute(
            select(automation_runs.c.rule_id, automation_runs.c.fired_version).where(
                automation_runs.c.record_id == lead["id"], automation_runs.c.outcome == "fired"
            )
        ).all()
    assert len(versions) == len(set(versions)) == len(fired)
    updates = [
        e
        for e in audit_events(client, lead["id"], tokens.headers("auditor", name="auditor"))
        if e["action"] == "record.update" and e["actor"] == "system:automation"
    ]
    assert len(updates) == len([r for r in fired if r["effects"][0]["status"] == "done"]) <= 8
    assert client.get(f"/v1/leads/{lead['id']}", headers=admin).json()["industry"] == "stamped"


def test_an_action_the_policy_refuses_automation_is_recorded_as_failed(
    client: TestClient, state: State, admin: dict[str, str]
) -> None:
    state.automation.workflows = parse_workflows({"loops.yaml": PING_PONG})
    account = create(client, "accounts", {"name": "Nordlicht", "region": "eu"}, admin)
    task = create(
        client,
        "activities",
        {
            "type": "task",
            "subject": "Send the offer",
            "status": "planned",
            "account_id": account["id"],
        },
        admin,
    )
    drain(state)
    (run,) = client.get(f"/v1/automation/runs?record_id={task['id']}", headers=admin).json()["data"]
    assert run["outcome"] == "fired"
    assert [(e["status"], e["error"]) for e in run["effects"]] == [("failed", "forbidden")]
    assert client.get(f"/v1/activities/{task['id']}", headers=admin).json()["status"] == "planned"

    # The run record: for those the policy lets read it, parameters checked.
    rep = caller(state, "sales_rep", name="rep", regions=["eu"]).headers
    assert client.get("/v1/automation/runs", headers=rep).status_code == 403
    assert client.get("/v1/automation/runs").status_code == 401
    for query, status in (
        ("limit=0", 422),
        ("cursor=forged", 400),
        ("colour=red", 422),
        ("record_id=nothing", 422),
        (f"record_id={task['id']}&region=us", 422),
    ):
        response = client.get(f"/v1/automation/runs?{query}", headers=admin)
        assert response.status_code == status, (query, response.text)
        assert response.headers["content-type"] == "application/problem+json"
    eu_only = caller(state, "admin", name="eu-admin", regions=["eu"]).headers
    us_record = task["id"].replace("_eu_", "_us_")
    assert (
        client.get(f"/v1/automation/runs?record_id={us_record}", headers=eu_only).status_code == 403
    )


ON_CREATE = """
rules:
  - id: nurture-new-leads
    entity: leads
    trigger: {on: created}
    when: "status == new"
    actions: [{set: {status: nurturing}}]
  - id: tag-new-contacts
    entity: contacts
    trigger: {on: created}
    actions: [{set: {lead_source: other}}]
"""


def test_imported_and_converted_records_trigger_rules_like_any_other(
    client: TestClient, state: State, admin: dict[str, str]
) -> None:
    state.automation.workflows = parse_workflows({"create.yaml": ON_CREATE})
    importer = Caller(state.tokens.issue(principal_name="importer", roles=["admin"]).principal)
    csv = (
        b"last_name,company,email,status\n"
        b"Weber,Weber GmbH,w@example.com,new\n"
        b"Roth,Roth AG,r@example.com,new\n"
    )
    run = state.imports.run(importer, "leads", io.BytesIO(csv), region="eu")
    assert run.created == 2
    drain(state)
    leads = client.get("/v1/leads?region=eu", headers=admin).json()["data"]
    assert sorted(lead["status"] for lead in leads) == ["nurturing", "nurturing"]

    converted = client.post(f"/v1/leads/{leads[0]['id']}/convert", json={}, headers=admin)
    assert converted.status_code == 200, converted.text
    drain(state)
    contact = converted.json()["contact"]
    assert (
        client.get(f"/v1/contacts/{contact['id']}", headers=admin).json()["lead_source"] == "other"
    )
