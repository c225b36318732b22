"""Duplicate detection on encrypted data: one record's duplicates, the phonetic index,
the review queue (scan, list, dismiss), through the API and the CLI, on both backends."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from click.testing import CliRunner
from sqlalchemy import event, select, update
from starlette.testclient import TestClient

from bastion.app import create_app
from bastion.audit.events import MAX_RECORD_IDS
from bastion.cli import main
from bastion.crm.tables import ENTITY_TABLES
from bastion.quality.reindex import reindex
from bastion.quality.tables import duplicate_pairs
from bastion.state import State, build_state
from tests.conftest import Backend, FrozenClock, ResidencyGuard, Tokens, settings_for
from tests.factories import caller, contact_body, create, lead_body, policy_dir
from tests.functional.test_dsr_e2e import audit_rows, cli_env, open_request, run_request

# Erasure requests are run by the test (state.dsr_jobs), not by the app's runner.
SETTINGS_ENV = {"BASTION_DSR_IN_PROCESS": "false"}
CONTACTS = ENTITY_TABLES["contacts"]
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _reset_structlog() -> Iterator[None]:
    yield  # the CLI configures logging for the process
    structlog.reset_defaults()


def person(
    client: TestClient, headers: dict[str, str], entity: str = "contacts", **fields: Any
) -> dict[str, Any]:
    """A new record, even if it duplicates one the caller can see (that is the point)."""
    body = contact_body(**fields) if entity == "contacts" else lead_body(**fields)
    response = client.post(f"/v1/{entity}?allow_duplicate=true", json=body, headers=headers)
    assert response.status_code == 201, response.text
    record: dict[str, Any] = response.json()
    return record


def duplicates(
    client: TestClient, headers: dict[str, str], record: dict[str, Any], **params: Any
) -> dict[str, dict[str, Any]]:
    """The duplicates of `record` the caller sees, by id."""
    entity = "contacts" if record["id"].startswith("con_") else "leads"
    response = client.get(f"/v1/{entity}/{record['id']}/duplicates", params=params, headers=headers)
    assert response.status_code == 200, response.text
    return {m["id"]: m for m in response.json()["data"]}


def reasons(match: dict[str, Any]) -> dict[str, str]:
    return {r["field"]: r["match"] for r in match["reasons"]}


def pidx(state: State, region: str, record_id: str) -> bytes | None:
    with state.regions.get(region).transaction() as conn:
        value = conn.execute(
            select(CONTACTS.c.last_name_pidx).where(CONTACTS.c.id == record_id)
        ).scalar_one()
    return None if value is None else bytes(value)


def run_cli(env: dict[str, str], *args: str) -> str:
    result = CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


# -- one record's duplicates ---------------------------------------------------------------


def test_duplicates_are_found_across_case_whitespace_and_accents(
    client: TestClient, admin: dict[str, str]
) -> None:
    anna = person(client, admin, first_name="Anna", last_name="Müller", email="ANNA@X.COM")
    twin = person(client, admin, first_name=" Anna  ", last_name="Muller", email="anna@x.com")
    jose = person(client, admin, first_name="José", last_name="Fernández", phone="+34911234567")
    other_jose = person(
        client, admin, first_name="Jose", last_name="Fernandez", phone="+34911234567"
    )

    found = duplicates(client, admin, anna)
    assert list(found) == [twin["id"]]
    assert reasons(found[twin["id"]]) == {
        "email": "exact",
        "first_name": "exact",
        "last_name": "exact",
    }
    assert found[twin["id"]]["score"] > 0.95
    assert found[twin["id"]]["record"]["email"] == "anna@x.com"  # rendered with the mask

    found = duplicates(client, admin, jose)
    assert list(found) == [other_jose["id"]]
    assert reasons(found[other_jose["id"]]) == {
        "phone": "exact",
        "first_name": "exact",
        "last_name": "exact",
    }


def test_phone_numbers_are_compared_in_e164_and_national_forms_are_refused(
    client: TestClient, admin: dict[str, str]
) -> None:
    # The API stores phones in E.164 only: "+49 30 1234567" and "030 1234567" are
    # refused before anything is compared (the normaliser has no default region).
    for spaced in ("+49 30 1234567", "030 1234567"):
        refused = client.post(
            "/v1/contacts?allow_duplicate=true", json=contact_body(phone=spaced), headers=admin
        )
        assert refused.status_code == 422, refused.text
        assert refused.headers["content-type"] == "application/problem+json"
    first = person(client, admin, first_name="Karl", last_name="Brandt", phone="+49301234567")
    second = person(client, admin, first_name="Greta", last_name="Vogel", mobile="+49301234567")
    third = person(client, admin, first_name="Ida", last_name="Lang", phone="+49301234567")
    found = duplicates(client, admin, first, min_score=0.5)
    assert list(found) == [third["id"]]  # a phone and a mobile are different fields
    assert reasons(found[third["id"]]) == {"phone": "exact"}
    assert second["id"] not in found


def test_a_sound_alike_last_name_is_a_phonetic_candidate(
    client: TestClient, admin: dict[str, str]
) -> None:
    smith = person(client, admin, first_name="John", last_name="Smith", email="js@one.example")
    smyth = person(client, admin, first_name="John", last_name="Smyth", email="js@two.example")
    person(client, admin, first_name="John", last_name="Jones", email="js@three.example")

    found = duplicates(client, admin, smith)
    assert list(found) == [smyth["id"]]
    reason = {r["field"]: r for r in found[smyth["id"]]["reasons"]}
    assert reason["last_name"]["match"] == "phonetic"
    assert 0.8 < reason["last_name"]["similarity"] < 1
    assert reason["first_name"]["match"] == "exact"
    assert "email" not in reason


def test_leads_have_duplicates_too(client: TestClient, admin: dict[str, str]) -> None:
    lead = person(client, admin, "leads", last_name="Weber", email="l.weber@example.com")
    again = person(client, admin, "leads", last_name="WEBER", email="L.Weber@Example.com")
    assert list(duplicates(client, admin, lead)) == [again["id"]]


def test_a_record_outside_the_callers_read_scope_never_appears(
    client: TestClient, admin: dict[str, str], tokens: Tokens
) -> None:
    rep = tokens.headers("sales_rep", name="rep-one")
    own = person(client, rep, first_name="Mia", last_name="Roth", email="mia@roth.example")
    foreign = person(client, admin, first_name="Mia", last_name="Roth", email="mia@roth.example")

    assert duplicates(client, rep, own, min_score=0) == {}
    assert list(duplicates(client, admin, own)) == [foreign["id"]]
    hidden = client.get(f"/v1/contacts/{foreign['id']}/duplicates", headers=rep)
    assert hidden.status_code == 404
    assert hidden.headers["content-type"] == "application/problem+json"


def test_a_field_the_caller_cannot_read_never_contributes(
    client: TestClient, admin: dict[str, str], tokens: Tokens
) -> None:
    marketing = tokens.headers("marketing")
    mobile = "+4915112345678"
    source = person(client, admin, first_name="Eva", last_name="Keller", mobile=mobile)
    same_mobile = person(client, admin, first_name="Otto", last_name="Zimmer", mobile=mobile)
    namesake = person(client, admin, first_name="Eva", last_name="Keller", mobile=mobile)

    by_admin = duplicates(client, admin, source)
    assert reasons(by_admin[same_mobile["id"]]) == {"mobile": "exact"}
    assert reasons(by_admin[namesake["id"]])["mobile"] == "exact"

    # Marketing may not read contacts.mobile: it neither finds a record through it nor
    # sees it among the reasons, whatever the threshold.
    by_marketing = duplicates(client, marketing, source, min_score=0)
    assert same_mobile["id"] not in by_marketing
    assert reasons(by_marketing[namesake["id"]]) == {"first_name": "exact", "last_name": "exact"}
    assert "mobile" not in by_marketing[namesake["id"]]["record"]
    assert mobile not in json.dumps(by_marketing)


def test_the_search_is_audited_as_a_read_of_the_records_returned(
    client: TestClient, admin: dict[str, str], state: State
) -> None:
    source = person(client, admin, last_name="Becker", email="b@becker.example")
    twin = person(client, admin, last_name="Becker", email="b@becker.example")
    assert list(duplicates(client, admin, source)) == [twin["id"]]
    events = [p for a, _, p in audit_rows(state) if a == "record.duplicates"]
    assert len(events) == 1
    assert set(events[0]["record_ids"]) == {source["id"], twin["id"]}
    assert "email" in events[0]["fields"]
    assert "b@becker.example" not in json.dumps(events)


# -- the phonetic index ------------------------------------------------------------------


def test_the_phonetic_index_is_two_bytes_and_differs_between_regions(
    client: TestClient, admin: dict[str, str], state: State
) -> None:
    eu = person(client, admin, region="eu", last_name="Müller")
    eu_again = person(client, admin, region="eu", last_name="Mueller")
    us = person(client, admin, region="us", last_name="Müller")
    bits = state.keys.blind_indexer("eu").bits
    assert bits == 16
    eu_index, us_index = pidx(state, "eu", eu["id"]), pidx(state, "us", us["id"])
    assert eu_index is not None
    assert us_index is not None
    assert len(eu_index) == bits // 8 == len(us_index)
    assert eu_index != us_index
    assert pidx(state, "eu", eu_again["id"]) == eu_index  # same Metaphone code: MLR
    # Unrelated to the exact-match index of the same name.
    with state.regions.get("eu").transaction() as conn:
        exact = conn.execute(
            select(CONTACTS.c.last_name_bidx).where(CONTACTS.c.id == eu["id"])
        ).scalar_one()
    assert bytes(exact) != eu_index


def test_a_rename_recomputes_the_phonetic_index(
    client: TestClient, admin: dict[str, str], state: State
) -> None:
    record = person(client, admin, last_name="Schulz")
    before = pidx(state, "eu", record["id"])
    renamed = client.patch(
        f"/v1/contacts/{record['id']}",
        json={"last_name": "Hoffmann"},
        headers={**admin, "If-Match": '"v1"'},
    )
    assert renamed.status_code == 200, renamed.text
    assert pidx(state, "eu", record["id"]) not in (None, before)


def test_reindex_fills_the_rows_written_before_the_index(
    client: TestClient, admin: dict[str, str], state: State, backend: Backend, tmp_path: Path
) -> None:
    old = [person(client, admin, last_name=name) for name in ("Wagner", "Wegner", "Koch")]
    expected = {r["id"]: pidx(state, "eu", r["id"]) for r in old}
    with state.regions.get("eu").transaction(write=True) as conn:
        conn.execute(
            update(CONTACTS).where(CONTACTS.c.id.in_(list(expected))).values(last_name_pidx=None)
        )
    assert duplicates(client, admin, old[0], min_score=0) == {}  # nothing to block on

    env = cli_env(backend, tmp_path)
    output = run_cli(env, "dedup", "reindex", "--region", "eu", "--batch-size", "2")
    assert "eu contacts: 3 row(s) indexed" in output
    assert {i: pidx(state, "eu", i) for i in expected} == expected
    assert "eu contacts: 0 row(s) indexed" in run_cli(env, "dedup", "reindex", "--region", "eu")
    assert old[1]["id"] in duplicates(client, admin, old[0], min_score=0)


def test_erasure_clears_the_phonetic_index(
    client: TestClient, admin: dict[str, str], state: State, tokens: Tokens
) -> None:
    officer = tokens.headers("compliance_officer", name="dpo")
    subject = person(client, admin, last_name="Neumann")
    assert pidx(state, "eu", subject["id"]) is not None
    request_id = open_request(client, officer, {"type": "erasure", "subject_id": subject["id"]})
    run_request(state, client, officer, request_id)
    assert pidx(state, "eu", subject["id"]) is None


def test_reindex_leaves_merged_and_erased_people_unindexed(
    client: TestClient, admin: dict[str, str], state: State, tokens: Tokens
) -> None:
    officer = tokens.headers("compliance_officer", name="dpo")
    survivor = person(client, admin, first_name="Ina", last_name="Vogt", email="ina@vogt.example")
    loser = person(client, admin, first_name="Ina", last_name="Vogt", email="iv@vogt.example")
    merged = client.post(
        "/v1/contacts/merge",
        json={"survivor_id": survivor["id"], "loser_ids": [loser["id"]], "fields": {}},
        headers=admin,
    )
    assert merged.status_code == 201, merged.text
    erased = person(client, admin, last_name="Vogt")
    request_id = open_request(client, officer, {"type": "erasure", "subject_id": erased["id"]})
    run_request(state, client, officer, request_id)
    assert pidx(state, "eu", loser["id"]) is None
    assert pidx(state, "eu", erased["id"]) is None

    assert reindex(state.records, "eu", state.clock, actor="test") == {"contacts": 0, "leads": 0}
    assert pidx(state, "eu", loser["id"]) is None
    assert pidx(state, "eu", erased["id"]) is None
    assert pidx(state, "eu", survivor["id"]) is not None


def test_reindex_leaves_a_row_merged_between_its_select_and_its_update_alone(
    client: TestClient, admin: dict[str, str], state: State
) -> None:
    survivor = person(client, admin, last_name="Lorenz", email="one@lorenz.example")
    loser = person(client, admin, last_name="Lorenz", email="two@lorenz.example")
    with state.regions.get("eu").transaction(write=True) as conn:
        conn.execute(
            update(CONTACTS).where(CONTACTS.c.id == loser["id"]).values(last_name_pidx=None)
        )
    engine = state.regions.get("eu").engine
    raced: list[str] = []

    # A merge committing between reindex's SELECT and its UPDATE, made deterministic:
    # the tombstone is written on the same database connection just before the UPDATE,
    # which then sees it as it would see another transaction's commit (PostgreSQL
    # re-reads the row it updates; SQLite serialises writers, so this is the only way
    # the interleaving can happen there).
    def merge_first(_conn: Any, cursor: Any, statement: str, *_args: Any) -> None:
        if statement.startswith("UPDATE contacts SET last_name_pidx") and not raced:
            tombstone = (
                update(CONTACTS)
                .where(CONTACTS.c.id == loser["id"])
                .values(merged_into=survivor["id"])
                .compile(dialect=engine.dialect, compile_kwargs={"literal_binds": True})
            )
            cursor.execute(str(tombstone))
            raced.append(loser["id"])

    event.listen(engine, "before_cursor_execute", merge_first)
    try:
        filled = reindex(state.records, "eu", state.clock, actor="test")
    finally:
        event.remove(engine, "before_cursor_execute", merge_first)
    assert raced == [loser["id"]]
    assert filled["contacts"] == 0
    assert pidx(state, "eu", loser["id"]) is None
    assert "record.reindex" not in [a for a, _, _ in audit_rows(state)]


# -- the review queue --------------------------------------------------------------------


def scan(client: TestClient, headers: dict[str, str], **body: Any) -> dict[str, Any]:
    response = client.post(
        "/v1/duplicates/scans", json={"entity": "contacts", "region": "eu", **body}, headers=headers
    )
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def queue(client: TestClient, headers: dict[str, str], **params: Any) -> list[dict[str, Any]]:
    response = client.get(
        "/v1/duplicates", params={"entity": "contacts", "region": "eu", **params}, headers=headers
    )
    assert response.status_code == 200, response.text
    data: list[dict[str, Any]] = response.json()["data"]
    return data


def stored_pairs(state: State) -> list[tuple[str, str, str]]:
    with state.regions.get("eu").transaction() as conn:
        rows = conn.execute(
            select(
                duplicate_pairs.c.record_id,
                duplicate_pairs.c.candidate_id,
                duplicate_pairs.c.status,
            )
        ).all()
    return sorted((r.record_id, r.candidate_id, r.status) for r in rows)


def test_a_scan_fills_the_queue_once_and_dismissals_stick(
    client: TestClient, admin: dict[str, str], state: State, tokens: Tokens
) -> None:
    manager = tokens.headers("sales_manager", name="manager")
    a = person(client, admin, first_name="Lena", last_name="Hahn", email="lena@hahn.example")
    b = person(client, admin, first_name="Lena", last_name="Hahn", email="LENA@hahn.example")
    c = person(client, admin, first_name="Tom", last_name="Smith", email="tom@one.example")
    d = person(client, admin, first_name="Tom", last_name="Smyth", email="tom@two.example")
    person(client, admin, first_name="Rita", last_name="Ortiz")
    person(
        client, admin, region="us", first_name="Lena", last_name="Hahn", email="lena@hahn.example"
    )

    first = scan(client, manager)
    assert first == {
        "entity": "contacts",
        "region": "eu",
        "scanned": 5,  # the EU records only
        "pairs": 2,
        "next_cursor": None,
    }
    pairs = queue(client, manager)
    assert [(p["record_id"], p["candidate_id"]) for p in pairs] == [
        tuple(sorted((a["id"], b["id"]))),
        tuple(sorted((c["id"], d["id"]))),
    ]
    assert pairs[0]["score"] > pairs[1]["score"]
    assert {r["field"] for r in pairs[0]["reasons"]} == {"email", "first_name", "last_name"}
    assert all(p["status"] == "open" and p["id"].startswith("dup_eu_") for p in pairs)

    # A re-scan adds nothing; in small steps, it resumes from its cursor.
    step = scan(client, manager, limit=2)
    assert step["scanned"] == 2
    assert step["next_cursor"] is not None
    while step["next_cursor"] is not None:
        step = scan(client, manager, limit=2, cursor=step["next_cursor"])
    assert len(stored_pairs(state)) == 2

    dismissed = client.post(f"/v1/duplicates/{pairs[1]['id']}/dismiss", headers=manager)
    assert dismissed.status_code == 200, dismissed.text
    assert dismissed.json()["status"] == "dismissed"
    assert dismissed.json()["reviewed_by"] is not None
    again = client.post(f"/v1/duplicates/{pairs[1]['id']}/dismiss", headers=manager)
    assert again.status_code == 409
    assert again.headers["content-type"] == "application/problem+json"

    scan(client, manager)  # a dismissed pair is not reopened
    assert [p["id"] for p in queue(client, manager)] == [pairs[0]["id"]]
    assert [p["id"] for p in queue(client, manager, status="dismissed")] == [pairs[1]["id"]]
    assert [s for _, _, s in stored_pairs(state)].count("open") == 1

    actions = [a for a, _, _ in audit_rows(state)]
    assert "duplicates.scan" in actions
    assert "duplicates.dismiss" in actions
    assert "duplicates.list" in actions


def test_the_queue_pages_with_a_cursor(
    client: TestClient, admin: dict[str, str], tokens: Tokens
) -> None:
    for n in range(3):
        email = f"pair{n}@example.com"
        person(client, admin, first_name=f"P{n}", last_name=f"Name{n}", email=email)
        person(client, admin, first_name=f"Q{n}", last_name=f"Other{n}", email=email)
    assert scan(client, admin)["pairs"] == 3
    seen: list[str] = []
    cursor = None
    while True:
        params = {"entity": "contacts", "region": "eu", "limit": 2}
        if cursor is not None:
            params["cursor"] = cursor
        page = client.get("/v1/duplicates", params=params, headers=admin).json()
        seen += [p["id"] for p in page["data"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == len(set(seen)) == 3


def test_the_queue_shows_only_pairs_the_caller_may_read_and_only_readable_reasons(
    client: TestClient, admin: dict[str, str], tokens: Tokens
) -> None:
    rep = tokens.headers("sales_rep", name="rep-two")
    marketing = tokens.headers("marketing")
    mobile = "+4915199887766"
    own = person(client, rep, first_name="Ute", last_name="Berg", email="ute@berg.example")
    person(client, admin, first_name="Ute", last_name="Berg", email="ute@berg.example")
    person(client, admin, first_name="Kai", last_name="Wolf", mobile=mobile)
    person(client, admin, first_name="Kai", last_name="Wolf", mobile=mobile)
    assert scan(client, admin)["pairs"] == 2

    assert queue(client, rep) == []  # each pair has a record outside the rep's scope
    assert own["id"] in {
        i for p in queue(client, admin) for i in (p["record_id"], p["candidate_id"])
    }
    by_marketing = {p["record_id"]: p for p in queue(client, marketing)}
    assert len(by_marketing) == 2
    for pair in by_marketing.values():
        assert "mobile" not in {r["field"] for r in pair["reasons"]}


def test_the_queue_leaves_out_pairs_found_only_through_fields_the_reader_cannot_read(
    client: TestClient, admin: dict[str, str], tokens: Tokens
) -> None:
    marketing = tokens.headers("marketing")  # may not read contacts.mobile
    mobile, other = "+4915111122233", "+4915144455566"
    hidden = [
        person(client, admin, first_name="Jan", last_name="Fuchs", mobile=mobile),
        person(client, admin, first_name="Uwe", last_name="Brandt", mobile=mobile),
    ]
    partly = [  # mobile and name: 0.952 for admin, 0.76 from the name alone
        person(client, admin, first_name="Pia", last_name="Lenz", mobile=other),
        person(client, admin, first_name="Pia", last_name="Lenz", mobile=other),
    ]
    email = [  # 0.9 for everyone
        person(client, admin, first_name="Rolf", last_name="Arndt", email="r@arndt.example"),
        person(client, admin, first_name="Nina", last_name="Horn", email="r@arndt.example"),
    ]
    assert scan(client, admin)["pairs"] == 3

    def pair(records: list[dict[str, Any]]) -> tuple[str, str]:
        low, high = sorted(r["id"] for r in records)
        return low, high

    by_admin = [((p["record_id"], p["candidate_id"]), p["score"]) for p in queue(client, admin)]
    assert by_admin == [(pair(partly), 0.952), (pair(email), 0.9), (pair(hidden), 0.8)]

    # Marketing sees neither the mobile-only pair (not even with score 0) nor an order
    # that ranks a pair on its hidden mobile; paging one by one asks for more rows.
    seen: list[tuple[tuple[str, str], float]] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"entity": "contacts", "region": "eu", "limit": 1}
        if cursor is not None:
            params["cursor"] = cursor
        response = client.get("/v1/duplicates", params=params, headers=marketing)
        assert response.status_code == 200, response.text
        page = response.json()
        seen += [((p["record_id"], p["candidate_id"]), p["score"]) for p in page["data"]]
        for shown in page["data"]:
            assert "mobile" not in {r["field"] for r in shown["reasons"]}
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [(pair(email), 0.9), (pair(partly), 0.76)]
    by_marketing = queue(client, marketing)
    assert [((p["record_id"], p["candidate_id"]), p["score"]) for p in by_marketing] == seen


@pytest.fixture
def narrow_lists(
    backend: Backend, tmp_path: Path, residency_guard: ResidencyGuard
) -> Iterator[tuple[TestClient, State]]:
    """The default policy, except that support agents may read contacts but not list
    them, and sales reps may read every contact of their regions but list only their
    own and their team's."""
    directory = policy_dir(
        tmp_path / "policies",
        source=REPO / "policies",
        append=[
            "p, support_agent, *, contacts, list, region, deny",
            "p, sales_rep, *, contacts, read, region, allow",
        ],
    )
    (tmp_path / "absent.toml").write_text("")
    configured = settings_for(backend, tmp_path, BASTION_POLICIES=str(directory), **SETTINGS_ENV)
    built = build_state(configured, clock=FrozenClock())
    for region in built.regions.names:
        residency_guard.watch(region, built.regions.get(region).engine)
    try:
        with TestClient(create_app(configured, state=built)) as client:
            yield client, built
    finally:
        built.close()
    residency_guard.assert_clean()


