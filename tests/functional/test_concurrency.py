"""Optimistic concurrency under real concurrency: a live server, parallel PATCHes."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import uvicorn

from bastion.app import create_app
from bastion.config import Settings
from bastion.state import State
from tests.factories import contact_body

WRITERS = 8


@pytest.fixture
def live_url(settings: Settings, state: State) -> Iterator[str]:
    config = uvicorn.Config(
        create_app(settings, state=state),
        host="127.0.0.1",
        port=0,
        log_config=None,
        access_log=False,
        lifespan="on",
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=lambda: asyncio.run(server.serve()), daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


def test_concurrent_patches_with_one_etag_exactly_one_wins(
    live_url: str, admin: dict[str, str]
) -> None:
    with httpx.Client(base_url=live_url, headers=admin, timeout=30) as client:
        created = client.post("/v1/contacts", json=contact_body())
        assert created.status_code == 201
        url = f"/v1/contacts/{created.json()['id']}"
        etag = created.headers["etag"]
        barrier = threading.Barrier(WRITERS)

        def patch(n: int) -> int:
            with httpx.Client(base_url=live_url, headers=admin, timeout=30) as own:
                barrier.wait()
                response = own.patch(url, json={"title": f"writer {n}"}, headers={"If-Match": etag})
                return response.status_code

        with ThreadPoolExecutor(WRITERS) as pool:
            statuses = list(pool.map(patch, range(WRITERS)))

        assert sorted(statuses) == [200] + [412] * (WRITERS - 1), statuses
        final = client.get(url).json()
        assert final["version"] == 2
        assert final["title"].startswith("writer ")
