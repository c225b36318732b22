"""CSV import over HTTP and the CLI, on SQLite and PostgreSQL.

What an import must guarantee: every row is a create (policy, validation, encryption,
blind indexes, audit) or is reported — invalid rows by row and field, duplicates with
the record they match — and nothing partial; running the same data again creates
nothing; a run killed between batches resumes where it stopped; and the report holds
no value from the file.
"""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, text
from starlette.testclient import TestClient

from bastion.analytics.tables import opportunity_stages
from bastion.audit.tables import AUDIT
from bastion.bulk.tables import import_problems, import_rows, imports
from bastion.crm.tables import ENTITY_TABLES
from bastion.crypto.tables import subject_keys
from bastion.state import State
from tests.conftest import REGIONS, REPO, SECRET, Backend, Tokens
from tests.factories import account_body, contact_body, create
from tests.functional.test_dsr_e2e import open_request, run_request

SETTINGS_ENV = {
    "BASTION_IMPORTS_BATCH_SIZE": "7",
    "BASTION_IMPORTS_MAX_FILE_BYTES": "200000",
    # Erasure requests are run by the test (state.dsr_jobs), not by the app's runner.
    "BASTION_DSR_IN_PROCESS": "false",
}

MAPPING = {
    "columns": {
        "Vorname": "first_name",
        "Nachname": "last_name",
        "E-Mail": "email",
        "Telefon": "phone",
        "Kontakt erlaubt": "email_opt_in",
        "Segment": "custom.segment",
    },
    "ignore": ["Interne Nr"],
    "defaults": {"lead_source": "event"},
    "booleans": {"true": ["ja"], "false": ["nein"]},
}
HEADER = ["Interne Nr", "Vorname", "Nachname", "E-Mail", "Telefon", "Kontakt erlaubt", "Segment"]
CANARY = "Zyxwvutsrq"


def csv_text(rows: list[list[str]], header: list[str] = HEADER) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(header)
    writer.writerows(rows)
    return out.getvalue()


def person(n: int, **overrides: str) -> list[str]:
    values = {
        "nr": f"X{n}",
        "first": "Jana",
        "last": f"{CANARY}{n}",
        "email": f"jana.{n}@import.example",
        "phone": f"+4940{n:07d}",
        "opt": "ja" if n % 2 else "nein",
        "segment": "smb",
        **overrides,
    }
    return list(values.values())


def post_import(
    client: TestClient,
    headers: dict[str, str],
    text: str | bytes,
    *,
    entity: str = "contacts",
    region: str | None = "eu",
    mapping: dict[str, Any] | None = MAPPING,
    content_type: str = "text/csv",
) -> Any:
    params: dict[str, str] = {"entity": entity, "file_name": "people.csv"}
    if region is not None:
        params["region"] = region
    if mapping is not None:
        params["mapping"] = json.dumps(mapping)
    body = text.encode("utf-8") if isinstance(text, str) else text
    return client.post(
        "/v1/imports",
        params=params,
        content=body,
        headers={**headers, "Content-Type": content_type},
    )


def problems(client: TestClient, headers: dict[str, str], run_id: str) -> list[dict[str, Any]]:
    lines: list[dict[str, Any]] = []
    cursor = None
    while True:
        params = {"limit": "5", **({"cursor": cursor} if cursor else {})}
        page = client.get(f"/v1/imports/{run_id}/problems", params=params, headers=headers)
        assert page.status_code == 200, page.text
        lines += page.json()["data"]
        cursor = page.json()["next_cursor"]
        if cursor is None:
            return lines


def count(state: State, region: str, table: Any) -> int:
    with state.regions.get(region).transaction() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())


