"""Valid request bodies for every entity, and helpers that create records over HTTP."""

from __future__ import annotations

import itertools
import secrets
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import insert
from starlette.testclient import TestClient

from bastion.crm.catalog import ENTITIES, FieldSpec
from bastion.crm.tables import ENTITY_TABLES
from bastion.residency.databases import Database
from bastion.residency.ids import RecordId
from bastion.state import State


def account_body(**overrides: Any) -> dict[str, Any]:
    return {"name": "Nordlicht Energie GmbH", "billing_country": "DE", **overrides}


_SERIAL = itertools.count(1)


def contact_body(**overrides: Any) -> dict[str, Any]:
    """A new person each call: a unique email and phone, since creating a contact
    whose email or phone another one already has is refused as a duplicate."""
    n = next(_SERIAL)
    return {
        "first_name": "Anna",
        "last_name": "Schmidt",
        "email": f"anna.schmidt.{n}@example.com",
        "phone": f"+49301{n:06d}",
        **overrides,
    }


def lead_body(**overrides: Any) -> dict[str, Any]:
    n = next(_SERIAL)
    return {
        "first_name": "Lukas",
        "last_name": "Weber",
        "email": f"lukas.{n}@example.com",
        "company": "Weber Consulting",
        "status": "working",
        **overrides,
    }


def create(
    client: TestClient, entity: str, body: dict[str, Any], headers: dict[str, str]
) -> dict[str, Any]:
    response = client.post(f"/v1/{entity}", json=body, headers=headers)
    assert response.status_code == 201, response.text
    record: dict[str, Any] = response.json()
    return record


def body_for(
    client: TestClient, entity: str, headers: dict[str, str], region: str = "eu"
) -> dict[str, Any]:
    """A valid create body for `entity` in `region`, creating the records it links to."""
    if entity == "accounts":
        return account_body(region=region)
    if entity == "contacts":
        return contact_body(region=region)
    if entity == "leads":
        return lead_body(region=region)
    account = create(client, "accounts", account_body(region=region), headers)
    if entity == "opportunities":
        return {
            "region": region,
            "name": "Rollout",
            "account_id": account["id"],
            "stage": "proposal",
            "amount": "25000.00",
            "currency": "EUR",
            "close_date": "2027-01-31",
            "probability": 40,
        }
    if entity == "activities":
        return {"region": region, "type": "call", "subject": "Intro", "account_id": account["id"]}
    if entity == "cases":
        return {
            "region": region,
            "subject": "Invoice",
            "priority": "high",
            "account_id": account["id"],
        }
    raise AssertionError(entity)


ENTITY_NAMES = ("accounts", "contacts", "leads", "opportunities", "activities", "cases")


# -- policy tests: principals with roles and teams, valid field values, bulk rows -------


@dataclass(frozen=True)
class Caller:
    """A test principal: its id, and headers carrying its bearer token."""

    id: str
    headers: dict[str, str]


def caller(
    state: State,
    *roles: str,
    name: str,
    regions: Sequence[str] = ("eu", "us"),
    teams: Sequence[str] = (),
) -> Caller:
    """Issue a token for a principal holding exactly `roles`, in `regions` and `teams`."""
    issued = state.tokens.issue(
        principal_name=name, roles=list(roles), regions=list(regions), teams=list(teams)
    )
    return Caller(issued.principal.id, {"Authorization": f"Bearer {issued.secret}"})


def principal_id() -> str:
    """A well-formed principal id (`prn_…`) of nobody in particular."""
    return "prn_" + "".join(secrets.choice(_BASE32) for _ in range(26))


_BASE32 = "0123456789abcdefghjkmnpqrstvwxyz"


def field_value(
    field: FieldSpec,
    *,
    refs: Mapping[str, str],
    owner: str,
    team: str = "t1",
    text: str = "",
) -> Any:
    """A valid value for `field`; `refs` maps an entity to a linkable record id,
    `text` (if given) goes into text-like fields so tests can look for it."""
    marker = text or f"{field.name.replace('_', '-')}-value"
    kind = field.type
    if kind in ("string", "text"):
        return marker[: field.max_length] if field.max_length else marker
    # Emails and phone numbers identify people: each value is new, so no create is
    # refused as a duplicate of another test record.
    serial = next(_SERIALS)
    values: dict[str, Any] = {
        "email": f"{text or 'someone'}.{serial}@example.com",
        "phone": f"+4930{serial:09d}",
        "url": f"https://example.com/{text or 'page'}",
        "country": "DE",
        "currency": "EUR",
        "decimal": "1234.50",
        "boolean": True,
        "date": "2027-03-01",
        "datetime": "2027-03-01T10:00:00Z",
        "principal": owner,
        "team": team,
        "json": {"probe": marker},
    }
    if kind == "integer":
        low = int(field.minimum or 0)
        return min(low + 7, int(field.maximum)) if field.maximum is not None else low + 7
    if kind == "enum":
        return field.choices[0]
    if kind == "ref":
        assert field.ref is not None
        return refs[field.ref]
    return values[kind]