def test_duplicates_and_the_queue_need_list_and_stay_inside_the_list_scope(
    narrow_lists: tuple[TestClient, State],
) -> None:
    client, state = narrow_lists
    admin = caller(state, "admin", name="admin").headers
    support = caller(state, "support_agent", name="support").headers
    rep = caller(state, "sales_rep", name="rep").headers
    own = person(client, rep, first_name="Eli", last_name="Marx", email="eli@marx.example")
    foreign = person(client, admin, first_name="Eli", last_name="Marx", email="eli@marx.example")
    assert scan(client, admin)["pairs"] == 1
    assert len(queue(client, admin)) == 1

    # Support agents read both records by id, yet may not search by similarity.
    for record in (own, foreign):
        assert client.get(f"/v1/contacts/{record['id']}", headers=support).status_code == 200
    for url, params in (
        (f"/v1/contacts/{own['id']}/duplicates", {}),
        ("/v1/duplicates", {"entity": "contacts", "region": "eu"}),
    ):
        refused = client.get(url, params=params, headers=support)
        assert refused.status_code == 403, refused.text
        assert refused.headers["content-type"] == "application/problem+json"

    # The rep reads the foreign record by id but cannot list it: it is no candidate
    # of the rep's own record, and their pair is not in the rep's queue.
    assert client.get(f"/v1/contacts/{foreign['id']}", headers=rep).status_code == 200
    listed = client.get("/v1/contacts", params={"region": "eu"}, headers=rep).json()["data"]
    assert [r["id"] for r in listed] == [own["id"]]
    assert duplicates(client, rep, own, min_score=0) == {}
    assert queue(client, rep) == []
    assert list(duplicates(client, admin, own)) == [foreign["id"]]