def test_a_file_is_imported_through_the_pipeline_and_reported_row_by_row(
    client: TestClient, admin: dict[str, str], state: State
) -> None:
    existing = create(client, "contacts", contact_body(email="taken@import.example"), admin)
    rows = [person(n) for n in range(1, 21)]
    rows[2] = person(3, email="not-an-email")  # row 4: invalid email
    rows[5] = person(6, opt="vielleicht")  # row 7: not a boolean the mapping knows
    rows[8] = person(9, email="JANA.8@Import.Example ")  # row 10: duplicate of row 9
    rows[11] = person(12, email="taken@import.example")  # row 13: an existing contact
    rows[14] = person(15, last="")  # row 16: last_name is required
    rows.insert(17, ["X99", "Ragged"])  # row 19: too few cells
    response = post_import(client, admin, csv_text(rows))
    assert response.status_code == 201, response.text
    run = response.json()
    assert response.headers["location"] == f"/v1/imports/{run['id']}"
    assert run["status"] == "completed"
    assert run["region"] == "eu"
    assert (run["rows"], run["created"], run["invalid"], run["duplicates"]) == (21, 15, 4, 2)
    assert run["skipped"] == 0
    assert run["resumed"] is False

    lines = problems(client, admin, run["id"])
    assert [(p["row"], p["field"], p["kind"]) for p in lines] == [
        (4, "email", "invalid"),
        (7, "email_opt_in", "invalid"),
        (10, "email", "duplicate"),
        (13, "email", "duplicate"),
        (16, "last_name", "invalid"),
        (19, "(row)", "invalid"),
    ]
    assert lines[2]["message"] == "matches row 9 of this file"
    assert lines[3]["existing_id"] == existing["id"]
    assert all(CANARY not in json.dumps(line) for line in lines)

    # The created records are ordinary records: decrypted for the caller, found by
    # email through the blind index, with the mapping's defaults and custom field.
    found = client.get(
        "/v1/contacts", params={"email": "JANA.17@import.example"}, headers=admin
    ).json()["data"]
    assert len(found) == 1
    record = found[0]
    assert record["last_name"] == f"{CANARY}17"
    assert record["first_name"] == "Jana"
    assert record["email_opt_in"] is True
    assert record["lead_source"] == "event"
    assert record["custom"] == {"segment": "smb"}
    assert record["owner_id"] == client.get("/v1/me", headers=admin).json()["id"]
    # Nothing of a failed row was written: 15 contacts + the existing one, each with a key.
    assert count(state, "eu", ENTITY_TABLES["contacts"]) == 16
    with state.regions.get("eu").transaction() as conn:
        last_names = conn.execute(select(ENTITY_TABLES["contacts"].c.last_name)).scalars().all()
        assert all(CANARY.encode() not in value for value in last_names)  # sealed
        keyed = conn.execute(select(func.count()).select_from(subject_keys)).scalar_one()
    assert keyed == 16
    assert count(state, "us", ENTITY_TABLES["contacts"]) == 0


def test_running_the_same_file_again_creates_nothing(
    client: TestClient, admin: dict[str, str], state: State
) -> None:
    rows = [person(n) for n in range(1, 16)] + [person(3)]  # the last row repeats row 4
    text = csv_text(rows)
    first = post_import(client, admin, text).json()
    assert (first["created"], first["duplicates"]) == (15, 1)
    second = post_import(client, admin, text)
    assert second.status_code == 201, second.text
    again = second.json()
    assert again["id"] != first["id"]
    assert (again["created"], again["skipped"], again["duplicates"]) == (0, 16, 0)
    # Another file holding some of the same rows (and new ones) creates only the new ones.
    third = post_import(client, admin, csv_text([*rows[:5], person(40), person(41)])).json()
    assert (third["created"], third["skipped"]) == (2, 5)
    assert count(state, "eu", ENTITY_TABLES["contacts"]) == 17
    assert count(state, "eu", import_rows) == 17


def test_the_audit_log_names_every_created_record_and_no_value(
    client: TestClient, admin: dict[str, str], state: State
) -> None:
    run = post_import(client, admin, csv_text([person(n) for n in range(1, 11)])).json()

    def events(action: str) -> list[dict[str, Any]]:
        params = {"region": "eu", "action": action, "limit": "100"}
        response = client.get("/v1/audit/events", params=params, headers=admin)
        assert response.status_code == 200, response.text
        return list(response.json()["data"])

    started, batches, completed = (
        events(a) for a in ("import.start", "record.import", "import.completed")
    )
    assert [e["details"]["import_id"] for e in started + completed] == [run["id"]] * 2
    assert completed[0]["details"]["created"] == 10
    assert len(batches) == 2  # 10 rows in batches of 7
    with state.regions.get("eu").transaction() as conn:
        created = set(
            conn.execute(
                select(import_rows.c.record_id).where(import_rows.c.import_id == run["id"])
            )
            .scalars()
            .all()
        )
    assert {rid for event in batches for rid in event["record_ids"]} == created
    assert len(created) == 10
    assert {"email", "last_name", "phone", "custom"} <= set(batches[0]["fields"])
    with state.regions.get("eu").transaction() as conn:
        stored = conn.execute(select(AUDIT.events.c.payload)).scalars().all()
    assert not any(CANARY in payload or "jana.1@" in payload for payload in stored)


