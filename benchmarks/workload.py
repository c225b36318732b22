"""The requests both the HTTP benchmark and the profile send, identical for both apps."""

from __future__ import annotations

import random
from collections.abc import Callable

from sqlalchemy import create_engine, func, select

from benchmarks.load import Call, CallFactory

LIST_LIMIT = 50
SEED_ROWS = 2 * LIST_LIMIT + 20  # per app, so a list always returns a full page
GET_POOL = 2000  # ids the get phase picks from


def create_call(n: int) -> Call:
    """A contact with a few personal fields (the ones encryption will cover later)."""
    return Call(
        "POST",
        "/v1/contacts",
        {
            "region": "eu",
            "first_name": "Ada",
            "last_name": f"Bench{n}",
            "email": f"bench{n}@example.com",
            "title": "Engineer",
            "mailing_country": "DE",
        },
    )


def list_call(_n: int) -> Call:
    """The first page of contacts in one region (one query for either app)."""
    return Call("GET", f"/v1/contacts?limit={LIST_LIMIT}&region=eu")


def get_calls(ids: list[str]) -> CallFactory:
    def call(n: int) -> Call:
        return Call("GET", f"/v1/contacts/{ids[n % len(ids)]}")

    return call


def contact_ids(url: str, rng: random.Random) -> list[str]:
    """Up to GET_POOL ids of contacts in the database at `url` (both apps' rows), shuffled."""
    from bastion.crm.tables import ENTITY_TABLES

    contacts = ENTITY_TABLES["contacts"]
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            ids = list(
                conn.execute(select(contacts.c.id).order_by(func.random()).limit(GET_POOL))
                .scalars()
                .all()
            )
    finally:
        engine.dispose()
    if not ids:
        raise RuntimeError("no contacts to get: seeding did not write any")
    rng.shuffle(ids)
    return ids


def contact_count(url: str) -> int:
    """How many contacts the database at `url` holds (a list sorts all of them)."""
    from bastion.crm.tables import ENTITY_TABLES

    contacts = ENTITY_TABLES["contacts"]
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(contacts)).scalar_one())
    finally:
        engine.dispose()


# An operation's requests, given the eu database's URL (to look ids up) and a seeded rng.
Workload = Callable[[str, random.Random], CallFactory]

# What `run` measures and `--profile` profiles, in this order. A new benchmark is a
# new entry (and, if the baseline should serve it, a route in baseline.py).
OPERATIONS: dict[str, Workload] = {
    "create": lambda _url, _rng: create_call,
    "get": lambda url, rng: get_calls(contact_ids(url, rng)),
    "list": lambda _url, _rng: list_call,
}
