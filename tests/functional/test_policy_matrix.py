"""The authorization matrix of `policies/tests/*.yaml`, replayed over HTTP.

`bastion policy test` proves Casbin and the compiled index answer every check as the
YAML says; these tests prove the API does the same, on SQLite and PostgreSQL. Each
matrix entry becomes one principal holding exactly its roles (in its region, in team
`t1`), and each check one request on a record made to match the check's facts: its
owner (that principal or someone else), its team (`t1` or `t2`) and its field values.
"""

from __future__ import annotations

import re
import shutil
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from bastion.app import create_app
from bastion.crm.catalog import ENTITIES
from bastion.policy.cases import Check, load_checks
from bastion.policy.engine import ACTIONS, load_policy
from bastion.policy.resources import ANALYTICS_ENTITY
from bastion.state import State, build_state
from tests.conftest import KINDS, Backend, FrozenClock, _truncate_pg, settings_for
from tests.factories import (
    Caller,
    body_for,
    caller,
    create,
    field_value,
    principal_id,
    unique_identifiers,
)

REPO = Path(__file__).resolve().parents[2]
CHECKS = load_checks(REPO / "policies" / "tests")
MATRIX = [c for c in CHECKS if "::matrix[" in c.source and c.entity in ENTITIES]
EntryKey = tuple[tuple[str, ...], str]


def _entries(kinds: set[str]) -> list[EntryKey]:
    return sorted({(c.roles, c.region) for c in MATRIX if c.kind in kinds})


def _entry_id(key: EntryKey) -> str:
    return f"{'+'.join(key[0])}@{key[1]}"


def _checks(key: EntryKey, kind: str) -> list[Check]:
    return [c for c in MATRIX if (c.roles, c.region) == key and c.kind == kind]