def test_scans_and_dismissals_need_the_merge_grant(
    client: TestClient, admin: dict[str, str], tokens: Tokens
) -> None:
    rep = tokens.headers("sales_rep", name="rep-three")
    person(client, admin, last_name="Graf", email="graf@example.com")
    person(client, admin, last_name="Graf", email="graf@example.com")
    refused = client.post(
        "/v1/duplicates/scans", json={"entity": "contacts", "region": "eu"}, headers=rep
    )
    assert refused.status_code == 403
    assert scan(client, admin)["pairs"] == 1
    pair = queue(client, admin)[0]
    support = tokens.headers("support_agent")
    assert client.post(f"/v1/duplicates/{pair['id']}/dismiss", headers=support).status_code == 403
    us_only = tokens.headers("admin", regions=("us",), name="admin-us")
    assert client.post(f"/v1/duplicates/{pair['id']}/dismiss", headers=us_only).status_code == 404


def test_the_cli_scans_as_a_principal(
    client: TestClient,
    admin: dict[str, str],
    state: State,
    tokens: Tokens,
    backend: Backend,
    tmp_path: Path,
) -> None:
    tokens.headers("sales_manager", name="scanner")
    person(client, admin, "leads", last_name="Krause", email="k@krause.example")
    person(client, admin, "leads", last_name="Krause", email="k@krause.example")
    env = cli_env(backend, tmp_path)
    args = ("dedup", "scan", "--as", "scanner", "--region", "eu", "--entity", "leads")
    output = run_cli(env, *args, "--batch-size", "1")
    assert "eu leads: 2 record(s) scanned, 1 pair(s) queued" in output
    run_cli(env, *args)
    with state.regions.get("eu").transaction() as conn:
        assert conn.execute(select(duplicate_pairs.c.entity)).scalars().all() == ["leads"]