def test_a_run_killed_between_batches_resumes_after_its_last_batch(
    backend: Backend, tmp_path: Path, state: State, tokens: Tokens
) -> None:
    tokens.headers("admin", name="importer")
    data = tmp_path / "people.csv"
    data.write_text(csv_text([person(n) for n in range(1, 31)]), encoding="utf-8")
    mapping = tmp_path / "mapping.json"
    mapping.write_text(json.dumps(MAPPING), encoding="utf-8")
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(tmp_path),
        "BASTION_HOME": str(tmp_path),
        "BASTION_CONFIG": str(tmp_path / "absent.toml"),
        "BASTION_POLICIES": str(REPO / "policies"),
        "BASTION_SECRET_KEY": SECRET,
        "BASTION_CONTROL_URL": backend.urls["control"],
        "BASTION_REGIONS": ",".join(REGIONS),
        "BASTION_IMPORTS_BATCH_SIZE": "7",
        **{f"BASTION_REGION_{r.upper()}_URL": backend.urls[r] for r in REGIONS},
    }
    command = [sys.executable, "-m", "bastion", "import", "contacts", str(data)]
    command += ["--as", "importer", "--region", "eu", "--map", str(mapping)]
    killed = subprocess.run(
        command, env={**env, "BASTION_FAILPOINT": "import:batch"}, capture_output=True, text=True
    )
    assert killed.returncode == 86, killed.stderr
    assert count(state, "eu", ENTITY_TABLES["contacts"]) == 7
    report = tmp_path / "report.csv"
    resumed = subprocess.run(
        [*command, "--report", str(report)], env=env, capture_output=True, text=True
    )
    assert resumed.returncode == 0, resumed.stderr
    run = json.loads(resumed.stdout)
    assert run["resumed"] is True
    assert run["status"] == "completed"
    assert (run["rows"], run["created"], run["skipped"]) == (30, 30, 0)
    assert count(state, "eu", ENTITY_TABLES["contacts"]) == 30
    assert count(state, "eu", imports) == 1
    assert report.read_text(encoding="utf-8").splitlines() == ["row,field,kind,message,existing_id"]


def test_links_must_name_readable_records_of_the_same_region(
    client: TestClient, admin: dict[str, str], state: State
) -> None:
    eu_account = create(client, "accounts", account_body(), admin)
    us_account = create(client, "accounts", {**account_body(), "region": "us"}, admin)
    header = [*HEADER, "Firma"]
    mapping = {**MAPPING, "columns": {**MAPPING["columns"], "Firma": "account_id"}}
    rows = [
        [*person(1), eu_account["id"]],
        [*person(2), us_account["id"]],
        [*person(3), eu_account["id"][:-4] + "aaaa"],
    ]
    run = post_import(client, admin, csv_text(rows, header), mapping=mapping).json()
    assert (run["created"], run["invalid"]) == (1, 2)
    lines = problems(client, admin, run["id"])
    assert [(p["row"], p["field"], p["message"]) for p in lines] == [
        (3, "account_id", "must be in the record's region (eu)"),
        (4, "account_id", "no account has that id"),
    ]


def test_opportunities_import_with_their_stage_history(
    client: TestClient, admin: dict[str, str], state: State
) -> None:
    account = create(client, "accounts", account_body(), admin)
    text = csv_text(
        [[f"Deal {n}", account["id"], "proposal", "1234,50"] for n in range(3)],
        ["name", "account_id", "stage", "amount"],
    )
    response = post_import(
        client, admin, text, entity="opportunities", mapping={"decimal_separator": ","}
    )
    assert response.status_code == 201, response.text
    assert response.json()["created"] == 3
    deals = client.get("/v1/opportunities", headers=admin).json()["data"]
    assert sorted(d["amount"] for d in deals) == ["1234.50"] * 3
    assert count(state, "eu", opportunity_stages) == 3


