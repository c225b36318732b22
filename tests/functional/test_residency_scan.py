"""Residency leak scan: canaries written into each region through every kind of
record, read, searched, listed across regions, exported under a data subject's
request and queried in the audit log -- then every *other* region's database (its
raw bytes on SQLite, a `pg_dump` on PostgreSQL), the control database, the logs
and the other region's export package are searched for each canary: zero hits.

The canaries sit in plaintext fields (titles, names of accounts, subjects, custom
fields) so that a copy in the wrong place would be readable there, and in
encrypted ones (names, emails, bodies) so that a decrypted copy would be too. On
top, the residency guard of the `state` fixture (tests/conftest.py) fails the test
if any statement sent to one region's database carries another region's record id.
"""

from __future__ import annotations

import io
import secrets
import subprocess
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from starlette.testclient import TestClient

from bastion.state import State
from tests.conftest import REGIONS, Backend, Tokens
from tests.factories import contact_body, create
from tests.functional.test_dsr_e2e import open_request, run_request

# Requests are run by the test (state.dsr_jobs), not by the app's in-process runner.
SETTINGS_ENV = {"BASTION_DSR_IN_PROCESS": "false"}


def _write_region(
    client: TestClient, admin: dict[str, str], region: str, canary: str
) -> dict[str, Any]:
    """One of everything in `region`, each holding the canary; the contact's record."""
    account = create(client, "accounts", {"name": f"{canary} GmbH", "region": region}, admin)
    person = create(
        client,
        "contacts",
        contact_body(
            region=region,
            last_name=canary,
            email=f"{canary}@example.com",
            title=f"{canary} title",
            account_id=account["id"],
            custom={"note": canary},
        ),
        admin,
    )
    create(
        client,
        "leads",
        {"region": region, "last_name": canary, "company": f"{canary} Ltd", "status": "working"},
        admin,
    )
    create(
        client,
        "opportunities",
        {
            "region": region,
            "name": f"{canary} deal",
            "account_id": account["id"],
            "stage": "proposal",
            "amount": "1000.00",
            "currency": "EUR",
            "close_date": "2027-01-31",
        },
        admin,
    )
    create(
        client,
        "activities",
        {
            "region": region,
            "type": "call",
            "subject": f"{canary} subject",
            "body": f"{canary} body",
            "contact_id": person["id"],
        },
        admin,
    )
    create(
        client,
        "cases",
        {
            "region": region,
            "subject": f"{canary} case",
            "description": f"{canary} description",
            "contact_id": person["id"],
            "account_id": account["id"],
        },
        admin,
    )
    patched = client.patch(
        f"/v1/contacts/{person['id']}",
        json={"title": f"{canary} new title"},
        headers={**admin, "If-Match": '"v1"'},
    )
    assert patched.status_code == 200, patched.text
    return person


def _region_bytes(backend: Backend, name: str, tmp_path: Path) -> bytes:
    """Everything a database holds, as bytes: its files on SQLite, a dump on PostgreSQL."""
    url = backend.urls[name]
    if backend.name == "sqlite":
        path = Path(url.removeprefix("sqlite:///"))
        return b"".join(f.read_bytes() for f in sorted(path.parent.glob(f"{path.name}*")))
    dsn = url.replace("postgresql+psycopg://", "postgresql://")
    dumped = subprocess.run(
        ["pg_dump", "--no-owner", "--data-only", dsn],
        capture_output=True,
        check=True,
        timeout=120,
    )
    return dumped.stdout


def test_no_canary_of_a_region_is_found_anywhere_outside_it(
    backend: Backend,
    tmp_path: Path,
    client: TestClient,
    state: State,
    admin: dict[str, str],
    tokens: Tokens,
    logged: Callable[[], str],
) -> None:
    logged()
    canaries = {region: f"zq{region}{secrets.token_hex(6)}" for region in REGIONS}
    people = {r: _write_region(client, admin, r, canaries[r]) for r in REGIONS}
    officer = tokens.headers("compliance_officer", name="dpo")
    auditor = tokens.headers("auditor")
    packages: dict[str, dict[str, bytes]] = {}
    for region in REGIONS:
        person = people[region]
        # Reads and searches, in the region and across both.
        assert client.get(f"/v1/contacts/{person['id']}", headers=admin).status_code == 200
        found = client.get(
            "/v1/contacts", params={"email": f"{canaries[region]}@example.com"}, headers=admin
        )
        assert [c["id"] for c in found.json()["data"]] == [person["id"]]
        for entity in ("contacts", "activities", "cases"):
            page = client.get(f"/v1/{entity}", params={"limit": 1}, headers=admin).json()
            while page["next_cursor"]:  # merged across regions, one page at a time
                page = client.get(
                    f"/v1/{entity}",
                    params={"limit": 1, "cursor": page["next_cursor"]},
                    headers=admin,
                ).json()
        about = client.get("/v1/audit/events", params={"record_id": person["id"]}, headers=auditor)
        assert about.status_code == 200, about.text
        # The person's export, downloaded.
        request_id = open_request(client, officer, {"type": "export", "subject_id": person["id"]})
        run_request(state, client, officer, request_id)
        package = client.get(f"/v1/dsr/{request_id}/package", headers=officer)
        assert package.status_code == 200, package.text
        with zipfile.ZipFile(io.BytesIO(package.content)) as archive:
            packages[region] = {n: archive.read(n) for n in archive.namelist()}
        assert any(canaries[region].encode() in data for data in packages[region].values())
    written_logs = logged()
    state.close()  # flush and release the SQLite files before reading their bytes

    for region, canary in canaries.items():
        needle = canary.encode()
        others = [r for r in REGIONS if r != region]
        own = _region_bytes(backend, region, tmp_path)
        assert needle in own  # the plaintext fields: the scan can see a canary
        for other in [*others, "control"]:
            assert needle not in _region_bytes(backend, other, tmp_path), (canary, other)
        for other in others:
            for name, data in packages[other].items():
                assert needle not in data, (canary, other, name)
        assert canary not in written_logs
