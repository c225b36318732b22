"""Field masks over HTTP: filters and sorts on withheld fields are refused, writes
naming a forbidden field are refused whole, and record conditions decide per record
(a deal's amount, a case's status). That no withheld value ever leaves is
test_policy_leaks.py."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from bastion.app import create_app
from bastion.state import State, build_state
from tests.conftest import Backend, FrozenClock, settings_for
from tests.factories import body_for, caller, create, policy_dir

REPO = Path(__file__).resolve().parents[2]


def _forbidden(response: Any) -> str:
    """A 403 problem; returns its detail."""
    assert response.status_code == 403, response.text
    assert response.headers["content-type"] == "application/problem+json"
    return str(response.json()["detail"])


def _names(detail: str, *fields: str) -> bool:
    return all(re.search(rf"(?<![a-z_]){f}(?![a-z_])", detail) for f in fields)


# -- filters and sorts on fields the caller may not read --------------------------------


def test_filtering_on_a_field_you_may_not_read_is_403_whatever_the_value(
    client: TestClient, state: State, admin: dict[str, str]
) -> None:
    rep = caller(state, "sales_rep", name="rep")
    marketing = caller(state, "marketing", name="mkt")
    create(client, "contacts", {"last_name": "Weber", "birthdate": "1980-02-03"}, admin)
    for headers, params, field in (
        (rep.headers, {"birthdate": "1980-02-03"}, "birthdate"),
        (rep.headers, {"birthdate": "not a date"}, "birthdate"),
        (marketing.headers, {"mobile": "+4917612345678"}, "mobile"),
        (marketing.headers, {"mobile": "not a phone"}, "mobile"),
    ):
        response = client.get("/v1/contacts", params=params, headers=headers)
        assert _names(_forbidden(response), field), params
    # Who may read the field gets the usual answers: birthdate is no filter for anyone.
    unfilterable = client.get("/v1/contacts", params={"birthdate": "1980-02-03"}, headers=admin)
    assert unfilterable.status_code == 422


def test_sorting_on_a_field_you_may_not_read_is_403_even_if_it_is_no_sort_key(
    client: TestClient, state: State
) -> None:
    rep = caller(state, "sales_rep", name="rep")
    response = client.get("/v1/contacts", params={"sort": "-birthdate"}, headers=rep.headers)
    assert _names(_forbidden(response), "birthdate")


@pytest.fixture
def masked_client(backend: Backend, tmp_path: Path) -> Any:
    """A deployment whose policy withholds sortable fields: marketing may not read
    contacts' title and mailing_city; support agents read a case's priority only
    while the case is not closed."""
    directory = policy_dir(
        tmp_path / "policies",
        source=REPO / "policies",
        replace={
            "p2, support_agent, *, cases.priority, *, , allow": (
                "p2, support_agent, *, cases.priority, write, , allow"
            )
        },
        append=[
            "p2, marketing, *, contacts.mailing_city, read, , deny",
            "p2, marketing, *, contacts.title, read, , deny",
            "p2, support_agent, *, cases.priority, read, status != closed, allow",
        ],
    )
    (tmp_path / "absent.toml").write_text("")
    configured = settings_for(backend, tmp_path, BASTION_POLICIES=str(directory))
    built = build_state(configured, clock=FrozenClock())
    try:
        with TestClient(create_app(configured, state=built)) as client:
            yield client, built
    finally:
        built.close()


def test_sorting_or_filtering_on_a_withheld_field_is_403_naming_it(masked_client: Any) -> None:
    client, state = masked_client
    admin = caller(state, "admin", name="adm").headers
    marketing = caller(state, "marketing", name="mkt").headers
    rep = caller(state, "sales_rep", name="rep")
    for city, title in (("Berlin", "CTO"), ("Aachen", "CFO")):
        create(
            client,
            "contacts",
            {"last_name": "X", "mailing_city": city, "title": title, "owner_id": rep.id},
            admin,
        )
    for params, fields in (
        ({"sort": "mailing_city"}, ["mailing_city"]),
        ({"sort": "-mailing_city"}, ["mailing_city"]),
        ({"sort": "title"}, ["title"]),
        ({"mailing_city": "Berlin"}, ["mailing_city"]),
        ({"title": "CTO", "mailing_city": "Berlin"}, ["title", "mailing_city"]),
    ):
        response = client.get("/v1/contacts", params=params, headers=marketing)
        detail = _forbidden(response)
        assert _names(detail, *fields), (params, detail)
        assert "Berlin" not in response.text
        assert "CTO" not in response.text
    listed = client.get("/v1/contacts", headers=marketing)
    assert listed.status_code == 200
    assert all({"mailing_city", "title"} <= set(r["_withheld"]) for r in listed.json()["data"])
    # Whoever reads the field sorts and filters on it.
    for headers in (rep.headers, admin):
        by_city = client.get("/v1/contacts", params={"sort": "mailing_city"}, headers=headers)
        assert [r["mailing_city"] for r in by_city.json()["data"]] == ["Aachen", "Berlin"]
        berlin = client.get("/v1/contacts", params={"mailing_city": "Berlin"}, headers=headers)
        assert [r["title"] for r in berlin.json()["data"]] == ["CTO"]
    # In the default policy too: marketing may not read mobile, a searchable field.
    create(client, "contacts", {"last_name": "Weber", "mobile": "+4917612345678"}, admin)
    response = client.get("/v1/contacts", params={"mobile": "+4917612345678"}, headers=marketing)
    assert _names(_forbidden(response), "mobile")
    assert "+4917612345678" not in response.text
    weber = client.get("/v1/contacts", params={"last_name": "Weber"}, headers=marketing)
    assert weber.status_code == 200, weber.text
    assert [r["_withheld"] for r in weber.json()["data"]] == [
        ["mobile", "title", "mailing_street", "mailing_city", "mailing_postal_code", "birthdate"]
    ]

    # A field readable only on some records is no filter or sort key either.
    support = caller(state, "support_agent", name="sup").headers
    account = create(client, "accounts", {"name": "A"}, admin)["id"]
    for status in ("open", "closed"):
        create(
            client,
            "cases",
            {"subject": status, "status": status, "priority": "urgent", "account_id": account},
            admin,
        )
    for params in ({"priority": "urgent"}, {"sort": "priority"}, {"sort": "-priority"}):
        assert _names(
            _forbidden(client.get("/v1/cases", params=params, headers=support)), "priority"
        )
    rows = {r["subject"]: r for r in client.get("/v1/cases", headers=support).json()["data"]}
    assert rows["open"]["priority"] == "urgent"
    assert "priority" not in rows["open"]["_withheld"]
    assert "priority" not in rows["closed"]
    assert "priority" in rows["closed"]["_withheld"]


# -- a write naming a forbidden field is refused whole -------------------------------


def test_a_write_naming_forbidden_fields_is_refused_whole_and_writes_nothing(
    client: TestClient, state: State, admin: dict[str, str]
) -> None:
    support = caller(state, "support_agent", name="sup")
    rep = caller(state, "sales_rep", name="rep")
    contact = create(
        client,
        "contacts",
        {"last_name": "Alt", "email": "alt@example.com", "owner_id": rep.id},
        admin,
    )
    url = f"/v1/contacts/{contact['id']}"
    response = client.patch(
        url,
        json={"email": "neu@example.com", "first_name": "Eva", "birthdate": "1990-01-01"},
        headers={**support.headers, "If-Match": '"v1"'},
    )
    detail = _forbidden(response)
    assert _names(detail, "first_name", "birthdate")
    assert not _names(detail, "email")
    stored = client.get(url, headers=admin).json()
    assert stored == contact  # same version, same email: nothing was written

    def contacts() -> list[str]:
        return [r["id"] for r in client.get("/v1/contacts", headers=admin).json()["data"]]

    before = contacts()
    response = client.post(
        "/v1/contacts",
        json={"last_name": "Neu", "email": "neu@example.com", "birthdate": "1990-01-01"},
        headers=rep.headers,
    )
    assert _names(_forbidden(response), "birthdate")
    assert contacts() == before

    account = create(client, "accounts", {"name": "A"}, admin)["id"]
    deals = client.get("/v1/opportunities", headers=admin).json()["data"]
    response = client.post(
        "/v1/opportunities",
        json={"name": "Big", "account_id": account, "stage": "proposal", "amount": 150000},
        headers=rep.headers,
    )
    assert _names(_forbidden(response), "amount")
    assert client.get("/v1/opportunities", headers=admin).json()["data"] == deals

    # Lead conversion: every record it would make is refused with the one field.
    body = {"last_name": "Lead", "company": "Co", "status": "working", "owner_id": rep.id}
    lead = create(client, "leads", body, admin)
    url = f"/v1/leads/{lead['id']}/convert"

    def everything() -> list[Any]:
        return [
            client.get(f"/v1/{entity}", headers=admin).json()["data"]
            for entity in ("leads", "contacts", "accounts", "opportunities")
        ]

    snapshot = everything()
    refused = client.post(
        url, json={"opportunity": {"name": "Deal", "amount": 150000}}, headers=rep.headers
    )
    assert _names(_forbidden(refused), "opportunity.amount")
    assert everything() == snapshot  # no contact, account or deal; the lead is not converted
    marketing = caller(state, "marketing", name="mkt")  # updates leads, creates no contacts
    _forbidden(client.post(url, json={}, headers=marketing.headers))
    assert everything() == snapshot
    converted = client.post(
        url, json={"opportunity": {"name": "Deal", "amount": 50000}}, headers=rep.headers
    )
    assert converted.status_code == 200, converted.text
    assert converted.json()["opportunity"]["amount"] == "50000.00"


# -- record conditions ------------------------------------------------------------------


def test_a_reps_deal_amount_is_writable_below_100k_only(
    client: TestClient, state: State, admin: dict[str, str]
) -> None:
    rep = caller(state, "sales_rep", name="rep")
    manager = caller(state, "sales_manager", name="mgr")
    body = {**body_for(client, "opportunities", admin), "owner_id": rep.id}
    deal = create(client, "opportunities", body, admin)
    url = f"/v1/opportunities/{deal['id']}"

    def patch(headers: dict[str, str], changes: dict[str, Any]) -> Any:
        version = client.get(url, headers=admin).json()["version"]
        return client.patch(url, json=changes, headers={**headers, "If-Match": f'"v{version}"'})

    ok = patch(rep.headers, {"amount": 50000})
    assert ok.status_code == 200, ok.text
    assert ok.json()["amount"] == "50000.00"
    assert patch(rep.headers, {"amount": "99999.99"}).status_code == 200
    for changes in (
        {"amount": 150000},
        {"amount": 100000},
        {"amount": 150000, "stage": "negotiation"},
    ):
        before = client.get(url, headers=admin).json()
        detail = _forbidden(patch(rep.headers, changes))
        assert _names(detail, "amount"), detail
        assert not _names(detail, "stage"), detail
        assert client.get(url, headers=admin).json() == before
    raised = patch(manager.headers, {"amount": 150000})
    assert raised.status_code == 200, raised.text
    assert raised.json()["amount"] == "150000.00"
    # The condition limits the amount a rep writes, not the rest of a big deal.
    staged = patch(rep.headers, {"stage": "negotiation"})
    assert staged.status_code == 200, staged.text
    assert staged.json()["amount"] == "150000.00"


def test_support_reads_a_case_description_only_while_the_case_is_open(
    client: TestClient, state: State, admin: dict[str, str]
) -> None:
    support = caller(state, "support_agent", name="sup")
    account = create(client, "accounts", {"name": "A"}, admin)["id"]
    cases = {}
    for status in ("open", "pending", "closed", "resolved", None):
        body = {
            "subject": str(status),
            "status": status,
            "account_id": account,
            "description": f"reported-{status}",
        }
        cases[status] = create(client, "cases", body, admin)
    for status, case in cases.items():
        shown = client.get(f"/v1/cases/{case['id']}", headers=support.headers).json()
        hidden = status in ("closed", "resolved")
        assert ("description" in shown) is not hidden, status
        assert ("description" in shown["_withheld"]) is hidden, status
        if not hidden:
            assert shown["description"] == f"reported-{status}"
    # A list applies the mask row by row.
    rows = {
        r["subject"]: r for r in client.get("/v1/cases", headers=support.headers).json()["data"]
    }
    assert rows["open"]["description"] == "reported-open"
    assert "description" not in rows["closed"]
    assert "description" in rows["closed"]["_withheld"]
    assert "reported-closed" not in str(rows)
    assert "reported-resolved" not in str(rows)

    # Closing the case withholds what the customer reported; support may still write it.
    url = f"/v1/cases/{cases['open']['id']}"
    closed = client.patch(url, json={"status": "closed"}, headers={**admin, "If-Match": '"v1"'})
    assert closed.status_code == 200
    shown = client.get(url, headers=support.headers).json()
    assert "description" not in shown
    assert "description" in shown["_withheld"]
    rewritten = client.patch(
        url, json={"description": "redacted"}, headers={**support.headers, "If-Match": '"v2"'}
    )
    assert rewritten.status_code == 200, rewritten.text
    assert "description" not in rewritten.json()
    assert client.get(url, headers=admin).json()["description"] == "redacted"


def test_support_may_close_a_case_but_not_reopen_it_to_read_the_description(
    client: TestClient, state: State, admin: dict[str, str]
) -> None:
    support = caller(state, "support_agent", name="sup")
    account = create(client, "accounts", {"name": "A"}, admin)["id"]
    body = {"subject": "s", "status": "open", "account_id": account, "description": "secret"}
    url = f"/v1/cases/{create(client, 'cases', body, admin)['id']}"
    closed = client.patch(
        url, json={"status": "resolved"}, headers={**support.headers, "If-Match": '"v1"'}
    )
    assert closed.status_code == 200, closed.text
    assert "description" not in closed.json()
    for status in ("open", "pending", None):
        reopened = client.patch(
            url, json={"status": status}, headers={**support.headers, "If-Match": '"v2"'}
        )
        assert _names(_forbidden(reopened), "status"), status
        assert "secret" not in reopened.text
    stored = client.get(url, headers=admin).json()
    assert (stored["status"], stored["version"], stored["description"]) == ("resolved", 2, "secret")
    # Whoever may reopen it (an admin) still can; support then reads it again.
    reopened = client.patch(url, json={"status": "open"}, headers={**admin, "If-Match": '"v2"'})
    assert reopened.status_code == 200
    assert client.get(url, headers=support.headers).json()["description"] == "secret"
    # A new case may be created closed: there is no "before" to reopen.
    created = create(client, "cases", {**body, "status": "closed"}, support.headers)
    assert "description" not in created
