"""Lead scoring: the score explained (`GET /v1/leads/{id}/score`), its history, and
its decay over time — recomputed by a timer the scoring left, not by a scan."""

from __future__ import annotations

from datetime import timedelta

from starlette.testclient import TestClient

from bastion.state import State
from tests.conftest import FrozenClock, Tokens
from tests.factories import AUTOMATION_ENV, create, drain, lead_body

SETTINGS_ENV = AUTOMATION_ENV


def test_a_score_is_explained_kept_in_history_and_decays_over_time(
    client: TestClient, state: State, clock: FrozenClock, tokens: Tokens, admin: dict[str, str]
) -> None:
    marketing = tokens.headers("marketing", name="mk", regions=("eu",))
    lead = create(
        client,
        "leads",
        lead_body(region="eu", industry="finance", country="FR", source="web", status="new"),
        marketing,
    )
    drain(state)
    when = clock.now().isoformat().replace("+00:00", "Z")
    batch = {
        "events": [
            {
                "id": f"click-{n}",
                "type": "link_clicked",
                "subject_id": lead["id"],
                "occurred_at": when,
            }
            for n in range(2)
        ]
    }
    assert client.post("/v1/events", json=batch, headers=marketing).status_code == 202
    drain(state)

    explained = client.get(f"/v1/leads/{lead['id']}/score", headers=marketing)
    assert explained.status_code == 200, explained.text
    body = explained.json()
    assert body["score"] == 40  # 20 industry + 10 country + 2 x 5 clicks
    assert body["model"] == "fit-and-engagement"
    by_rule = {item["rule"]: item for item in body["breakdown"]}
    assert by_rule["target-industry"] == {
        "rule": "target-industry",
        "kind": "firmographic",
        "fields": ["industry"],
        "matched": True,
        "points": 20,
    }
    assert by_rule["warm-source"]["matched"] is False
    assert (by_rule["clicked-link"]["count"], by_rule["clicked-link"]["points"]) == (2, 10.0)
    assert body["withheld_points"] == 0
    assert [h["score"] for h in body["history"]] == [40, 30]

    # Fourteen days on (the clicks' half-life), the decay timers have rescored it.
    for _ in range(4):
        clock.advance(timedelta(days=3, hours=12))
        drain(state)
    assert client.get(f"/v1/leads/{lead['id']}/score", headers=marketing).json()["score"] == 35

    # Who may not read events sees the behavioural points summed, not itemised.
    processor = tokens.headers("dsr_processor", name="processor")
    hidden = client.get(f"/v1/leads/{lead['id']}/score", headers=processor).json()
    assert {i["kind"] for i in hidden["breakdown"]} == {"firmographic"}
    assert hidden["withheld_points"] == 5.0
    # As GET of the lead: another region's lead is 404, a role without leads 403.
    us_only = tokens.headers("marketing", name="mk-us", regions=("us",))
    assert client.get(f"/v1/leads/{lead['id']}/score", headers=us_only).status_code == 404
    agent = tokens.headers("support_agent", name="agent")
    assert client.get(f"/v1/leads/{lead['id']}/score", headers=agent).status_code == 403
    assert (
        client.get(
            "/v1/leads/acc_eu_01m86ch3m0fpt9ashsm8c0e4p0/score", headers=marketing
        ).status_code
        == 404
    )
    assert client.get(f"/v1/leads/{lead['id']}/score?x=1", headers=marketing).status_code == 422
    auditor = tokens.headers("auditor", name="auditor")
    trail = client.get(f"/v1/audit/events?record_id={lead['id']}", headers=auditor).json()["data"]
    assert {"score.read", "events.ingest"} <= {e["action"] for e in trail}