def test_a_scan_names_every_record_it_decrypted_in_its_audit_events(
    client: TestClient, admin: dict[str, str], state: State, tokens: Tokens
) -> None:
    manager = tokens.headers("sales_manager", name="manager")
    # Sound-alike last names, nothing else in common: each is the other's candidate,
    # decrypted and scored (0.6 * similarity), never queued.
    alike = [
        person(client, admin, first_name="Olga", last_name="Smith", email="o@one.example"),
        person(client, admin, first_name="Hugo", last_name="Smyth", email="h@two.example"),
    ]
    low, high = sorted(r["id"] for r in alike)

    def named() -> list[str]:
        events = [p for a, _, p in audit_rows(state) if a == "duplicates.scan"]
        assert all(len(e["record_ids"]) <= MAX_RECORD_IDS for e in events)
        return [i for e in events for i in e["record_ids"]]

    # The first step scans the lower id and decrypts the higher one as its candidate.
    first = scan(client, manager, limit=1)
    assert (first["scanned"], first["pairs"]) == (1, 0)
    assert named() == [low, high]
    assert scan(client, manager, limit=1, cursor=first["next_cursor"])["scanned"] == 1
    assert stored_pairs(state) == []
    assert named() == [low, high, high]


# -- bad input ---------------------------------------------------------------------------