def test_reading_a_run_is_for_the_importer_alone(
    client: TestClient, admin: dict[str, str], tokens: Tokens
) -> None:
    run = post_import(client, admin, csv_text([person(1)])).json()
    assert client.get(f"/v1/imports/{run['id']}", headers=admin).json()["created"] == 1
    other = tokens.headers("admin", name="another-admin")
    for path in (f"/v1/imports/{run['id']}", f"/v1/imports/{run['id']}/problems"):
        response = client.get(path, headers=other)
        assert response.status_code == 404, response.text
    for bogus in ("imp_eu_nope", run["id"].replace("_eu_", "_us_"), "con_eu_" + "a" * 26):
        assert client.get(f"/v1/imports/{bogus}", headers=admin).status_code == 404


@pytest.mark.parametrize(
    ("roles", "regions", "mapping", "fragment"),
    [
        (("sales_rep",), (), MAPPING, "import on contacts"),
        (("support_agent",), (), MAPPING, "import on contacts"),
        (("analyst",), (), MAPPING, "import on contacts"),
        (("compliance_officer",), (), MAPPING, "import on contacts"),
        (("sales_manager",), ("us",), MAPPING, "region eu"),
        (
            ("sales_manager",),
            (),
            {**MAPPING, "columns": {**MAPPING["columns"], "Segment": "birthdate"}},
            "birthdate",
        ),
    ],
)
def test_roles_without_the_right_are_refused_before_anything_is_written(
    client: TestClient,
    tokens: Tokens,
    state: State,
    roles: tuple[str, ...],
    regions: tuple[str, ...],
    mapping: dict[str, Any],
    fragment: str,
) -> None:
    response = post_import(
        client, tokens.headers(*roles, regions=regions), csv_text([person(1)]), mapping=mapping
    )
    assert response.status_code == 403, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert fragment in response.text
    assert count(state, "eu", ENTITY_TABLES["contacts"]) == 0
    assert count(state, "eu", imports) == 0


def test_a_sales_manager_imports_into_its_region(client: TestClient, tokens: Tokens) -> None:
    manager = tokens.headers("sales_manager", regions=("eu",))
    run = post_import(client, manager, csv_text([person(1), person(2)]))
    assert run.status_code == 201, run.text
    assert run.json()["created"] == 2


@pytest.mark.parametrize(
    ("body", "params", "status", "field"),
    [
        (b"\xff\xfeNachname\n", {}, 422, "file"),
        (b"", {}, 422, "file"),
        (b"Nachname,Unbekannt\nX,Y\n", {"mapping": None}, 422, "column 'Unbekannt'"),
        (b"Nachname,Nachname\nX,Y\n", {"mapping": None}, 422, "column 'Nachname'"),
        (b"id,last_name\nX,Y\n", {"mapping": None}, 422, "column 'id'"),
        (b"first_name\nX\n", {"mapping": None}, 422, "last_name"),
        (b"a", {"entity": "invoices"}, 422, "entity"),
        (b"a", {"region": "mars"}, 422, "region"),
        (b"a", {"mapping": {"columns": ["x"]}}, 422, "mapping.columns"),
        (b"a", {"mapping": {"colums": {}}}, 422, "mapping"),
        (b"a", {"mapping": {"dates": "dd.mm"}}, 422, "mapping.dates"),
        (
            csv_text([person(1)]).encode(),
            {"mapping": {**MAPPING, "defaults": {"lead_source": "carrier pigeon"}}},
            422,
            "mapping.defaults.lead_source",
        ),
        (b'last_name\n"unterminated\n', {"mapping": None}, 422, "file"),
    ],
)
def test_malformed_files_and_parameters_are_refused_with_nothing_written(
    client: TestClient,
    admin: dict[str, str],
    state: State,
    body: bytes,
    params: dict[str, Any],
    status: int,
    field: str,
) -> None:
    options: dict[str, Any] = {"mapping": MAPPING, "entity": "contacts", "region": "eu", **params}
    response = post_import(client, admin, body, **options)
    assert response.status_code == status, response.text
    problem = response.json()
    assert response.headers["content-type"] == "application/problem+json"
    assert any(field in error["field"] for error in problem.get("errors", [])), problem
    assert count(state, "eu", ENTITY_TABLES["contacts"]) == 0


