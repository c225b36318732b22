"""`GET /v1/{entity}/export` and `bastion export`: exactly what the caller could read.

Exports are checked on the bytes: values an admin wrote come back (encrypted ones
decrypted); a field outside the caller's mask is in no header, no row and no byte
of the output; rows are those of the caller's export scope, in order, each batch
named by a `record.export` event committed before the batch leaves.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import structlog
from click.testing import CliRunner
from sqlalchemy import insert, text
from starlette.testclient import TestClient

from bastion.app import create_app
from bastion.bulk.export import BATCH, ExportQuery, export_records
from bastion.cli import main
from bastion.crm.auditing import AuditUnavailable
from bastion.crm.tables import ENTITY_TABLES
from bastion.principals.caller import Caller
from bastion.residency.ids import RecordId
from bastion.state import State, build_state
from tests.conftest import REPO, SECRET, Backend, FrozenClock, ResidencyGuard, Tokens, settings_for
from tests.factories import account_body, caller, contact_body, create, policy_dir

SYSTEM = ["id", "region", "version", "created_at", "updated_at"]
_FILENAME = re.compile(r"attachment; filename=([a-z]+)-([a-z]+)-(\d{8}T\d{6}Z)\.(csv|jsonl)")


def _export(client: TestClient, entity: str, headers: dict[str, str], **params: str) -> Any:
    return client.get(f"/v1/{entity}/export", params=params, headers=headers)


def _rows(response: Any) -> tuple[list[str], list[dict[str, str]]]:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "text/csv; charset=utf-8"
    reader = csv.reader(io.StringIO(response.content.decode("utf-8"), newline=""))
    header, *rows = list(reader)
    return header, [dict(zip(header, row, strict=True)) for row in rows]


def _lines(response: Any) -> list[dict[str, Any]]:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/x-ndjson"
    return [json.loads(line) for line in response.content.decode("utf-8").splitlines()]


def _problem(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    return body


def _export_events(client: TestClient, tokens: Tokens, region: str) -> list[dict[str, Any]]:
    """The region's `record.export` events, oldest first (read as an auditor)."""
    auditor = tokens.headers("auditor", name="export-auditor")
    response = client.get(
        "/v1/audit/export",
        params={"region": region, "action": "record.export"},
        headers=auditor,
    )
    assert response.status_code == 200, response.text
    return [json.loads(line) for line in response.text.splitlines()]


# -- what an admin wrote comes back -----------------------------------------------------


def test_csv_and_jsonl_give_back_what_an_admin_wrote_decrypted(
    client: TestClient, admin: dict[str, str]
) -> None:
    account = create(client, "accounts", account_body(region="eu"), admin)
    written = create(
        client,
        "contacts",
        contact_body(
            region="eu",
            first_name="Jörg",
            mobile="+4917612345678",
            mailing_street="Unter den Linden 1",
            birthdate="1980-02-29",
            title='Head of "Energy", EMEA',
            do_not_contact=True,
            account_id=account["id"],
            custom={"tier": "gold", "seats": 12},
        ),
        admin,
    )
    other = create(client, "contacts", contact_body(region="us"), admin)
    gets = {
        r["id"]: client.get(f"/v1/contacts/{r['id']}", headers=admin).json()
        for r in (written, other)
    }

    lines = _lines(_export(client, "contacts", admin, format="jsonl"))
    assert {line["id"]: line for line in lines} == gets  # the shape GET answers

    response = _export(client, "contacts", admin)  # CSV by default
    header, rows = _rows(response)
    fields = [name for name in gets[written["id"]] if name not in (*SYSTEM, "_withheld")]
    assert header == [*SYSTEM, *fields, "_withheld"]
    row = next(r for r in rows if r["id"] == written["id"])
    assert row["email"] == written["email"]
    assert row["mobile"] == "'+4917612345678"  # a leading + is defused, see below
    assert row["mailing_street"] == "Unter den Linden 1"
    assert row["birthdate"] == "1980-02-29"
    assert row["first_name"] == "Jörg"
    assert row["title"] == 'Head of "Energy", EMEA'
    assert row["do_not_contact"] == "true"
    assert row["account_id"] == account["id"]
    assert json.loads(row["custom"]) == {"tier": "gold", "seats": 12}
    assert row["created_at"] == written["created_at"]
    assert row["_withheld"] == ""
    assert row["department"] == ""  # never set
    assert {r["id"] for r in rows} == {written["id"], other["id"]}
    match = _FILENAME.fullmatch(response.headers["content-disposition"])
    assert match is not None, response.headers["content-disposition"]
    assert match.group(1, 2, 4) == ("contacts", "all", "csv")

    only_eu = _export(client, "contacts", admin, region="eu", format="jsonl")
    assert [line["id"] for line in _lines(only_eu)] == [written["id"]]
    assert "filename=contacts-eu-" in only_eu.headers["content-disposition"]


