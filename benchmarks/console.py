"""`python -m benchmarks.console`: what a console page costs over the API call it wraps.

Against uvicorn (one worker) on throwaway SQLite or PostgreSQL databases holding
`--contacts` contacts and `--requests` data subjects' requests in the EU, one
client logged in to the console (session cookie) and holding the same principal's
bearer token asks, one request at a time, for

- a page of contacts: `GET /console/records/contacts?region=eu` against
  `GET /v1/contacts?region=eu&limit=25&sort=-created_at` (the same service call);
- a contact: `GET /console/records/contacts/{id}` against `GET /v1/contacts/{id}`;
- the DSR queue: `GET /console/dsr` against `GET /v1/dsr?limit=25`;

and prints each one's median and 95th percentile latency, the page's size, and the
ratio of the console's median to the API's (the baseline: the same pipeline, the
same audit events, JSON instead of a rendered page, a bearer token instead of a
session lookup). Not a test: nothing here fails on speed.
"""

from __future__ import annotations

import argparse
import re
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from bastion.config import load_settings
from bastion.logs import configure_logging
from bastion.principals.caller import Caller
from bastion.state import build_state
from benchmarks.environment import (
    Server,
    app_databases,
    bastion_environment,
    chosen_backends,
    migrate_databases,
)

_CSRF_RE = re.compile(r'name="csrf_token" value="([^"]+)"')
PAGE = 25


def _seed(env: dict[str, str], contacts: int, requests: int) -> tuple[str, str]:
    """The officer's token and one contact id."""
    state = build_state(load_settings(env))
    try:
        issued = state.tokens.issue(principal_name="bench-officer", roles=["compliance_officer"])
        admin = Caller(state.tokens.issue(principal_name="bench-admin", roles=["admin"]).principal)
        officer = Caller(issued.principal)
        ids = []
        for n in range(contacts):
            body = {
                "region": "eu",
                "first_name": "Bench",
                "last_name": f"Person{n}",
                "email": f"bench.{n}@example.com",
                "phone": f"+4930{n:08d}",
                "birthdate": "1980-01-01",
            }
            ids.append(state.records.create(admin, "contacts", body).record["id"])
        for n in range(min(requests, contacts)):
            state.dsr.create(officer, {"type": "access", "subject_id": ids[n]})
        return issued.secret, ids[0]
    finally:
        state.close()


def _log_in(http: httpx.Client, token: str) -> None:
    form = http.get("/console/login")
    csrf = _CSRF_RE.search(form.text)
    assert csrf is not None
    done = http.post("/console/login", data={"csrf_token": csrf.group(1), "token": token})
    if done.status_code != 200 or "/console/login" in str(done.url):
        raise RuntimeError(f"the benchmark could not log in: {done.status_code}")


def _measure(
    http: httpx.Client, path: str, headers: dict[str, str], n: int
) -> tuple[list[float], int]:
    for _ in range(max(5, n // 10)):  # warm-up, unmeasured
        http.get(path, headers=headers)
    times = []
    size = 0
    for _ in range(n):
        started = time.perf_counter()
        response = http.get(path, headers=headers)
        times.append((time.perf_counter() - started) * 1000)
        if response.status_code != 200:
            raise RuntimeError(f"{path}: HTTP {response.status_code}")
        size = len(response.content)
    return times, size


def _p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20)[-1]


def run(backend: str, contacts: int, requests: int, n: int) -> None:
    with (
        tempfile.TemporaryDirectory() as workdir,
        app_databases(backend, "bastion", Path(workdir)) as databases,
    ):
        env = {
            **bastion_environment(databases),
            "BASTION_CONSOLE_COOKIE_SECURE": "false",  # plain http on loopback
            "BASTION_DSR_IN_PROCESS": "false",  # the requests stay in the queue
        }
        migrate_databases(env)
        started = time.perf_counter()
        token, contact = _seed(env, contacts, requests)
        print(
            f"[{backend}] seeded {contacts} contacts and {requests} requests "
            f"in {time.perf_counter() - started:.1f} s"
        )
        server = Server(
            f"console-{backend}", "bastion.app:app_from_environment", env, databases.home
        )
        server.start()
        try:
            server.wait_ready()
            with (
                httpx.Client(base_url=server.base_url, timeout=30, follow_redirects=True) as http,
                # The API calls carry no session cookie: only the bearer token.
                httpx.Client(base_url=server.base_url, timeout=30) as api_http,
            ):
                _log_in(http, token)
                bearer = {"Authorization": f"Bearer {token}"}
                html = {"Accept": "text/html"}
                pairs = (
                    (
                        "contacts page",
                        "/console/records/contacts?region=eu",
                        f"/v1/contacts?region=eu&limit={PAGE}&sort=-created_at",
                    ),
                    (
                        "one contact",
                        f"/console/records/contacts/{contact}",
                        f"/v1/contacts/{contact}",
                    ),
                    ("DSR queue", "/console/dsr", f"/v1/dsr?limit={PAGE}"),
                )
                for label, page, api in pairs:
                    page_times, page_size = _measure(http, page, html, n)
                    api_times, api_size = _measure(api_http, api, bearer, n)
                    ratio = statistics.median(page_times) / statistics.median(api_times)
                    print(
                        f"[{backend}] {label:<14} console median "
                        f"{statistics.median(page_times):6.1f} ms p95 {_p95(page_times):6.1f} ms "
                        f"({page_size / 1024:5.1f} KiB) | API median "
                        f"{statistics.median(api_times):6.1f} ms p95 {_p95(api_times):6.1f} ms "
                        f"({api_size / 1024:5.1f} KiB) | console/API {ratio:.2f}x"
                    )
        finally:
            server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=("sqlite", "postgresql", "all"), default="all")
    parser.add_argument("--contacts", type=int, default=2000)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("-n", "--samples", type=int, default=200)
    args = parser.parse_args()
    configure_logging("console", "warning")
    for backend in chosen_backends(args.backend):
        run(backend, args.contacts, args.requests, args.samples)


if __name__ == "__main__":
    main()
