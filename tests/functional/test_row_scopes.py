"""Row scopes are WHERE clauses: a scoped list returns exactly the rows in scope from
10,000, the SQL carries the predicate, the planner answers it from the owner/team
index, and a record outside the scope is a 404, indistinguishable from no record."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, event
from starlette.testclient import TestClient

from bastion.app import create_app
from bastion.policy.conditions import record_facts
from bastion.residency.ids import RecordId
from bastion.state import State, build_state
from tests.conftest import Backend, FrozenClock, settings_for
from tests.factories import Caller, caller, create, insert_contacts, policy_dir, principal_id

REPO = Path(__file__).resolve().parents[2]

TOTAL = 10_000
NOW = datetime(2026, 11, 1, 8, 0, tzinfo=UTC)


@contextmanager
def _statements(engine: Engine) -> Iterator[list[tuple[str, Any]]]:
    """Every statement (and its parameters) sent to the database inside the block."""
    seen: list[tuple[str, Any]] = []

    def capture(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        seen.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", capture)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", capture)


def _list_all(client: TestClient, headers: dict[str, str], limit: int) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    params: dict[str, Any] = {"limit": limit}
    for _ in range(TOTAL // limit + 2):
        response = client.get("/v1/contacts", params=params, headers=headers)
        assert response.status_code == 200, response.text
        page = response.json()
        assert len(page["data"]) <= limit
        rows.extend(page["data"])
        if page["next_cursor"] is None:
            return rows
        params["cursor"] = page["next_cursor"]
    raise AssertionError("pagination did not end")


def _list_selects(statements: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
    return [
        (sql, params)
        for sql, params in statements
        if re.search(r"^\s*SELECT\s.*\sFROM\s+contacts\b.*\bLIMIT\b", sql, re.S | re.I)
    ]


def _where(sql: str) -> str:
    """The WHERE clause of a list query ("" if it has none)."""
    found = re.search(r"\bWHERE\b(.*?)\bORDER BY\b", sql, re.S)
    return found.group(1) if found else ""


def _plan(engine: Engine, backend: Backend, sql: str, params: Any) -> str:
    """The query plan of a captured statement, as text."""
    explain = "EXPLAIN " if backend.name == "postgresql" else "EXPLAIN QUERY PLAN "
    with engine.begin() as conn:
        if backend.name == "postgresql":
            conn.exec_driver_sql("ANALYZE contacts")
        rows = conn.exec_driver_sql(explain + sql, params).all()
    return "\n".join(" ".join(str(c) for c in row) for row in rows)


def _populate(
    client: TestClient, state: State, admin: dict[str, str], *, own_owner: str, team: str
) -> tuple[set[str], set[str]]:
    """10,000 contacts in eu: 50 owned by `own_owner` (no team) and 40 in `team` owned
    by others, made through the API; the rest filler rows inserted directly, spread over
    100 other owners and 50 other teams, older than the others. Returns the ids of the
    owned and of the team rows."""
    owned = {
        create(client, "contacts", {"last_name": f"Own {n}", "owner_id": own_owner}, admin)["id"]
        for n in range(50)
    }
    teamed = {
        create(
            client,
            "contacts",
            {"last_name": f"Team {n}", "owner_id": principal_id(), "team_id": team},
            admin,
        )["id"]
        for n in range(40)
    }
    others = [principal_id() for _ in range(100)]
    filler = [(others[n % 100], f"team-{n % 50}") for n in range(TOTAL - 90)]
    insert_contacts(state.regions.get("eu"), filler, now=NOW)
    return owned, teamed


def test_own_scope_lists_exactly_the_owned_rows_of_10000_with_the_owner_index(
    backend: Backend, client: TestClient, state: State, admin: dict[str, str]
) -> None:
    rep = caller(state, "sales_rep", name="rep", regions=["eu"])  # no teams: scope own
    owned, _teamed = _populate(client, state, admin, own_owner=rep.id, team="t1")
    engine = state.regions.get("eu").engine
    with _statements(engine) as statements:
        rows = _list_all(client, rep.headers, limit=200)
    assert {r["id"] for r in rows} == owned
    assert len(rows) == len(owned)
    selects = _list_selects(statements)
    assert selects, statements
    for sql, params in selects:
        assert re.search(r"\bcontacts\.owner_id\s*=", _where(sql)), sql
        assert rep.id in _values(params)
        assert "team_id" not in _where(sql)  # in no team: the team scope is no rows

    # Paged in small steps through the cursor: the same rows, each once.
    paged = _list_all(client, rep.headers, limit=7)
    assert [r["id"] for r in paged] == [r["id"] for r in rows]

    plan = _plan(engine, backend, *selects[0])
    assert "ix_contacts_owner_id" in plan, plan
    assert not re.search(r"Seq Scan on contacts|SCAN contacts(?! USING)", plan), plan


def test_team_scope_lists_owned_and_team_rows_of_10000_with_both_indexes(
    backend: Backend, client: TestClient, state: State, admin: dict[str, str]
) -> None:
    rep = caller(state, "sales_rep", name="rep", regions=["eu"], teams=["t1"])
    owned, teamed = _populate(client, state, admin, own_owner=rep.id, team="t1")
    engine = state.regions.get("eu").engine
    with _statements(engine) as statements:
        rows = _list_all(client, rep.headers, limit=200)
    assert {r["id"] for r in rows} == owned | teamed
    (sql, params), *_ = _list_selects(statements)
    assert re.search(r"\bcontacts\.owner_id\s*=", _where(sql)), sql
    assert re.search(r"\bcontacts\.team_id\s+IN\b", _where(sql)), sql
    assert {rep.id, "t1"} <= _values(params)

    plan = _plan(engine, backend, sql, params)
    assert "ix_contacts_team_id" in plan, plan
    assert "ix_contacts_owner_id" in plan, plan
    assert not re.search(r"Seq Scan on contacts|SCAN contacts(?! USING)", plan), plan

    # A whole-region scope needs no predicate at all (newest first: no filler rows).
    manager = caller(state, "sales_manager", name="mgr", regions=["eu"])
    with _statements(engine) as statements:
        first = client.get(
            "/v1/contacts", params={"limit": 50, "sort": "-created_at"}, headers=manager.headers
        )
    assert first.status_code == 200, first.text
    assert len({r["id"] for r in first.json()["data"]} & (owned | teamed)) == 50
    (sql, _params), *_ = _list_selects(statements)
    assert "owner_id" not in _where(sql)
    assert "team_id" not in _where(sql)


def _values(params: Any) -> set[Any]:
    return set(params.values()) if isinstance(params, dict) else set(params)


def _problem_without_request_id(response: Any) -> dict[str, Any]:
    body = dict(response.json())
    body.pop("request_id", None)
    return body


def test_a_record_outside_the_scope_is_404_like_a_record_that_does_not_exist(
    client: TestClient, state: State, admin: dict[str, str]
) -> None:
    # sales_rep on activities: read own+team, update and delete own.
    rep: Caller = caller(state, "sales_rep", name="rep", teams=["t1"])
    account = create(client, "accounts", {"name": "A"}, admin)["id"]

    def activity(subject: str, owner: str, team: str | None) -> dict[str, Any]:
        body = {"type": "call", "subject": subject, "account_id": account}
        return create(client, "activities", {**body, "owner_id": owner, "team_id": team}, admin)

    mine = activity("Mine", rep.id, None)
    theirs = activity("Theirs", principal_id(), "t2")
    teammates = activity("Team", principal_id(), "t1")
    missing = str(RecordId.new("act", "eu", datetime.now(UTC)))

    def attempts(record_id: str) -> list[Any]:
        url = f"/v1/activities/{record_id}"
        return [
            client.get(url, headers=rep.headers),
            client.patch(url, json={"subject": "X"}, headers={**rep.headers, "If-Match": '"v1"'}),
            client.delete(url, headers=rep.headers),
        ]

    answers, absent = attempts(theirs["id"]), attempts(missing)
    for response in answers + absent:
        assert response.status_code == 404, response.text
        assert response.headers["content-type"] == "application/problem+json"
        assert "Theirs" not in response.text
    # The same problem, word for word, as for an id that names nothing.
    assert [_problem_without_request_id(r) for r in answers] == [
        _problem_without_request_id(r) for r in absent
    ]
    assert client.get(f"/v1/activities/{theirs['id']}", headers=admin).json() == theirs

    # A teammate's activity is readable, but outside the update and delete scope (own).
    get, patch, delete = attempts(teammates["id"])
    assert get.status_code == 200
    assert (patch.status_code, delete.status_code) == (404, 404)
    assert client.get(f"/v1/activities/{teammates['id']}", headers=admin).json() == teammates

    # What is in scope works.
    get, patch, delete = attempts(mine["id"])
    assert (get.status_code, patch.status_code) == (200, 200)
    assert delete.status_code == 204
    listed = client.get("/v1/activities", headers=rep.headers).json()["data"]
    assert [r["id"] for r in listed] == [teammates["id"]]

    # The team scope of a principal in no team covers no rows (not those without a team).
    loner = caller(state, "sales_rep", name="loner")
    record = create(client, "cases", _case(client, admin, team_id=None), admin)
    teamed = create(client, "cases", _case(client, admin, team_id="t1"), admin)
    listed = client.get("/v1/cases", headers=loner.headers)
    assert listed.status_code == 200
    assert listed.json()["data"] == []
    for case in (record, teamed):
        assert client.get(f"/v1/cases/{case['id']}", headers=loner.headers).status_code == 404
    with_team = caller(state, "sales_rep", name="teamed", teams=["t1"])
    listed = client.get("/v1/cases", headers=with_team.headers)
    assert [r["id"] for r in listed.json()["data"]] == [teamed["id"]]


def _case(client: TestClient, admin: dict[str, str], **extra: Any) -> dict[str, Any]:
    account = create(client, "accounts", {"name": "A"}, admin)["id"]
    return {"subject": "S", "account_id": account, "owner_id": principal_id(), **extra}


def test_a_denied_scope_is_subtracted_in_sql_as_casbin_decides(
    backend: Backend, tmp_path: Path
) -> None:
    """Managers read the whole region except their own contacts (a deny of `own`):
    rows owned by someone else, and rows without an owner, stay visible."""
    directory = policy_dir(
        tmp_path / "policies",
        source=REPO / "policies",
        append=[
            "p, sales_manager, *, contacts, read, own, deny",
            "p, sales_manager, *, contacts, list, own, deny",
        ],
    )
    (tmp_path / "absent.toml").write_text("")
    configured = settings_for(backend, tmp_path, BASTION_POLICIES=str(directory))
    state = build_state(configured, clock=FrozenClock())
    try:
        client = TestClient(create_app(configured, state=state))
        manager = caller(state, "sales_manager", name="mgr", regions=["eu"], teams=["t1"])
        admin = caller(state, "admin", name="adm").headers
        owners = {"mine": manager.id, "theirs": principal_id(), "nobody": None}
        ids = {}
        for name, owner in owners.items():
            body = {"last_name": name, "owner_id": owner or manager.id, "team_id": "t1"}
            ids[name] = create(client, "contacts", body, admin)["id"]
            if owner is None:  # no owner at all: not "own" for anyone
                cleared = client.patch(
                    f"/v1/contacts/{ids[name]}",
                    json={"owner_id": None},
                    headers={**admin, "If-Match": '"v1"'},
                )
                assert cleared.json()["owner_id"] is None
        listed = client.get("/v1/contacts", headers=manager.headers).json()["data"]
        visible = {name for name, i in ids.items() if i in {r["id"] for r in listed}}
        assert visible == {"theirs", "nobody"}
        for name, record_id in ids.items():
            got = client.get(f"/v1/contacts/{record_id}", headers=manager.headers)
            facts = record_facts("contacts", {}, owner="self" if name == "mine" else "other")
            casbin = state.policy.enforce(["sales_manager"], "eu", "contacts", "read", facts)
            assert got.status_code == (200 if casbin else 404), name
            assert casbin is (name in visible), name
    finally:
        state.close()


def test_an_update_cannot_move_a_record_out_of_the_callers_scope(
    client: TestClient, state: State
) -> None:
    rep = caller(state, "sales_rep", name="rep")
    other = caller(state, "sales_rep", name="other")
    given_away = {"last_name": "X", "owner_id": other.id}
    assert client.post("/v1/contacts", json=given_away, headers=rep.headers).status_code == 403
    mine = client.post("/v1/contacts", json={"last_name": "X"}, headers=rep.headers)
    assert mine.status_code == 201, mine.text
    url = f"/v1/contacts/{mine.json()['id']}"
    moved = client.patch(
        url, json={"owner_id": other.id}, headers={**rep.headers, "If-Match": '"v1"'}
    )
    assert moved.status_code == 403, moved.text
    assert client.get(url, headers=rep.headers).json()["owner_id"] == rep.id