@dataclass(frozen=True)
class World:
    """One deployment shared by this module's tests: every entry has its own
    principals and records, so the tests do not see each other's data."""

    client: TestClient
    state: State
    admin: dict[str, str]


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
)
def world(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[World]:
    home = tmp_path_factory.mktemp("matrix")
    if request.param == "sqlite":
        template: Path = request.getfixturevalue("sqlite_template")
        for name in KINDS:
            shutil.copy(template / f"{name}.db", home / f"{name}.db")
        backend = Backend("sqlite", {name: f"sqlite:///{home / f'{name}.db'}" for name in KINDS})
    else:
        urls: dict[str, str] = request.getfixturevalue("pg_databases")
        _truncate_pg(urls)
        backend = Backend("postgresql", urls)
    (home / "absent.toml").write_text("")
    settings = settings_for(backend, home)
    state = build_state(settings, clock=FrozenClock())
    try:
        with TestClient(create_app(settings, state=state)) as client:
            admin = caller(state, "admin", name="matrix-admin").headers
            yield World(client, state, admin)
    finally:
        state.close()


def _json(value: Any) -> Any:
    return str(value) if isinstance(value, Decimal) else value


class Fixture:
    """The principal of one matrix entry and the records its checks are about."""

    def __init__(self, world: World, key: EntryKey, tag: str) -> None:
        self.client, self.state, self.admin = world.client, world.state, world.admin
        self.roles, self.region = key
        name = f"{tag}-{'-'.join(self.roles)}-{self.region}".replace("_", "-")
        self.me: Caller = caller(
            self.state, *self.roles, name=name, regions=[self.region], teams=["t1"]
        )
        self.other = principal_id()

    def placement(self, check: Check) -> dict[str, Any]:
        """owner_id, team_id and field values of a record matching the check's facts."""
        return {
            "owner_id": self.me.id if check.owner == "self" else self.other,
            "team_id": "t1" if check.team == "mine" else "t2",
            **{k: _json(v) for k, v in check.facts.values.items()},
        }

    def body(self, check: Check) -> dict[str, Any]:
        return {
            **body_for(self.client, check.entity, self.admin, self.region),
            **unique_identifiers(check.entity),
            **self.placement(check),
        }

    def make(self, check: Check) -> dict[str, Any]:
        return create(self.client, check.entity, self.body(check), self.admin)

    def as_admin(self, entity: str, record_id: str) -> Any:
        return self.client.get(f"/v1/{entity}/{record_id}", headers=self.admin)

    def ids_as_admin(self, entity: str, owner: str) -> set[str]:
        """The ids of the records of `entity` owned by `owner` (one of this entry's)."""
        listed = self.client.get(
            f"/v1/{entity}",
            params={"limit": 200, "region": self.region, "owner_id": owner},
            headers=self.admin,
        )
        assert listed.status_code == 200, listed.text
        return {r["id"] for r in listed.json()["data"]}

    def permits_any(self, entity: str, action: str) -> bool:
        scope = self.state.policy.scope(frozenset(self.roles), self.region, entity, action)
        return scope.permits_any


def _denied_status(fx: Fixture, check: Check) -> int:
    """403 when the roles may not take the action on any row; 404 when only not on this one."""
    return 404 if fx.permits_any(check.entity, check.name) else 403


def _list_all(fx: Fixture, entity: str) -> tuple[int, set[str]]:
    """Every record id the principal's list returns (all pages), or the error status."""
    ids: set[str] = set()
    params: dict[str, Any] = {"limit": 200}
    while True:
        response = fx.client.get(f"/v1/{entity}", params=params, headers=fx.me.headers)
        if response.status_code != 200:
            return response.status_code, ids
        page = response.json()
        ids |= {r["id"] for r in page["data"]}
        if page["next_cursor"] is None:
            return 200, ids
        params["cursor"] = page["next_cursor"]


def _update_body(fx: Fixture, check: Check) -> dict[str, Any]:
    """A change to one field the roles may always write (`custom` if they may; else
    the first plain field), or {} when they may write none."""
    mask = fx.state.policy.mask(frozenset(fx.roles), fx.region, check.entity, "write")
    if "custom" in mask.always:
        return {"custom": {"matrix": "touched"}}
    for field in ENTITIES[check.entity].writable_fields():
        if field.name in mask.always and field.type not in ("ref", "principal", "team"):
            return {field.name: field_value(field, refs={}, owner=fx.me.id, text="touched")}
    return {}


def _run_action(fx: Fixture, check: Check, record: dict[str, Any]) -> None:
    entity, action, headers = check.entity, check.name, fx.me.headers
    url = f"/v1/{entity}/{record['id']}"
    what = check.describe()
    if action == "read":
        response = fx.client.get(url, headers=headers)
        if check.expected:
            assert response.status_code == 200, (what, response.text)
            assert response.json()["id"] == record["id"]
        else:
            assert response.status_code == _denied_status(fx, check), (what, response.text)
    elif action == "list":
        status, listed = _list_all(fx, entity)
        if check.expected:
            assert status == 200, what
            assert record["id"] in listed, what
        elif fx.permits_any(entity, "list"):
            assert status == 200, what
            assert record["id"] not in listed, what
        else:
            assert status == 403, what
    elif action == "create":
        body = {**fx.body(check), "region": fx.region}
        before = fx.ids_as_admin(entity, body["owner_id"])
        response = fx.client.post(f"/v1/{entity}", json=body, headers=headers)
        if check.expected:
            assert response.status_code == 201, (what, response.text)
            created = response.json()
            assert created["owner_id"] == body["owner_id"], what
            assert created["team_id"] == body["team_id"], what
            assert fx.ids_as_admin(entity, body["owner_id"]) == before | {created["id"]}, what
        else:
            assert response.status_code == 403, (what, response.text)
            assert fx.ids_as_admin(entity, body["owner_id"]) == before, what
    elif action == "update":
        version = record["version"]  # the record is new: only this check changes it
        response = fx.client.patch(
            url, json=_update_body(fx, check), headers={**headers, "If-Match": f'"v{version}"'}
        )
        if check.expected:
            assert response.status_code == 200, (what, response.text)
            assert response.json()["version"] == version + 1, what
        else:
            assert response.status_code == _denied_status(fx, check), (what, response.text)
            assert fx.as_admin(entity, record["id"]).json()["version"] == version, what
    elif action == "delete":
        response = fx.client.delete(url, headers=headers)
        gone = fx.as_admin(entity, record["id"]).status_code == 404
        if check.expected:
            assert response.status_code == 204, (what, response.text)
            assert gone, what
        else:
            assert response.status_code == _denied_status(fx, check), (what, response.text)
            assert not gone, what
    else:  # pragma: no cover - the YAML loader only yields record actions
        raise AssertionError(action)


def test_the_matrix_covers_every_role_entity_and_action() -> None:
    policy = load_policy(REPO / "policies", regions=("eu", "us"))
    covered = {
        (c.roles[0], c.entity, c.name) for c in MATRIX if c.kind == "action" and len(c.roles) == 1
    }
    wanted = {(r, e, a) for r in policy.roles for e in ENTITIES for a in ACTIONS}
    assert wanted - covered == set(), "roles, entities or actions the matrix leaves out"
    # And every role has its field masks spelled out for the entities with personal data.
    for role in policy.roles:
        for entity in ("contacts", "opportunities"):
            kinds = {c.kind for c in MATRIX if c.roles == (role,) and c.entity == entity}
            assert {"read", "write"} <= kinds, (role, entity)


@pytest.mark.parametrize("key", _entries({"action"}), ids=_entry_id)
def test_matrix_actions_over_http(world: World, key: EntryKey) -> None:
    fx = Fixture(world, key, "actions")
    by_record: dict[tuple[str, str, str, str], list[Check]] = defaultdict(list)
    # import, export and merge have routes of their own; their tests prove them over HTTP.
    for check in (c for c in _checks(key, "action") if c.name in ACTIONS):
        by_record[(check.entity, check.owner, check.team, repr(check.facts.values))].append(check)
    assert by_record, key
    for checks in by_record.values():
        record = fx.make(checks[0])
        # read, list, create, update, delete: the delete (which consumes it) comes last.
        for check in sorted(checks, key=lambda c: ACTIONS.index(c.name)):
            _run_action(fx, check, record)
    # The row scopes the YAML names are the ones /v1/me reports.
    me = fx.client.get("/v1/me", headers=fx.me.headers).json()["permissions"]
    for check in _checks(key, "scope"):
        scopes = me[check.entity]["regions"][fx.region]["scopes"]
        assert scopes.get(check.name, "none") == check.expected, check.describe()


# -- field masks ------------------------------------------------------------------------


def _full_record(fx: Fixture, check: Check, refs: dict[str, str]) -> dict[str, Any]:
    """A record (made by admin) with every writable field set, matching the facts."""
    spec = ENTITIES[check.entity]
    body = fx.body(check)
    for field in spec.writable_fields():
        if field.name not in body:
            body[field.name] = field_value(field, refs=refs, owner=fx.me.id)
    body.update(fx.placement(check))
    return create(fx.client, check.entity, body, fx.admin)


def _refs(fx: Fixture) -> dict[str, str]:
    """Records in the entry's region the principal may link to (admin-made, in its
    team, owned by it: readable for every role that may read the entity at all)."""
    placement = {"owner_id": fx.me.id, "team_id": "t1", "region": fx.region}
    refs = {}
    # Every entity a ref field can name (an activity links to any of these).
    for entity in ("accounts", "contacts", "leads", "opportunities"):
        body = {
            **body_for(fx.client, entity, fx.admin, fx.region),
            **unique_identifiers(entity),
            **placement,
        }
        refs[entity] = create(fx.client, entity, body, fx.admin)["id"]
    return refs


def _named(detail: str, field: str) -> bool:
    return re.search(rf"(?<![a-z_]){re.escape(field)}(?![a-z_])", detail) is not None


def _action_expected(key: EntryKey, entity: str, action: str) -> bool:
    found = [c for c in _checks(key, "action") if c.entity == entity and c.name == action]
    assert len(found) == 1, (key, entity, action)
    return bool(found[0].expected)


@pytest.mark.parametrize("key", _entries({"read", "write"}), ids=_entry_id)
def test_matrix_field_masks_over_http(world: World, key: EntryKey) -> None:
    fx = Fixture(world, key, "fields")
    refs = _refs(fx)
    for entity in ENTITIES:
        reads = [c for c in _checks(key, "read") if c.entity == entity]
        writes = [c for c in _checks(key, "write") if c.entity == entity]
        if reads:
            _check_reads(fx, entity, reads, refs)
        if writes:
            _check_writes(fx, entity, writes, refs)


def _check_reads(fx: Fixture, entity: str, reads: list[Check], refs: dict[str, str]) -> None:
    record = _full_record(fx, reads[0], refs)
    catalog = {f.name for f in ENTITIES[entity].fields}
    assert {c.name for c in reads} == catalog
    readable = {c.name for c in reads if c.expected}
    response = fx.client.get(f"/v1/{entity}/{record['id']}", headers=fx.me.headers)
    if not _action_expected((fx.roles, fx.region), entity, "read"):
        assert response.status_code in (403, 404), response.text
        # Opportunity fields an analytics reader may read serve aggregates only.
        aggregates = entity == ANALYTICS_ENTITY and fx.state.policy.allows(
            frozenset(fx.roles), fx.region, "analytics", "read"
        )
        if not aggregates:
            assert readable == set(), f"{reads[0].source}: fields readable on an unreadable record"
        return
    assert response.status_code == 200, response.text
    shown = response.json()
    assert set(shown) & catalog == readable, reads[0].source
    assert set(shown["_withheld"]) == catalog - readable, reads[0].source
    for name in readable:
        assert shown[name] == record[name], (reads[0].source, name)


def _check_writes(fx: Fixture, entity: str, writes: list[Check], refs: dict[str, str]) -> None:
    key = (fx.roles, fx.region)
    may_update = _action_expected(key, entity, "update")
    may_create = _action_expected(key, entity, "create")
    spec = ENTITIES[entity]
    record = _full_record(fx, writes[0], refs)
    url = f"/v1/{entity}/{record['id']}"
    version = record["version"]
    if not (may_update or may_create):
        # No write reaches the record: one PATCH naming every field is refused whole.
        claimed = [c.describe() for c in writes if c.expected]
        assert claimed == [], f"writable, but the roles may not update or create: {claimed}"
        fields = [spec.field(c.name) for c in writes]
        everything = {
            f.name: field_value(f, refs=refs, owner=fx.me.id) for f in fields if f is not None
        }
        response = fx.client.patch(
            url, json=everything, headers={**fx.me.headers, "If-Match": f'"v{version}"'}
        )
        assert response.status_code in (403, 404), response.text
        assert fx.as_admin(entity, record["id"]).json() == record
        return
    for check in writes:
        field = spec.field(check.name)
        assert field is not None
        value = field_value(field, refs=refs, owner=fx.me.id, text=f"w{check.name}")
        what = check.describe()
        before = None if check.expected else fx.as_admin(entity, record["id"]).json()
        if may_update:
            response = fx.client.patch(
                url,
                json={check.name: value},
                headers={**fx.me.headers, "If-Match": f'"v{version}"'},
            )
            success = 200
        else:
            body = {**fx.body(check), check.name: value, "region": fx.region}
            owned = fx.ids_as_admin(entity, body["owner_id"])
            response = fx.client.post(f"/v1/{entity}", json=body, headers=fx.me.headers)
            success = 201
        if check.expected:
            assert response.status_code == success, (what, response.text)
            written = response.json()
            if check.name in written and field.type != "json":
                assert written[check.name] == value, what
            if may_update:
                version = written["version"]
            continue
        assert response.status_code == 403, (what, response.text)
        assert _named(response.json()["detail"], check.name), (what, response.text)
        assert fx.as_admin(entity, record["id"]).json() == before, what
        if not may_update:
            assert fx.ids_as_admin(entity, body["owner_id"]) == owned, what
