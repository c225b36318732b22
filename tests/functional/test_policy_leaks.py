"""No value outside the read mask ever leaves: a property over random role sets,
entities and records.

Admin makes a record whose every field that can hold a unique value holds a canary;
then a principal tries everything it can think of: get, lists with and without
filters, filters and sorts on each field, forbidden writes, stale and malformed
requests. Casbin's own answer (not the compiled index the API uses) says which
fields the principal may read on that record; no response (body or headers) may
contain the canary of any other field (nor, if it may not see the record, its id).
"""

from __future__ import annotations

import itertools
from datetime import date, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from bastion.crm.catalog import ENTITIES
from bastion.policy.conditions import record_facts
from bastion.state import State
from tests.factories import (
    ENTITY_NAMES,
    Caller,
    body_for,
    caller,
    create,
    field_value,
    principal_id,
)

ROLES = (
    "admin",
    "sales_rep",
    "sales_manager",
    "support_agent",
    "marketing",
    "compliance_officer",
    "auditor",
    "security_admin",
)
# Roles that see some fields of a record but not others: the interesting cases.
PARTIAL = ("sales_rep", "sales_manager", "support_agent", "marketing")
# Field types that hold a canary as text.
TEXT_TYPES = frozenset({"string", "text", "email", "url", "json"})
# Canary characters: no `z` or `q`, so the `zq` prefix only ever starts a canary.
CANARY_ALPHABET = "abcdefghijklmnoprstuvwxy0123456789äöüßжλ"
_examples = itertools.count()


def _canaried_body(
    client: TestClient,
    admin: dict[str, str],
    entity: str,
    seed: str,
    number: int,
    refs: dict[str, str],
) -> tuple[dict[str, Any], dict[str, str]]:
    """A create body with a canary in every writable field that can hold a unique
    value (text-like fields, phone numbers, dates and times), and each canary: what
    a response must not contain unless the field is readable."""
    body = body_for(client, entity, admin, "eu")
    canaries: dict[str, str] = {}
    for index, field in enumerate(ENTITIES[entity].writable_fields()):
        text = f"zq{seed}{number:03d}{index:02d}"
        # Unique per example and field, and far from any date Bastion itself writes.
        day = (date(1901, 1, 1) + timedelta(days=number * 50 + index)).isoformat()
        if field.type in TEXT_TYPES:
            canaries[field.name] = text
            body[field.name] = field_value(field, refs=refs, owner=principal_id(), text=text)
        elif field.type == "phone":
            canaries[field.name] = body[field.name] = f"+4915{number:05d}{index:02d}"
        elif field.type == "date":
            canaries[field.name] = body[field.name] = day
        elif field.type == "datetime":
            canaries[field.name] = day
            body[field.name] = f"{day}T04:05:17Z"
        elif field.name not in body and field.type not in ("principal", "team"):
            body[field.name] = field_value(field, refs=refs, owner=principal_id())
    if entity == "leads":
        body["status"] = "working"  # `converted` is set by conversion only
    return body, canaries


def _leaks(response: Any, canaries: dict[str, str]) -> list[str]:
    """The fields whose canary appears in the response's body or headers."""
    seen = response.text + " " + " ".join(f"{k}: {v}" for k, v in response.headers.items())
    seen = seen.lower()
    return sorted(name for name, canary in canaries.items() if canary.lower() in seen)


@pytest.fixture
def linkable(client: TestClient, admin: dict[str, str]) -> dict[str, str]:
    """One record per entity a canaried record links to (shared by the examples)."""
    return {
        name: create(client, name, body_for(client, name, admin, "eu"), admin)["id"]
        for name in ("accounts", "contacts", "leads", "opportunities")
    }


def _lists(
    client: TestClient, me: Caller, entity: str, body: dict[str, Any], always: frozenset[str]
) -> list[Any]:
    """Lists plain, paged and broken; filtered and sorted on each canaried field (a
    filter or sort on a field not readable in every record must be refused)."""
    answers = [
        client.get(f"/v1/{entity}", params=params, headers=me.headers)
        for params in (
            {"limit": 200, "sort": "-created_at"},
            {"limit": 1},
            {"limit": 0},
            {"cursor": "bm90LWEtY3Vyc29y"},
            {"owner_id": body["owner_id"]},
            {"nope": "1"},
        )
    ]
    for field in ENTITIES[entity].writable_fields():
        if field.type not in TEXT_TYPES | {"phone", "date", "datetime"}:
            continue
        for params, usable in (
            ({field.name: body[field.name]}, field.filterable),
            ({"sort": f"-{field.name}"}, field.sortable),
        ):
            if not usable:
                continue
            listed = client.get(f"/v1/{entity}", params=params, headers=me.headers)
            answers.append(listed)
            if field.name not in always:
                assert listed.status_code in (403, 422), (params, listed.text)
    return answers


