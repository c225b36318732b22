"""`python -m benchmarks.soak`: concurrent mixed load against uvicorn with several
workers, then proof that nothing acknowledged was lost or written twice.

N clients (default 48) share a pool of contacts and, for `--duration` seconds,
each does one request at a time, chosen at random: create a contact (in either
region), read one, patch one with `If-Match` (its last version this client saw),
delete one of its own, list a region, or file a data subject's access request. The
server is `uvicorn --workers W` (default 2) on throwaway databases.

Expected refusals are counted, not failed: 412 (a patch lost a race), 404 (the
record was deleted meanwhile), 409 on a DSR (one is open for that person already).
Anything else that is not 2xx — a 5xx, a timeout, any other 4xx — is an error.

Afterwards, straight from the databases (the server stopped, the audit chains
flushed and verified):
- every acknowledged create exists unless its delete was acknowledged, and no
  other contact exists;
- each surviving contact's version is 1 + its acknowledged patches (no lost or
  doubled update);
- the audit log holds exactly one allowed `record.create` per acknowledged create,
  one `record.update` per acknowledged patch and one `record.delete` per
  acknowledged delete, each naming the record (no write unaudited, none twice);
- every DSR acknowledged exists;
- every region's audit chain verifies.

`tests/functional/test_soak.py` runs the same for a few seconds on SQLite and
PostgreSQL as part of `make test`.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import text

from bastion.logs import configure_logging
from benchmarks.environment import (
    REGIONS,
    Server,
    app_databases,
    bastion_environment,
    chosen_backends,
    migrate_databases,
)

# Operation weights: mostly reads and creates, some contention on patches.
MIX = (
    ("create", 30),
    ("get", 25),
    ("patch", 20),
    ("list", 12),
    ("delete", 8),
    ("dsr", 5),
)
# 404: deleted by another client meanwhile (a record lost for real is caught by the
# verification, which compares the databases with what was acknowledged). A DSR's
# 409: that person already has an open access request, which is the rule.
EXPECTED = {"patch": {412, 404}, "get": {404}, "delete": {412, 404}, "dsr": {404, 409}}


@dataclass(slots=True)
class Ledger:
    """What the server acknowledged, as the clients saw it."""

    created: dict[str, str] = field(default_factory=dict)  # contact id -> region
    versions: dict[str, int] = field(default_factory=dict)  # last version seen per id
    patches: Counter[str] = field(default_factory=Counter)  # acknowledged patches per id
    deleted: set[str] = field(default_factory=set)
    owners: dict[str, int] = field(default_factory=dict)  # id -> creating client
    dsrs: list[str] = field(default_factory=list)
    statuses: Counter[str] = field(default_factory=Counter)  # "create 201", ...
    errors: Counter[str] = field(default_factory=Counter)
    serial: int = 0


@dataclass(frozen=True, slots=True)
class SoakResult:
    requests: int
    elapsed: float
    statuses: dict[str, int]
    errors: dict[str, int]
    problems: list[str]  # verification failures: empty when everything holds

    @property
    def ok(self) -> bool:
        return not self.errors and not self.problems


async def _client(
    number: int,
    base_url: str,
    headers: dict[str, dict[str, str]],
    ledger: Ledger,
    deadline: float,
    seed: int,
) -> None:
    rng = random.Random(seed * 1000 + number)
    operations = [name for name, _ in MIX]
    weights = [weight for _, weight in MIX]
    async with httpx.AsyncClient(base_url=base_url, timeout=60.0) as http:
        while time.monotonic() < deadline:
            operation = rng.choices(operations, weights)[0]
            live = [i for i in ledger.created if i not in ledger.deleted]
            if operation != "create" and operation != "list" and not live:
                operation = "create"
            try:
                status = await _one(operation, number, http, headers, ledger, live, rng)
            except httpx.HTTPError as exc:
                ledger.errors[f"{operation} {type(exc).__name__}"] += 1
                continue
            ledger.statuses[f"{operation} {status}"] += 1
            if not 200 <= status < 300 and status not in EXPECTED.get(operation, ()):
                ledger.errors[f"{operation} HTTP {status}"] += 1


async def _one(
    operation: str,
    number: int,
    http: httpx.AsyncClient,
    headers: dict[str, dict[str, str]],
    ledger: Ledger,
    live: list[str],
    rng: random.Random,
) -> int:
    admin = headers["admin"]
    if operation == "create":
        ledger.serial += 1
        n = ledger.serial
        body = {
            "region": rng.choice(REGIONS),
            "first_name": "Soak",
            "last_name": f"Client{number}",
            "email": f"soak.{number}.{n}@example.com",
            "phone": f"+4930{number:03d}{n:06d}",
        }
        response = await http.post("/v1/contacts", json=body, headers=admin)
        if response.status_code == 201:
            record = response.json()
            ledger.created[record["id"]] = record["region"]
            ledger.versions[record["id"]] = record["version"]
            ledger.owners[record["id"]] = number
        return response.status_code
    if operation == "get":
        target = rng.choice(live)
        response = await http.get(f"/v1/contacts/{target}", headers=admin)
        if response.status_code == 200:
            _saw(ledger, target, response.json()["version"])
        return response.status_code
    if operation == "patch":
        target = rng.choice(live)
        version = ledger.versions[target]
        response = await http.patch(
            f"/v1/contacts/{target}",
            json={"title": f"v{version + 1} by {number}"},
            headers={**admin, "If-Match": f'"v{version}"'},
        )
        if response.status_code == 200:
            ledger.patches[target] += 1
            _saw(ledger, target, response.json()["version"])
        elif response.status_code == 412:
            fresh = await http.get(f"/v1/contacts/{target}", headers=admin)
            if fresh.status_code == 200:
                _saw(ledger, target, fresh.json()["version"])
        return response.status_code
    if operation == "delete":
        own = [i for i in live if ledger.owners.get(i) == number] or live
        target = rng.choice(own)
        response = await http.delete(
            f"/v1/contacts/{target}",
            headers={**admin, "If-Match": f'"v{ledger.versions[target]}"'},
        )
        if response.status_code == 204:
            ledger.deleted.add(target)
        return response.status_code
    if operation == "list":
        region = rng.choice(REGIONS)
        response = await http.get(f"/v1/contacts?region={region}&limit=50", headers=admin)
        return response.status_code
    # dsr: an access request about a live contact, filed by a compliance officer
    target = rng.choice(live)
    response = await http.post(
        "/v1/dsr",
        json={"type": "access", "subject_id": target, "regime": "gdpr"},
        headers=headers["officer"],
    )
    if response.status_code == 201:
        ledger.dsrs.append(response.json()["id"])
    return response.status_code


def _saw(ledger: Ledger, record_id: str, version: int) -> None:
    ledger.versions[record_id] = max(ledger.versions.get(record_id, 0), version)


def _verify(env: dict[str, str], ledger: Ledger) -> list[str]:
    """Every check of the module docstring; each failure as one line."""
    from bastion.config import load_settings
    from bastion.state import build_state

    problems: list[str] = []
    state = build_state(load_settings(env))
    try:
        for region in REGIONS:
            state.audit.flush(region)
            report = state.audit.verify(region)
            if not report.ok:
                problems.append(f"audit chain {region} does not verify: {report.problem}")
            expected = {
                i: 1 + ledger.patches[i]
                for i, r in ledger.created.items()
                if r == region and i not in ledger.deleted
            }
            with state.regions.get(region).transaction() as conn:
                stored = dict(conn.execute(text("SELECT id, version FROM contacts")).all())
                audited = Counter(
                    (row.action, row.record_id)
                    for row in conn.execute(
                        text(
                            "SELECT e.action, r.record_id FROM audit_events e "
                            "JOIN audit_record_refs r ON r.event_id = e.id "
                            "WHERE e.entity = 'contacts' AND e.decision = 'allow' AND e.action "
                            "IN ('record.create', 'record.update', 'record.delete')"
                        )
                    )
                )
                dsrs = {row[0] for row in conn.execute(text("SELECT id FROM dsr_requests"))}
            if stored != expected:
                missing = sorted(set(expected) - set(stored))
                extra = sorted(set(stored) - set(expected))
                wrong = sorted(i for i in set(stored) & set(expected) if stored[i] != expected[i])
                problems.append(
                    f"{region}: contacts differ from what was acknowledged: {len(missing)} "
                    f"missing, {len(extra)} unexpected, {len(wrong)} with a lost or doubled "
                    f"update (e.g. {(missing + extra + wrong)[:3]})"
                )
            for record_id, created_in in ledger.created.items():
                if created_in != region:
                    continue
                want = {
                    "record.create": 1,
                    "record.update": ledger.patches[record_id],
                    "record.delete": int(record_id in ledger.deleted),
                }
                got = {action: audited[(action, record_id)] for action in want}
                if got != want:
                    problems.append(f"{record_id}: audit events {got}, acknowledged {want}")
            lost_dsrs = [d for d in ledger.dsrs if d.split("_")[1] == region and d not in dsrs]
            if lost_dsrs:
                problems.append(f"{region}: acknowledged DSRs missing: {lost_dsrs[:3]}")
    finally:
        state.close()
    return problems


def soak(
    backend: str,
    workdir: Path,
    *,
    clients: int,
    duration: float,
    workers: int,
    seed: int = 7,
) -> SoakResult:
    """Run the soak on `backend` in `workdir`, verify, and say what happened."""
    from bastion.config import load_settings
    from bastion.state import build_state

    with app_databases(backend, "bastion", workdir) as databases:
        env = bastion_environment(databases)
        migrate_databases(env)
        state = build_state(load_settings(env))
        try:
            headers = {
                "admin": _bearer(state, "soak-admin", ["admin"]),
                "officer": _bearer(state, "soak-officer", ["compliance_officer"]),
            }
        finally:
            state.close()
        server = Server(
            "soak", "bastion.app:app_from_environment", env, databases.home, workers=workers
        )
        server.start()
        ledger = Ledger()
        try:
            server.wait_ready(60)
            started = time.monotonic()
            deadline = started + duration

            async def run_all() -> None:
                await asyncio.gather(
                    *(
                        _client(n, server.base_url, headers, ledger, deadline, seed)
                        for n in range(clients)
                    )
                )

            asyncio.run(run_all())
            elapsed = time.monotonic() - started
        finally:
            server.stop()
        problems = _verify(env, ledger)
    return SoakResult(
        requests=sum(ledger.statuses.values())
        + sum(n for kind, n in ledger.errors.items() if "HTTP" not in kind),
        elapsed=elapsed,
        statuses=dict(ledger.statuses),
        errors=dict(ledger.errors),
        problems=problems,
    )


def _bearer(state: Any, name: str, roles: list[str]) -> dict[str, str]:
    secret = state.tokens.issue(principal_name=name, roles=roles).secret
    return {"Authorization": f"Bearer {secret}"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=("sqlite", "postgresql", "all"), default="all")
    parser.add_argument("--clients", type=int, default=48)
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    configure_logging("console", "error")
    backends = chosen_backends(args.backend)
    failed = False
    for backend in backends:
        with tempfile.TemporaryDirectory(prefix="bastion-soak-") as work:
            result = soak(
                backend,
                Path(work),
                clients=args.clients,
                duration=args.duration,
                workers=args.workers,
                seed=args.seed,
            )
        print(
            f"{backend:<10} {args.clients} clients, {args.workers} workers, "
            f"{result.elapsed:.0f} s: {result.requests} requests "
            f"({result.requests / result.elapsed:,.0f}/s)"
        )
        pad = " " * 11
        responses = ", ".join(f"{k}: {v}" for k, v in sorted(result.statuses.items()))
        print(f"{pad}responses: {responses}")
        print(f"{pad}errors: {result.errors or 'none'}")
        verdict = "; ".join(result.problems) or (
            "every acknowledged write is there exactly once, audited once; chains verify"
        )
        print(f"{pad}verification: {verdict}")
        failed = failed or not result.ok
    raise SystemExit(1 if failed else 0)


if __name__ == "__main__":
    main()
