"""The console's pages as the people who use them, on SQLite and PostgreSQL.

A compliance officer works a data subject's request from the overdue list to the
downloaded package (and an erasure to its certificate, approved by a second
officer), searches the audit log and verifies a chain; a security admin reads the
policy workbench and the key status; a support agent browses and edits records and
never receives a withheld value -- canaries planted in fields its role may not
read are absent from every byte of every page. Wrong roles, other regions and bad
input answer 4xx naming what is wrong.

Requests are run by the test (`state.dsr_jobs.run_once()`), not by the app's runner.
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select
from starlette.testclient import TestClient

from bastion.audit.tables import AUDIT
from bastion.policy.engine import PolicySource
from bastion.state import State
from tests.conftest import FrozenClock
from tests.console_client import Person, person
from tests.factories import account_body, contact_body, create

SETTINGS_ENV = {"BASTION_DSR_IN_PROCESS": "false"}
# Values planted in fields a support agent may not read: they must never reach its pages.
CANARY_BIRTHDATE = "1931-07-23"
CANARY_TAX_ID = "CANARY-TAX-7f3e91"
CANARY_CASE = "CANARY-CASE-2b8d44"


@pytest.fixture
def app(client: TestClient) -> Any:
    return client.app


@pytest.fixture
def subject(client: TestClient, admin: dict[str, str]) -> dict[str, Any]:
    return create(client, "contacts", contact_body(region="eu", birthdate=CANARY_BIRTHDATE), admin)


def events(state: State, region: str, action: str) -> list[dict[str, Any]]:
    table = AUDIT.events
    with state.regions.get(region).transaction() as conn:
        rows = conn.execute(
            select(table.c.actor, table.c.decision, table.c.payload).where(table.c.action == action)
        )
        return [{"actor": r.actor, "decision": r.decision, **json.loads(r.payload)} for r in rows]


def request_id_from(response: Any) -> str:
    return str(response.headers["location"].split("?")[0].rsplit("/", 1)[1])


# -- data subjects' requests -----------------------------------------------------------


def test_an_officer_works_an_overdue_export_to_its_downloaded_package(
    state: State, app: Any, clock: FrozenClock, subject: dict[str, Any]
) -> None:
    officer = person(state, app, "compliance_officer", name="dpo")
    created = officer.post(
        "/console/dsr", {"type": "export", "regime": "gdpr", "subject_id": subject["id"]}
    )
    request_id = request_id_from(created)
    assert "The request is recorded." in officer.page(created.headers["location"]).text
    clock.advance(timedelta(days=31))  # past the GDPR month (and the session's lifetime)
    officer.log_in(officer.token)
    fresh = officer.post(
        "/console/dsr",
        {"type": "access", "regime": "ccpa", "region": "eu", "email": subject["email"]},
    )
    overdue = officer.page("/console/dsr", due="overdue").text
    assert request_id in overdue
    assert request_id_from(fresh) not in overdue
    assert 'class="is-overdue"' in overdue
    assert "Overdue" in overdue
    everything = officer.page("/console/dsr").text
    assert everything.index(request_id) < everything.index(request_id_from(fresh))

    preview = officer.page(f"/console/dsr/{request_id}/preview").text
    assert "contacts" in preview
    assert "birthdate" in preview
    assert subject["id"] in preview
    page = officer.page(f"/console/dsr/{request_id}").text
    assert "Record identity as verified" in page
    assert "Approve and run" not in page
    officer.post(f"/console/dsr/{request_id}/verify", {"method": "id-document"})
    page = officer.page(f"/console/dsr/{request_id}").text
    assert "Approve and run" in page
    assert "id-document" in page
    done = officer.post(f"/console/dsr/{request_id}/approve")
    assert done.headers["location"] == f"/console/dsr/{request_id}?done=approve"
    running = officer.page(f"/console/dsr/{request_id}/progress").text
    assert 'data-refresh="/console/dsr/' in running
    state.dsr_jobs.run_once()
    finished = officer.page(f"/console/dsr/{request_id}/progress").text
    assert 'data-final="true"' in finished
    assert "finish: done" in finished
    page = officer.page(f"/console/dsr/{request_id}").text
    assert "Download the export package" in page

    download = officer.page(f"/console/dsr/{request_id}/package")
    assert download.headers["content-type"] == "application/zip"
    assert download.headers["content-disposition"] == f'attachment; filename="{request_id}.zip"'
    with zipfile.ZipFile(io.BytesIO(download.content)) as package:
        assert "manifest.json" in package.namelist()
        assert CANARY_BIRTHDATE in package.read("data.json").decode()
    officer_id = state.tokens.principal("dpo").id
    assert [e["actor"] for e in events(state, "eu", "dsr.export.download")] == [officer_id]
    assert {e["actor"] for e in events(state, "eu", "dsr.read")} == {officer_id}
    # A certificate is for erasures only.
    officer.page(f"/console/dsr/{request_id}/certificate", status=404)


def test_an_erasure_needs_a_second_officer_and_ends_with_a_certificate(
    state: State, app: Any, subject: dict[str, Any]
) -> None:
    first = person(state, app, "compliance_officer", name="dpo")
    second = person(state, app, "compliance_officer", name="dpo2")
    request_id = request_id_from(
        first.post(
            "/console/dsr", {"type": "erasure", "regime": "gdpr", "subject_id": subject["id"]}
        )
    )
    first.post(f"/console/dsr/{request_id}/verify", {"method": "in-person"})
    page = first.page(f"/console/dsr/{request_id}").text
    assert "another compliance officer must approve it" in page
    refused = first.post(f"/console/dsr/{request_id}/approve", status=409)
    assert "someone other than its creator" in refused.text
    second.post(f"/console/dsr/{request_id}/approve")
    state.dsr_jobs.run_once()
    page = second.page(f"/console/dsr/{request_id}").text
    assert "Download the erasure certificate" in page
    certificate = second.page(f"/console/dsr/{request_id}/certificate")
    assert certificate.headers["content-disposition"].startswith("attachment;")
    assert certificate.json()["signature"]["algorithm"] == "ed25519"
    text = second.page(f"/console/dsr/{request_id}/certificate", format="text").text
    assert request_id in text
    second.page(f"/console/dsr/{request_id}/certificate", format="pdf", status=422)
    second.page(f"/console/dsr/{request_id}/package", status=404)


def test_dsr_pages_refuse_other_roles_other_regions_and_bad_input(
    state: State, app: Any, subject: dict[str, Any]
) -> None:
    officer = person(state, app, "compliance_officer", name="dpo")
    request_id = request_id_from(
        officer.post(
            "/console/dsr", {"type": "access", "regime": "gdpr", "subject_id": subject["id"]}
        )
    )
    agent = person(state, app, "support_agent", name="agent")
    for path in (
        "/console/dsr",
        f"/console/dsr/{request_id}",
        f"/console/dsr/{request_id}/preview",
    ):
        assert "your roles do not allow" in agent.page(path, status=403).text
    agent.post(f"/console/dsr/{request_id}/cancel", status=403)
    us_officer = person(state, app, "compliance_officer", name="us-dpo", regions=("us",))
    assert request_id not in us_officer.page("/console/dsr").text
    us_officer.page(f"/console/dsr/{request_id}", status=404)
    us_officer.post(f"/console/dsr/{request_id}/cancel", status=404)
    officer.page("/console/dsr/not-an-id", status=404)
    officer.page("/console/dsr/dsr_zz_01m6mfvvy5fnba7f5vhede8r1b", status=404)
    bad_status = officer.page("/console/dsr?status=lost", status=422).text
    assert "<code>status</code>" in bad_status
    officer.page("/console/dsr?region=mars", status=422)
    officer.page("/console/dsr?cursor=forged", status=400)
    bad_type = officer.post(
        "/console/dsr",
        {"type": "gossip", "regime": "gdpr", "subject_id": subject["id"]},
        status=422,
    )
    assert "<code>type</code>" in bad_type.text
    officer.post("/console/dsr", {"type": "access", "regime": "gdpr"}, status=422)
    both = officer.post(
        "/console/dsr",
        {
            "type": "access",
            "regime": "gdpr",
            "region": "eu",
            "email": "a@example.com",
            "phone": "+4930123",
        },
        status=422,
    )
    assert "<code>phone</code>" in both.text
    officer.post(f"/console/dsr/{request_id}/reject", {"reason": ""}, status=422)
    officer.post(f"/console/dsr/{request_id}/reject", {"reason": "x" * 501}, status=422)
    officer.post(f"/console/dsr/{request_id}/verify", {"method": "x" * 65}, status=422)
    officer.post(f"/console/dsr/{request_id}/approve", status=409)  # not verified yet
    assert "received" in officer.page(f"/console/dsr/{request_id}").text


# -- the audit explorer -----------------------------------------------------------------


def test_the_audit_explorer_finds_who_read_a_person_and_exports(
    state: State, app: Any, subject: dict[str, Any]
) -> None:
    agent = person(state, app, "support_agent", name="agent")
    agent.page(f"/console/records/contacts/{subject['id']}")
    agent_id = state.tokens.principal("agent").id
    auditor = person(state, app, "auditor", name="auditor")
    found = auditor.page("/console/audit", record_id=subject["id"], action="record.read").text
    assert agent_id in found
    assert "record.read" in found
    who = auditor.page("/console/audit/person", record_id=subject["id"]).text
    assert agent_id in who
    assert "record.read" in who
    assert "events name" in who
    windowed = auditor.page(
        "/console/audit", since="2020-01-01T00:00", until="2020-01-02T00:00"
    ).text
    assert "No event matches." in windowed
    for params, name in (
        ({"since": "yesterday"}, "since"),
        ({"record_id": "not an id"}, "record_id"),
        ({"decision": "maybe"}, "decision"),
        ({"region": "mars"}, "region"),
        ({"since": "2026-01-02T00:00", "until": "2026-01-01T00:00"}, "until"),
    ):
        assert f"<code>{name}</code>" in auditor.page("/console/audit", status=422, **params).text
    auditor.page("/console/audit?cursor=forged", status=400)
    exported = auditor.page("/console/audit/export", record_id=subject["id"])
    assert exported.headers["content-type"] == "application/x-ndjson"
    assert exported.headers["content-disposition"].startswith('attachment; filename="audit-')
    lines = [json.loads(line) for line in exported.text.splitlines()]
    assert any(e["action"] == "record.read" and e["actor"] == agent_id for e in lines)
    assert all("hash" in e for e in lines)
    # Reading the audit log is itself audited.
    auditor_id = state.tokens.principal("auditor").id
    assert auditor_id in {e["actor"] for e in events(state, "eu", "audit.read")}
    assert auditor_id in {e["actor"] for e in events(state, "eu", "audit.export")}
    # No CRM record role: the explorer is closed; an auditor of the US only sees no EU.
    assert "your roles do not allow" in agent.page("/console/audit/chains", status=403).text
    agent.page("/console/audit", status=403)
    us_auditor = person(state, app, "auditor", name="us-auditor", regions=("us",))
    us_auditor.page("/console/audit", record_id=subject["id"], status=403)


def test_chain_status_shows_the_last_checkpoint_and_verifies_on_demand(
    state: State, app: Any, subject: dict[str, Any]
) -> None:
    checkpoint = state.audit.checkpoint("eu")
    auditor = person(state, app, "auditor", name="auditor")
    page = auditor.page("/console/audit/chains").text
    assert f"tree size {checkpoint.tree_size}" in page
    assert "never verified" in page
    assert "Verify control now" in page
    report = auditor.post("/console/audit/chains/eu/verify", status=200).text
    assert "Verification of the eu chain: OK" in report
    assert "OK</span> up to" in auditor.page("/console/audit/chains").text
    auditor.post("/console/audit/chains/mars/verify", status=404)
    us_auditor = person(state, app, "auditor", name="us-auditor", regions=("us",))
    assert "Verify eu" not in us_auditor.page("/console/audit/chains").text
    us_auditor.post("/console/audit/chains/eu/verify", status=403)


# -- the policy workbench ---------------------------------------------------------------


def test_the_workbench_shows_masks_explains_diffs_and_runs_the_cases(
    state: State, app: Any
) -> None:
    security = person(state, app, "security_admin", name="sec")
    masks = security.page("/console/policy", role="support_agent", region="eu").text
    assert "support_agent in EU" in masks
    birthdate_row = masks[masks.index("<code>birthdate</code>") :][:300]
    assert "never" in birthdate_row
    assert "if status not in resolved|closed" in masks  # cases.description
    explained = security.page(
        "/console/policy/explain",
        roles="support_agent",
        region="eu",
        target="cases.description",
        action="read",
        values="status=closed",
    ).text
    assert "DENY" in explained
    assert "policy.csv:" in explained
    assert "Casbin says deny, the compiled index says deny" in explained
    for params, name in (
        ({"role": "wizard", "region": "eu"}, "role"),
        ({"role": "support_agent", "region": "mars"}, "region"),
    ):
        assert f"<code>{name}</code>" in security.page("/console/policy", status=422, **params).text
    bad = security.page(
        "/console/policy/explain",
        roles="support_agent",
        region="eu",
        target="nothing",
        action="read",
        status=422,
    )
    assert "<code>question</code>" in bad.text
    security.page(
        "/console/policy/explain",
        roles="support_agent",
        region="eu",
        target="cases",
        action="read",
        values="no equals sign",
        status=422,
    )
    tests = security.page("/console/policy/tests").text
    assert "passed" in tests
    assert "failed" not in tests.split("</p>", 3)[-2]
    # Two recorded versions: the diff names the decision that changed.
    source = state.policy.source
    changed = PolicySource(
        source.model_text,
        source.policy_text.replace(
            "p2, support_agent, *, category:contact.address, write, , allow\n", ""
        ),
        "test",
    )
    state.policy_store.activate(changed, actor="cli", reason="drop address writes")
    diff = security.page("/console/policy/diff", before=source.version, after=changed.version).text
    assert "contacts.mailing_street" in diff
    assert "always" in diff
    assert "never" in diff
    security.page("/console/policy/diff", before="0000", after=changed.version, status=422)
    agent = person(state, app, "support_agent", name="agent")
    for path in ("/console/policy", "/console/policy/tests", "/console/policy/diff"):
        agent.page(path, status=403)


def test_viewing_a_record_as_a_role_never_shows_what_the_role_may_not_read(
    state: State, app: Any, client: TestClient, admin: dict[str, str]
) -> None:
    contact = create(client, "contacts", contact_body(region="eu", mobile="+4917600000042"), admin)
    officer = person(state, app, "compliance_officer", name="dpo")
    as_marketing = officer.page(
        "/console/policy/view-as", record_id=contact["id"], role="marketing"
    ).text
    assert contact["email"] in as_marketing  # marketing reads emails, and so may the officer
    assert "+4917600000042" not in as_marketing  # marketing may not read mobiles
    as_rep = officer.page("/console/policy/view-as", record_id=contact["id"], role="sales_rep").text
    assert "cannot read this record at all" in as_rep
    # The record is read as the officer, through the pipeline: audited.
    officer_id = state.tokens.principal("dpo").id
    reads = [e for e in events(state, "eu", "record.read") if e["actor"] == officer_id]
    assert len(reads) == 2
    # A security admin may read the policy but no record: the pipeline refuses it.
    security = person(state, app, "security_admin", name="sec")
    security.page("/console/policy/view-as", record_id=contact["id"], role="marketing", status=403)
    officer.page("/console/policy/view-as", record_id="nonsense", role="marketing", status=422)
    officer.page(
        "/console/policy/view-as",
        record_id="zzz_eu_01m99ezjnxfrp9a255qgcfw84e",
        role="marketing",
        status=404,
    )
    officer.page("/console/policy/view-as", record_id=contact["id"], role="x", status=422)


# -- records ----------------------------------------------------------------------------


def test_a_support_agent_never_receives_a_withheld_value(
    state: State,
    app: Any,
    client: TestClient,
    admin: dict[str, str],
    subject: dict[str, Any],
    logged: Callable[[], str],
) -> None:
    logged()  # JSON logs at DEBUG from here on
    account = create(client, "accounts", account_body(region="eu", tax_id=CANARY_TAX_ID), admin)
    case = create(
        client,
        "cases",
        {
            "region": "eu",
            "subject": "Invoice",
            "description": CANARY_CASE,
            "status": "closed",
            "contact_id": subject["id"],
            "account_id": account["id"],
        },
        admin,
    )
    agent = person(state, app, "support_agent", name="agent")
    pages = [
        agent.page("/console/records/contacts"),
        agent.page("/console/records/contacts", region="eu"),
        agent.page(f"/console/records/contacts/{subject['id']}"),
        agent.page("/console/records/accounts"),
        agent.page(f"/console/records/accounts/{account['id']}"),
        agent.page("/console/records/cases"),
        agent.page(f"/console/records/cases/{case['id']}"),
        agent.page("/console/records/contacts", field="email", value=subject["email"]),
    ]
    for response in pages:
        body = response.content
        for canary in (CANARY_BIRTHDATE, CANARY_TAX_ID, CANARY_CASE):
            assert canary.encode() not in body, (response.url, canary)
    contact_page = pages[2].text
    assert "withheld" in contact_page
    assert subject["email"] in contact_page
    assert 'title="stored in region eu"' in contact_page
    assert "description" in pages[6].text
    assert "withheld" in pages[6].text
    # Filtering on a field one may not read is refused, not answered.
    agent.page("/console/records/contacts", field="birthdate", value=CANARY_BIRTHDATE, status=403)
    # The officer, who may read it, does see it; no log line holds it either way.
    officer = person(state, app, "compliance_officer", name="dpo")
    assert CANARY_BIRTHDATE in officer.page(f"/console/records/contacts/{subject['id']}").text
    output = logged()
    assert "record" in output  # the requests were logged ...
    for canary in (CANARY_BIRTHDATE, CANARY_TAX_ID, CANARY_CASE):
        assert canary not in output  # ... without a value


def test_editing_a_record_goes_through_the_pipeline_with_if_match(
    state: State, app: Any, subject: dict[str, Any]
) -> None:
    agent = person(state, app, "support_agent", name="agent")
    path = f"/console/records/contacts/{subject['id']}"
    page = agent.page(path).text
    assert 'name="f.email"' in page
    assert 'name="f.first_name"' not in page
    saved = agent.post(
        path, {"version": "1", "f.email": "new.address@example.com", "f.phone": subject["phone"]}
    )
    assert saved.headers["location"] == f"{path}?done=saved"
    shown = agent.page(path).text
    assert "new.address@example.com" in shown
    assert "version 2" in shown
    [update] = list(events(state, "eu", "record.update"))
    assert update["fields"] == ["email"]  # only what changed is written
    unchanged = agent.post(path, {"version": "2", "f.email": "new.address@example.com"})
    assert unchanged.headers["location"].endswith("done=unchanged")
    stale = agent.post(path, {"version": "1", "f.email": "other@example.com"}, status=412)
    assert "Precondition failed" in stale.text
    forbidden = agent.post(path, {"version": "2", "f.first_name": "Mallory"}, status=403)
    assert "first_name" in forbidden.text
    invalid = agent.post(path, {"version": "2", "f.email": "not an email"}, status=422)
    assert 'name="version" value="2"' in invalid.text
    # A form made from an old version keeps it through a correction: saving it is 412.
    old_form = agent.post(path, {"version": "1", "f.email": "not an email"}, status=422)
    assert 'name="version" value="1"' in old_form.text
    assert 'id="err-email"' in invalid.text
    assert 'aria-invalid="true"' in invalid.text
    agent.post(path, {"version": "two", "f.email": "x@example.com"}, status=422)
    agent.post(path, {"version": "2", "f.nonsense": "x"}, status=422)
    agent.post(path, {"version": "2", "f.email": "x" * 300 + "@example.com"}, status=422)
    # Nothing else was written; the refused write is on record as a denial.
    updates = events(state, "eu", "record.update")
    assert [e["decision"] for e in updates] == ["allow", "deny"]
    assert updates[1]["fields"] == ["first_name"]


def test_records_pages_refuse_unknown_entities_other_regions_and_bad_queries(
    state: State, app: Any, subject: dict[str, Any]
) -> None:
    agent = person(state, app, "support_agent", name="agent")
    agent.page("/console/records/widgets", status=404)
    agent.page("/console/records/contacts/con_eu_notanid", status=404)
    agent.page("/console/records/contacts?cursor=forged", status=400)
    agent.page("/console/records/contacts?region=mars", status=422)
    agent.page("/console/records/leads", status=403)
    assert agent.page("/console/records", status=303).headers["location"] == (
        "/console/records/accounts"
    )
    us_agent = person(state, app, "support_agent", name="us-agent", regions=("us",))
    us_agent.page(f"/console/records/contacts/{subject['id']}", status=404)
    us_agent.post(
        f"/console/records/contacts/{subject['id']}",
        {"version": "1", "f.email": "a@b.example"},
        status=404,
    )
    assert subject["id"] not in us_agent.page("/console/records/contacts").text
    auditor = person(state, app, "auditor", name="auditor")
    auditor.page("/console/records", status=404)


# -- keys and regions -------------------------------------------------------------------


def test_keys_and_regions_for_security_admins_only(
    state: State, app: Any, subject: dict[str, Any]
) -> None:
    security = person(state, app, "security_admin", name="sec")
    page = security.page("/console/keys").text
    assert "current KEK <strong>v1</strong>" in page
    assert "keeps up" in page
    assert "Provider <strong>local</strong>" in page
    security_id = state.tokens.principal("sec").id
    assert security_id in {e["actor"] for e in events(state, "eu", "keys.read")}
    officer = person(state, app, "compliance_officer", name="dpo")
    officer.page("/console/keys", status=403)
    denied = [e for e in events(state, "eu", "keys.read") if e["reason"]]
    assert denied
    assert denied[0]["reason"] == "policy:action-denied"
    assert "/console/keys" not in officer.page("/console/").text


def test_a_person_without_a_session_is_sent_to_log_in_from_every_page(app: Any) -> None:
    nobody = Person(app)
    for path in (
        "/console/",
        "/console/dsr",
        "/console/dsr/dsr_eu_01m6mfvvy5fnba7f5vhede8r1b/package",
        "/console/audit/export",
        "/console/policy/tests",
        "/console/records/contacts",
        "/console/keys",
    ):
        assert nobody.page(path, status=303).headers["location"].startswith("/console/login?next=")