def test_an_empty_export_is_the_header_alone(client: TestClient, admin: dict[str, str]) -> None:
    header, rows = _rows(_export(client, "cases", admin))
    assert header[:5] == SYSTEM
    assert header[-1] == "_withheld"
    assert rows == []
    assert _lines(_export(client, "cases", admin, format="jsonl")) == []


# -- masks: a withheld field is nowhere in the output -----------------------------------


@pytest.fixture
def masked(backend: Backend, tmp_path: Path) -> Iterator[tuple[TestClient, State]]:
    """The default policy, plus export for support agents (cases, whose description
    they read only while the case is open), marketing (contacts, without mobile,
    street, postal code and birth date) and sales reps (their own contacts)."""
    directory = policy_dir(
        tmp_path / "policies",
        source=REPO / "policies",
        append=[
            "p, support_agent, *, cases, export, region, allow",
            "p, marketing, *, contacts, export, region, allow",
            "p, sales_rep, *, contacts, export, own, allow",
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


def test_marketing_exports_contacts_without_the_fields_it_may_not_read(
    masked: tuple[TestClient, State],
) -> None:
    client, state = masked
    admin = caller(state, "admin", name="adm").headers
    marketing = caller(state, "marketing", name="mkt").headers
    canaries = {
        "mobile": "+4917699887766",
        "mailing_street": "Zqcanarystrasse 7",
        "mailing_postal_code": "ZQ-CANARY-1",
        "birthdate": "1961-07-13",
    }
    for region in ("eu", "us"):
        create(client, "contacts", contact_body(region=region, **canaries), admin)

    for fmt in ("csv", "jsonl"):
        response = _export(client, "contacts", marketing, format=fmt)
        assert response.status_code == 200, response.text
        for value in canaries.values():
            assert value.encode() not in response.content, (fmt, value)
    header, rows = _rows(_export(client, "contacts", marketing))
    assert not set(canaries) & set(header)
    assert {"email", "last_name", "do_not_contact"} <= set(header)
    assert len(rows) == 2
    for row in rows:
        assert set(canaries) <= set(row["_withheld"].split(" "))
        assert row["email"].endswith("@example.com")
    for line in _lines(_export(client, "contacts", marketing, format="jsonl")):
        assert not set(canaries) & set(line)
        assert set(canaries) <= set(line["_withheld"])


def test_a_conditional_mask_applies_record_by_record(masked: tuple[TestClient, State]) -> None:
    client, state = masked
    admin = caller(state, "admin", name="adm").headers
    agent = caller(state, "support_agent", name="agent").headers
    account = create(client, "accounts", account_body(region="eu"), admin)
    base = {"region": "eu", "account_id": account["id"], "priority": "high"}
    open_case = create(
        client, "cases", {**base, "subject": "Open", "description": "zqopencanary"}, admin
    )
    closed = create(
        client,
        "cases",
        {**base, "subject": "Closed", "status": "closed", "description": "zqclosedcanary"},
        admin,
    )

    response = _export(client, "cases", agent)
    assert b"zqclosedcanary" not in response.content
    header, rows = _rows(response)
    assert "description" in header  # readable in some records
    by_id = {row["id"]: row for row in rows}
    assert by_id[open_case["id"]]["description"] == "zqopencanary"
    assert "description" not in by_id[open_case["id"]]["_withheld"].split(" ")
    assert by_id[closed["id"]]["description"] == ""
    assert "description" in by_id[closed["id"]]["_withheld"].split(" ")
    jsonl = _export(client, "cases", agent, format="jsonl")
    assert b"zqclosedcanary" not in jsonl.content
    lines = {line["id"]: line for line in _lines(jsonl)}
    assert lines[open_case["id"]]["description"] == "zqopencanary"
    assert "description" not in lines[closed["id"]]


def test_sales_manager_exports_no_sensitive_field(
    client: TestClient, admin: dict[str, str], tokens: Tokens
) -> None:
    create(client, "contacts", contact_body(region="eu", birthdate="1959-12-24"), admin)
    manager = tokens.headers("sales_manager")
    response = _export(client, "contacts", manager)
    assert b"1959-12-24" not in response.content
    header, rows = _rows(response)
    assert "birthdate" not in header
    assert "birthdate" in rows[0]["_withheld"].split(" ")


# -- rows: the export scope --------------------------------------------------------------


def test_export_follows_the_row_scope(masked: tuple[TestClient, State]) -> None:
    client, state = masked
    admin = caller(state, "admin", name="adm").headers
    rep = caller(state, "sales_rep", name="rep")
    eu_manager = caller(state, "sales_manager", name="mgr-eu", regions=("eu",)).headers
    mine = create(client, "contacts", contact_body(region="eu", owner_id=rep.id), admin)
    theirs = create(client, "contacts", contact_body(region="eu"), admin)
    elsewhere = create(client, "contacts", contact_body(region="us", owner_id=rep.id), admin)

    exported = _lines(_export(client, "contacts", rep.headers, format="jsonl"))
    assert sorted(r["id"] for r in exported) == sorted([mine["id"], elsewhere["id"]])
    managed = _lines(_export(client, "contacts", eu_manager, format="jsonl"))
    assert sorted(r["id"] for r in managed) == sorted([mine["id"], theirs["id"]])
    # Outside the principal's regions: as the list endpoint answers.
    _problem(_export(client, "contacts", eu_manager, region="us"), 403)
    _problem(_export(client, "contacts", eu_manager, region="apac"), 422)


def test_a_role_without_export_gets_403_and_the_denial_is_audited(
    client: TestClient, admin: dict[str, str], tokens: Tokens
) -> None:
    create(client, "contacts", contact_body(region="eu", last_name="Zqdenied"), admin)
    rep = tokens.headers("sales_rep", name="rep")
    for params in ({}, {"region": "eu"}, {"format": "jsonl"}):
        body = _problem(_export(client, "contacts", rep, **params), 403)
        assert "export" in body["detail"]
    _problem(_export(client, "contacts", tokens.headers("dsr_processor")), 403)
    events = _export_events(client, tokens, "eu")
    assert [e["decision"] for e in events] == ["deny"] * 4
    assert all(e["reason"] == "policy:action-denied" for e in events)


def test_bad_input_is_refused_before_the_first_byte(
    client: TestClient, admin: dict[str, str], tokens: Tokens
) -> None:
    create(client, "contacts", contact_body(region="eu"), admin)
    manager = tokens.headers("sales_manager")
    body = _problem(_export(client, "contacts", admin, format="xlsx"), 422)
    assert [e["field"] for e in body["errors"]] == ["format"]
    body = _problem(_export(client, "contacts", admin, shoe_size="44"), 422)
    assert [e["field"] for e in body["errors"]] == ["shoe_size"]
    _problem(_export(client, "contacts", admin, lead_source="telepathy"), 422)
    # A filter on a field the caller cannot read: 403 naming it, whatever the value.
    body = _problem(_export(client, "contacts", manager, birthdate="1970-01-01"), 403)
    assert body["fields"] == ["birthdate"]
    _problem(client.get("/v1/widgets/export", headers=admin), 404)
    _problem(client.get("/v1/contacts/export"), 401)
    _problem(client.get("/v1/contacts/export?format=csv&format=jsonl", headers=admin), 400)
    # Nothing was exported; the refused filter is audited as a field denial.
    events = _export_events(client, tokens, "eu")
    assert [(e["decision"], e["reason"], e["fields"]) for e in events] == [
        ("deny", "policy:field-denied", ["birthdate"])
    ]


def test_filters_are_those_of_the_list(
    client: TestClient, admin: dict[str, str], residency_guard: ResidencyGuard
) -> None:
    account = create(client, "accounts", account_body(region="eu"), admin)
    linked = create(client, "contacts", contact_body(region="eu", account_id=account["id"]), admin)
    create(client, "contacts", contact_body(region="eu"), admin)
    create(client, "contacts", contact_body(region="us"), admin)
    by_link = _lines(_export(client, "contacts", admin, format="jsonl", account_id=account["id"]))
    assert [r["id"] for r in by_link] == [linked["id"]]
    # An encrypted field matched through its blind index.
    by_email = _lines(_export(client, "contacts", admin, format="jsonl", email=linked["email"]))
    assert [r["id"] for r in by_email] == [linked["id"]]
    residency_guard.assert_clean()  # the link filter was never sent to the US database


# -- batches, order, audit ---------------------------------------------------------------


def _insert_accounts(state: State, region: str, count: int) -> list[str]:
    """`count` accounts in one transaction (Core: plaintext columns only), oldest first."""
    database = state.regions.get(region)
    start = state.clock.now()
    ids = [
        str(RecordId.new("acc", region, start + timedelta(microseconds=index)))
        for index in range(count)
    ]
    rows = []
    for index, record_id in enumerate(ids):
        created = start + timedelta(microseconds=index)
        rows.append(
            {
                "id": record_id,
                "region": region,
                "version": 1,
                "created_at": created,
                "updated_at": created,
                "name": f"Filler {index:04d}",
                "custom": {},
            }
        )
    with database.transaction(write=True) as conn:
        conn.execute(insert(ENTITY_TABLES["accounts"]), rows)
    return ids


def test_more_rows_than_a_batch_arrive_in_order_once_each_and_audited(
    client: TestClient,
    admin: dict[str, str],
    state: State,
    tokens: Tokens,
    residency_guard: ResidencyGuard,
) -> None:
    eu_ids = _insert_accounts(state, "eu", 2 * BATCH + 200)
    us_ids = _insert_accounts(state, "us", 3)

    lines = _lines(_export(client, "accounts", admin, format="jsonl"))
    exported = [line["id"] for line in lines]
    assert len(exported) == len(set(exported)) == len(eu_ids) + len(us_ids)
    assert [i for i in exported if "_eu_" in i] == eu_ids  # oldest first
    assert [i for i in exported if "_us_" in i] == us_ids
    created = [(line["created_at"], line["id"]) for line in lines]
    assert created == sorted(created)  # the regions merged in one order

    eu_events = _export_events(client, tokens, "eu")
    assert [len(e["record_ids"]) for e in eu_events] == [BATCH, BATCH, 200]
    assert [i for e in eu_events for i in e["record_ids"]] == eu_ids
    assert all(e["decision"] == "allow" and "name" in e["fields"] for e in eu_events)
    assert [e["record_ids"] for e in _export_events(client, tokens, "us")] == [us_ids]
    residency_guard.assert_clean()


def test_a_failed_audit_insert_ends_the_stream_before_unaudited_rows(
    state: State, backend: Backend, tokens: Tokens
) -> None:
    ids = _insert_accounts(state, "eu", BATCH + 50)
    tokens.headers("admin", name="exporter")
    exporter = Caller(state.tokens.principal("exporter"))
    prepared = export_records(
        state.records, exporter, "accounts", ExportQuery(format="jsonl", filters={}, region="eu")
    )
    # The first batch was read and audited already; the log fails from here on.
    chunks: list[bytes] = []
    with _audit_insert_fails(state, backend), pytest.raises(AuditUnavailable):
        chunks.extend(prepared.chunks)  # keeps what came before the failure
    received = b"".join(chunks)
    sent = [json.loads(line)["id"] for line in received.decode().splitlines()]
    assert sent  # the first batch, audited, did go out
    assert set(sent) <= set(ids[:BATCH])
    assert not any(record_id.encode() in received for record_id in ids[BATCH:])


@contextmanager
def _audit_insert_fails(state: State, backend: Backend) -> Iterator[None]:
    """Region eu's audit log refuses every insert (as a full disk would), by trigger
    (as in test_audit_pipeline)."""
    database = state.regions.get("eu")
    with database.transaction(write=True) as conn:
        if backend.name == "sqlite":
            conn.execute(
                text(
                    "CREATE TRIGGER zz_fail BEFORE INSERT ON audit_events "
                    "BEGIN SELECT RAISE(ABORT, 'disk full'); END"
                )
            )
        else:
            conn.execute(
                text(
                    "CREATE FUNCTION zz_fail() RETURNS trigger LANGUAGE plpgsql AS "
                    "$$ BEGIN RAISE EXCEPTION 'disk full'; END $$"
                )
            )
            conn.execute(
                text(
                    "CREATE TRIGGER zz_fail BEFORE INSERT ON audit_events "
                    "FOR EACH ROW EXECUTE FUNCTION zz_fail()"
                )
            )
    try:
        yield
    finally:
        with database.transaction(write=True) as conn:
            suffix = " ON audit_events" if backend.name != "sqlite" else ""
            conn.execute(text("DROP TRIGGER zz_fail" + suffix))
            if backend.name != "sqlite":
                conn.execute(text("DROP FUNCTION zz_fail()"))


# -- formula injection -------------------------------------------------------------------


def test_cells_a_spreadsheet_would_evaluate_are_defused(
    client: TestClient, admin: dict[str, str]
) -> None:
    record = create(
        client,
        "contacts",
        contact_body(
            region="eu",
            first_name='=HYPERLINK("http://evil.example","x")',
            last_name="@SUM(A1:A9)",
            title="-2+3",
            department="+cmd|' /C calc'!A0",
            mailing_city="Köln",
            custom={"note": "=1+1"},
        ),
        admin,
    )
    _header, rows = _rows(_export(client, "contacts", admin))
    (row,) = rows
    assert row["first_name"] == '\'=HYPERLINK("http://evil.example","x")'
    assert row["last_name"] == "'@SUM(A1:A9)"
    assert row["title"] == "'-2+3"
    assert row["department"] == "'+cmd|' /C calc'!A0"
    assert row["mailing_city"] == "Köln"
    assert row["phone"] == "'" + record["phone"]
    assert json.loads(row["custom"]) == {"note": "=1+1"}  # JSON text starts with {
    (line,) = _lines(_export(client, "contacts", admin, format="jsonl"))
    assert line["first_name"] == record["first_name"]  # JSON needs no defusing


# -- the CLI -----------------------------------------------------------------------------


def test_the_cli_writes_what_the_api_sends_to_the_same_principal(
    client: TestClient, state: State, backend: Backend, tmp_path: Path, tokens: Tokens
) -> None:
    admin = tokens.headers("admin", name="admin-cli")
    manager = tokens.headers("sales_manager", name="manager-cli")
    for region in ("eu", "us"):
        create(client, "contacts", contact_body(region=region, birthdate="1975-05-05"), admin)
    env = {
        "BASTION_CONFIG": str(tmp_path / "absent.toml"),
        "BASTION_HOME": str(state.settings.home),
        "BASTION_POLICIES": str(REPO / "policies"),
        "BASTION_SECRET_KEY": SECRET,
        "BASTION_CONTROL_URL": backend.urls["control"],
        "BASTION_REGIONS": "eu,us",
        "BASTION_REGION_EU_URL": backend.urls["eu"],
        "BASTION_REGION_US_URL": backend.urls["us"],
        "BASTION_LOG_LEVEL": "ERROR",
    }
    (tmp_path / "absent.toml").write_text("")
    try:
        runs: list[tuple[str, str | None]] = [("csv", None), ("jsonl", "eu")]
        for fmt, only in runs:
            out = tmp_path / f"export.{fmt}"
            args = ["export", "contacts", "--as", "manager-cli", "--format", fmt, "--out", str(out)]
            params = {"format": fmt}
            if only is not None:
                args += ["--region", only]
                params["region"] = only
            result = CliRunner().invoke(main, args, env=env, catch_exceptions=False)
            assert result.exit_code == 0, result.output
            api = _export(client, "contacts", manager, **params)
            assert api.status_code == 200
            assert out.read_bytes() == api.content
            assert b"1975-05-05" not in out.read_bytes()
        to_stdout = CliRunner().invoke(
            main, ["export", "contacts", "--as", "manager-cli"], env=env, catch_exceptions=False
        )
        assert to_stdout.exit_code == 0
        assert to_stdout.stdout_bytes == _export(client, "contacts", manager).content
        # The CLI's exports are audited as that principal's, as the API's are.
        events = _export_events(client, tokens, "us")
        assert {e["actor"] for e in events} == {state.tokens.principal("manager-cli").id}
        assert len(events) == 4  # all-region CSV: to a file and to stdout, each CLI + API
        refused = CliRunner().invoke(
            main, ["export", "contacts", "--as", "admin-cli", "--format", "xml"], env=env
        )
        assert refused.exit_code != 0
        tokens.headers("sales_rep", name="rep-cli")
        rep_args = ["export", "contacts", "--as", "rep-cli", "--out", str(tmp_path / "no")]
        denied = CliRunner().invoke(main, rep_args, env=env)
        assert denied.exit_code != 0
        assert "export" in denied.output
        assert not (tmp_path / "no").exists()
    finally:
        structlog.reset_defaults()