def _writes(
    client: TestClient,
    me: Caller,
    url: str,
    version: int,
    forbidden: dict[str, Any],
    secret: dict[str, str],
) -> list[Any]:
    """Writes that must all be refused: forbidden fields, withheld fields with values
    of the wrong type, a stale ETag, a malformed body, a stale delete."""
    headers = {**me.headers, "If-Match": f'"v{version}"'}
    answers = []
    if forbidden:
        answers.append(client.patch(url, json=forbidden, headers=headers))
    if secret:
        answers.append(client.patch(url, json=dict.fromkeys(secret, 12345), headers=headers))
    stale = {**me.headers, "If-Match": '"v999"'}
    answers.append(client.patch(url, json={}, headers=stale))
    answers.append(
        client.patch(
            url,
            content=b'{"last_name": ',
            headers={**headers, "Content-Type": "application/json"},
        )
    )
    answers.append(client.get(url + "x", headers=me.headers))
    answers.append(client.delete(url, headers=stale))
    return answers


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    roles=st.tuples(st.sampled_from(PARTIAL), st.sets(st.sampled_from(ROLES), max_size=2)).map(
        lambda drawn: {drawn[0], *drawn[1]}
    ),
    entity=st.sampled_from(("contacts", "contacts", "accounts", "cases", *ENTITY_NAMES)),
    owner=st.sampled_from(["self", "other"]),
    team=st.sampled_from(["mine", "other"]),
    status=st.sampled_from(["open", "closed", None]),
    amount=st.sampled_from(["50000.00", "150000.00"]),
    seed=st.text(alphabet=CANARY_ALPHABET, min_size=5, max_size=5),
)
def test_no_value_outside_the_read_mask_ever_leaves(
    client: TestClient,
    state: State,
    admin: dict[str, str],
    linkable: dict[str, str],
    roles: set[str],
    entity: str,
    owner: str,
    team: str,
    status: str | None,
    amount: str,
    seed: str,
) -> None:
    number = next(_examples)
    me = caller(state, *sorted(roles), name=f"leak-{number}", regions=["eu"], teams=["t1"])
    body, canaries = _canaried_body(client, admin, entity, seed, number, linkable)
    body["owner_id"] = me.id if owner == "self" else principal_id()
    body["team_id"] = "t1" if team == "mine" else "t2"
    if entity == "cases":
        body["status"] = status
    if entity == "opportunities":
        body["amount"] = amount
    record = create(client, entity, body, admin)
    url = f"/v1/{entity}/{record['id']}"

    # What Casbin itself says this principal may read of this record.
    facts = record_facts(
        entity,
        {k: body[k] for k in ("status", "amount") if ENTITIES[entity].field(k) and k in body},
        owner=owner,
        team=team,
    )
    policy, role_list = state.policy, sorted(roles)
    sees_record = any(policy.enforce(role_list, "eu", entity, a, facts) for a in ("read", "list"))
    readable = {
        name
        for name in canaries
        if sees_record and policy.enforce_field(role_list, "eu", entity, name, "read", facts)
    }
    secret = {name: c for name, c in canaries.items() if name not in readable}
    if not sees_record:  # not even that the record exists
        secret["(its id)"] = record["id"]

    got = client.get(url, headers=me.headers)
    if got.status_code == 200:  # what may be read is there (the canaries are real)
        assert _leaks(got, {n: canaries[n] for n in readable}) == sorted(readable)
    always = policy.mask(frozenset(roles), "eu", entity, "read").always
    writable = policy.mask(frozenset(roles), "eu", entity, "write").possible
    forbidden = {
        f.name: field_value(f, refs=linkable, owner=me.id)
        for f in ENTITIES[entity].writable_fields()
        if f.name not in writable
    }
    version = client.get(url, headers=admin).json()["version"]
    responses = [
        got,
        *_lists(client, me, entity, body, always),
        *_writes(client, me, url, version, forbidden, secret),
    ]
    if ENTITIES[entity].data_subject:
        # A new record with the same email and phones: a duplicate may be named only
        # through identifiers the principal can read, on a record it can see.
        probe = {"last_name": "Probe", "company": "Probe", "region": "eu"}
        probe.update({k: body[k] for k in ("email", "phone", "mobile") if k in canaries})
        if entity == "contacts":
            del probe["company"]
        duplicate = client.post(f"/v1/{entity}", json=probe, headers=me.headers)
        if duplicate.status_code == 409:
            named = duplicate.json()
            assert named["existing_id"] == record["id"]
            assert set(named["fields"]) <= readable, named
        elif duplicate.status_code == 201:  # its own new record: the values it sent
            assert record["id"] not in duplicate.text
        else:
            responses.append(duplicate)
    for response in responses:
        assert response.status_code < 500, response.text
        leaked = _leaks(response, secret)
        assert leaked == [], (response.request.method, str(response.request.url), leaked)
    assert client.get(url, headers=admin).json()["version"] == version  # nothing was written