BAD_INPUT = [
    # (method, path, query or body, status with a token)
    ("GET", "/v1/contacts/{contact}/duplicates", {"min_score": "1.5"}, 422),
    ("GET", "/v1/contacts/{contact}/duplicates", {"min_score": "nan"}, 422),
    ("GET", "/v1/contacts/{contact}/duplicates", {"min_score": "x"}, 422),
    ("GET", "/v1/contacts/{contact}/duplicates", {"unknown": "1"}, 422),
    ("GET", "/v1/accounts/{account}/duplicates", {}, 404),
    ("GET", "/v1/leads/{contact}/duplicates", {}, 404),
    ("GET", "/v1/duplicates", {"entity": "accounts", "region": "eu"}, 422),
    ("GET", "/v1/duplicates", {"entity": "contacts", "region": "mars"}, 422),
    ("GET", "/v1/duplicates", {"entity": "contacts"}, 422),
    ("GET", "/v1/duplicates", {"entity": "contacts", "region": "eu", "status": "x"}, 422),
    ("GET", "/v1/duplicates", {"entity": "contacts", "region": "eu", "limit": "0"}, 422),
    ("GET", "/v1/duplicates", {"entity": "contacts", "region": "eu", "cursor": "x"}, 400),
    ("POST", "/v1/duplicates/scans", {"entity": "accounts", "region": "eu"}, 422),
    ("POST", "/v1/duplicates/scans", {"entity": "contacts", "region": "mars"}, 422),
    ("POST", "/v1/duplicates/scans", {"entity": "contacts"}, 422),
    ("POST", "/v1/duplicates/scans", {"entity": "contacts", "region": "eu", "x": 1}, 422),
    ("POST", "/v1/duplicates/scans", {"entity": "contacts", "region": "eu", "limit": 0}, 422),
    ("POST", "/v1/duplicates/scans", {"entity": "contacts", "region": "eu", "cursor": "x"}, 400),
    ("POST", "/v1/duplicates/dup_eu_nothing/dismiss", {}, 404),
    ("POST", "/v1/duplicates/{contact}/dismiss", {}, 404),
]


def test_bad_input_is_a_problem_and_nothing_is_looked_at_without_a_token(
    client: TestClient, admin: dict[str, str]
) -> None:
    ids = {
        "contact": create(client, "contacts", contact_body(), admin)["id"],
        "account": create(client, "accounts", {"name": "Acme"}, admin)["id"],
    }
    for method, path, given, status in BAD_INPUT:
        url = path.format(**ids)
        # No route serves accounts' duplicates: the router answers before any token check.
        anonymous = 404 if path.startswith("/v1/accounts/") else 401
        for headers, expected in (({}, anonymous), (admin, status)):
            if method == "GET":
                response = client.get(url, params=given, headers=headers)
            else:
                response = client.post(url, json=given, headers=headers)
            where = f"{method} {url} {given}"
            assert response.status_code == expected, f"{where}: {response.text}"
            assert response.headers["content-type"] == "application/problem+json", where