def test_wrong_media_type_oversized_and_repeated_parameters(
    client: TestClient, admin: dict[str, str], state: State
) -> None:
    text = csv_text([person(1)])
    assert post_import(client, admin, text, content_type="application/json").status_code == 415
    big = csv_text([person(n) for n in range(1, 4000)])
    assert len(big) > 200_000
    response = post_import(client, admin, big)
    assert response.status_code == 413, response.text
    assert response.headers["content-type"] == "application/problem+json"
    repeated = client.post(
        "/v1/imports?entity=contacts&entity=leads",
        content=text.encode(),
        headers={**admin, "Content-Type": "text/csv"},
    )
    assert repeated.status_code == 400
    assert client.get("/v1/imports/x/problems?limit=0", headers=admin).status_code == 422
    assert count(state, "eu", ENTITY_TABLES["contacts"]) == 0


def test_a_file_that_breaks_off_keeps_the_rows_before_and_says_where(
    client: TestClient, admin: dict[str, str], state: State
) -> None:
    good = csv_text([person(n) for n in range(1, 10)])
    response = post_import(client, admin, good + 'X9,"unterminated\n')
    assert response.status_code == 422, response.text
    problem = response.json()
    assert problem["type"] == "urn:bastion:problem:import-failed"
    assert "row 11" in problem["detail"]
    run = client.get(f"/v1/imports/{problem['import_id']}", headers=admin).json()
    assert (run["status"], run["created"]) == ("failed", 9)
    # The corrected file (the same rows, fixed) creates only what is missing.
    fixed = post_import(client, admin, good + csv_text([person(10)])[len(csv_text([])) :]).json()
    assert (fixed["created"], fixed["skipped"]) == (1, 9)
    assert count(state, "eu", import_problems) == 0


def test_erasing_an_imported_person_forgets_the_key_of_their_row(
    client: TestClient, admin: dict[str, str], state: State, tokens: Tokens
) -> None:
    run = post_import(client, admin, csv_text([person(1), person(2)])).json()
    with state.regions.get("eu").transaction() as conn:
        keys = dict(
            conn.execute(
                select(import_rows.c.record_id, import_rows.c.row_key).where(
                    import_rows.c.import_id == run["id"]
                )
            ).all()
        )
    erased, kept = sorted(keys)
    officer = tokens.headers("compliance_officer", name="dpo")
    request_id = open_request(client, officer, {"type": "erasure", "subject_id": erased})
    assert run_request(state, client, officer, request_id)["status"] == "completed"
    with state.regions.get("eu").transaction() as conn:
        left = conn.execute(select(import_rows.c.record_id)).scalars().all()
    assert left == [kept]


def test_keys_are_per_importer_and_go_with_their_record(
    client: TestClient, admin: dict[str, str], state: State, tokens: Tokens
) -> None:
    text = csv_text([person(1), person(2)])
    first = post_import(client, admin, text).json()
    assert first["created"] == 2
    # Another importer's run of the same data is not told the rows were imported: it
    # meets them as duplicates of records it can read, like any other create would.
    other = post_import(client, tokens.headers("admin", name="second-importer"), text).json()
    assert (other["created"], other["skipped"], other["duplicates"]) == (0, 0, 2)
    # A deleted record's key goes with it: importing its row again creates it again.
    found = client.get(
        "/v1/contacts", params={"email": "jana.1@import.example"}, headers=admin
    ).json()["data"]
    deleted = client.delete(f"/v1/contacts/{found[0]['id']}", headers=admin)
    assert deleted.status_code == 204, deleted.text
    assert count(state, "eu", import_rows) == 1
    again = post_import(client, admin, text).json()
    assert (again["created"], again["skipped"]) == (1, 1)
    assert count(state, "eu", import_rows) == 2


@pytest.mark.parametrize(
    "backend", [pytest.param("postgresql", marks=pytest.mark.postgres)], indirect=True
)
def test_postgresql_statistics_are_refreshed_as_an_import_grows_a_table(
    client: TestClient, admin: dict[str, str], state: State
) -> None:
    """Until autovacuum runs, the planner takes a freshly filled table for empty and
    scans it for every batch's lookups; the import analyzes the tables it grows."""
    run = post_import(client, admin, csv_text([person(n) for n in range(1, 11)])).json()
    assert run["created"] == 10
    with state.regions.get("eu").transaction() as conn:
        tuples = dict(
            conn.execute(
                text(
                    "SELECT relname, reltuples FROM pg_class "
                    "WHERE relname IN ('contacts', 'import_rows', 'subject_keys')"
                )
            ).all()
        )
    # -1: never analyzed. After the first batch of 7, each was analyzed.
    assert all(value >= 7 for value in tuples.values()), tuples
