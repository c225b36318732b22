"""What a merge tells whom, and what a malformed merge body gets (`quality.merge`).

A merge's record lists the records it relinked; a tombstone's answers name its
survivor. Both are the people's data: someone who may merge contacts, or write a
tombstone, but not read the records in question learns neither. And no merge body,
however malformed, is a 500 or writes anything.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select
from starlette.testclient import TestClient

from bastion.app import create_app
from bastion.audit.tables import AUDIT
from bastion.crm.tables import ENTITY_TABLES
from bastion.quality.tables import merges
from bastion.state import State, build_state
from tests.conftest import REPO, Backend, FrozenClock, Tokens, settings_for
from tests.factories import contact_body, create, lead_body, policy_dir
from tests.functional.test_merge import _merge, _world


@pytest.fixture
def narrowed(backend: Backend, tmp_path: Path) -> Iterator[tuple[TestClient, State, Tokens]]:
    """The default policy, except that sales managers read only their own activities
    and cases (they still merge contacts region-wide) and sales reps may delete their
    own contacts (whose survivor they may not read)."""
    directory = policy_dir(
        tmp_path / "policies",
        source=REPO / "policies",
        replace={
            "p, sales_manager, *, activities, read, region, allow": (
                "p, sales_manager, *, activities, read, own, allow"
            ),
            "p, sales_manager, *, cases, read, region, allow": (
                "p, sales_manager, *, cases, read, own, allow"
            ),
        },
        append=["p, sales_rep, *, contacts, delete, own, allow"],
    )
    (tmp_path / "absent.toml").write_text("")
    configured = settings_for(backend, tmp_path, BASTION_POLICIES=str(directory))
    built = build_state(configured, clock=FrozenClock())
    try:
        with TestClient(create_app(configured, state=built)) as client:
            yield client, built, Tokens(built)
    finally:
        built.close()


def test_a_merge_lists_only_the_moved_records_the_caller_may_read(
    narrowed: tuple[TestClient, State, Tokens],
) -> None:
    client, _state, tokens = narrowed
    admin = tokens.headers("admin")
    world = _world(client, admin)
    manager = tokens.headers("sales_manager")
    hidden = {world.activity, world.case}  # the admin's, outside the manager's read scope

    response = _merge(client, manager, world.survivor["id"], [world.loser["id"]])
    assert response.status_code == 201, response.text
    shown = client.get(f"/v1/merges/{response.json()['merge']['id']}", headers=manager)
    undone = client.post(f"/v1/merges/{response.json()['merge']['id']}/undo", headers=manager)
    for answer in (response, shown, undone):
        assert answer.status_code in (200, 201), answer.text
        merge = answer.json().get("merge", answer.json())
        assert {(m["entity"], m["id"]) for m in merge["moved"]} == {
            ("opportunities", world.deal),
            ("leads", world.lead),
        }
        assert merge["moved_withheld"] == 2
        assert not any(record_id in answer.text for record_id in hidden)
    # The admin reads them all: nothing is withheld from it.
    everything = client.get(f"/v1/merges/{response.json()['merge']['id']}", headers=admin).json()
    assert {m["id"] for m in everything["moved"]} >= hidden
    assert everything["moved_withheld"] == 0


def test_writing_a_tombstone_names_its_survivor_only_to_who_may_read_it(
    narrowed: tuple[TestClient, State, Tokens],
) -> None:
    client, _state, tokens = narrowed
    admin = tokens.headers("admin")
    rep = tokens.headers("sales_rep", name="rep")
    survivor = create(client, "contacts", contact_body(region="eu"), admin)["id"]
    loser = create(client, "contacts", contact_body(region="eu"), rep)["id"]
    lead_survivor = create(client, "leads", lead_body(region="eu"), admin)["id"]
    lead_loser = create(client, "leads", lead_body(region="eu"), rep)["id"]
    assert _merge(client, admin, survivor, [loser]).status_code == 201
    merged = client.post(
        "/v1/leads/merge",
        json={"survivor_id": lead_survivor, "loser_ids": [lead_loser]},
        headers=admin,
    )
    assert merged.status_code == 201, merged.text

    # The rep may write its own (now merged) records, but not read the admin's.
    attempts = [
        client.patch(
            f"/v1/contacts/{loser}", json={"title": "x"}, headers={**rep, "If-Match": '"v2"'}
        ),
        client.delete(f"/v1/contacts/{loser}", headers=rep),
        client.post(f"/v1/leads/{lead_loser}/convert", json={}, headers=rep),
    ]
    for response, survivor_id in zip(attempts, (survivor, survivor, lead_survivor), strict=True):
        assert response.status_code == 404, response.text
        assert response.headers["content-type"] == "application/problem+json"
        assert survivor_id not in response.text
        assert "merge" not in response.text
    # Whoever may read the survivor is told where the person went, as before.
    told = client.delete(f"/v1/contacts/{loser}", headers=admin)
    assert told.status_code == 409
    assert told.json()["merged_into"] == survivor
    converted = client.post(f"/v1/leads/{lead_loser}/convert", json={}, headers=admin)
    assert converted.status_code == 409
    assert converted.json()["merged_into"] == lead_survivor


MALFORMED: list[Any] = [
    {"survivor_id": ["a"], "loser_ids": ["b"]},
    {"survivor_id": {"a": 1}, "loser_ids": ["b"]},
    {"survivor_id": "S", "loser_ids": [["x"]]},
    {"survivor_id": "S", "loser_ids": [{"x": 1}]},
    {"survivor_id": "S", "loser_ids": ["L", ["L"]]},
    {"survivor_id": "S", "loser_ids": ["L"], "fields": {"email": ["L"]}},
    {"survivor_id": "S", "loser_ids": ["L"], "fields": {"email": {"id": "L"}}},
    {"survivor_id": ["S"], "loser_ids": ["L"], "fields": {"email": ["S"]}},
    {"survivor_id": "S", "loser_ids": "L"},
    {"survivor_id": "S", "loser_ids": ["L"], "fields": None},
    {"survivor_id": "S", "loser_ids": ["L"], "fields": {"email": None}},
    {"survivor_id": None, "loser_ids": None, "fields": {"": 1.5}},
]


def _filled(value: Any, ids: dict[str, str]) -> Any:
    """`value` with the placeholders "S" and "L" replaced by real ids, anywhere."""
    if isinstance(value, str):
        return ids.get(value, value)
    if isinstance(value, list):
        return [_filled(v, ids) for v in value]
    if isinstance(value, dict):
        return {k: _filled(v, ids) for k, v in value.items()}
    return value


def _nothing_merged(state: State) -> None:
    contacts = ENTITY_TABLES["contacts"]
    with state.regions.get("eu").transaction() as conn:
        assert conn.execute(select(func.count()).select_from(merges)).scalar_one() == 0
        tombstones = select(func.count()).where(contacts.c.merged_into.is_not(None))
        assert conn.execute(tombstones).scalar_one() == 0
        events = AUDIT.events
        merged = select(func.count()).where(events.c.action == "record.merge")
        assert conn.execute(merged).scalar_one() == 0


@pytest.mark.parametrize("template", MALFORMED)
def test_a_malformed_merge_body_is_422_and_writes_nothing(
    client: TestClient, state: State, admin: dict[str, str], template: Any
) -> None:
    survivor = create(client, "contacts", contact_body(region="eu"), admin)["id"]
    loser = create(client, "contacts", contact_body(region="eu"), admin)["id"]
    body = _filled(template, {"S": survivor, "L": loser})
    response = client.post("/v1/contacts/merge", json=body, headers=admin)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["errors"]
    _nothing_merged(state)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8) | st.sampled_from(["S", "L"]),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=8,
)
FIELD_NAMES = st.sampled_from(["email", "title", "first_name", "converted_at", "x", ""])
BODIES = st.fixed_dictionaries(
    {},
    optional={
        "survivor_id": JSON_VALUES,
        "loser_ids": st.lists(JSON_VALUES, max_size=3) | JSON_VALUES,
        "fields": st.dictionaries(FIELD_NAMES, JSON_VALUES, max_size=3) | JSON_VALUES,
        "extra": JSON_VALUES,
    },
)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(template=BODIES)
def test_no_merge_body_is_a_500(
    client: TestClient, admin: dict[str, str], template: dict[str, Any]
) -> None:
    body = _filled(template, _fresh_pair(client, admin))
    response = client.post(
        "/v1/contacts/merge",
        content=json.dumps(body),
        headers={**admin, "Content-Type": "application/json"},
    )
    assert response.status_code in (201, 400, 422), response.text
    if response.status_code == 201:
        return  # hypothesis built a valid merge of the pair: nothing to check
    assert response.headers["content-type"] == "application/problem+json"
    assert "Traceback" not in response.text


def _fresh_pair(client: TestClient, admin: dict[str, str]) -> dict[str, str]:
    """Two new contacts per example (an earlier example may have merged its pair)."""
    return {
        "S": create(client, "contacts", contact_body(region="eu"), admin)["id"],
        "L": create(client, "contacts", contact_body(region="eu"), admin)["id"],
    }