def unique_identifiers(entity: str) -> dict[str, str]:
    """New email and phone numbers for whichever of them `entity` has (contacts and
    leads are refused as duplicates when these match a record the caller can see)."""
    serial = next(_SERIALS)
    values = {
        "email": f"person.{serial}@example.com",
        "phone": f"+4931{serial:09d}",
        "mobile": f"+4917{serial:09d}",
    }
    spec = ENTITIES[entity]
    return {name: value for name, value in values.items() if spec.field(name) is not None}


_SERIALS = itertools.count(1)


def insert_contacts(
    database: Database, rows: Sequence[tuple[str | None, str | None]], *, now: datetime
) -> list[str]:
    """Insert one filler contact per (owner_id, team_id) in one transaction (Core, not
    the API), setting plain columns only. The required `last_name` is an encrypted
    field: where its column holds ciphertext it gets bytes that are no valid ciphertext,
    so filler rows are for counting and planning, not for reading through the API.
    Returns the ids in insertion order."""
    table = ENTITY_TABLES["contacts"]
    binary = table.c.last_name.type.python_type is bytes
    ids: list[str] = []
    values = []
    for index, (owner, team) in enumerate(rows):
        created = now + timedelta(microseconds=index)
        record_id = str(RecordId.new("con", database.name, created))
        ids.append(record_id)
        values.append(
            {
                "id": record_id,
                "region": database.name,
                "version": 1,
                "created_at": created,
                "updated_at": created,
                "last_name": b"filler" if binary else f"Filler {index}",
                "title": "Buyer",
                "department": "Procurement",
                "owner_id": owner,
                "team_id": team,
            }
        )
    with database.transaction(write=True) as conn:
        conn.execute(insert(table), values)
    return ids


def policy_dir(
    directory: Path,
    *,
    source: Path,
    append: Sequence[str] = (),
    replace: Mapping[str, str] | None = None,
) -> Path:
    """Copy the policy files in `source` to `directory` (created), replacing whole
    lines (each must exist) and appending lines to policy.csv. Returns `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copy(source / "model.conf", directory / "model.conf")
    write_policy(directory, (source / "policy.csv").read_text(), append=append, replace=replace)
    return directory


def write_policy(
    directory: Path,
    text: str,
    *,
    append: Sequence[str] = (),
    replace: Mapping[str, str] | None = None,
) -> Path:
    """Write policy.csv in `directory`: `text` with lines replaced and appended."""
    lines = text.split("\n")
    for old, new in (replace or {}).items():
        assert old in lines, f"no line {old!r} in the policy"
        lines[lines.index(old)] = new
    if lines and lines[-1] == "":
        lines.pop()
    path = directory / "policy.csv"
    path.write_text("\n".join([*lines, *append]) + "\n")
    return path


# -- automation -----------------------------------------------------------------------

REPO_ROOT = Path(__file__).resolve().parent.parent

# A test module's SETTINGS_ENV for automation: the repository's own rules and scoring
# model, jobs run by the test (not the app's thread), webhooks to 127.0.0.1 allowed.
AUTOMATION_ENV = {
    "BASTION_DSR_IN_PROCESS": "false",
    "BASTION_AUTOMATION_WORKFLOWS": str(REPO_ROOT / "workflows"),
    "BASTION_AUTOMATION_SCORING": str(REPO_ROOT / "scoring"),
    "BASTION_WEBHOOKS_ALLOW_NETWORKS": "127.0.0.1/32",
}


def drain(state: State, *, passes: int = 20) -> dict[str, int]:
    """Run every queue until none has work left; the jobs run, per queue."""
    total: dict[str, int] = {}
    for _ in range(passes):
        ran = state.jobs.run_once()
        for name, count in ran.items():
            total[name] = total.get(name, 0) + count
        if not any(ran.values()):
            return total
    raise AssertionError(f"the queues still had work after {passes} passes: {total}")
